"""The report's graph page (issue 22): a model's attribution graph, its features by layer with
their labels (imported ones marked with their source) and links to their pages."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from circuit_insights.data.schemas import EXPLANATIONS_SCHEMA, WEIGHTLENS_SCHEMA
from circuit_insights.explain.facts import FeatureInputs, ImportedText
from circuit_insights.explain.run import explain_shard
from circuit_insights.explain.variants import TABLE, imported_variant, with_imports
from circuit_insights.interop.graph import read_graph
from circuit_insights.interop.graph_example import write_example_graph
from circuit_insights.interop.target import TranscoderSet
from circuit_insights.pipeline.stages.report import report_inputs
from circuit_insights.report.html import build_report
from circuit_insights.report.inputs import ModelFrames
from tests.test_summary import schema_frame, weightlens_row

MODEL = "gemma-3-270m"
TARGET = TranscoderSet(
    model=MODEL, source_set="circuit-insights-transcoder-64", layers=(3, 8), width=64
)


def _frames(tmp_path: Path) -> ModelFrames:
    graph = tmp_path / "cats.json"
    write_example_graph(
        graph,
        target=TARGET,
        features={3: [1, 2, 40], 8: [5]},
        prompt_tokens=["<bos>", "The", " cat", " sat"],
    )
    ours = TABLE.llm_names[0]
    rows = [
        {"layer": 3, "feature": 1, "variant": ours, "cluster": -1, "is_final": True,
         "step": "describe", "description": "cats, by our LLM", "llm_model": "smollm2"},
        {"layer": 3, "feature": 2, "variant": ours, "cluster": -1, "is_final": True,
         "step": "missing_input", "description": None, "parse_status": "missing_input"},
    ]  # fmt: skip
    variant = imported_variant("np", source="neuronpedia", path="np/export.json")
    text = ImportedText(description="felines, by them", source="neuronpedia", explainer_model="gpt")
    imported = explain_shard(
        None,
        {2: FeatureInputs(layer=3, feature=2, imported=(("np", text),))},
        ["np"],
        table=with_imports([variant]),
    )
    explanations = schema_frame(EXPLANATIONS_SCHEMA, rows)
    explanations = pd.concat([explanations, imported], ignore_index=True)
    weightlens = [weightlens_row(layer, f, validated=[11]) for layer in (3, 8) for f in range(64)]
    return ModelFrames(
        model=MODEL,
        weightlens=schema_frame(WEIGHTLENS_SCHEMA, weightlens),
        explanations=explanations,
        graph=read_graph(graph),
        graph_source=str(graph),
        label_variants=(ours, "np"),
    )


def test_the_graph_page_lists_its_features_with_labels_and_links(tmp_path):
    index = build_report([_frames(tmp_path)], tmp_path / "report", max_features=2, n_boot=10)
    page = tmp_path / "report" / MODEL / "graph.html"
    html = page.read_text(encoding="utf-8")
    assert 'href="gemma-3-270m/graph.html"' in index.read_text(encoding="utf-8")
    assert "4 features, 2 labelled" in html
    assert [int(n) for n in re.findall(r'<h2 id="layer(\d+)"', html)] == [3, 8]
    rows = re.findall(r'<tr id="l(\d+)f(\d+)">(.*?)</tr>', html, re.S)
    assert [(int(a), int(b)) for a, b, _ in rows] == [(3, 1), (3, 2), (3, 40), (8, 5)]
    cells = {(int(a), int(b)): body for a, b, body in rows}
    assert "cats, by our LLM" in cells[(3, 1)] and "(imported" not in cells[(3, 1)]
    assert "felines, by them" in cells[(3, 2)]
    assert "(imported: neuronpedia: np/export.json, by gpt)" in cells[(3, 2)]
    assert "no description by a label variant" in cells[(3, 40)]
    # every graph feature has a page, though max_features is 2 per layer
    for layer, feature in cells:
        link = f'href="layer{layer}/feature{feature:06d}.html"'
        assert link in cells[(layer, feature)]
        assert (
            tmp_path / "report" / MODEL / f"layer{layer}" / f"feature{feature:06d}.html"
        ).is_file()


def test_the_report_stage_declares_imported_rows_for_every_layer(tmp_path):
    results = str(tmp_path)
    tables = [
        f"{results}/{MODEL}/layer3/explanations/f000000-000064.parquet",
        f"{results}/{MODEL}/layer8/weightlens/f000000-000064.parquet",
        f"{results}/{MODEL}/imported/np.parquet",
    ]
    (inputs,) = report_inputs(
        results, tables, graphs={MODEL: "g.json"}, label_variants={MODEL: ["np"]}
    )
    assert inputs.tables["explanations"] == {
        3: [tables[0], tables[2]],
        8: [tables[2]],
    }
    assert inputs.graph == "g.json" and inputs.label_variants == ("np",)
