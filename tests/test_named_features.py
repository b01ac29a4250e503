"""Named features (issue 22): the config's per-layer lists and a graph's feature nodes, checked at
start naming the entry, handed to each shard's selection, and always scored."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pandas as pd
import pytest

from circuit_insights.core.errors import InputError
from circuit_insights.data.selection import (
    DRAWN,
    ELIGIBLE,
    NAMED,
    named_features,
    select_features,
    selected_features,
    write_selection,
)
from circuit_insights.data.shards import Shard
from circuit_insights.explain.run import features_to_score
from circuit_insights.interop.graph_example import write_example_graph
from circuit_insights.pipeline import interop
from circuit_insights.pipeline.config import load_schema, validate_config

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = load_schema(ROOT / "workflow" / "schemas" / "config.schema.yaml")
MODEL = "gemma-3-270m"
SHARD = Shard(0, 40)


def _samples(counts: dict[int, int]) -> pd.DataFrame:
    rows = [
        {"feature": f, "kind": "quantile", "rank": r} for f, n in counts.items() for r in range(n)
    ]
    return pd.DataFrame(rows, columns=["feature", "kind", "rank"])


COUNTS = {f: f % 7 for f in range(40)}  # 0, 7, 14, ... never fire


def test_named_features_are_selected_whatever_their_samples_and_the_draw_stays_the_same():
    plain = select_features(_samples(COUNTS), SHARD, features_per_shard=4, min_samples=3, seed=2)
    named = select_features(
        _samples(COUNTS), SHARD, features_per_shard=4, min_samples=3, seed=2, named=[7, 8, 1]
    )
    drawn = set(plain.loc[plain["selected"], "feature"])
    by_feature = named.set_index("feature")
    # 7 never fires, 8 and 1 have fewer than min_samples quantile samples: selected all the same
    assert by_feature.loc[[1, 7, 8], "reason"].tolist() == [NAMED] * 3
    assert by_feature.loc[[1, 7, 8], "n_quantile_samples"].tolist() == [1, 0, 1]
    assert set(named.loc[named["selected"], "feature"]) == drawn | {1, 7, 8}
    assert set(named.loc[named["reason"] == DRAWN, "feature"]) == drawn - {1, 7, 8}
    assert (named.loc[named["reason"] == ELIGIBLE, "selected"] == False).all()  # noqa: E712
    assert list(named["feature"]) == sorted(named["feature"])


def test_features_per_shard_zero_selects_the_named_features_only(tmp_path):
    selection = select_features(
        _samples(COUNTS), SHARD, features_per_shard=0, min_samples=3, seed=0, named=[5, 20]
    )
    assert sorted(selection.loc[selection["selected"], "feature"]) == [5, 20]
    path = str(tmp_path / "f000000-000040.parquet")
    write_selection(selection, path)
    assert selected_features(path) == [5, 20] and named_features(path) == [5, 20]
    nothing = select_features(_samples(COUNTS), SHARD, features_per_shard=0, min_samples=3, seed=0)
    assert not nothing["selected"].any() and len(nothing) == sum(n >= 3 for n in COUNTS.values())


def test_a_named_feature_outside_the_shard_is_an_error():
    with pytest.raises(InputError, match="outside shard f000000-000040"):
        select_features(
            _samples(COUNTS), SHARD, features_per_shard=1, min_samples=1, seed=0, named=[40]
        )


def test_named_features_are_always_scored_the_others_up_to_the_limit():
    final = pd.DataFrame(
        [
            {"feature": f, "variant": v, "description": None if (f, v) == (9, "b") else "text"}
            for f in (1, 3, 5, 9, 12)
            for v in ("a", "b")
        ]
    )
    assert features_to_score(final, ["a", "b"], 1) == [1]
    assert features_to_score(final, ["a", "b"], 1, named=[12, 9]) == [1, 12]  # 9 lacks b
    assert features_to_score(final, ["a", "b"], 0, named=[5]) == [5]
    assert features_to_score(final, ["a", "b"], None, named=[5]) == [1, 3, 5, 12]


# --- the config: lists and a graph, checked at start ---------------------------------------------


def _config(**model_keys) -> dict:
    block = {"layers": [3, 8], "transcoders": {"n_features": 128}, **model_keys}
    return {"models": {MODEL: block}}


def _graph(path: Path, features, **target_changes) -> str:
    target = interop.transcoder_set(validate_config(_config(), SCHEMA), MODEL)
    fields = {**target.__dict__, **target_changes}
    write_example_graph(
        path,
        target=type(target)(**fields),
        features=features,
        prompt_tokens=["<bos>", "The", " cat"],
    )
    return str(path)


def test_the_embedded_default_names_its_transcoders_as_docs_say():
    target = interop.transcoder_set(validate_config(_config(), SCHEMA), MODEL)
    assert (target.model, target.source_set) == (MODEL, "circuit-insights-transcoder-128")
    assert target.layers == (3, 8) and target.width == 128
    assert interop.model_id("google/gemma-2-2b") == "gemma-2-2b"
    assert interop.model_id("/models/llama-3.2-1b/") == "llama-3.2-1b"


def test_lists_and_graph_nodes_are_one_set_of_named_features(tmp_path):
    graph = _graph(tmp_path / "g.json", {3: [7, 100], 8: [0]})
    config = validate_config(_config(features={3: [1, "5-7"], "8": "0,2"}, graph=graph), SCHEMA)
    named = interop.named_features(config, MODEL)
    assert named == {3: [1, 5, 6, 7, 100], 8: [0, 2]}
    assert interop.shard_named_features(named, "3", "f000000-000064") == [1, 5, 6, 7]
    assert interop.shard_named_features(named, 3, "f000064-000128") == [100]
    assert interop.shard_named_features(named, 13, "f000000-000064") == []


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (
            {"features": {3: [5, 128]}},
            "'models.gemma-3-270m.features': layer 3, entry 128: feature 128 is at or above the transcoder's width 128",
        ),
        (
            {"features": {13: 5}},
            "'models.gemma-3-270m.features': layer 13 is not a configured layer (configured: 3, 8)",
        ),
        ({"features": {3: "9-2"}}, "range '9-2' runs backwards"),
        ({"features": {3: [1.5]}}, "entry 1.5: not a feature index"),
    ],
)
def test_bad_feature_lists_stop_at_start_naming_the_entry(keys, message):
    with pytest.raises(InputError) as raised:
        validate_config(_config(**keys), SCHEMA)
    assert message in str(raised.value)


def test_bad_graphs_stop_at_start_naming_the_key_and_the_problem(tmp_path):
    def refused(path: str) -> str:
        with pytest.raises(InputError) as raised:
            validate_config(_config(graph=path), SCHEMA)
        text = str(raised.value)
        assert text.startswith("config key 'models.gemma-3-270m.graph': graph file " + path)
        return text

    other_model = _graph(tmp_path / "other_model.json", {3: [1]}, model="gemma-2-2b")
    assert "made for model 'gemma-2-2b' (metadata.scan)" in refused(other_model)
    other_set = _graph(
        tmp_path / "other_set.json", {3: [1]}, source_set="gemmascope-transcoder-16k"
    )
    text = refused(other_set)
    assert "made for transcoder set 'gemmascope-transcoder-16k'" in text
    assert "models.gemma-3-270m.interop.model_id / source_set" in text
    wide = type(interop.transcoder_set(validate_config(_config(), SCHEMA), MODEL))
    wider = tmp_path / "wide.json"
    write_example_graph(
        wider,
        target=wide(
            model=MODEL, source_set="circuit-insights-transcoder-128", layers=(3, 13), width=512
        ),
        features={3: [300], 13: [1]},
        prompt_tokens=["<bos>", "a"],
    )
    assert "feature 300 of layer 3 is outside the transcoder's width 128" in refused(str(wider))
    graph = json.loads(wider.read_text())
    graph["nodes"] = [n for n in graph["nodes"] if n["node_id"] != "3_300_1"]
    wider.write_text(json.dumps(graph))
    assert "layer 13 is not a configured layer (configured: 3, 8)" in refused(str(wider))
    table = tmp_path / "table.json"
    table.write_text(json.dumps([{"modelId": MODEL}]))
    assert "not an attribution graph" in refused(str(table))
    assert "no such file" in refused(str(tmp_path / "missing.json"))


def test_the_configured_names_are_what_a_graph_is_checked_against(tmp_path):
    published = _graph(
        tmp_path / "gs.json", {3: [4]}, model="gemma-2-2b", source_set="gemmascope-transcoder-16k"
    )
    keys = {"model_id": "gemma-2-2b", "source_set": "gemmascope-transcoder-16k"}
    config = validate_config(_config(graph=published, interop=keys), SCHEMA)
    assert interop.named_features(config, MODEL) == {3: [4]}
    bad = copy.deepcopy(_config(interop={"delphi_module": "layers.mlp"}))
    with pytest.raises(InputError, match="'models.gemma-3-270m.interop': .*delphi_module"):
        validate_config(bad, SCHEMA)


def test_the_gemmascope_preset_takes_a_graph_of_circuit_tracers_gemma_preset():
    """config/presets/gemma-2-2b-gemmascope.yaml names its transcoders as circuit-tracer's gemma
    preset does (scan gemma-2-2b) and Neuronpedia (gemmascope-transcoder-16k): the graph file
    written by circuit-tracer's own models (tests/data/interop) is accepted."""
    import yaml

    preset = yaml.safe_load((ROOT / "config/presets/gemma-2-2b-gemmascope.yaml").read_text())
    (model,) = preset["models"]
    preset["models"][model]["graph"] = str(ROOT / "tests/data/interop/circuit_tracer_graph.json")
    config = validate_config(preset, SCHEMA)
    named = interop.named_features(config, model)
    assert named == {0: [13154], 3: [2048], 12: [7011], 18: [8, 16383], 20: [7011]}


