"""File formats crossing the border (circuit_insights.interop; docs/formats.md).

The fixtures in tests/data/interop/ are in the publishers' formats: the graph was written by
circuit-tracer's own pydantic models (tests/data/interop/README.md says how)."""

from __future__ import annotations

import dataclasses
import gzip
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from circuit_insights.core.errors import InputError
from circuit_insights.interop.delphi import read_delphi, read_delphi_scores, write_delphi
from circuit_insights.interop.features import format_named_features, parse_named_features
from circuit_insights.interop.formats import FORMATS, explanation_format
from circuit_insights.interop.graph import (
    FEATURE_TYPE,
    feature_nodes,
    graph_features,
    read_graph,
    write_graph_index,
    write_labelled_graph,
)
from circuit_insights.interop.graph_example import cantor_pairing, write_example_graph
from circuit_insights.interop.neuronpedia import (
    feature_url,
    neuronpedia_entries,
    read_neuronpedia,
    write_neuronpedia,
)
from circuit_insights.interop.table import IMPORTED_COLUMNS
from circuit_insights.interop.target import TranscoderSet

DATA = Path(__file__).parent / "data" / "interop"
GRAPH = DATA / "circuit_tracer_graph.json"

#: Gemma-2-2B with the GemmaScope 16k transcoders, as circuit-tracer's `gemma` preset names them.
GEMMA = TranscoderSet(
    model="gemma-2-2b",
    source_set="gemmascope-transcoder-16k",
    layers=tuple(range(26)),
    width=16384,
    preset_scans=("gemma-2-2b",),
)
#: The embedded model's trained transcoders (config/config.yaml).
EMBEDDED = TranscoderSet(
    model="gemma-3-270m",
    source_set="circuit-insights-transcoder-128",
    layers=(3, 8, 13),
    width=128,
)
#: The features of the fixture graph's transcoder nodes.
GRAPH_FEATURES = {0: [13154], 3: [2048], 12: [7011], 18: [8, 16383], 20: [7011]}


def _write(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj, indent=2), encoding="utf-8")
    return path


def _graph() -> dict:
    return json.loads(GRAPH.read_text(encoding="utf-8"))


# --- TranscoderSet ---------------------------------------------------------------------------


def test_transcoder_set_names_each_layer_explicitly():
    assert EMBEDDED.source_ids == {
        "3-circuit-insights-transcoder-128": 3,
        "8-circuit-insights-transcoder-128": 8,
        "13-circuit-insights-transcoder-128": 13,
    }
    assert EMBEDDED.modules == {"layers.3.mlp": 3, "layers.8.mlp": 8, "layers.13.mlp": 13}
    custom = TranscoderSet(
        model="m", source_set="s", layers=(1,), width=4, transcoder_ids={1: "tc-1"}
    )
    assert custom.transcoder_id(1) == "tc-1"
    assert EMBEDDED.transcoder_id(8) == "8-circuit-insights-transcoder-128"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"model": "google/gemma-2-2b"}, "without '/'"),
        ({"source_set": "res-jb__x"}, "not a source set"),
        ({"layers": (3, 3)}, "distinct"),
        ({"layers": (-1,)}, ">= 0"),
        ({"width": 0}, "width 0"),
        ({"delphi_module": "layers.mlp"}, "{layer}"),
        ({"transcoder_ids": {5: "x"}}, "unconfigured layers [5]"),
    ],
)
def test_transcoder_set_refuses_bad_values(changes, message):
    values = dict(model="m", source_set="s", layers=(3,), width=8) | changes
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        TranscoderSet(**values)


# --- named features --------------------------------------------------------------------------


def test_named_features_parse_indices_and_ranges():
    block = {3: [0, 5, "10-19"], "8": "0-9,17", 13: 127}
    parsed = parse_named_features(block, layers=[3, 8, 13], width=128)
    assert parsed == {
        3: [0, 5, *range(10, 20)],
        8: [*range(10), 17],
        13: [127],
    }


