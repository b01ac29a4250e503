"""The preflight through Snakemake itself: bad input stops the workflow while the DAG is built,
before any job runs, with one message (no traceback) naming the config key and the thing at fault.
Plus the library checks behind it, on small files built here."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from circuit_insights.core.errors import InputError
from circuit_insights.models.hub import hub_config, is_hub_id, read_config_json
from circuit_insights.pipeline import preflight

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
MODEL = "gemma-3-270m"


def closed_port() -> int:
    """A localhost port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ci_config(tmp_path: Path, **blocks) -> Path:
    """config/ci.yaml with top-level blocks merged one level deep (``models`` replaced)."""
    config = yaml.safe_load((ROOT / "config/ci.yaml").read_text())
    for key, value in blocks.items():
        if isinstance(value, dict) and key != "models":
            config.setdefault(key, {}).update(value)
        else:
            config[key] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def ci_model(**changes) -> dict:
    """The CI config's model block with ``changes`` (``transcoders`` merged)."""
    block = yaml.safe_load((ROOT / "config/ci.yaml").read_text())["models"][MODEL]
    transcoders = {**block["transcoders"], **changes.pop("transcoders", {})}
    return {MODEL: {**block, **changes, "transcoders": transcoders}}


def start(tmp_path: Path, config: Path, results: Path | None = None, **env: str):
    """``snakemake`` (not a dry run: nothing may get as far as a job) on ``config``, offline."""
    results = results or tmp_path / "results"
    environment = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_CACHE": str(tmp_path / "hub-cache"),  # an empty cache: nothing resolves from it
        **env,
    }
    command = [
        str(SNAKEMAKE),
        "--cores",
        "1",
        "--configfile",
        str(config),
        "--config",
        f"results_dir={results}",
        "--workflow-profile",
        "none",
    ]
    return subprocess.run(
        command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300
    )


def assert_stopped_at_start(done: subprocess.CompletedProcess[str], *names: str) -> str:
    """Exit status 1, one error line naming every one of ``names``, no traceback, no job."""
    output = done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert done.returncode == 1, output[-3000:]
    assert len(errors) == 1, output[-3000:]
    for name in names:
        assert name in errors[0], (name, errors[0])
    assert "Traceback" not in output and 'File "' not in output, output[-3000:]
    assert "Job stats" not in output and "rule " not in output, output[-3000:]
    return errors[0]


def test_unreachable_llm_url(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/v1"
    done = start(tmp_path, ci_config(tmp_path, llm={"url": url, "model": "explainer"}))
    assert_stopped_at_start(done, "llm.url", url, "unreachable")
    assert not (tmp_path / "results").exists()


def test_missing_transcoder_path(tmp_path):
    path = tmp_path / "transcoders" / "layer{layer}"
    model = ci_model(
        transcoders={"kind": "pretrained", "format": "native", "path": str(path), "top_k": None}
    )
    done = start(tmp_path, ci_config(tmp_path, models=model))
    layer = model[MODEL]["layers"][0]
    assert_stopped_at_start(
        done, f"models.{MODEL}.transcoders.path", str(path).replace("{layer}", str(layer))
    )


def test_hub_model_offline_says_offline_not_unknown(tmp_path):
    done = start(tmp_path, ci_config(tmp_path, models=ci_model(source="gpt2")))
    error = assert_stopped_at_start(
        done, f"models.{MODEL}.source", "cannot reach the hub to resolve gpt2 (offline?)"
    )
    assert "unknown" not in error


def test_binary_corpus_file_is_named(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"PK\x03\x04\x00\x00" + bytes(range(256)) * 4)
    done = start(tmp_path, ci_config(tmp_path, corpus={"source": "files", "paths": [str(corpus)]}))
    assert_stopped_at_start(done, "corpus.paths", str(corpus), "binary")


def test_model_config_that_is_not_json_is_named(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"num_hidden_layers": 4,')
    (folder / "model.safetensors").write_bytes(b"")
    done = start(tmp_path, ci_config(tmp_path, models=ci_model(source=str(folder))))
    assert_stopped_at_start(done, f"models.{MODEL}.source", str(folder / "config.json"), "JSON")


def test_results_dir_that_is_a_file(tmp_path):
    results = tmp_path / "results.txt"
    results.write_text("not a folder\n")
    done = start(tmp_path, ci_config(tmp_path), results=results)
    assert_stopped_at_start(done, "results_dir", str(results), "folder")
    assert results.read_text() == "not a folder\n"


# --- the library checks ------------------------------------------------------------------------


def test_hub_ids_with_and_without_an_org_are_accepted():
    assert is_hub_id("gpt2") and is_hub_id("openai-community/gpt2")
    assert is_hub_id("google/gemma-2-2b")
    for not_an_id in ("./model", "~/model", "a/b/c", "org/", "/abs/path", ""):
        assert not is_hub_id(not_an_id), not_an_id


def test_a_cached_hub_config_gives_the_layer_count_offline(tmp_path, monkeypatch):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"n_layer": 12}))
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda *a, **k: str(config))
    assert hub_config("gpt2") == {"n_layer": 12}
    with pytest.raises(InputError, match="layer 12 is out of range"):
        preflight.check_layers("models.gpt2.layers", "gpt2", [0, 12], 12)
    assert preflight.model_n_layers("models.gpt2.source", "gpt2", network=False) == 12


