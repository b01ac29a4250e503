"""Tests of the HTML report (circuit_insights.report.html, inputs, views, render): a static report
from fixture parquet files in the real schemas, read as the report rule declares them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pyarrow as pa
import pytest

from circuit_insights.core.errors import InputError
from circuit_insights.core.io import write_parquet_atomic
from circuit_insights.data.schemas import (
    ATTRIBUTION_CONTRIBUTIONS_SCHEMA,
    CLUSTERS_SCHEMA,
    CORPUS_TOKENS_SCHEMA,
    EXPLANATIONS_SCHEMA,
    FADE_EVALUATION_SCHEMA,
    SAMPLES_SCHEMA,
    WEIGHTLENS_SCHEMA,
    WEIGHTLENS_TWERA_SCHEMA,
)
from circuit_insights.pipeline.stages.report import report_inputs
from circuit_insights.report.html import build_report, choose_features
from circuit_insights.report.inputs import ModelFrames, ModelInputs, load_model_frames
from circuit_insights.report.paper import llm_written
from circuit_insights.report.views import descriptions_page_path, feature_page_path
from tests.test_summary import PNG_MAGIC, evaluation_row, schema_frame, weightlens_row

MODEL = "gemma-tiny"
SHARD = "f000000-000004"
EVIL = "<script>alert('x')</script> & more"
CHROMIUM = Path("/usr/bin/chromium")

# (layer, feature) with a page: union of the tables below.
FEATURES = {(0, 2), (1, 0), (1, 1), (1, 2), (1, 3)}


def _write(root: Path, layer: int, stage: str, frame, schema: pa.Schema) -> None:
    path = root / MODEL / f"layer{layer}" / stage / f"{SHARD}.parquet"
    write_parquet_atomic(frame, path, schema=schema)


def write_fixture_run(root: Path) -> None:
    """A small run of one model: corpus, two layers, every stage's table, in the real schemas."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(20, 40, size=(6, 12)).astype(np.int32)
    tokens[:, 0] = 2  # BOS
    tokens[0, 5] = 11  # the target of sample 0 is a validated token
    corpus = schema_frame(
        CORPUS_TOKENS_SCHEMA,
        [
            {
                "context": c,
                "split": "cache" if c < 4 else "eval",
                "document": c,
                "token_ids": tokens[c].tolist(),
            }
            for c in range(6)
        ],
    )
    write_parquet_atomic(corpus, root / MODEL / "corpus" / "tokens.parquet", CORPUS_TOKENS_SCHEMA)

    _write(
        root,
        0,
        "weightlens",
        schema_frame(WEIGHTLENS_SCHEMA, [weightlens_row(0, 2, validated=[13], token_based=True)]),
        WEIGHTLENS_SCHEMA,
    )
    upstream = {
        "n_upstream_total": 1,
        "upstream_layers": [0],
        "upstream_features": [2],
        "upstream_contributions": [0.5],
        "upstream_z": [3.5],
        "upstream_relative_contributions": [0.12],
        "upstream_has_result": [True],
        "upstream_inherited_token_ids": [[13]],
        "promoted_token_ids": [30, 31],
        "promoted_tokens": ["<30>", "<31>"],
        "promoted_z": [6.0, 5.0],
        "n_promoted_total": 2,
        "suppressed_token_ids": [32],
        "suppressed_tokens": ["<32>"],
        "suppressed_z": [-5.5],
        "n_suppressed_total": 1,
    }
    weightlens = [
        weightlens_row(1, 0, validated=[11, 12], token_based=True, description=EVIL, **upstream),
        weightlens_row(
            1, 1, validated=[], auroc=None, precision=None, reason="no validated tokens"
        ),
        weightlens_row(1, 3, validated=[14]),
    ]
    _write(root, 1, "weightlens", schema_frame(WEIGHTLENS_SCHEMA, weightlens), WEIGHTLENS_SCHEMA)
    twera = [  # feature 1#0: L0#2 (also WeightLens's weight-only upstream) and L0#5 (not)
        {
            "target_layer": 1,
            "target_feature": 0,
            "rank": rank,
            "source_layer": 0,
            "source_feature": source,
            "coactivation": 0.4,
            "virtual_weight": value / 0.4,
            "twera": value,
            "n_coactive": 7,
        }
        for rank, (source, value) in enumerate([(5, -0.9), (2, 0.25)])
    ]
    _write(root, 1, "twera", schema_frame(WEIGHTLENS_TWERA_SCHEMA, twera), WEIGHTLENS_TWERA_SCHEMA)

    samples = [
        {
            "feature": 0,
            "kind": "quantile",
            "rank": r,
            "context": c,
            "target_position": t,
            "activation": a,
            "bin": 0,
            "weight": 1.0,
        }
        for r, (c, t, a) in enumerate([(0, 5, 2.5), (1, 6, 1.5), (2, 7, 0.5)])
    ]
    samples += [
        {
            "feature": 0,
            "kind": "top",
            "rank": 0,
            "context": 0,
            "target_position": 5,
            "activation": 2.5,
            "bin": -1,
        },
        {
            "feature": 1,
            "kind": "quantile",
            "rank": 0,
            "context": 3,
            "target_position": 4,
            "activation": 0.7,
            "bin": 0,
            "weight": 1.0,
        },
    ]
    _write(root, 1, "samples", schema_frame(SAMPLES_SCHEMA, samples), SAMPLES_SCHEMA)

    cluster = {
        "layer": 1,
        "feature": 0,
        "status": "clustered",
        "method": "hdbscan",
        "n_clusters": 1,
        "n_feature_samples": 3,
        "n_elements": 3,
    }
    clusters = [
        dict(
            cluster,
            cluster=0,
            n_samples=2,
            share=2 / 3,
            defining_labels=["L0.H1@-2", "L0#2", "tok11@0"],
            defining_kinds=["head", "feature", "token"],
            defining_layers=[0, 0, None],
            defining_indices=[1, 2, 11],
            defining_deltas=[-2, None, 0],
            defining_frequency=[1.0, 1.0, 0.5],
            defining_lift=[1.5, 1.5, 1.5],
            trigger_patterns=[
                'tokens "<25>" at offset -2 via head L0.H1 (in 2 of 2 samples)',
                "upstream feature L0#2 active (in 2 of 2 samples)",
                'token "<11>" at offset 0 (its embedding; in 1 of 2 samples)',
            ],
            output_promoted_token_ids=[30],
            output_promoted_tokens=["<30>"],
            output_promoted_counts=[2],
            output_next_token_ids=[33],
            output_next_tokens=["<33>"],
            output_next_counts=[1],
            output_n_logit_samples=2,
            output_mean_logit=0.25,
            mean_activation=2.0,
            example_samples=[0, 1],
        ),
        dict(cluster, cluster=-1, is_noise=True, n_samples=1, share=1 / 3, example_samples=[2, 9]),
    ]
    _write(root, 1, "clusters", schema_frame(CLUSTERS_SCHEMA, clusters), CLUSTERS_SCHEMA)

    contributions = [
        {
            "feature": 0,
            "sample": 0,
            "kind": "head",
            "partition": "mediator",
            "layer": 0,
            "head": 1,
            "position": 3,
            "delta": -2,
            "token": int(tokens[0, 3]),
            "value": 1.0,
            "share": 0.5,
        },
        {
            "feature": 0,
            "sample": 0,
            "kind": "feature",
            "partition": "leaf",
            "layer": 0,
            "source_feature": 2,
            "position": 4,
            "delta": -1,
            "token": int(tokens[0, 4]),
            "value": 0.8,
            "share": 0.3,
        },
        {
            "feature": 0,
            "sample": 0,
            "kind": "feature",
            "partition": "leaf",
            "layer": 0,
            "source_feature": 9,
            "position": 1,
            "delta": -4,
            "token": int(tokens[0, 1]),
            "value": 0.1,
            "share": 0.1,
        },
    ]
    _write(
        root,
        1,
        "contributions",
        schema_frame(ATTRIBUTION_CONTRIBUTIONS_SCHEMA, contributions),
        ATTRIBUTION_CONTRIBUTIONS_SCHEMA,
    )

    def explanation(
        feature, variant, description, cluster=-1, step="describe", status="ok", error=None
    ):
        return {
            "layer": 1,
            "feature": feature,
            "variant": variant,
            "cluster": cluster,
            "is_final": cluster == -1,
            "step": step,
            "n_clusters": 1,
            "description": description,
            "prompt_version": "explain_v2",
            "llm_model": "fixture",
            "parse_status": status,
            "error": error,
        }

    explanations = [
        explanation(0, "maxact", "<b>bold</b> claims about Paris"),
        explanation(0, "weightlens_rule", EVIL, step="rule"),
        explanation(0, "cl_full", "cluster zero: after a comma", cluster=0),
        explanation(0, "cl_full", "fires after commas near Paris", step="copy"),
        explanation(1, "maxact", None, status="unparseable", error="no JSON object"),
        explanation(
            1, "cl_full", None, step="missing_input", status="missing_input", error="no clusters"
        ),
    ]
    _write(
        root,
        1,
        "explanations",
        schema_frame(EXPLANATIONS_SCHEMA, explanations),
        EXPLANATIONS_SCHEMA,
    )

    evaluation = [
        evaluation_row(
            1,
            0,
            "maxact",
            "<b>bold</b> claims about Paris",
            clarity=0.8,
            responsiveness=0.9,
            purity=0.7,
            faithfulness=0.4,
        ),
        evaluation_row(
            1,
            0,
            "cl_full",
            "fires after commas near Paris",
            clarity=0.61,
            responsiveness=(None, "no_rated_2"),
            purity=(None, "no_rated_2"),
        ),
        evaluation_row(
            1,
            1,
            "maxact",
            None,
            clarity=(None, "no_description"),
            responsiveness=(None, "no_description"),
            purity=(None, "no_description"),
            faithfulness=(None, "no_description"),
        ),
        evaluation_row(1, 2, "maxact", "a feature only evaluated", clarity=0.4),
    ]
    _write(
        root,
        1,
        "evaluation",
        schema_frame(FADE_EVALUATION_SCHEMA, evaluation),
        FADE_EVALUATION_SCHEMA,
    )


