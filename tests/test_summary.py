"""Tests of the summary (circuit_insights.report: scores, stats, shares, tables, quality, plots,
summary.write_summary) on fixture frames with known answers."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from circuit_insights.core.errors import InputError
from circuit_insights.data.schemas import (
    FADE_EVALUATION_SCHEMA,
    METRIC_TABLE_SCHEMA,
    SUMMARY_SCHEMA,
    TOKEN_SHARES_SCHEMA,
    WEIGHTLENS_SCHEMA,
)
from circuit_insights.report.paper import LLM_FREE_VARIANT, paper_family
from circuit_insights.report.plots import plot_metrics
from circuit_insights.report.render import fragment
from circuit_insights.report.scores import (
    LLM_FREE_METRICS,
    METRICS,
    NO_WEIGHTLENS_RESULT,
    summarize_model,
)
from circuit_insights.report.shares import token_based_shares
from circuit_insights.report.stats import bootstrap_ci, metric_table, missing_table
from circuit_insights.report.summary import write_summary
from circuit_insights.report.tables import (
    Table,
    markdown_table,
    metric_grid,
    metric_grid_markdown,
    metric_grid_view,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# --- fixture builders in the real schemas (also used by tests/test_report.py) -----------------


def _default(field: pa.Field) -> Any:
    if pa.types.is_list(field.type):
        return []
    if field.nullable:
        return None
    if pa.types.is_string(field.type):
        return ""
    if pa.types.is_boolean(field.type):
        return False
    if pa.types.is_integer(field.type):
        return 0
    return 0.0


def schema_frame(schema: pa.Schema, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """A pandas frame of ``rows`` in ``schema`` (unset columns: empty list, null, "", 0, False)."""
    unknown = {key for row in rows for key in row} - set(schema.names)
    assert not unknown, unknown
    full = [{f.name: row.get(f.name, _default(f)) for f in schema} for row in rows]
    return pa.Table.from_pylist(full, schema=schema).to_pandas()


def evaluation_row(
    layer: int, feature: int, variant: str, description: str | None = "a description", **metrics
) -> dict[str, Any]:
    """An evaluation row: ``metrics`` as ``clarity=0.5`` or ``clarity=(None, "reason")``."""
    row: dict[str, Any] = {
        "layer": layer,
        "feature": feature,
        "variant": variant,
        "description": description,
        "preset": "small",
        "llm_model": "fixture",
        "prompt_version": "v1",
    }
    for metric in ("clarity", "responsiveness", "purity", "faithfulness"):
        value = metrics.get(metric, (None, "gated" if metric == "faithfulness" else "no_rated_0"))
        if isinstance(value, tuple):
            row[metric], row[f"{metric}_reason"] = value
        else:
            row[metric], row[f"{metric}_reason"] = value, None
    return row


def weightlens_row(
    layer: int,
    feature: int,
    *,
    validated: list[int] = (),
    token_based: bool = False,
    auroc: float | None = 0.7,
    precision: float | None = 0.4,
    reason: str = "",
    **extra,
) -> dict[str, Any]:
    validated = list(validated)
    row = {
        "layer": layer,
        "feature": feature,
        "preset": "paper",
        "projection": "folded",
        "z_scope": "full",
        "t_tok": 4.5,
        "t_up": 3.0,
        "validated_token_ids": validated,
        "validated_tokens": [f"<{t}>" for t in validated],
        "validated_activations": [1.0 + i for i in range(len(validated))],
        "validated_sources": ["input"] * len(validated),
        "candidate_token_ids": validated,
        "candidate_tokens": [f"<{t}>" for t in validated],
        "candidate_z": [5.0] * len(validated),
        "candidate_sources": ["input"] * len(validated),
        "candidate_activations": [1.0 + i for i in range(len(validated))],
        "n_candidate_tokens_total": len(validated),
        "description": "tokens: " + ", ".join(f'"<{t}>"' for t in validated)
        if validated
        else "tokens: none",
        "is_token_based": token_based,
        "classification": "token_based" if token_based else "context_dependent",
        "classification_basis": "top_contexts",
        "n_top_contexts": 10,
        "n_top_contexts_explained": 8 if token_based else 1,
        "top_context_share": 0.8 if token_based else 0.1,
        "min_token_share": 0.5,
        "auroc": auroc,
        "precision": precision,
        "recall": None if auroc is None else 0.5,
        "score_reason": reason,
    }
    row.update(extra)
    return row


def fixture_evaluation() -> pd.DataFrame:
    """Layer 3: maxact clarity 0.2, 0.4, 0.6, 0.8 and one missing (mean 0.5, n 4, 1 missing);
    cl_full clarity 0.9 on one feature; layer 5: maxact clarity 1.0 on feature 7 (not in the
    WeightLens table)."""
    rows = [
        evaluation_row(3, f, "maxact", clarity=c, responsiveness=0.5)
        for f, c in zip(range(4), (0.2, 0.4, 0.6, 0.8), strict=True)
    ]
    rows.append(evaluation_row(3, 4, "maxact", clarity=(None, "no_synthetic_samples")))
    rows.append(evaluation_row(3, 0, "cl_full", clarity=0.9, faithfulness=0.3))
    rows.append(evaluation_row(5, 7, "maxact", description=None, clarity=1.0))
    return schema_frame(FADE_EVALUATION_SCHEMA, rows)


def fixture_weightlens() -> pd.DataFrame:
    """Layer 3: features 0-5, 0-2 token-based, 0-3 with validated tokens; feature 5 has no
    score. Layer 5: feature 8, token-based."""
    rows = [
        weightlens_row(3, 0, validated=[11, 12], token_based=True, auroc=0.9, precision=0.8),
        weightlens_row(3, 1, validated=[13], token_based=True, auroc=0.7, precision=0.6),
        weightlens_row(3, 2, validated=[14], token_based=True, auroc=0.8, precision=0.4),
        weightlens_row(3, 3, validated=[15], auroc=0.6, precision=0.2),
        weightlens_row(
            3, 4, validated=[], auroc=None, precision=None, reason="no validated tokens"
        ),
        weightlens_row(
            3, 5, validated=[], auroc=None, precision=None, reason="no validated tokens"
        ),
        weightlens_row(5, 8, validated=[21], token_based=True, auroc=0.75, precision=0.5),
    ]
    return schema_frame(WEIGHTLENS_SCHEMA, rows)


# --- summarize_model ---------------------------------------------------------------------------


def test_summary_long_format_and_llm_free_scores():
    evaluation, weightlens = fixture_evaluation(), fixture_weightlens()
    summary = summarize_model([evaluation.iloc[:3], evaluation.iloc[3:]], weightlens, model="m")
    assert list(summary.columns) == SUMMARY_SCHEMA.names
    pa.Table.from_pandas(summary, schema=SUMMARY_SCHEMA, preserve_index=False)  # castable
    # 7 evaluation rows x 4 FADE metrics + (7 WeightLens features + 1 evaluated without) x 2
    assert len(summary) == 7 * 4 + 8 * 2
    assert set(summary["model"]) == {"m"}
    # every feature of either table has both LLM-free metrics under the rule variant
    features = set(zip(evaluation["layer"], evaluation["feature"], strict=True)) | set(
        zip(weightlens["layer"], weightlens["feature"], strict=True)
    )
    llm_free = summary[summary["metric"].isin(LLM_FREE_METRICS)]
    assert set(llm_free["variant"]) == {LLM_FREE_VARIANT}
    for metric in LLM_FREE_METRICS:
        part = llm_free[llm_free["metric"] == metric]
        assert set(zip(part["layer"], part["feature"], strict=True)) == features
    absent = llm_free[(llm_free["layer"] == 5) & (llm_free["feature"] == 7)]
    assert absent["value"].isna().all() and set(absent["reason"]) == {NO_WEIGHTLENS_RESULT}
    # reason is set exactly when the value is missing
    assert (summary["value"].isna() == summary["reason"].notna()).all()
    auroc = summary.query("metric == 'weightlens_auroc' and layer == 3 and feature == 4")
    assert auroc["reason"].tolist() == ["no validated tokens"]
    clarity = summary.query("metric == 'clarity' and variant == 'maxact' and feature == 4")
    assert clarity["reason"].tolist() == ["no_synthetic_samples"]


def test_summary_rejects_repeated_scores():
    evaluation = fixture_evaluation()
    with pytest.raises(InputError, match="more than once"):
        summarize_model([evaluation, evaluation.iloc[:1]], None)


def test_summary_of_nothing_is_empty_with_columns():
    summary = summarize_model(None, [])
    assert summary.empty and list(summary.columns) == SUMMARY_SCHEMA.names
    assert metric_table(summary).empty


def test_summary_non_finite_values_are_missing():
    evaluation = fixture_evaluation()
    evaluation.loc[0, "clarity"] = np.inf
    summary = summarize_model(evaluation, None)
    row = summary.query(
        "metric == 'clarity' and variant == 'maxact' and feature == 0 and layer == 3"
    )
    assert row["value"].isna().all() and row["reason"].notna().all()


# --- metric_table ------------------------------------------------------------------------------


def test_metric_table_means_counts_and_missing():
    summary = summarize_model(fixture_evaluation(), fixture_weightlens(), model="m")
    stats = metric_table(summary, n_boot=500, seed=1)
    assert list(stats.columns) == METRIC_TABLE_SCHEMA.names
    cell = stats.query("variant == 'maxact' and layer == 3 and metric == 'clarity'").iloc[0]
    assert cell["mean"] == pytest.approx(0.5)
    assert (cell["n"], cell["n_missing"]) == (4, 1)
    assert cell["missing_reasons"] == "no_synthetic_samples: 1"
    assert cell["ci_low"] <= cell["mean"] <= cell["ci_high"]
    assert 0.2 <= cell["ci_low"] < cell["ci_high"] <= 0.8
    # all five maxact responsiveness values missing except 4 (0.5 each): a degenerate CI
    resp = stats.query("variant == 'maxact' and layer == 3 and metric == 'responsiveness'").iloc[0]
    assert (resp["n"], resp["mean"], resp["ci_low"], resp["ci_high"]) == (4, 0.5, 0.5, 0.5)
    # faithfulness: missing everywhere but one feature of cl_full
    faith = stats.query("variant == 'maxact' and layer == 3 and metric == 'faithfulness'").iloc[0]
    assert faith["n"] == 0 and math.isnan(faith["mean"]) and math.isnan(faith["ci_low"])
    assert faith["missing_reasons"] == "gated: 5"
    single = stats.query("variant == 'cl_full' and metric == 'faithfulness'").iloc[0]
    # one feature: its mean and n, no CI (fewer than MIN_FEATURES_FOR_CI features)
    assert (single["n"], single["mean"]) == (1, 0.3)
    assert math.isnan(single["ci_low"]) and math.isnan(single["ci_high"])
    # LLM-free cell of layer 3: 4 values (0.9, 0.7, 0.8, 0.6), 2 missing
    wl = stats.query("variant == @LLM_FREE_VARIANT and layer == 3 and metric == 'weightlens_auroc'")
    assert wl.iloc[0]["mean"] == pytest.approx(0.75) and wl.iloc[0]["n"] == 4
    assert wl.iloc[0]["missing_reasons"] == "no validated tokens: 2"
    # n + n_missing = the rows of the cell, for every cell
    sizes = summary.groupby(["variant", "layer", "metric"]).size()
    for row in stats.itertuples():
        assert row.n + row.n_missing == sizes[(row.variant, row.layer, row.metric)]
    # seeded: the same table twice
    pd.testing.assert_frame_equal(stats, metric_table(summary, n_boot=500, seed=1))
    # the table writes with its schema
    pa.Table.from_pandas(stats, schema=METRIC_TABLE_SCHEMA, preserve_index=False)


def test_metric_table_missing_table_counts():
    summary = summarize_model(fixture_evaluation(), fixture_weightlens(), model="m")
    missing = missing_table(summary)
    assert missing["count"].sum() == summary["value"].isna().sum()
    row = missing.query("variant == 'maxact' and layer == 3 and metric == 'faithfulness'")
    assert row[["reason", "count"]].values.tolist() == [["gated", 5]]


def test_bootstrap_ci_properties():
    rng = np.random.default_rng(0)
    values = rng.normal(0.6, 0.1, size=400)
    low, high = bootstrap_ci(values, n_boot=2000, seed=3)
    assert low < values.mean() < high
    half_width = 1.96 * values.std(ddof=1) / math.sqrt(len(values))
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.15)
    assert bootstrap_ci(values, n_boot=2000, seed=3) == (low, high)
    assert bootstrap_ci([0.4], 100) == (0.4, 0.4)
    assert all(math.isnan(v) for v in bootstrap_ci([], 100))
    assert bootstrap_ci([np.nan, 0.2, np.inf], 100) == (0.2, 0.2)
    # a wider level gives a wider interval
    low99, high99 = bootstrap_ci(values, n_boot=2000, seed=3, confidence=0.99)
    assert low99 <= low and high <= high99


# --- tables ------------------------------------------------------------------------------------


def test_metric_grid_in_paper_form():
    summary = summarize_model(fixture_evaluation(), fixture_weightlens(), model="m")
    stats = metric_table(summary, n_boot=200)
    grid = metric_grid(stats)
    assert list(grid.index) == ["maxact", "weightlens_rule", "cl_full"]  # the paper's order
    assert grid.columns.names == ["layer", "metric"]
    assert [layer for layer, _ in grid.columns] == sorted(layer for layer, _ in grid.columns)
    assert set(grid.columns.get_level_values("metric")) == set(METRICS)
    cell = grid.loc["maxact", (3, "clarity")]
    assert cell.startswith("0.50 [") and "(n=4, 1 missing)" in cell
    assert grid.loc["cl_full", (5, "clarity")] == "\u2014 (n=0)"  # no row at all
    markdown = metric_grid_markdown(stats)
    lines = markdown.strip().splitlines()
    assert len(lines) == 2 + len(grid)
    assert all(line.count(" | ") == len(grid.columns) for line in lines[:1] + lines[2:])
    assert "L3 clarity" in lines[0]


def test_table_renderers_escape():
    markdown = markdown_table(["a|b", "c"], [["x|y", 1]])
    assert "a\\|b" in markdown and "x\\|y" in markdown
    html = str(fragment("table", Table(["<h>"], [["<script>alert(1)</script> & co"]], [("g<", 1)])))
    assert "<script>" not in html and "&lt;script&gt;" in html and "&amp; co" in html
    assert "g&lt;" in html and "&lt;h&gt;" in html
    with pytest.raises(InputError):
        markdown_table(["a"], [["1", "2"]])
    stats = pd.DataFrame(
        [
            {
                "model": "m",
                "variant": "<v>",
                "layer": 0,
                "metric": "clarity",
                "n": 1,
                "n_missing": 1,
                "mean": 0.5,
                "ci_low": 0.5,
                "ci_high": 0.5,
                "missing_reasons": "<why>: 1",
            }
        ]
    )
    html = str(fragment("metric_grid", metric_grid_view(stats)))
    assert "&lt;v&gt;" in html and "&lt;why&gt;" in html and "<v>" not in html


# --- token-based shares ------------------------------------------------------------------------


def test_token_based_shares_with_paper_figures():
    shares = token_based_shares(fixture_weightlens(), model="gemma-2-2b")
    assert list(shares.columns) == TOKEN_SHARES_SCHEMA.names
    by_layer = {None if pd.isna(r.layer) else int(r.layer): r for r in shares.itertuples()}
    assert set(by_layer) == {3, 5, None}
    layer3 = by_layer[3]
    assert (layer3.n_features, layer3.n_validated, layer3.n_token_based) == (6, 4, 3)
    assert layer3.validated_share == pytest.approx(4 / 6)
    assert layer3.token_based_share == pytest.approx(0.5)
    total = by_layer[None]
    assert (total.n_features, total.n_validated, total.n_token_based) == (7, 5, 4)
    assert set(shares["paper_model"]) == {"Gemma-2-2B"}
    assert set(shares["paper_share"]) == {0.327}
    pa.Table.from_pandas(shares, schema=TOKEN_SHARES_SCHEMA, preserve_index=False)


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("gemma-3-270m", "gemma"),
        ("gpt2-small", "gpt2"),
        ("GPT-2", "gpt2"),
        ("Llama-3.2-1B", "llama"),
        ("tiny-mistral", None),
    ],
)
def test_paper_family(model, family):
    assert paper_family(model) == family


def test_token_based_shares_other_model_has_no_paper_figure():
    shares = token_based_shares(fixture_weightlens(), model="tiny-mistral")
    assert shares["paper_model"].isna().all() and shares["paper_share"].isna().all()
    assert token_based_shares(None).empty
    with pytest.raises(InputError, match="paper family"):
        token_based_shares(fixture_weightlens(), family="bert")


# --- plots and files ---------------------------------------------------------------------------


def test_plots_are_png_one_per_metric(tmp_path):
    summary = summarize_model(fixture_evaluation(), fixture_weightlens(), model="m")
    stats = metric_table(summary, n_boot=100)
    written = plot_metrics(stats, tmp_path / "plots")
    assert set(written) == set(METRICS)
    for metric, path in written.items():
        assert path == tmp_path / "plots" / f"{metric}.png"
        assert path.read_bytes()[:8] == PNG_MAGIC
    assert not list((tmp_path / "plots").glob(".*"))  # no partial files left


def test_write_summary_files(tmp_path):
    written = write_summary(
        fixture_evaluation(), fixture_weightlens(), tmp_path / "summary", model="gpt2", n_boot=100
    )
    expected = {
        "summary.parquet",
        "metric_table.parquet",
        "metric_table.md",
        "metric_table.html",
        "token_based_shares.parquet",
        "token_based_shares.md",
        "token_based_shares.html",
        "llm_requests.parquet",  # LLM-rated evaluation rows: their requests counted
        "llm_requests.md",
    }
    assert {p.name for p in written.values() if p.parent == tmp_path / "summary"} == expected
    for path in written.values():
        assert path.is_file() and path.stat().st_size > 0
    assert pq.read_schema(written["summary"]).names == SUMMARY_SCHEMA.names
    assert pq.read_table(written["metric_table"]).schema.equals(METRIC_TABLE_SCHEMA)
    shares = pq.read_table(written["token_based_shares"]).to_pandas()
    assert set(shares["paper_model"]) == {"GPT-2 small"}
    markdown = written["metric_table_md"].read_text()
    assert "0.50 [" in markdown and "## Missing values" in markdown and "Paper figures" in markdown
    assert "58.8%" in written["token_based_shares_md"].read_text()
    html = written["metric_table_html"].read_text()
    assert html.startswith("<!DOCTYPE html>") and "<style>" in html and "http" not in html
    assert all(written[f"plot_{m}"].read_bytes()[:8] == PNG_MAGIC for m in METRICS)
    leftovers = [p for p in Path(tmp_path).rglob("*") if p.name.endswith(".partial")]
    assert not leftovers


# --- degenerate features, counted as FADE counts them ------------------------------------------


def test_metric_table_counts_degenerate_features_as_fade_does():
    """FADE's code scores a feature whose compared activations are all equal 0 (roc_auc 0.5):
    Clarity and Responsiveness of such features enter the means as 0; the long summary keeps
    NaN with the reason, and the table says how many there were."""
    rows = [
        evaluation_row(2, 0, "maxact", clarity=0.8, responsiveness=0.9, purity=0.7),
        evaluation_row(
            2,
            1,
            "maxact",
            clarity=(None, "no_variance"),
            responsiveness=(None, "no_heldout_activations"),
            purity=(None, "no_heldout_activations"),
        ),
        evaluation_row(2, 2, "maxact", clarity=0.6, responsiveness=0.3, purity=0.5),
        evaluation_row(
            2,
            3,
            "maxact",
            clarity=(None, "no_synthetic_samples"),
            responsiveness=(None, "no_variance"),
            purity=(None, "no_variance"),
        ),
    ]
    evaluation = schema_frame(FADE_EVALUATION_SCHEMA, rows)
    summary = summarize_model(evaluation, None, model="m")
    # the long table keeps the missing value and its reason
    kept = summary.query("feature == 1 and metric == 'clarity'").iloc[0]
    assert math.isnan(kept["value"]) and kept["reason"] == "no_variance"
    stats = metric_table(summary, n_boot=200, seed=0).set_index("metric")
    # Clarity: (0.8 + 0 + 0.6) / 3 over 3 features, 1 degenerate; no_synthetic_samples left out
    assert stats.loc["clarity", "mean"] == pytest.approx((0.8 + 0.0 + 0.6) / 3)
    assert stats.loc["clarity", ["n", "n_degenerate", "n_missing"]].tolist() == [3, 1, 1]
    assert stats.loc["clarity", "missing_reasons"] == "no_synthetic_samples: 1"
    # Responsiveness: (0.9 + 0 + 0.3 + 0) / 4, both degenerate reasons count as 0
    assert stats.loc["responsiveness", "mean"] == pytest.approx(1.2 / 4)
    assert stats.loc["responsiveness", ["n", "n_degenerate", "n_missing"]].tolist() == [4, 2, 0]
    assert stats.loc["responsiveness", "ci_low"] <= 0.3 <= stats.loc["responsiveness", "ci_high"]
    # Purity of tied activations is not a FADE 0 (it is the share rated 2): left out
    assert stats.loc["purity", "mean"] == pytest.approx(0.6)
    assert stats.loc["purity", ["n", "n_degenerate", "n_missing"]].tolist() == [2, 0, 2]
    assert stats.loc["purity", "missing_reasons"] == ("no_heldout_activations: 1; no_variance: 1")
    # gated Faithfulness (FADE returns None there) stays out of the mean
    assert stats.loc["faithfulness", ["n", "n_degenerate", "n_missing"]].tolist() == [0, 0, 4]
    # the paper-style cell says how many degenerate features were counted as 0
    grid = metric_grid(stats.reset_index())
    assert "(n=4, 2 degenerate as 0)" in grid.loc["maxact", (2, "responsiveness")]
    assert "(n=3, 1 degenerate as 0, 1 missing)" in grid.loc["maxact", (2, "clarity")]
    pa.Table.from_pandas(stats.reset_index(), schema=METRIC_TABLE_SCHEMA, preserve_index=False)


# --- what the numbers are worth: n, CI only from 3 features, description flags ------------------


def test_no_ci_below_three_features_and_n_on_every_cell():
    from circuit_insights.report.stats import MIN_FEATURES_FOR_CI

    rows = [evaluation_row(0, f, "maxact", clarity=0.1 * (f + 1)) for f in range(4)]
    rows += [evaluation_row(0, f, "cl_full", clarity=0.2 + 0.3 * f) for f in range(2)]
    rows += [evaluation_row(1, 0, "cl_full", clarity=0.6)]
    summary = summarize_model(schema_frame(FADE_EVALUATION_SCHEMA, rows), None, model="m")
    stats = metric_table(summary, n_boot=200, seed=0)
    clarity = stats[stats["metric"] == "clarity"]
    for row in clarity.itertuples():
        has_ci = math.isfinite(row.ci_low) and math.isfinite(row.ci_high)
        assert has_ci == (row.n >= MIN_FEATURES_FOR_CI), row
    grid = metric_grid(stats)
    assert grid.loc["cl_full", (1, "clarity")] == "0.60 (n=1; too few for a CI)"
    assert grid.loc["cl_full", (0, "clarity")].startswith("0.35 (n=2")
    assert "[" in grid.loc["maxact", (0, "clarity")] and "n=4" in grid.loc["maxact", (0, "clarity")]
    html = str(fragment("metric_grid", metric_grid_view(stats)))
    grid_shape = metric_grid(stats).shape  # (variants, layer x metric columns)
    cells = [c for c in re.findall(r"<td>(.*?)</td>", html) if c not in set(grid.index)]
    assert len(cells) == grid_shape[0] * grid_shape[1]
    assert all("n=" in c for c in cells)  # n on every cell, maxact's empty layer 1 too (n=0)
    assert html.count("no CI") == 2  # the n=1 and n=2 cells
    assert "[0.60, 0.60]" not in html and "[0.20, 0.50]" not in html


def test_plots_draw_error_bars_only_from_three_features(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    drawn: list[np.ndarray] = []
    original = Axes.errorbar

    def spy(self, x, y, *args, **kwargs):
        drawn.append(np.asarray(y))
        assert kwargs.get("linestyle") == "none"  # no line joins the layers
        return original(self, x, y, *args, **kwargs)

    monkeypatch.setattr(Axes, "errorbar", spy)
    rows = [evaluation_row(0, f, "maxact", clarity=0.25 * f) for f in range(4)]
    rows += [evaluation_row(1, 0, "maxact", clarity=0.9)]
    summary = summarize_model(schema_frame(FADE_EVALUATION_SCHEMA, rows), None, model="m")
    stats = metric_table(summary, n_boot=100)
    written = plot_metrics(stats[stats["metric"] == "clarity"], tmp_path)
    assert written["clarity"].read_bytes()[:8] == PNG_MAGIC
    assert len(drawn) == 1 and drawn[0].tolist() == [pytest.approx(0.375)]  # layer 0 only


def test_description_flags():
    from circuit_insights.report.quality import description_flags, flag_counts

    frame = pd.DataFrame(
        [
            ("maxact", 0, "feature_fire(s)", "ok"),
            ("maxact", 1, "Fires on the word 'Paris' and other French city names.", "ok"),
            ("maxact", 2, "fires on the word 'paris' and other French city names", "ok"),
            ("maxact", 3, None, "unparseable"),
            ("maxact", 4, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "ok"),
            ("maxact", 5, '{"description": "..."}', "ok"),
            ("maxact", 6, "A closing parenthesis after a year, as in (1998).", "ok"),
            ("cl_full", 1, "Fires on the word 'Paris' and other French city names.", "ok"),
            ("cl_full", 7, "the <description> of the feature", "ok"),
            (
                "weightlens",
                8,
                'Fires on "just", " Just", " JUST", "JUST", " juste", "just" and "=============="',
                "ok",
            ),
            ("cl_input", 9, "the the the the the the the", "ok"),
        ],
        columns=["variant", "feature", "description", "parse_status"],
    )
    flags = description_flags(frame).tolist()
    assert flags[0] == ("placeholder",)
    assert flags[1] == flags[2] == ("repeated",)  # same text, two features, one variant
    assert flags[3] == ("unparseable",)
    assert flags[4] == ("degenerate",)
    assert flags[5] == ("placeholder",)
    assert flags[6] == ()  # nothing fired: a clean description (not "ok")
    assert flags[7] == ()  # the same text in another variant is not a repeat
    assert flags[8] == ("placeholder",)
    assert flags[9] == ()  # quoted tokens, case variants of one word: data, not a runaway
    assert flags[10] == ("degenerate",)
    counts = flag_counts(frame).set_index("variant")
    assert counts.loc["maxact", "n"] == 6 and counts.loc["maxact", "repeated"] == 2
    assert counts.loc["maxact", "placeholder"] == 2 and counts.loc["cl_full", "placeholder"] == 1


def test_small_embedded_llm_names():
    from circuit_insights.report.quality import is_small_embedded_llm

    assert is_small_embedded_llm("smollm2") and is_small_embedded_llm("SmolLM2-135M-Instruct")
    assert not is_small_embedded_llm("Qwen/Qwen2.5-7B-Instruct")
    assert not is_small_embedded_llm("smollm2-1.7b") and not is_small_embedded_llm(None)


def test_cluster_coverage_per_layer():
    from circuit_insights.circuitlens.cluster_shard import cluster_coverage

    def row(layer, feature, cluster, n_samples, n_clusters, status="clustered"):
        return {
            "layer": layer,
            "feature": feature,
            "cluster": cluster,
            "n_samples": n_samples,
            "n_clusters": n_clusters,
            "status": status,
        }

    clusters = pd.DataFrame(
        [
            row(3, 0, 0, 6, 2),
            row(3, 0, 1, 2, 2),
            row(3, 0, -1, 2, 2),
            row(3, 1, -1, 10, 0, "all_noise"),
            row(5, 2, 0, 4, 1),
        ]
    )
    coverage = cluster_coverage(clusters).set_index("layer")
    assert coverage.loc[3, "n_features"] == 2 and coverage.loc[3, "n_features_clustered"] == 1
    assert coverage.loc[3, "clusters_per_feature"] == pytest.approx(1.0)
    assert coverage.loc[3, "noise_share"] == pytest.approx(12 / 20)
    assert coverage.loc[3, "share_all_noise"] == pytest.approx(0.5)
    assert coverage.loc[5, "noise_share"] == 0


def test_write_summary_reports_cluster_coverage_per_layer(tmp_path):
    """With cluster tables, the summary writes clusters per feature and the noise share per
    layer (what the README compares with the paper's 4.5 / 2.8 clusters per feature)."""

    def row(layer, feature, cluster, n_samples, n_clusters, status="clustered"):
        return {
            "layer": layer,
            "feature": feature,
            "cluster": cluster,
            "n_samples": n_samples,
            "n_clusters": n_clusters,
            "status": status,
        }

    clusters = [
        pd.DataFrame([row(0, 0, 0, 60, 2), row(0, 0, 1, 30, 2), row(0, 0, -1, 10, 2)]),
        pd.DataFrame([row(0, 1, -1, 100, 0, "all_noise")]),
    ]
    written = write_summary(
        fixture_evaluation(),
        fixture_weightlens(),
        tmp_path / "summary",
        model="gpt2",
        n_boot=50,
        clusters_frames=clusters,
    )
    coverage = pq.read_table(written["cluster_coverage"]).to_pandas().set_index("layer")
    assert coverage.loc[0, "clusters_per_feature"] == pytest.approx(1.0)  # (2 + 0) / 2
    assert coverage.loc[0, "noise_share"] == pytest.approx(110 / 200)
    assert coverage.loc[0, "share_all_noise"] == pytest.approx(0.5)
    markdown = written["cluster_coverage_md"].read_text()
    assert (
        "| 0 |" in markdown and "| 55.0% |" in markdown and "4.5 clusters per feature" in markdown
    )