def test_named_features_are_sorted_and_unique():
    parsed = parse_named_features({8: [9, "3-5", 4, " 9 ", "5-5"]}, layers=[8], width=16)
    assert parsed == {8: [3, 4, 5, 9]}
    assert parse_named_features(None, layers=[8], width=16) == {}


def test_named_features_format_is_the_inverse_of_parse():
    features = {3: [0, 1, 2, 7, 9, 10], 8: [5]}
    written = format_named_features(features)
    assert written == {3: "0-2,7,9-10", 8: "5"}
    assert parse_named_features(written, layers=[3, 8], width=16) == features


@pytest.mark.parametrize(
    "block, pieces",
    [
        ({3: [5, 128]}, ["layer 3", "entry 128", "width 128"]),
        ({3: "120-130"}, ["layer 3", "'120-130'", "feature 130", "width 128"]),
        ({3: [-1]}, ["layer 3", "entry -1", "negative"]),
        ({5: [1]}, ["layer 5", "not a configured layer", "3, 8, 13"]),
        ({3: ["a-b"]}, ["layer 3", "'a-b'", "neither an index nor a range"]),
        ({3: ["9-3"]}, ["layer 3", "'9-3'", "backwards"]),
        ({3: [1.5]}, ["layer 3", "entry 1.5"]),
        ({3: [True]}, ["layer 3", "entry True"]),
        ({"x": [1]}, ["layer 'x'", "not a layer index"]),
        ([1, 2], ["expected a mapping"]),
    ],
)
def test_named_features_refuse_bad_entries_naming_them(block, pieces):
    with pytest.raises(InputError) as error:
        parse_named_features(block, layers=[3, 8, 13], width=128, key="models.m.features")
    message = str(error.value)
    assert message.startswith("models.m.features: ")
    for piece in pieces:
        assert piece in message


# --- graph files: reading --------------------------------------------------------------------


def test_graph_features_are_the_transcoder_nodes_only():
    assert graph_features(GRAPH, target=GEMMA) == GRAPH_FEATURES
    graph = read_graph(GRAPH)
    kinds = {node["feature_type"] for node in graph["nodes"]}
    assert kinds == {FEATURE_TYPE, "mlp reconstruction error", "embedding", "logit"}
    nodes = feature_nodes(graph, path=GRAPH)
    assert len(nodes) == 7
    assert {(n.layer, n.feature, n.ctx_idx) for n in nodes} >= {(20, 7011, 4), (20, 7011, 5)}
    assert nodes[0].activation == pytest.approx(9.45) and nodes[0].clerp == ""


def test_graph_feature_index_comes_from_the_node_id_not_the_feature_field(tmp_path):
    graph = _graph()
    for node in graph["nodes"]:
        if node["feature_type"] == FEATURE_TYPE:
            layer, index = int(node["layer"]), int(node["node_id"].split("_")[1])
            assert node["feature"] == cantor_pairing(layer, index)  # today's writer
            node["feature"] = index + 100000 * layer  # the June 2025 release's preset encoding
    assert graph_features(_write(tmp_path / "old.json", graph), target=GEMMA) == GRAPH_FEATURES


def test_graph_node_ids_of_neuronpedias_converter_are_read(tmp_path):
    graph = _graph()
    for node in graph["nodes"]:
        if node["feature_type"] == FEATURE_TYPE:
            layer, index, pos = node["node_id"].split("_")
            node["node_id"] = f"{layer}_cro_{index}_{pos}"
            node["layer"] = int(layer)  # Neuronpedia's schema allows an integer layer
    assert graph_features(_write(tmp_path / "g.json", graph), target=GEMMA) == GRAPH_FEATURES


def test_graph_layers_outside_the_config_stop_or_are_skipped():
    target = TranscoderSet(
        model="gemma-2-2b",
        source_set="gemmascope-transcoder-16k",
        layers=(18, 20),
        width=16384,
        preset_scans=("gemma-2-2b",),
    )
    with pytest.raises(InputError, match=r"node '0_13154_4'.*layer 0 is not a configured layer"):
        graph_features(GRAPH, target=target)
    kept = graph_features(GRAPH, target=target, skip_other_layers=True)
    assert kept == {18: [8, 16383], 20: [7011]}