def declared(results: Path, files: list[Path] | None = None) -> list[ModelInputs]:
    """The report rule's inputs of a fixture run: every table under ``results/MODEL/layer*/``
    (or ``files``) and the corpus, as the report stage groups them."""
    if files is None:
        files = sorted(results.glob("*/layer*/**/*.parquet"))
    return report_inputs(str(results), [str(path) for path in files])


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("run")
    write_fixture_run(root / "results")
    return build_report(declared(root / "results"), root / "report", n_boot=50)


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        for name in ("href", "src"):
            if attrs.get(name):
                self.links.append(attrs[name])


def _parse(path: Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def _page(report: Path, layer: int, feature: int) -> Path:
    return report.parent / feature_page_path(MODEL, layer, feature)


# --- loading -------------------------------------------------------------------------------------


def test_declared_tables_are_loaded(tmp_path):
    write_fixture_run(tmp_path / "results")
    (tmp_path / "results" / "logs").mkdir()
    [inputs] = declared(tmp_path / "results")
    assert inputs.model == MODEL and set(inputs.tables["evaluation"]) == {1}
    corpus = tmp_path / "results" / MODEL / "corpus" / "tokens.parquet"
    with pytest.raises(InputError, match="not a table the report reads"):
        report_inputs(str(tmp_path / "results"), [str(corpus)])
    with pytest.raises(InputError, match="unknown report tables"):
        ModelInputs(MODEL, {"fade": {}})
    frames = load_model_frames(inputs)
    assert set(frames.samples["layer"]) == {1}
    assert set(frames.contributions["feature_layer"]) == {1}
    assert frames.tokens.shape == (6, 12) and len(frames.context_ids) == 6
    frames = load_model_frames(inputs, tables=["evaluation"])
    assert len(frames.evaluation) == 4 and frames.weightlens is None
    only = load_model_frames(inputs, features={1: [1]})
    assert set(only.weightlens["feature"]) == {1} and only.clusters.empty  # stage ran


# --- pages ---------------------------------------------------------------------------------------


def test_every_feature_has_a_page_and_links_resolve(report):
    root = report.parent
    assert report == root / "index.html"
    for layer, feature in FEATURES:
        assert _page(report, layer, feature).is_file(), (layer, feature)
    pages = sorted(root.rglob("*.html"))
    assert len([p for p in pages if p.name.startswith("feature")]) == len(FEATURES)
    index_links = set(_parse(report).links)
    for layer, feature in FEATURES:
        assert feature_page_path(MODEL, layer, feature) in index_links
    for page in pages:
        parser = _parse(page)
        for link in parser.links:
            parsed = urlparse(link)
            assert not parsed.scheme and not parsed.netloc, f"{page}: external link {link}"
            if not parsed.path:
                continue  # same-page anchor
            target = (page.parent / unquote(parsed.path)).resolve()
            assert target.is_file(), f"{page}: broken link {link}"
        # no external assets: inline CSS only, no scripts, no stylesheet links
        assert not [t for t, a in parser.tags if t in ("script", "link", "iframe")]
    images = [link for link in _parse(report).links if link.endswith(".png")]
    assert len(images) == 6  # one plot per metric
    for link in images:
        assert (root / link).read_bytes()[:8] == PNG_MAGIC
    leftovers = [p for p in root.rglob("*") if p.name.endswith(".partial")]
    assert not leftovers


def test_text_is_escaped(report):
    for page in report.parent.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        assert "<script>" not in text and "<b>bold" not in text, page
    page = _page(report, 1, 0).read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; more" in page
    assert "&lt;b&gt;bold&lt;/b&gt; claims about Paris" in page
    assert "&lt;11&gt;" in page  # token display strings "<id>" escaped
    assert "&lt;script&gt;" in report.read_text(encoding="utf-8")  # index description column


def test_feature_page_content(report):
    page = _page(report, 1, 0).read_text(encoding="utf-8")
    # WeightLens: validated tokens with activations, promoted / suppressed, upstream link
    assert "Validated input tokens (2)" in page
    assert 'href="../layer0/feature000002.html"' in page
    assert "&lt;30&gt;" in page and "&lt;32&gt;" in page
    # descriptions of every variant of the model, cluster description, scores with reasons
    for text in ("fires after commas near Paris", "cluster zero: after a comma", "0.80", "0.61"):
        assert text in page
    assert "no_rated_2" in page  # a missing score shows its reason
    assert "gated" in page
    # clusters: trigger tokens highlighted at the positions of the sample's contributions
    assert 'id="cluster0"' in page and 'id="cluster-1"' in page
    triggers = re.findall(
        r'<span class="([^"]*)" title="position (\d+)[^"]*trigger: ([^"]*)"', page
    )
    sample0 = {(int(p), labels) for classes, p, labels in triggers if "trg" in classes}
    assert (3, "L0.H1@-2") in sample0 and (4, "L0#2") in sample0
    assert not any(p == 1 for p, _ in sample0)  # L0#9 is not a defining contributor
    targets = re.findall(r'<span class="([^"]*\btgt\b[^"]*)" title="position (\d+)', page)
    assert {int(p) for _, p in targets} >= {5, 6, 7}
    assert any("val" in classes for classes, p in targets if p == "5")  # validated target token
    assert "sample not in the samples table" in page  # example sample 9 has no sample row
    assert "Top activating contexts" in page and "top 1" in page


def test_feature_page_shows_the_twera_ranking_beside_the_weight_only_one(report):
    page = _page(report, 1, 0).read_text(encoding="utf-8")
    assert "Upstream features by co-activation (TWERA, 2)" in page
    section = page.split("by co-activation")[1].split('<h2 id="output">')[0]
    rows = re.findall(r"<tr><td>(.*?)</td>.*?<td>(yes|no)</td>", section, re.S)
    assert [(re.sub(r"<[^>]+>", "", label), mark) for label, mark in rows] == [
        ("L0#5", "no"),  # largest |TWERA| first; not kept by the weight-only ranking
        ("L0#2", "yes"),
    ]
    assert 'href="../layer0/feature000002.html"' in section
    assert "&lt;13&gt;" in section  # L0#2's validated token
    other = _page(report, 1, 1).read_text(encoding="utf-8")
    assert "No earlier-layer feature co-activates" in other


def test_missing_pieces_are_shown(report):
    page = _page(report, 1, 1).read_text(encoding="utf-8")
    assert "No clusters for this feature" in page
    assert "no description" in page and "unparseable" in page and "missing_input" in page
    assert "no_description" in page
    page = _page(report, 1, 2).read_text(encoding="utf-8")
    assert "No WeightLens result for this feature" in page
    assert "no_weightlens_result" in page and "a feature only evaluated" in page
    assert "No samples for this feature" in page
    page = _page(report, 0, 2).read_text(encoding="utf-8")
    assert "not evaluated" in page or "No scores" in page


def test_index_content(report):
    index = report.read_text(encoding="utf-8")
    assert MODEL in index and "Layer 0" in index and "Layer 1" in index
    assert "Gemma-2-2B: 32.7%" in index  # token-based shares next to the paper's
    assert "metric-table" in index and "weightlens_auroc" in index
    assert "token_based" in index and "context_dependent" in index


def test_max_features_and_frames_in_memory(tmp_path):
    write_fixture_run(tmp_path / "results")
    index = build_report(
        declared(tmp_path / "results"), tmp_path / "small", max_features=1, n_boot=20
    )
    pages = sorted(p.name for p in (tmp_path / "small").rglob("feature*.html"))
    assert pages == ["feature000000.html", "feature000002.html"]  # L1#0 and L0#2
    assert "3 more features left out" in index.read_text(encoding="utf-8")
    # explicit frames: WeightLens only, no corpus, a tokenizer-free display
    frames = ModelFrames(
        model="only wl/model",
        weightlens=schema_frame(WEIGHTLENS_SCHEMA, [weightlens_row(4, 7, validated=[5])]),
    )
    index = build_report([frames], tmp_path / "mem", n_boot=20)
    page = tmp_path / "mem" / feature_page_path("only-wl-model", 4, 7)
    assert page.is_file()
    text = page.read_text(encoding="utf-8")
    assert "No clustering results for this model" in text and "No samples" in text
    assert 'href="only-wl-model/layer4/feature000007.html"' in index.read_text(encoding="utf-8")


# --- headless browser ----------------------------------------------------------------------------


def _chromium(args: list[str], user_data: Path) -> subprocess.CompletedProcess[str]:
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={user_data}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)


@pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="/usr/bin/chromium is absent (Debian package `chromium`); the browser check needs it",
)
def test_report_renders_in_headless_chromium(report, tmp_path):
    shots = tmp_path / "screenshots"
    shots.mkdir()
    pages = {"index": report, "feature": _page(report, 1, 0)}
    for name, page in pages.items():
        png = shots / f"{name}.png"
        result = _chromium(
            [f"--screenshot={png}", "--window-size=1200,1600", page.resolve().as_uri()],
            tmp_path / f"profile-{name}-shot",
        )
        assert png.is_file(), result.stderr[-2000:]
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000
        dom = _chromium(["--dump-dom", page.resolve().as_uri()], tmp_path / f"profile-{name}-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        assert "</html>" in dom.stdout
        if name == "index":
            assert MODEL in dom.stdout and "weightlens_auroc" in dom.stdout
            assert "0.80" in dom.stdout  # maxact clarity of L1#0 in the feature table
        else:
            assert "Feature 0" in dom.stdout  # the title
            assert "fires after commas near Paris" in dom.stdout  # a description
            assert "0.80" in dom.stdout and "no_rated_2" in dom.stdout  # a score and a reason
            assert "&lt;script&gt;" in dom.stdout  # shown as text, never run
    kept = os.environ.get("REPORT_SCREENSHOT_DIR")  # to look at them
    if kept:
        Path(kept).mkdir(parents=True, exist_ok=True)
        for png in shots.glob("*.png"):
            shutil.copy(png, Path(kept) / png.name)


def test_feature_pages_go_to_explained_features_first():
    keys = {3: set(range(10)), 8: {1, 2}}
    chosen, hidden = choose_features(keys, 3, first={3: {7, 9}, 8: {5}})
    assert chosen == {3: [0, 7, 9], 8: [1, 2]}  # explained ones kept, the rest by lowest id
    assert hidden == {3: 7, 8: 0}
    chosen, hidden = choose_features(keys, None, first={3: {7}})
    assert chosen[3] == list(range(10)) and hidden[3] == 0


def test_only_llm_written_explanations_give_a_page_priority():
    import pandas as pd

    rows = pd.DataFrame({"feature": [1, 2, 3], "variant": ["weightlens_rule", "cl_full", "maxact"]})
    assert llm_written(rows)["feature"].tolist() == [2, 3]
    assert llm_written(None) is None


def _cells(page: Path) -> dict[int, list[str]]:
    """feature -> the text of its row's cells (variant columns), from a descriptions page."""
    html = page.read_text(encoding="utf-8")
    rows = re.findall(r'<tr id="f(\d+)">(.*?)</tr>', html, flags=re.S)
    return {
        int(f): [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", body)][1:]
        for f, body in rows
    }


def test_every_explained_feature_and_variant_is_on_the_layer_page(report):
    root = report.parent
    page = root / descriptions_page_path(MODEL, 1)
    assert page.is_file() and not (root / descriptions_page_path(MODEL, 0)).exists()
    assert descriptions_page_path(MODEL, 1) in _parse(report).links
    header = re.findall(r'<th><span class="variant">([^<]+)</span></th>', page.read_text("utf-8"))
    assert header == ["maxact", "weightlens_rule", "cl_full"]  # the paper's order
    cells = _cells(page)
    assert sorted(cells) == [0, 1]  # the features with explanation rows, nothing else
    assert cells[0][0] == "&lt;b&gt;bold&lt;/b&gt; claims about Paris"  # escaped
    assert cells[0][2] == "fires after commas near Paris"  # the final row, not the cluster's
    assert cells[1][0].startswith("describe, unparseable, no JSON object")
    assert cells[1][1] == "no explanation row for this feature"
    assert cells[1][2] == "missing_input, missing_input, no clusters"
    assert "maxact</span> 1," in page.read_text("utf-8")  # described counts per variant


def test_descriptions_page_lists_features_without_a_page(tmp_path):
    write_fixture_run(tmp_path / "results")
    build_report(declared(tmp_path / "results"), tmp_path / "small", max_features=1, n_boot=20)
    page = tmp_path / "small" / descriptions_page_path(MODEL, 1)
    html = page.read_text(encoding="utf-8")
    assert sorted(_cells(page)) == [0, 1]
    assert 'href="feature000000.html"' in html and 'href="feature000001.html"' not in html


# --- what the numbers are worth, rendered --------------------------------------------------------


def _worth_frames() -> ModelFrames:
    """A model whose cells rest on one feature (n=1), with a placeholder description written by
    the embedded 135M explainer, clusters on one layer, and eight layers of scores (a grid wider
    than the page)."""
    layers = list(range(8))
    evaluation = [
        evaluation_row(
            layer,
            0,
            "maxact",
            "feature_fire(s)" if layer == 0 else f"words about topic {layer}",
            clarity=0.78,
            responsiveness=0.5,
            purity=0.6,
            faithfulness=(None, "gated"),
        )
        for layer in layers
    ]
    for frame_row in evaluation:
        frame_row["llm_model"] = "smollm2"
    weightlens = [weightlens_row(layer, f, validated=[11]) for layer in layers for f in (0, 1)]
    explanations = [
        {
            "layer": layer,
            "feature": 0,
            "variant": "maxact",
            "cluster": -1,
            "is_final": True,
            "step": "describe",
            "n_clusters": 0,
            "description": "feature_fire(s)" if layer == 0 else f"words about topic {layer}",
            "prompt_version": "explain_v2",
            "llm_model": "smollm2",
            "parse_status": "ok",
        }
        for layer in layers
    ]
    # a runaway answer: one unbroken 600-character word (it must not widen the page)
    explanations.append(dict(explanations[1], variant="cl_full", description="=" * 600))
    clusters = [
        {"layer": 0, "feature": 0, "cluster": 0, "status": "clustered", "n_clusters": 1,
         "n_samples": 3, "n_feature_samples": 4, "share": 0.75, "method": "hdbscan"},
        {"layer": 0, "feature": 0, "cluster": -1, "is_noise": True, "status": "clustered",
         "n_clusters": 1, "n_samples": 1, "n_feature_samples": 4, "share": 0.25,
         "method": "hdbscan"},
    ]  # fmt: skip
    return ModelFrames(
        model=MODEL,
        weightlens=schema_frame(WEIGHTLENS_SCHEMA, weightlens),
        evaluation=schema_frame(FADE_EVALUATION_SCHEMA, evaluation),
        explanations=schema_frame(EXPLANATIONS_SCHEMA, explanations),
        clusters=schema_frame(CLUSTERS_SCHEMA, clusters),
    )


@pytest.fixture(scope="module")
def worth_report(tmp_path_factory) -> Path:
    return build_report([_worth_frames()], tmp_path_factory.mktemp("worth"), n_boot=50)


def test_cells_of_one_feature_show_n_and_no_ci(worth_report):
    index = worth_report.read_text(encoding="utf-8")
    grid = index[index.index("metric-table") : index.index("</table>", index.index("metric-table"))]
    assert grid.count("n=1") >= 8 * 3  # every scored cell (8 layers x 3 metrics) names its n
    assert "[0.78, 0.78]" not in grid and "0.78" in grid  # the mean without a collapsed CI
    assert "no CI" in grid


def test_placeholder_descriptions_are_flagged_never_ok(worth_report):
    page = (worth_report.parent / feature_page_path(MODEL, 0, 0)).read_text(encoding="utf-8")
    assert "feature_fire(s)" in page and "flags: placeholder" in page
    assert '<span class="flag" title="quality flag">placeholder</span>' in page
    assert ", ok" not in page and ">ok<" not in page
    clean = (worth_report.parent / feature_page_path(MODEL, 3, 0)).read_text(encoding="utf-8")
    assert "no quality flag raised" in clean
    layer0 = (worth_report.parent / descriptions_page_path(MODEL, 0)).read_text(encoding="utf-8")
    assert "placeholder" in layer0


def test_index_names_the_llm_and_explains_the_scores(worth_report):
    index = worth_report.read_text(encoding="utf-8")
    assert "Explainer (LLM-written descriptions): <code>smollm2</code>" in index
    assert "Rater (FADE): <code>smollm2</code>" in index
    assert 'class="warning"' in index and "embedded SmolLM2-135M" in index
    assert "WeightLens AUROC and precision." in index  # next to the score grid
    assert "Cluster coverage" in index and "coverage-table" in index
    assert "50.0%" in index  # 1 of the 2 features of layer 0 was clustered
    assert "paper (share token-based)" in index


def test_no_llm_warning_for_a_capable_model(tmp_path):
    frames = _worth_frames()
    for table in (frames.evaluation, frames.explanations):
        table["llm_model"] = "Qwen2.5-7B-Instruct"
    index = build_report([frames], tmp_path, n_boot=20).read_text(encoding="utf-8")
    assert "<code>Qwen2.5-7B-Instruct</code>" in index and 'class="warning"' not in index


#: Run in the page: every table of <main> must end inside <main>, or scroll inside a box that
#: does (itself or an ancestor with overflow-x); the page itself must not scroll sideways. The result goes into <body data-layout>.
_LAYOUT_CHECK = """<script>
window.addEventListener('load', () => {
  const main = document.querySelector('main').getBoundingClientRect();
  const tables = [...document.querySelectorAll('main table')];
  const box = t => {  // the table's scrolling box: itself or an ancestor with overflow-x
    for (let e = t; e && e.tagName !== 'MAIN'; e = e.parentElement) {
      if (['auto', 'scroll'].includes(getComputedStyle(e).overflowX)) return e;
    }
    return t;
  };
  const out = tables.filter(t => box(t).getBoundingClientRect().right > main.right + 1)
    .map(t => t.className || t.parentElement.className);
  const scrolling = tables.filter(t => box(t).scrollWidth > box(t).clientWidth + 1)
    .map(t => t.className);
  document.body.setAttribute('data-layout', JSON.stringify({
    tables: tables.length, outside: out, scrolling: scrolling,
    page_scrolls: document.documentElement.scrollWidth > window.innerWidth + 1}));
});
</script>"""


@pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="/usr/bin/chromium is absent (Debian package `chromium`); the browser check needs it",
)
def test_worth_report_in_headless_chromium_at_1400px(worth_report, tmp_path):
    import html as html_lib
    import json

    pages = {
        "index": worth_report,
        "feature": worth_report.parent / feature_page_path(MODEL, 0, 0),
        "runaway feature": worth_report.parent / feature_page_path(MODEL, 1, 0),
        "descriptions": worth_report.parent / descriptions_page_path(MODEL, 1),
    }
    for name, page in pages.items():
        probe = page.with_name(f"probe-{page.name}")
        probe.write_text(
            page.read_text(encoding="utf-8").replace("</body>", _LAYOUT_CHECK + "</body>"),
            encoding="utf-8",
        )
        dom = _chromium(
            ["--window-size=1400,1000", "--virtual-time-budget=5000", "--dump-dom",
             probe.resolve().as_uri()],
            tmp_path / f"profile-{name.replace(' ', '-')}",
        )  # fmt: skip
        assert dom.returncode == 0, dom.stderr[-2000:]
        found = re.search(r'data-layout="([^"]*)"', dom.stdout)
        assert found, f"{name}: the layout check did not run"
        layout = json.loads(html_lib.unescape(found.group(1)))
        assert layout["tables"] > 0
        assert layout["outside"] == [], f"{name}: tables reach outside their box: {layout}"
        assert not layout["page_scrolls"], f"{name}: the page scrolls sideways"
        if name == "index":
            # the eight-layer grid is wider than the page: it scrolls inside its box
            assert any("metric-table" in c for c in layout["scrolling"]), layout
            assert "no CI" in dom.stdout and "n=1" in dom.stdout
            assert "embedded SmolLM2-135M" in dom.stdout
        if name == "feature":
            assert "placeholder" in dom.stdout and "feature_fire(s)" in dom.stdout


def test_index_shows_the_rule_comparison_and_the_claims(tmp_path):
    root = tmp_path / "results"
    write_fixture_run(root)
    rows = []
    for feature, gain in ((0, 0.2), (1, 0.1), (3, 0.3)):
        for variant, clarity in (("maxact_rule", 0.5), ("weightlens_rule", 0.5 + gain)):
            row = evaluation_row(1, feature, variant, clarity=clarity)
            row["rater"] = "rule"
            rows.append(row)
    _write(
        root,
        1,
        "evaluation-rules",
        schema_frame(FADE_EVALUATION_SCHEMA, rows),
        FADE_EVALUATION_SCHEMA,
    )
    index = build_report(declared(root), tmp_path / "report", n_boot=50).read_text("utf-8")
    assert "Executable explanations, rule-rated" in index
    assert "The paper's claims, checked on these scores" in index
    # Feature 0 is the fixture's only token-based feature of layer 1: one pair, no verdict.
    assert "too few features (n=1)" in index
    page = (tmp_path / "report" / feature_page_path(MODEL, 1, 0)).read_text(encoding="utf-8")
    section = page.split("Rule-rated scores (LLM-free)")[1].split('<h2 id="weightlens">')[0]
    cells = re.findall(
        r'<span class="variant">(\w+)</span></td>\s*<td class="num">([^<]+)<', section
    )
    assert cells == [("maxact_rule", "0.50"), ("weightlens_rule", "0.70")]
    assert "no_rated_0" in section  # a missing rule-rated metric shows its reason
