"""The LLM-free comparison of the executable explanations in the paper's form: per feature
class (WeightLens's token-based / context-dependent), metric, layer and method the mean of the
rule-rated scores with a bootstrap CI (``RULE_COMPARISON_SCHEMA``; ``docs/rules.md``)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd

from circuit_insights.data.schemas import RULE_COMPARISON_SCHEMA
from circuit_insights.report.paper import RULE_METHODS, RULE_METRICS
from circuit_insights.report.scores import NO_REASON_GIVEN, concat_frames, require_columns
from circuit_insights.report.stats import (
    MIN_FEATURES_FOR_CI,
    bootstrap_ci,
    cell_seed,
    reasons_text,
)

#: Classes of features, WeightLens's own classification first.
CLASSIFICATIONS: tuple[str, ...] = ("token_based", "context_dependent", "unclassified", "all")
RULE_NOTE = (
    "LLM-free: each method's explanation applied as a rule (rater = rule; docs/rules.md). "
    "Cells: mean over features [95% percentile-bootstrap CI] (n = features with a value; no CI "
    "below 3). Split by WeightLens's classification (token-based vs context-dependent)."
)


def classification_of(evaluation: pd.DataFrame, weightlens: pd.DataFrame) -> pd.Series:
    """WeightLens's class of each evaluation row (``unclassified`` without a WeightLens row)."""
    if len(weightlens) == 0 or "is_token_based" not in weightlens.columns:
        return pd.Series(["unclassified"] * len(evaluation), index=evaluation.index)
    classes = {
        (int(layer), int(feature)): "token_based" if bool(token) else "context_dependent"
        for layer, feature, token in zip(
            weightlens["layer"], weightlens["feature"], weightlens["is_token_based"], strict=True
        )
    }
    keys = zip(evaluation["layer"].astype(int), evaluation["feature"].astype(int), strict=True)
    return pd.Series([classes.get(k, "unclassified") for k in keys], index=evaluation.index)


def rule_comparison_table(
    rule_evaluation: pd.DataFrame | Iterable[pd.DataFrame] | None,
    weightlens: pd.DataFrame | Iterable[pd.DataFrame] | None,
    *,
    model: str = "",
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Per (classification, metric, layer, method) the mean of the rule-rated scores with a
    bootstrap CI: ``RULE_COMPARISON_SCHEMA`` rows.

    ``rule_evaluation``: ``FADE_EVALUATION_SCHEMA`` rows; only ``rater`` = ``rule`` rows of the
    :data:`RULE_METHODS` count. Features are split by WeightLens's ``is_token_based`` (``all``:
    every feature). A cell with fewer than :data:`MIN_FEATURES_FOR_CI` values has no CI.
    """
    frame = concat_frames(rule_evaluation, "rule evaluation frames")
    wl = concat_frames(weightlens, "WeightLens frames")
    columns = RULE_COMPARISON_SCHEMA.names
    if len(frame) == 0:
        return pd.DataFrame(columns=columns)
    require_columns(frame, ["layer", "feature", "variant", "rater"], "rule evaluation frame")
    frame = frame[(frame["rater"] == "rule") & frame["variant"].isin(RULE_METHODS)]
    frame = frame.assign(classification=classification_of(frame, wl))
    rows = []
    for classification in CLASSIFICATIONS:
        part = (
            frame if classification == "all" else frame[frame["classification"] == classification]
        )
        if len(part) == 0:
            continue
        for metric in RULE_METRICS:
            for (layer, variant), cell in part.groupby(["layer", "variant"], sort=True):
                values = pd.to_numeric(cell[metric], errors="coerce").to_numpy(np.float64)
                finite = values[np.isfinite(values)]
                n = len(finite)
                low = high = math.nan
                if n >= MIN_FEATURES_FOR_CI:
                    low, high = bootstrap_ci(
                        finite, n_boot, cell_seed(seed, classification, metric, layer, variant)
                    )
                reasons = cell.loc[~np.isfinite(values), f"{metric}_reason"]
                rows.append(
                    {
                        "model": str(model),
                        "classification": classification,
                        "metric": metric,
                        "layer": int(layer),
                        "variant": str(variant),
                        "n": n,
                        "n_missing": int(len(values) - n),
                        "mean": float(finite.mean()) if n else math.nan,
                        "ci_low": low,
                        "ci_high": high,
                        "missing_reasons": reasons_text(reasons.fillna(NO_REASON_GIVEN)),
                    }
                )
    table = pd.DataFrame(rows, columns=columns)
    rank = {v: i for i, v in enumerate(RULE_METHODS)}
    table = table.assign(
        _c=table["classification"].map(CLASSIFICATIONS.index),
        _m=table["metric"].map(RULE_METRICS.index),
        _v=table["variant"].map(rank),
    ).sort_values(["_c", "_m", "layer", "_v"], kind="mergesort", ignore_index=True)
    return table[columns]