def test_graph_feature_at_or_above_the_width_stops():
    narrow = dataclasses.replace(GEMMA, width=16383)
    with pytest.raises(InputError, match=r"node '18_16383_5'.*feature 16383.*width 16383"):
        graph_features(GRAPH, target=narrow)


# --- graph files: their origin ---------------------------------------------------------------


def _with_metadata(tmp_path: Path, **changes: object) -> Path:
    graph = _graph()
    graph["metadata"].update(changes)
    return _write(tmp_path / "graph.json", graph)


def test_graph_of_another_model_is_refused(tmp_path):
    path = _with_metadata(tmp_path, scan="llama-3-131k-relu")
    with pytest.raises(InputError, match=r"graph\.json: made for model 'llama-3-131k-relu'"):
        graph_features(path, target=GEMMA)


def test_graph_of_another_source_set_is_refused(tmp_path):
    path = _with_metadata(tmp_path, feature_details={"neuronpedia_source_set": "clt-hp"})
    with pytest.raises(InputError, match=r"transcoder set 'clt-hp'.*not 'gemmascope-transcoder"):
        graph_features(path, target=GEMMA)
    same = _with_metadata(
        tmp_path, feature_details={"neuronpedia_source_set": "gemmascope-transcoder-16k"}
    )
    assert graph_features(same, target=dataclasses.replace(GEMMA, preset_scans=())) == (
        GRAPH_FEATURES
    )


def test_graph_preset_scan_is_accepted_only_when_configured(tmp_path):
    bare = TranscoderSet(model="gemma-2-2b", source_set="s", layers=GEMMA.layers, width=16384)
    with pytest.raises(InputError, match=r"names no transcoder set of 'gemma-2-2b'"):
        graph_features(GRAPH, target=bare)


