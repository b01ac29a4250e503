"""The paper's claims, checked on the rule-rated scores by paired differences.

The comparison table (:func:`circuit_insights.report.rule_comparison.rule_comparison_table`) gives each
method's mean per layer; two means with overlapping CIs can still differ consistently feature by
feature. A claim here compares two methods on the **same** features: per feature the difference
of the two rule-rated scores (method minus baseline, both finite), its mean over features with a
percentile-bootstrap 95% CI, per layer and over all layers together. The verdict says which side
of 0 the CI lies on, or that it contains 0 (no difference shown), and never reads more than that.

The claims (the paper's, restated for the executable explanations of ``docs/rules.md``;
:data:`circuit_insights.report.paper.CLAIMS`):

- WeightLens explains token-based features at least as clearly as MaxAct:
  ``weightlens_rule`` - ``maxact_rule`` on Clarity, token-based features.
- CircuitLens helps on context-dependent features: ``wl_cl_rule`` - ``weightlens_rule`` and
  ``cl_rule`` - ``maxact_rule`` on Clarity, Responsiveness and Purity, context-dependent features,
  and on the exact delphi scores of the rules (detection and fuzzing balanced accuracy,
  simulation correlation; :mod:`circuit_insights.report.delphi_table`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from circuit_insights.report.delphi_table import feature_delphi_scores
from circuit_insights.report.paper import CLAIMS, Claim
from circuit_insights.report.rule_comparison import classification_of
from circuit_insights.report.scores import concat_frames, require_columns
from circuit_insights.report.stats import MIN_FEATURES_FOR_CI, bootstrap_ci, cell_seed
from circuit_insights.report.tables import Table, markdown_table

#: Columns of :func:`claim_checks`.
CLAIM_COLUMNS = [
    "claim",
    "classification",
    "metric",
    "method",
    "baseline",
    "layer",
    "n",
    "mean_difference",
    "ci_low",
    "ci_high",
    "verdict",
]
ALL_LAYERS = "all"


def verdict(n: int, low: float, high: float, method: str, baseline: str) -> str:
    """Which side of 0 the CI of the mean difference lies on; too few features: say so."""
    if n < MIN_FEATURES_FOR_CI or not (math.isfinite(low) and math.isfinite(high)):
        return f"too few features (n={n})"
    if low > 0:
        return f"{method} higher"
    if high < 0:
        return f"{baseline} higher"
    return "no difference shown (CI contains 0)"


def paired_differences(
    frame: pd.DataFrame, metric: str, method: str, baseline: str
) -> pd.DataFrame:
    """Per (layer, feature) rated by both: ``difference`` = method - baseline on ``metric``."""
    scores = frame[frame["variant"].isin([method, baseline])]
    wide = scores.pivot_table(
        index=["layer", "feature"], columns="variant", values=metric, aggfunc="first"
    )
    if method not in wide.columns or baseline not in wide.columns:
        return pd.DataFrame(columns=["layer", "feature", "difference"])
    difference = (wide[method] - wide[baseline]).astype(float)
    difference = difference[np.isfinite(difference.to_numpy())]
    return difference.rename("difference").reset_index()


def claim_checks(
    rule_evaluation: pd.DataFrame | Iterable[pd.DataFrame] | None,
    weightlens: pd.DataFrame | Iterable[pd.DataFrame] | None,
    *,
    claims: Sequence[Claim] = CLAIMS,
    n_boot: int = 1000,
    seed: int = 0,
    delphi_scores: pd.DataFrame | Iterable[pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """Per claim, metric and layer (and ``all`` layers): the paired mean difference with its
    bootstrap CI and the verdict (:data:`CLAIM_COLUMNS`). Only ``rater`` = ``rule`` rows count;
    features are classed by WeightLens's ``is_token_based``. ``delphi_scores``: the delphi
    scores rows; their rule-rated headline figures are the metrics ``detection``, ``fuzzing``
    and ``simulation``."""
    frame = concat_frames(rule_evaluation, "rule evaluation frames")
    delphi = feature_delphi_scores(delphi_scores)
    if len(delphi):
        frame = concat_frames(
            [frame, delphi[delphi["rater"] == "rule"].drop(columns="reasons")],
            "rule evaluation frames",
        )
    wl = concat_frames(weightlens, "WeightLens frames")
    if len(frame) == 0:
        return pd.DataFrame(columns=CLAIM_COLUMNS)
    require_columns(frame, ["layer", "feature", "variant", "rater"], "rule evaluation frame")
    frame = frame[frame["rater"] == "rule"]
    frame = frame.assign(classification=classification_of(frame, wl))
    rows: list[dict[str, Any]] = []
    for claim in claims:
        part = frame[frame["classification"] == claim.classification]
        for metric in claim.metrics:
            if metric not in part.columns:  # no delphi scores in this run
                continue
            pairs = paired_differences(part, metric, claim.method, claim.baseline)
            groups = [(str(int(layer)), cell) for layer, cell in pairs.groupby("layer")]
            groups.append((ALL_LAYERS, pairs))
            for layer, cell in groups:
                values = cell["difference"].to_numpy(np.float64)
                n = len(values)
                low = high = math.nan
                if n >= MIN_FEATURES_FOR_CI:
                    low, high = bootstrap_ci(
                        values, n_boot, cell_seed(seed, claim.text, metric, layer)
                    )
                rows.append(
                    {
                        "claim": claim.text,
                        "classification": claim.classification,
                        "metric": metric,
                        "method": claim.method,
                        "baseline": claim.baseline,
                        "layer": layer,
                        "n": n,
                        "mean_difference": float(values.mean()) if n else math.nan,
                        "ci_low": low,
                        "ci_high": high,
                        "verdict": verdict(n, low, high, claim.method, claim.baseline),
                    }
                )
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)


def _rows(checks: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    header = ["claim", "metric", "layer", "difference [95% CI]", "n", "verdict"]
    rows = []
    for r in checks.to_dict("records"):
        if int(r["n"]) == 0:
            difference = "\u2014"
        elif math.isnan(float(r["ci_low"])):
            difference = f"{float(r['mean_difference']):+.2f}"
        else:
            difference = (
                f"{float(r['mean_difference']):+.2f} "
                f"[{float(r['ci_low']):+.2f}, {float(r['ci_high']):+.2f}]"
            )
        rows.append(
            [
                f"{r['claim']} ({r['method']} \u2212 {r['baseline']})",
                str(r["metric"]),
                str(r["layer"]),
                difference,
                str(int(r["n"])),
                str(r["verdict"]),
            ]
        )
    return header, rows


CLAIMS_NOTE = (
    "Paired on the same features: per feature the rule-rated score of the method minus the "
    "baseline's, its mean with a 95% percentile-bootstrap CI (none below 3 features). The verdict "
    "only says which side of 0 the CI lies on."
)


def claims_markdown(checks: pd.DataFrame) -> str:
    """:func:`claim_checks` as markdown: the rows over all layers first, then per layer."""
    if len(checks) == 0:
        return "No rule-rated scores.\n"
    parts = []
    pooled = checks["layer"] == ALL_LAYERS
    for title, part in (("Over all layers", checks[pooled]), ("Per layer", checks[~pooled])):
        if len(part):
            header, rows = _rows(part)
            table = markdown_table(header, rows, ["l", "l", "r", "r", "r", "l"])
            parts += [f"## {title}", "", table]
    return "\n".join(parts) + "\n"


def claims_view(checks: pd.DataFrame) -> Table:
    """:func:`claim_checks` as one table (every row, in its order)."""
    header, rows = _rows(checks)
    return Table(header, rows)
