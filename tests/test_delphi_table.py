"""The delphi scores in the summary: means with CIs per (rater, score, layer, variant), never
pooled across raters, the LLM requests they cost, and a feature page's rows."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from circuit_insights.report.delphi_table import (
    delphi_table,
    delphi_table_markdown,
    feature_delphi_scores,
)
from circuit_insights.report.llm_requests import llm_request_counts
from circuit_insights.report.sections import delphi_score_rows
from circuit_insights.report.summary import write_summary


def score_rows(
    rater: str, variant: str, layer: int, detection: list[float], correlation: list[float]
) -> pd.DataFrame:
    """``all`` rows (plus one q0 row per feature that must not count) of len(detection) features."""
    rows = []
    for feature, (ba, r) in enumerate(zip(detection, correlation, strict=True)):
        base = dict(layer=layer, feature=feature, variant=variant, rater=rater, reason=None)
        usage = dict(
            llm_calls=3 if rater == "llm" else 0,
            llm_failed_calls=1 if rater == "llm" else 0,
            llm_error_calls=0,
        )
        for group in ("all", "q0"):
            value = ba if group == "all" else 0.0
            reason = None if math.isfinite(value) else "no_valid_answers"
            rows.append(
                base
                | usage
                | dict(
                    score="detection",
                    group=group,
                    accuracy=value,
                    precision=value,
                    recall=value,
                    f1=value,
                    balanced_accuracy=value,
                    correlation=np.nan,
                    reason=reason,
                )
            )
        rows.append(
            base
            | usage
            | dict(
                score="simulation",
                group="all",
                accuracy=np.nan,
                precision=np.nan,
                recall=np.nan,
                f1=np.nan,
                balanced_accuracy=np.nan,
                correlation=r,
                reason=None if math.isfinite(r) else "constant_prediction",
            )
        )
    return pd.DataFrame(rows)


def test_means_counts_and_cis_per_rater_never_pooled():
    rule = score_rows("rule", "weightlens_rule", 3, [1.0, 0.5, 0.75, np.nan], [0.2, 0.4, 0.6, 0.8])
    llm = score_rows("llm", "weightlens_rule", 3, [0.5, 0.5], [np.nan, 0.1])
    table = delphi_table([rule, llm], model="m", n_boot=200, seed=1)
    cell = table[
        (table.rater == "rule")
        & (table.score == "detection")
        & (table.figure == "balanced_accuracy")
    ].iloc[0]
    assert cell["n"] == 3 and cell["n_missing"] == 1
    assert cell["mean"] == pytest.approx(0.75)  # q0 rows (all 0) do not count
    assert cell["ci_low"] <= 0.75 <= cell["ci_high"]
    assert cell["missing_reasons"] == "no_valid_answers: 1"
    llm_cell = table[
        (table.rater == "llm")
        & (table.score == "detection")
        & (table.figure == "balanced_accuracy")
    ].iloc[0]
    assert llm_cell["mean"] == pytest.approx(0.5) and llm_cell["n"] == 2
    assert math.isnan(llm_cell["ci_low"])  # fewer than 3 features: no CI
    sim = table[(table.rater == "rule") & (table.score == "simulation")].iloc[0]
    assert sim["figure"] == "correlation" and sim["mean"] == pytest.approx(0.5)
    assert list(table["rater"].unique()) == ["rule", "llm"]
    text = delphi_table_markdown(table)
    assert text.index("rater = rule") < text.index("rater = llm")
    assert "0.75 [" in text and "(n=3)" in text


def test_llm_requests_count_the_all_rows_of_the_llm_rater_only():
    frames = pd.concat(
        [
            score_rows("rule", "cl_rule", 3, [1.0], [0.5]),
            score_rows("llm", "cl_full", 3, [1.0, 0.5], [0.5, 0.5]),
        ]
    )
    counts = llm_request_counts(None, None, frames)
    row = counts[counts.stage == "delphi"].iloc[0]
    # 2 features x 2 scores ("all" rows: detection and simulation) x 3 calls; q0 rows repeat usage
    assert (row["requests"], row["failed"], row["unusable"]) == (12, 0, 4)


def test_feature_rows_and_page_rows_show_each_scores_headline_with_its_reason():
    frames = pd.concat(
        [
            score_rows("llm", "cl_full", 8, [0.6], [np.nan]),
            score_rows("rule", "cl_rule", 8, [0.9], [0.3]),
        ]
    )
    per_feature = feature_delphi_scores(frames)
    assert list(per_feature["rater"]) == ["llm", "rule"]  # sorted keys
    assert per_feature.iloc[1]["detection"] == pytest.approx(0.9)
    page = delphi_score_rows(frames)
    assert [(r["rater"], r["variant"]) for r in page] == [("rule", "cl_rule"), ("llm", "cl_full")]
    llm_cells = page[1]["cells"]
    assert llm_cells[0]["value"] == pytest.approx(0.6)
    assert llm_cells[1]["reason"] == "not scored"  # no fuzzing rows
    assert llm_cells[2]["reason"] == "constant_prediction"


def test_write_summary_writes_the_delphi_table_and_plot(tmp_path):
    frames = [score_rows("rule", "maxact_rule", 3, [0.5, 0.7, 0.9], [0.1, 0.2, 0.3])]
    written = write_summary(None, None, tmp_path, model="m", n_boot=50, delphi_frames=frames)
    for name in (
        "delphi_scores",
        "delphi_table",
        "delphi_table_md",
        "delphi_table_html",
        "plot_delphi_scores",
    ):
        assert written[name].is_file(), name
    table = pd.read_parquet(written["delphi_table"])
    assert set(table["rater"]) == {"rule"}
    assert "maxact_rule" in written["delphi_table_md"].read_text()
    assert written["plot_delphi_scores"].read_bytes()[:4] == b"\x89PNG"


def test_claims_are_also_checked_on_the_exact_delphi_scores():
    """cl_rule beats maxact_rule on detection by 0.2 on every context-dependent feature."""
    from circuit_insights.report.claims import claim_checks

    features = range(6)
    cl = score_rows("rule", "cl_rule", 3, [0.8] * 6, [0.5] * 6)
    maxact = score_rows("rule", "maxact_rule", 3, [0.6] * 6, [0.5] * 6)
    weightlens = pd.DataFrame({"layer": 3, "feature": list(features), "is_token_based": False})
    fade = pd.DataFrame(
        {"layer": 3, "feature": 0, "variant": ["cl_rule"], "rater": "rule", "clarity": 0.5}
    )
    checks = claim_checks(fade, weightlens, n_boot=100, delphi_scores=pd.concat([cl, maxact]))
    row = checks[
        (checks.metric == "detection") & (checks.method == "cl_rule") & (checks.layer == "all")
    ].iloc[0]
    assert row["n"] == 6 and row["mean_difference"] == pytest.approx(0.2)
    assert row["verdict"] == "cl_rule higher"
    sim = checks[
        (checks.metric == "simulation") & (checks.method == "cl_rule") & (checks.layer == "all")
    ].iloc[0]
    assert sim["mean_difference"] == pytest.approx(0.0)
    without = claim_checks(fade, weightlens, n_boot=100)
    assert "detection" not in set(without["metric"])