def test_uncached_hub_config_without_network_is_left_to_the_jobs(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda *a, **k: None)
    assert preflight.model_n_layers("models.x.source", "gpt2", network=False) is None


def test_config_json_errors_name_the_file(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_bytes(b"\xff\xfe{")
    with pytest.raises(InputError, match=f"{bad}.*not JSON"):
        read_config_json(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(InputError, match=f"{bad}.*not a JSON object"):
        read_config_json(bad)


def test_a_text_file_cut_inside_a_character_is_still_text(tmp_path):
    from circuit_insights.data.corpus import check_text_file

    text = tmp_path / "text.txt"
    text.write_text("é" * 10)  # 20 bytes; a limit of 5 cuts the third character
    check_text_file(text, limit=5)
    text.write_bytes("é".encode() * 3 + b"\xe9 latin-1")
    with pytest.raises(InputError, match=f"corpus file {text} is not UTF-8 text"):
        check_text_file(text)


def test_a_hub_explainer_without_a_url_is_refused():
    llm = {"url": "", "model": "Qwen/Qwen2.5-7B-Instruct", "api_key_env": ""}
    with pytest.raises(InputError, match="config key 'llm.url' must be set.*Qwen2.5-7B"):
        preflight.check_llm(llm, network=False)
    preflight.check_llm({**llm, "model": "embedded:smollm2-135m-instruct"}, network=True)


def test_a_folder_inside_a_file_is_refused(tmp_path):
    file = tmp_path / "file"
    file.write_text("")
    with pytest.raises(InputError, match=f"config key 'results_dir'.*{file} is a file"):
        preflight.check_output_folder("results_dir", file / "results")
    preflight.check_output_folder("results_dir", tmp_path / "new" / "results")


@pytest.mark.parametrize(
    "preset", sorted((ROOT / "config/presets").glob("*.yaml")), ids=lambda p: p.stem
)
def test_gpu_presets_name_a_hub_explainer_and_need_its_url(preset):
    """Never the embedded 135M explainer: a hub instruct model, served by the user (llm.url)."""
    from circuit_insights.pipeline.config import load_config
    from circuit_insights.pipeline.paths import is_embedded

    config = load_config(preset, ROOT / "workflow/schemas/config.schema.yaml")
    assert not is_embedded(config["llm"]["model"]) and is_hub_id(config["llm"]["model"])
    assert config["llm"]["url"] == ""
    with pytest.raises(InputError, match="config key 'llm.url' must be set"):
        preflight.check_llm(config["llm"], network=False)


def test_a_plain_snakemake_uses_the_workflow_profile(tmp_path):
    """profiles/default next to the Snakefile is where Snakemake looks by itself: a run with no
    --profile gets its settings (here the cap of the resource gpu, printed in a dry run)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [str(SNAKEMAKE), "-n", "--configfile", "config/ci.yaml", "--config"]
    command.append(f"results_dir={tmp_path / 'results'}")
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Using workflow specific profile profiles/default" in done.stderr
    profile = yaml.safe_load((ROOT / "profiles/default/config.yaml").read_text())
    assert "gpu=1" in profile["resources"] and "gpu=0" in profile["default-resources"]


def test_unlock_after_a_crash_works_while_the_llm_server_is_down(tmp_path):
    """--unlock runs no job: validation only, so a stale lock can be removed with the run's own
    config even when its llm.url does not answer (docs/troubleshooting.md)."""
    url = f"http://127.0.0.1:{closed_port()}/v1"
    config = ci_config(tmp_path, llm={"url": url, "model": "explainer"})
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [str(SNAKEMAKE), "--unlock", "--configfile", str(config), "--config"]
    command.append(f"results_dir={tmp_path / 'results'}")
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Unlock" in done.stdout + done.stderr


def test_only_a_main_process_that_plans_jobs_runs_the_preflight():
    assert preflight.runs_jobs(["snakemake", "--cores", "2", "-n"], main_process=True)
    assert not preflight.runs_jobs(["snakemake", "--unlock"], main_process=True)
    assert not preflight.runs_jobs(["snakemake", "--lint"], main_process=True)
    assert not preflight.runs_jobs(["snakemake", "--cores", "2"], main_process=False)
