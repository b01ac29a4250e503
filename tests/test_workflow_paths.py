"""Where jobs find models and artifacts."""

from __future__ import annotations

from circuit_insights.pipeline.config import gpus_for_device
from circuit_insights.pipeline.paths import job_model_location, layer_table


def test_embedded_models_are_found_beside_their_input_files() -> None:
    files = ["resources/models/smollm2/model.safetensors"]
    assert job_model_location("embedded:smollm2", files) == "resources/models/smollm2"
    assert job_model_location("embedded:smollm2", files[0]) == "resources/models/smollm2"


def test_sources_without_built_files_stay_as_configured() -> None:
    # a hub id or folder, and an embedded LLM that a server at llm.url serves (nothing built)
    assert job_model_location("openai-community/gpt2", []) == "openai-community/gpt2"
    assert job_model_location("embedded:smollm2", []) == "embedded:smollm2"


def test_layer_table_sits_beside_the_shard_folder() -> None:
    assert (
        layer_table("results", "gpt2", 5, "weightlens") == "results/gpt2/layer5/weightlens.parquet"
    )


def test_only_cuda_devices_ask_for_a_gpu() -> None:
    assert [gpus_for_device(d) for d in ("cpu", "cuda", "cuda:3", "mps")] == [0, 1, 1, 0]


def test_rules_scripts_and_stages_map_one_to_one() -> None:
    """Rule X lives in workflow/rules/X.smk, runs scripts/X.py, which calls pipeline/stages/X.py
    (the embedded-model builds call models.embedded directly: their stage would be one line)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    rules = {}
    for smk in (root / "workflow/rules").glob("*.smk"):  # common.smk: input functions only
        text = smk.read_text()
        names = re.findall(r"^rule (\w+):", text, re.MULTILINE)
        names += re.findall(r'^\s+name:\s+f"(\w+)_\{', text, re.MULTILINE)  # cache_{model}
        for name in names:
            rules[name] = smk.stem
    for rule in ("all", "corpus", "cache", "select_features", "explain", "report"):
        assert rule == "all" or rule in rules, rule
    rules.pop("all", None)
    for rule, smk in rules.items():
        assert smk == rule, f"rule {rule} is in {smk}.smk"
        assert (root / f"scripts/{rule}.py").is_file(), rule
        if not rule.startswith("build_embedded_"):
            assert (root / f"src/circuit_insights/pipeline/stages/{rule}.py").is_file(), rule
    stages = {p.stem for p in (root / "src/circuit_insights/pipeline/stages").glob("[a-z]*.py")}
    assert stages == {r for r in rules if not r.startswith("build_embedded_")}


def test_stages_resolve_trained_and_published_transcoders_from_the_job_files(tmp_path) -> None:
    from circuit_insights.pipeline.locations import (
        layer_files,
        model_location,
        transcoder_locations,
    )

    inputs = {"transcoder_3": ["r/m/layer3/transcoder/transcoder.safetensors", "r/c.json"]}
    files = layer_files(inputs, "transcoder", [3, 8])
    assert files == {3: inputs["transcoder_3"], 8: []}  # a layer without files gets []
    trained = {"source": "embedded:gemma-3-270m", "transcoders": {"kind": "train"}}
    assert transcoder_locations(trained, {3: files[3]}) == {3: "r/m/layer3/transcoder"}
    assert transcoder_locations(trained, {3: files[3][0]}) == {3: "r/m/layer3/transcoder"}
    published = {
        "source": "gpt2",
        "transcoders": {
            "kind": "pretrained",
            "path": f"{tmp_path}/layer_{{layer}}",
            "format": "native",
        },
    }
    assert transcoder_locations(published, {5: []}) == {5: f"{tmp_path}/layer_5"}
    assert model_location(trained, ["resources/models/g/model.safetensors"]) == "resources/models/g"
    assert model_location(published, []) == "gpt2"