def test_the_example_graph_config_names_the_graphs_features():
    """config/examples/graph.yaml is valid; its graph (config/examples/graph.json) is the one
    tools/example_graph.py writes for the embedded default, and its features are named."""
    import yaml

    from circuit_insights.interop.graph_example import example_graph
    from circuit_insights.pipeline.config import load_config
    from tools.example_graph import FEATURES, SLUG

    config = load_config(
        ROOT / "config/examples/graph.yaml", ROOT / "workflow/schemas/config.schema.yaml"
    )
    assert interop.named_features(config, MODEL) == FEATURES
    assert config["explain"]["features_per_shard"] == 0
    written = json.loads((ROOT / "config/examples/graph.json").read_text())
    metadata = written["metadata"]
    embeddings = [n for n in written["nodes"] if n["feature_type"] == "embedding"]
    (logit,) = [n for n in written["nodes"] if n["feature_type"] == "logit"]
    again = example_graph(
        target=interop.transcoder_set(config, MODEL),
        features=FEATURES,
        prompt_tokens=metadata["prompt_tokens"],
        token_ids=[int(n["node_id"].split("_")[1]) for n in embeddings],
        n_layers=18,
        slug=SLUG,
        output_token=logit["clerp"].split('"')[1],
        output_token_id=int(logit["feature"]),
    )
    assert again == written
    default = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    example = yaml.safe_load((ROOT / "config/examples/graph.yaml").read_text())
    for key in ("corpus", "cache", "sampling", "llm"):  # the embedded default, copied
        assert example[key] == default[key], key
