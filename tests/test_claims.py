"""The paper's claims checked by paired differences of rule-rated scores."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from circuit_insights.data.schemas import WEIGHTLENS_SCHEMA
from circuit_insights.report.claims import claim_checks, paired_differences
from circuit_insights.report.paper import CLAIMS
from circuit_insights.report.summary import write_summary
from tests.test_summary import evaluation_row, schema_frame, weightlens_row

TOKEN_FEATURES = [0, 1, 2, 3, 4]
CONTEXT_FEATURES = [10, 11, 12, 13]


def _rated(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    frame["rater"] = "rule"
    return frame


def _fixture() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Layer 3. Token-based features: weightlens_rule's Clarity above maxact_rule's by
    0.1, 0.2, 0.3, 0.2, 0.2. Context-dependent: wl_cl_rule minus weightlens_rule differences of
    -0.2, +0.2, -0.1, +0.1 (no difference); feature 13 has no cl_rule score."""
    rows = []
    for feature, gain in zip(TOKEN_FEATURES, [0.1, 0.2, 0.3, 0.2, 0.2], strict=True):
        rows.append(evaluation_row(3, feature, "maxact_rule", clarity=0.5))
        rows.append(evaluation_row(3, feature, "weightlens_rule", clarity=0.5 + gain))
    for feature, change in zip(CONTEXT_FEATURES, [-0.2, 0.2, -0.1, 0.1], strict=True):
        rows.append(evaluation_row(3, feature, "weightlens_rule", clarity=0.6, purity=0.5))
        rows.append(evaluation_row(3, feature, "wl_cl_rule", clarity=0.6 + change, purity=0.5))
        rows.append(evaluation_row(3, feature, "maxact_rule", clarity=0.4))
        cl = (None, "missing_input") if feature == 13 else 0.9
        rows.append(evaluation_row(3, feature, "cl_rule", clarity=cl))
    weightlens = schema_frame(
        WEIGHTLENS_SCHEMA,
        [weightlens_row(3, f, validated=[5], token_based=True) for f in TOKEN_FEATURES]
        + [weightlens_row(3, f, validated=[]) for f in CONTEXT_FEATURES],
    )
    return _rated(rows), weightlens


def _row(checks: pd.DataFrame, method: str, baseline: str, metric: str, layer: str) -> pd.Series:
    hit = checks[
        (checks["method"] == method)
        & (checks["baseline"] == baseline)
        & (checks["metric"] == metric)
        & (checks["layer"] == layer)
    ]
    assert len(hit) == 1, hit
    return hit.iloc[0]


def test_a_consistent_gain_is_called_and_its_ci_excludes_zero():
    rated, weightlens = _fixture()
    checks = claim_checks(rated, weightlens, n_boot=500)
    row = _row(checks, "weightlens_rule", "maxact_rule", "clarity", "3")
    assert row["n"] == 5
    assert np.isclose(row["mean_difference"], 0.2)
    assert 0.1 <= row["ci_low"] < 0.2 < row["ci_high"] <= 0.3
    assert row["verdict"] == "weightlens_rule higher"
    pooled = _row(checks, "weightlens_rule", "maxact_rule", "clarity", "all")
    assert pooled["n"] == 5 and np.isclose(pooled["mean_difference"], 0.2)


def test_differences_around_zero_show_no_difference_and_baselines_can_win():
    rated, weightlens = _fixture()
    checks = claim_checks(rated, weightlens, n_boot=500)
    row = _row(checks, "wl_cl_rule", "weightlens_rule", "clarity", "all")
    assert row["n"] == 4 and np.isclose(row["mean_difference"], 0.0)
    assert row["ci_low"] < 0 < row["ci_high"]
    assert row["verdict"] == "no difference shown (CI contains 0)"
    # cl_rule 0.9 against maxact_rule 0.4: paired only where both have a score (not feature 13).
    row = _row(checks, "cl_rule", "maxact_rule", "clarity", "all")
    assert row["n"] == 3 and np.isclose(row["mean_difference"], 0.5)
    assert row["verdict"] == "cl_rule higher"
    # Responsiveness: no scores at all -> n = 0, no CI, said so.
    row = _row(checks, "cl_rule", "maxact_rule", "responsiveness", "all")
    assert row["n"] == 0 and row["verdict"] == "too few features (n=0)"


def test_only_rule_rated_rows_and_the_claims_feature_class_count():
    rated, weightlens = _fixture()
    llm = rated.assign(rater="llm", clarity=0.0)  # an LLM-rated copy must not be paired
    checks = claim_checks(pd.concat([rated, llm]), weightlens, n_boot=200)
    assert _row(checks, "weightlens_rule", "maxact_rule", "clarity", "all")["n"] == 5
    # Token-based features never enter the context-dependent claims.
    pairs = paired_differences(rated, "clarity", "wl_cl_rule", "weightlens_rule")
    assert set(pairs["feature"]) == set(CONTEXT_FEATURES)
    assert {c.classification for c in CLAIMS} == {"token_based", "context_dependent"}


def test_write_summary_writes_the_claims_table(tmp_path):
    rated, weightlens = _fixture()
    written = write_summary(
        None, weightlens, tmp_path, model="m", n_boot=200, rule_evaluation_frames=rated
    )
    text = written["paper_claims_md"].read_text()
    assert "weightlens_rule higher" in text and "+0.20 [" in text
    assert len(pd.read_parquet(written["paper_claims"])) > 0


def test_the_markdown_puts_the_pooled_rows_first():
    from circuit_insights.report.claims import claims_markdown

    rated, weightlens = _fixture()
    text = claims_markdown(claim_checks(rated, weightlens, n_boot=100))
    pooled, per_layer = text.split("## Per layer")
    assert pooled.startswith("## Over all layers")
    layer_3 = re.compile(r"\| (clarity|responsiveness|purity) \| 3 \|")
    assert "| all |" in pooled and not layer_3.search(pooled)
    assert layer_3.search(per_layer) and "| all |" not in per_layer