def test_graph_with_a_listed_transcoder_set(tmp_path):
    # circuit-tracer's build_model for a list: scan "custom-<hash>", transcoder_list
    # ["<model name>/<transcoder id>", ...] indexed by layer (load_transcoder_set sorts by layer).
    ids = [f"gemma-2-2b/{layer}-gemmascope-transcoder-16k" for layer in range(26)]
    path = _with_metadata(tmp_path, scan="custom-8581", transcoder_list=ids)
    assert graph_features(path, target=GEMMA) == GRAPH_FEATURES

    other = [*ids[:18], "gemma-2-2b/18-other", *ids[19:]]
    path = _with_metadata(tmp_path, scan="custom-1", transcoder_list=other)
    with pytest.raises(InputError, match=r"transcoder_list\[18\] is 'gemma-2-2b/18-other'"):
        graph_features(path, target=GEMMA)

    mixed = [*ids[:3], "gpt2/3-x", *ids[4:]]
    with pytest.raises(InputError, match="mixes models"):
        graph_features(
            _with_metadata(tmp_path, scan="custom-2", transcoder_list=mixed), target=GEMMA
        )

    with pytest.raises(InputError, match="does not list 'model/transcoder' ids"):
        graph_features(_with_metadata(tmp_path, scan="custom-3", transcoder_list=[]), target=GEMMA)


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json {", "not a JSON file"),
        ("[1, 2]", "the JSON is not an object"),
        ('{"metadata": {"scan": "gemma-2-2b"}, "links": []}', "no nodes"),
        ('{"metadata": {}, "nodes": [], "links": []}', "metadata.scan is not a string"),
        ('{"metadata": {"scan": "x"}, "nodes": {}, "links": []}', "not lists"),
        ('{"metadata": {"scan": "x"}, "nodes": [{"node_id": "1_2_3"}], "links": []}', "nodes[0]"),
    ],
)
def test_a_file_that_is_not_a_graph_is_refused_naming_it(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(InputError) as error:
        graph_features(path, target=GEMMA)
    assert str(path) in str(error.value) and message in str(error.value)
    with pytest.raises(InputError, match="no such file"):
        read_graph(tmp_path / "missing.json")


def test_graph_node_id_that_does_not_name_its_layer_is_refused(tmp_path):
    graph = _graph()
    graph["nodes"][1]["layer"] = "4"  # node_id says 3
    with pytest.raises(InputError, match=r"nodes\[1\] \(node_id '3_2048_4', layer '4'\)"):
        graph_features(_write(tmp_path / "g.json", graph), target=GEMMA)


# --- graph files: the labelled copy ----------------------------------------------------------


def test_labelled_copy_changes_only_the_labels_of_labelled_features(tmp_path):
    source = _graph()
    source["nodes"][1]["clerp"] = "a label someone gave in the viewer"  # 3_2048_4
    source_path = _write(tmp_path / "in.json", source)
    labels = {
        (18, 8): "capital cities",
        (20, 7011): "say Austin",
        (0, 13154): None,  # no label: keeps ""
        (27, 22605): "not a feature",  # the logit node's layer and vocabulary id
    }
    dest = tmp_path / "out" / "labelled.json"
    assert write_labelled_graph(source_path, dest, labels, target=GEMMA) == 3
    written = json.loads(dest.read_text(encoding="utf-8"))

    assert list(written) == list(source)
    for key in ("metadata", "qParams", "links"):
        assert written[key] == source[key]
    assert len(written["nodes"]) == len(source["nodes"])
    changed = {}
    for before, after in zip(source["nodes"], written["nodes"], strict=True):
        assert list(after) == list(before)  # same fields in the same order
        for field in before:
            if after[field] != before[field]:
                assert field == "clerp"
                changed[after["node_id"]] = after[field]
    assert changed == {
        "18_8_5": "capital cities",
        "20_7011_4": "say Austin",
        "20_7011_5": "say Austin",
    }
    assert written["nodes"][1]["clerp"] == "a label someone gave in the viewer"


def test_labelled_copy_without_labels_is_the_same_graph(tmp_path):
    dest = tmp_path / "copy.json"
    assert write_labelled_graph(GRAPH, dest, {}) == 0
    assert json.loads(dest.read_text(encoding="utf-8")) == _graph()


def test_labelled_copy_checks_the_origin(tmp_path):
    with pytest.raises(InputError, match="made for model 'gemma-2-2b'"):
        write_labelled_graph(GRAPH, tmp_path / "x.json", {}, target=EMBEDDED)
    assert not (tmp_path / "x.json").exists()


def test_graph_index_lists_each_slug_once(tmp_path):
    first = shutil.copy(GRAPH, tmp_path / "austin-capital.json")
    index = write_graph_index(tmp_path, [first, first])
    graphs = json.loads(index.read_text())["graphs"]
    assert [g["slug"] for g in graphs] == ["austin-capital"]
    assert graphs[0] == _graph()["metadata"]


# --- graph files: the example writer ---------------------------------------------------------


def test_example_graph_has_circuit_tracers_fields_and_reads_back(tmp_path):
    features = {3: [0, 17], 8: [5], 13: [127]}
    path = tmp_path / "graph.json"
    graph = write_example_graph(
        path,
        target=EMBEDDED,
        features=features,
        prompt_tokens=["<bos>", "The", " capital", " of", " Texas", " is"],
        token_ids=[2, 818, 5279, 529, 9067, 563],
        n_layers=18,
        output_token=" Austin",
        output_token_id=22660,
    )
    assert json.loads(path.read_text(encoding="utf-8")) == graph
    assert graph_features(path, target=EMBEDDED) == features
    assert graph["metadata"]["slug"] == "graph"
    assert graph["metadata"]["scan"] == "gemma-3-270m"
    assert graph["metadata"]["feature_details"] == {
        "neuronpedia_source_set": "circuit-insights-transcoder-128"
    }

    upstream = _graph()
    keys_by_type = {n["feature_type"]: list(n) for n in upstream["nodes"]}
    for node in graph["nodes"]:
        assert list(node) == keys_by_type[node["feature_type"]]
        if node["feature_type"] == FEATURE_TYPE:
            layer, index, _ = node["node_id"].split("_")
            assert node["feature"] == cantor_pairing(int(layer), int(index))
            assert node["jsNodeId"] == f"{layer}_{index}-0"
    assert list(graph["metadata"])[: len(upstream["metadata"])] == list(upstream["metadata"])
    assert graph["qParams"] == upstream["qParams"]
    logit = [n for n in graph["nodes"] if n["feature_type"] == "logit"]
    assert [n["layer"] for n in logit] == ["19"]  # n_layers + 1, as Node.logit_node

    ids = {n["node_id"] for n in graph["nodes"]}
    assert len(ids) == len(graph["nodes"])
    linked = {e for link in graph["links"] for e in (link["source"], link["target"])}
    assert linked <= ids
    for node in graph["nodes"]:  # circuit-tracer keeps only linked nodes, embeddings and logits
        assert node["node_id"] in linked or node["feature_type"] in {"embedding", "logit"}


def test_example_graph_refuses_features_outside_the_set(tmp_path):
    with pytest.raises(InputError, match="feature 128 of layer 3.*width 128"):
        write_example_graph(
            tmp_path / "g.json", target=EMBEDDED, features={3: [128]}, prompt_tokens=["a", "b"]
        )
    with pytest.raises(InputError, match="layer 4 is not a configured layer"):
        write_example_graph(
            tmp_path / "g.json", target=EMBEDDED, features={4: [1]}, prompt_tokens=["a", "b"]
        )


# --- explanations: what we export ------------------------------------------------------------


def _ours() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Explanations as explain writes them (final and cluster rows, a missing one) and scores
    in the summary's long form."""
    explanations = pd.DataFrame(
        [
            # layer, feature, variant, cluster, is_final, description, llm_model
            (3, 0, "maxact", -1, True, 'the word "capital"', "SmolLM2-135M-Instruct"),
            (3, 0, "cl_full", 0, False, "a cluster's description", "SmolLM2-135M-Instruct"),
            (3, 0, "cl_full", -1, True, "capitals, after 'of'", "SmolLM2-135M-Instruct"),
            (3, 0, "weightlens_rule", -1, True, "tokens: capital, Capital", ""),
            (3, 17, "maxact", -1, True, "née, café — accents", "SmolLM2-135M-Instruct"),
            (3, 17, "cl_full", -1, True, None, "SmolLM2-135M-Instruct"),  # missing_input
            (13, 127, "weightlens_rule", -1, True, "tokens: Texas", None),
        ],
        columns=["layer", "feature", "variant", "cluster", "is_final", "description", "llm_model"],
    )
    scores = pd.DataFrame(
        [
            (3, 0, "maxact", "clarity", 0.75),
            (3, 0, "maxact", "purity", 0.5),
            (3, 0, "maxact", "faithfulness", None),
            (3, 0, "weightlens_rule", "weightlens_auroc", 0.875),
            (13, 127, "weightlens_rule", "weightlens_auroc", 0.625),
        ],
        columns=["layer", "feature", "variant", "metric", "value"],
    )
    return explanations, scores


#: (layer, feature, variant, description) of every final row with a description.
EXPORTED = {
    (3, 0, "maxact", 'the word "capital"'),
    (3, 0, "cl_full", "capitals, after 'of'"),
    (3, 0, "weightlens_rule", "tokens: capital, Capital"),
    (3, 17, "maxact", "née, café — accents"),
    (13, 127, "weightlens_rule", "tokens: Texas"),
}


def test_neuronpedia_export_has_its_fields_and_our_scores():
    explanations, scores = _ours()
    entries = neuronpedia_entries(explanations, target=EMBEDDED, scores=scores, score_model="j")
    assert len(entries) == len(EXPORTED)
    first = entries[0]
    assert list(first) == [
        "modelId",
        "layer",
        "index",
        "description",
        "typeName",
        "explanationModelName",
        "scores",
    ]
    by_key = {(e["layer"], e["index"], e["typeName"]): e for e in entries}
    maxact = by_key[("3-circuit-insights-transcoder-128", "0", "maxact")]
    assert maxact["modelId"] == "gemma-3-270m"
    assert maxact["explanationModelName"] == "SmolLM2-135M-Instruct"
    assert maxact["scores"] == [
        {"value": 0.75, "explanationScoreTypeName": "clarity", "explanationScoreModelName": "j"},
        {"value": 0.5, "explanationScoreTypeName": "purity", "explanationScoreModelName": "j"},
    ]
    rule = by_key[("13-circuit-insights-transcoder-128", "127", "weightlens_rule")]
    assert rule["explanationModelName"] is None
    assert rule["scores"][0]["value"] == 0.625
    assert "scores" not in neuronpedia_entries(explanations, target=EMBEDDED)[0]


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_export_then_import_gives_the_same_descriptions_and_ids(tmp_path, name):
    fmt = explanation_format(name)
    explanations, scores = _ours()
    path = tmp_path / ("export" if fmt.folder else "export.json")
    fmt.write(explanations, path, target=EMBEDDED, scores=scores)
    back = fmt.read(path, target=EMBEDDED)
    assert list(back.columns) == list(IMPORTED_COLUMNS)
    got = {(r.layer, r.feature, r.method, r.description) for r in back.itertuples()}
    assert got == EXPORTED
    assert len(back) == len(EXPORTED)
    assert set(back["source"]) == {name}
    if name == "delphi":
        sources = {"layers.3.mlp", "layers.13.mlp"}
    else:
        sources = {"3-circuit-insights-transcoder-128", "13-circuit-insights-transcoder-128"}
    assert set(back["source_id"]) == sources
    models = {(r.feature, r.method): r.explainer_model for r in back.itertuples()}
    assert models[(0, "maxact")] == "SmolLM2-135M-Instruct"
    assert models[(127, "weightlens_rule")] == ""


def test_delphi_export_layout_and_scores_read_back(tmp_path):
    explanations, scores = _ours()
    runs = write_delphi(explanations, tmp_path, target=EMBEDDED, scores=scores)
    assert [r.name for r in runs] == ["cl_full", "maxact", "weightlens_rule"]
    maxact = tmp_path / "maxact"
    latent = maxact / "explanations" / "layers.3.mlp_latent0.txt"
    assert latent.read_text(encoding="utf-8") == '"the word \\"capital\\""'
    assert (
        json.loads((maxact / "scores" / "clarity" / "layers.3.mlp_latent0.txt").read_text()) == 0.75
    )
    assert not (maxact / "scores" / "faithfulness").exists()  # no value, no file
    config = json.loads((maxact / "run_config.json").read_text())
    assert config["name"] == "maxact"
    assert config["explainer_model"] == "SmolLM2-135M-Instruct"
    assert config["hookpoints"] == ["layers.3.mlp"]
    assert config["scorers"] == ["clarity", "purity"]

    back = read_delphi_scores(tmp_path, target=EMBEDDED)
    got = {(r.layer, r.feature, r.method, r.scorer, r.score) for r in back.itertuples()}
    expected = {
        (int(r.layer), int(r.feature), r.variant, r.metric, r.value)
        for r in scores.dropna().itertuples()
    }
    assert got == expected


def test_exports_refuse_explanations_without_their_columns(tmp_path):
    explanations, _ = _ours()
    with pytest.raises(InputError, match=r"explanations lack the columns \['variant'\]"):
        write_neuronpedia(explanations.drop(columns="variant"), tmp_path / "x", target=EMBEDDED)
    with pytest.raises(InputError, match=r"scores lack the columns \['metric'\]"):
        write_delphi(
            explanations, tmp_path, target=EMBEDDED, scores=_ours()[1].drop(columns="metric")
        )
    with pytest.raises(InputError, match="unknown explanation format 'csv'"):
        explanation_format("csv")


# --- explanations: Neuronpedia's export in ---------------------------------------------------


def test_neuronpedia_export_is_read_into_the_tidy_frame():
    frame = read_neuronpedia(DATA / "neuronpedia_export.json", target=GEMMA)
    assert list(frame.columns) == list(IMPORTED_COLUMNS)
    assert frame[["layer", "feature"]].values.tolist() == [
        [18, 8],
        [18, 8],
        [18, 16383],
        [20, 7011],
    ]
    assert frame["description"].tolist()[:2] == [
        "capital cities of US states",
        "Austin, Sacramento, Albany",
    ]  # both explanations of (18, 8), in file order
    assert set(frame["source"]) == {"neuronpedia"}
    assert frame["source_id"].tolist()[-1] == "20-gemmascope-transcoder-16k"
    last = frame.iloc[-1]
    assert (last["explainer_model"], last["method"]) == ("", "")  # nulls in the file
    assert frame.iloc[1]["explainer_model"] == "claude-3-5-haiku-20241022"
    assert feature_url("gemma-2-2b", "20-gemmascope-transcoder-16k", 7011) == (
        "https://www.neuronpedia.org/gemma-2-2b/20-gemmascope-transcoder-16k/7011"
    )


def test_neuronpedia_dataset_batches_are_read_plain_gzipped_or_as_a_folder(tmp_path):
    plain = read_neuronpedia(DATA / "neuronpedia_batch-0.jsonl", target=GEMMA)
    assert plain[["layer", "feature"]].values.tolist() == [[20, 12], [20, 7011]]
    folder = tmp_path / "explanations"
    folder.mkdir()
    gz = folder / "batch-0.jsonl.gz"
    gz.write_bytes(gzip.compress((DATA / "neuronpedia_batch-0.jsonl").read_bytes()))
    pd.testing.assert_frame_equal(read_neuronpedia(gz, target=GEMMA), plain)
    pd.testing.assert_frame_equal(read_neuronpedia(folder, target=GEMMA), plain)


def _entry(**changes: object) -> list[dict]:
    entry = {
        "modelId": "gemma-2-2b",
        "layer": "18-gemmascope-transcoder-16k",
        "index": "8",
        "description": "x",
        "typeName": None,
        "explanationModelName": None,
    }
    return [entry, entry | changes]


@pytest.mark.parametrize(
    "changes, pieces",
    [
        ({"modelId": "gpt2-small"}, ["entry 1", "modelId 'gpt2-small'", "'gemma-2-2b'"]),
        ({"layer": "18-res-jb"}, ["entry 1", "'18-res-jb'", "source set 'res-jb'"]),
        ({"layer": "30-gemmascope-transcoder-16k"}, ["entry 1", "layer 30, not a configured"]),
        ({"layer": "18-gemmascope-transcoder-16k__x"}, ["entry 1", "source set"]),
        ({"layer": "e-res-sm"}, ["entry 1", "not a source id"]),
        ({"index": "16384"}, ["entry 1", "feature 16384 of layer 18", "width 16384"]),
        ({"index": "-1"}, ["entry 1", "index '-1' is not a feature index"]),
        ({"description": None}, ["entry 1", "description None is not a string"]),
    ],
)
def test_neuronpedia_bad_entries_are_refused_naming_them(tmp_path, changes, pieces):
    path = _write(tmp_path / "np.json", _entry(**changes))
    with pytest.raises(InputError) as error:
        read_neuronpedia(path, target=GEMMA)
    for piece in [str(path), *pieces]:
        assert piece in str(error.value)


def test_neuronpedia_files_that_are_not_exports_are_refused(tmp_path):
    bad = tmp_path / "bad.json"
    for content, message in [
        ("{", "not JSON"),
        ('{"a": 1}', "not a list"),
        ("[1]", "entry 0: not an explanation object"),
        ('[{"modelId": "gemma-2-2b"}]', "no layer, index, description"),
    ]:
        bad.write_text(content)
        with pytest.raises(InputError, match=message):
            read_neuronpedia(bad, target=GEMMA)
    with pytest.raises(InputError, match="no such file"):
        read_neuronpedia(tmp_path / "missing.json", target=GEMMA)


# --- explanations: delphi's files in ---------------------------------------------------------


def test_delphi_run_is_read_into_the_tidy_frame():
    frame = read_delphi(DATA / "delphi_run", target=GEMMA)
    assert list(frame.columns) == list(IMPORTED_COLUMNS)
    assert frame[["layer", "feature"]].values.tolist() == [[18, 8], [18, 16383]]
    assert frame["description"].tolist() == [
        "Names of US state capitals, especially Austin.",
        'The token "Texas" after "of".',
    ]
    assert set(frame["explainer_model"]) == {"hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4"}
    assert set(frame["source_id"]) == {"layers.18.mlp"}
    assert set(frame["method"]) == {"gemma-demo"}
    given = read_delphi(DATA / "delphi_run" / "explanations", target=GEMMA, explainer_model="m")
    assert set(given["explainer_model"]) == {"m"}


def test_delphi_classifier_scores_are_balanced_accuracy():
    scores = read_delphi_scores(DATA / "delphi_run", target=GEMMA)
    # rated samples: 2 activating (1 predicted), 1 not (not predicted); one without prediction
    assert scores[["layer", "feature", "scorer"]].values.tolist() == [[18, 8, "detection"]]
    assert scores["score"].iloc[0] == pytest.approx((1 / 2 + 1 / 1) / 2)


def test_delphi_module_table_follows_the_configured_template(tmp_path):
    run = tmp_path / "run" / "explanations"
    run.mkdir(parents=True)
    (run / "model.layers.3.mlp_latent5.txt").write_text('"x"')
    target = dataclasses.replace(EMBEDDED, delphi_module="model.layers.{layer}.mlp")
    frame = read_delphi(run.parent, target=target, explainer_model="m")
    assert frame[["layer", "feature", "source_id"]].values.tolist() == [
        [3, 5, "model.layers.3.mlp"]
    ]
    with pytest.raises(InputError, match=r"module 'model.layers.3.mlp' is not a configured"):
        read_delphi(run.parent, target=EMBEDDED, explainer_model="m")


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("layers.3.mlp_latent5.json.txt", '"x"', "not named <module>_latent<index>.txt"),
        ("layers.4.mlp_latent5.txt", '"x"', "module 'layers.4.mlp' is not a configured"),
        ("layers.3.mlp_latent128.txt", '"x"', "feature 128 of layer 3"),
        ("layers.3.mlp_latent5.txt", '["x"]', "not a JSON string"),
        ("layers.3.mlp_latent5.txt", "x", "not JSON"),
    ],
)
def test_delphi_bad_files_are_refused_naming_them(tmp_path, name, content, message):
    folder = tmp_path / "explanations"
    folder.mkdir()
    (folder / name).write_text(content)
    with pytest.raises(InputError) as error:
        read_delphi(tmp_path, target=EMBEDDED, explainer_model="m")
    assert name in str(error.value) and message in str(error.value)


def test_delphi_run_without_explainer_model_or_scores_is_refused(tmp_path):
    folder = tmp_path / "explanations"
    folder.mkdir()
    (folder / "layers.3.mlp_latent5.txt").write_text('"x"')
    with pytest.raises(InputError, match="explainer model is unknown"):
        read_delphi(tmp_path, target=EMBEDDED)
    with pytest.raises(InputError, match="no scores folder"):
        read_delphi_scores(tmp_path, target=EMBEDDED)
    (tmp_path / "scores" / "fuzz").mkdir(parents=True)
    (tmp_path / "scores" / "fuzz" / "layers.3.mlp_latent5.txt").write_text('{"a": 1}')
    with pytest.raises(InputError, match="neither a number nor a list of classifier samples"):
        read_delphi_scores(tmp_path, target=EMBEDDED)
    with pytest.raises(InputError, match="no such folder"):
        read_delphi(tmp_path / "missing", target=EMBEDDED)
