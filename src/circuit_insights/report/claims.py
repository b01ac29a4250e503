"""The paper's claims, checked on the rule-rated scores by paired differences.

The comparison table (:func:`circuit_insights.report.summary.rule_comparison_table`) gives each
method's mean per layer; two means with overlapping CIs can still differ consistently feature by
feature. A claim here compares two methods on the **same** features: per feature the difference
of the two rule-rated scores (method minus baseline, both finite), its mean over features with a
percentile-bootstrap 95% CI, per layer and over all layers together. The verdict says which side
of 0 the CI lies on, or that it contains 0 (no difference shown), and never reads more than that.

The claims (the paper's, restated for the executable explanations of ``docs/rules.md``):

- WeightLens explains token-based features at least as clearly as MaxAct:
  ``weightlens_rule`` - ``maxact_rule`` on Clarity, token-based features.
- CircuitLens helps on context-dependent features: ``wl_cl_rule`` - ``weightlens_rule`` and
  ``cl_rule`` - ``maxact_rule`` on Clarity, Responsiveness and Purity, context-dependent features.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from markupsafe import Markup

from circuit_insights.report import summary as summ


@dataclass(frozen=True)
class Claim:
    """``method`` against ``baseline`` on ``metrics``, on the features of ``classification``."""

    text: str
    classification: str
    method: str
    baseline: str
    metrics: tuple[str, ...]


CLAIMS: tuple[Claim, ...] = (
    Claim(
        "WeightLens explains token-based features at least as clearly as MaxAct",
        "token_based",
        "weightlens_rule",
        "maxact_rule",
        ("clarity",),
    ),
    Claim(
        "Adding CircuitLens to WeightLens helps on context-dependent features",
        "context_dependent",
        "wl_cl_rule",
        "weightlens_rule",
        summ.RULE_METRICS,
    ),
    Claim(
        "CircuitLens beats MaxAct on context-dependent features",
        "context_dependent",
        "cl_rule",
        "maxact_rule",
        summ.RULE_METRICS,
    ),
)

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
    if n < summ.MIN_FEATURES_FOR_CI or not (math.isfinite(low) and math.isfinite(high)):
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
) -> pd.DataFrame:
    """Per claim, metric and layer (and ``all`` layers): the paired mean difference with its
    bootstrap CI and the verdict (:data:`CLAIM_COLUMNS`). Only ``rater`` = ``rule`` rows count;
    features are classed by WeightLens's ``is_token_based``."""
    frame = summ._concat(rule_evaluation, "rule evaluation frames")
    wl = summ._concat(weightlens, "WeightLens frames")
    if len(frame) == 0:
        return pd.DataFrame(columns=CLAIM_COLUMNS)
    summ._require(frame, ["layer", "feature", "variant", "rater"], "rule evaluation frame")
    frame = frame[frame["rater"] == "rule"]
    frame = frame.assign(classification=summ._classification(frame, wl))
    rows: list[dict[str, Any]] = []
    for claim in claims:
        part = frame[frame["classification"] == claim.classification]
        for metric in claim.metrics:
            pairs = paired_differences(part, metric, claim.method, claim.baseline)
            groups = [(str(int(layer)), cell) for layer, cell in pairs.groupby("layer")]
            groups.append((ALL_LAYERS, pairs))
            for layer, cell in groups:
                values = cell["difference"].to_numpy(np.float64)
                n = len(values)
                low = high = math.nan
                if n >= summ.MIN_FEATURES_FOR_CI:
                    low, high = summ.bootstrap_ci(
                        values, n_boot, summ._cell_seed(seed, claim.text, metric, layer)
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
            table = summ.markdown_table(header, rows, ["l", "l", "r", "r", "r", "l"])
            parts += [f"## {title}", "", table]
    return "\n".join(parts) + "\n"


def claims_html(checks: pd.DataFrame) -> Markup:
    """:func:`claim_checks` as one HTML table."""
    if len(checks) == 0:
        return Markup("<p>No rule-rated scores.</p>")
    header, rows = _rows(checks)
    return summ.html_table(header, rows)
