"""The scores of one model in long form (``SUMMARY_SCHEMA``): one row per (layer, feature,
variant, metric), every missing value kept with its reason.

Inputs are the FADE evaluation tables (``FADE_EVALUATION_SCHEMA``) and the WeightLens tables
(``WEIGHTLENS_SCHEMA``) of one model, any number of (layer, shard) frames each
(:func:`concat_frames`). Definitions: ``docs/report.md``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from circuit_insights.core.errors import InputError
from circuit_insights.data.schemas import SUMMARY_SCHEMA
from circuit_insights.report.paper import FADE_METRICS, LLM_FREE_VARIANT

#: LLM-free WeightLens scores (``auroc``, ``precision`` of ``WEIGHTLENS_SCHEMA``).
LLM_FREE_METRICS: tuple[str, ...] = ("weightlens_auroc", "weightlens_precision")
METRICS: tuple[str, ...] = FADE_METRICS + LLM_FREE_METRICS
#: Reason of the LLM-free rows of a feature that was evaluated but has no WeightLens row.
NO_WEIGHTLENS_RESULT = "no_weightlens_result"
#: Reason of a NaN value whose table gave no reason.
NO_REASON_GIVEN = "no_reason_given"


def concat_frames(frames: pd.DataFrame | Iterable[pd.DataFrame] | None, what: str) -> pd.DataFrame:
    """One frame from a frame, several frames or None (empty)."""
    if frames is None:
        return pd.DataFrame()
    if isinstance(frames, pd.DataFrame):
        return frames.reset_index(drop=True)
    parts = [frame for frame in frames if frame is not None]
    for part in parts:
        if not isinstance(part, pd.DataFrame):
            raise InputError(f"{what}: expected pandas DataFrames, got {type(part).__name__}")
    parts = [part for part in parts if len(part.columns)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def require_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    """Raise :class:`InputError` naming the columns of ``columns`` that ``frame`` lacks."""
    missing = [name for name in columns if name not in frame.columns]
    if missing:
        raise InputError(f"{what} lacks columns {missing}")


def order_metrics(metrics: Iterable[str]) -> list[str]:
    """Metrics in :data:`METRICS` order, unknown ones after, by name."""
    unique = set(metrics)
    return [m for m in METRICS if m in unique] + sorted(unique - set(METRICS))


def _reason(value: float, reason: Any) -> str | None:
    """The reason of a value: None when the value is finite, else the given one (or a default)."""
    if value is not None and math.isfinite(value):
        return None
    if reason is None or (isinstance(reason, float) and math.isnan(reason)):
        return NO_REASON_GIVEN if value is None or math.isnan(value) else "non_finite_value"
    text = str(reason).strip()
    return text or NO_REASON_GIVEN


def _long_rows(
    frame: pd.DataFrame, variant: pd.Series, metric: str, values: pd.Series, reasons: pd.Series
) -> pd.DataFrame:
    numbers = pd.to_numeric(values, errors="coerce").astype("float64")
    reason_list = [_reason(v, r) for v, r in zip(numbers.tolist(), reasons.tolist(), strict=True)]
    clean = numbers.where(np.isfinite(numbers.to_numpy()), np.nan)
    return pd.DataFrame(
        {
            "layer": frame["layer"].astype("int64").to_numpy(),
            "feature": frame["feature"].astype("int64").to_numpy(),
            "variant": variant.astype(str).to_numpy(),
            "metric": metric,
            "value": clean.to_numpy(),
            "reason": reason_list,
        }
    )


def summarize_model(
    evaluation_frames: pd.DataFrame | Iterable[pd.DataFrame] | None,
    weightlens_frames: pd.DataFrame | Iterable[pd.DataFrame] | None,
    *,
    model: str = "",
) -> pd.DataFrame:
    """The scores of one model in long form: ``SUMMARY_SCHEMA`` columns.

    One row per (layer, feature, variant, metric): the FADE metrics of every evaluated
    (feature, variant) and, for every feature of either table, ``weightlens_auroc`` /
    ``weightlens_precision`` under the variant :data:`LLM_FREE_VARIANT` (reason
    :data:`NO_WEIGHTLENS_RESULT` for an evaluated feature without a WeightLens row). A missing or
    non-finite value is NaN with a ``reason`` (the table's ``*_reason`` / ``score_reason``);
    ``reason`` is null exactly when ``value`` is defined. Repeated keys raise :class:`InputError`.
    """
    evaluation = concat_frames(evaluation_frames, "evaluation frames")
    weightlens = concat_frames(weightlens_frames, "WeightLens frames")
    parts: list[pd.DataFrame] = []
    if len(evaluation):
        needed = ["layer", "feature", "variant"]
        for metric in FADE_METRICS:
            needed += [metric, f"{metric}_reason"]
        require_columns(evaluation, needed, "evaluation frame")
        for metric in FADE_METRICS:
            parts.append(
                _long_rows(
                    evaluation,
                    evaluation["variant"],
                    metric,
                    evaluation[metric],
                    evaluation[f"{metric}_reason"],
                )
            )
    if len(weightlens):
        require_columns(
            weightlens,
            ["layer", "feature", "auroc", "precision", "score_reason"],
            "WeightLens frame",
        )
        variant = pd.Series([LLM_FREE_VARIANT] * len(weightlens))
        for metric, column in zip(LLM_FREE_METRICS, ("auroc", "precision"), strict=True):
            parts.append(
                _long_rows(
                    weightlens, variant, metric, weightlens[column], weightlens["score_reason"]
                )
            )
    if len(evaluation):
        keys = _feature_keys(evaluation)
        if len(weightlens):
            keys -= _feature_keys(weightlens)
        if keys:
            layers, features = zip(*sorted(keys), strict=True)
            absent = pd.DataFrame({"layer": layers, "feature": features})
            n = len(absent)
            for metric in LLM_FREE_METRICS:
                parts.append(
                    _long_rows(
                        absent,
                        pd.Series([LLM_FREE_VARIANT] * n),
                        metric,
                        pd.Series([np.nan] * n),
                        pd.Series([NO_WEIGHTLENS_RESULT] * n),
                    )
                )
    columns = SUMMARY_SCHEMA.names
    if not parts:
        return pd.DataFrame({name: pd.Series(dtype=_pandas_dtype(name)) for name in columns})
    long = pd.concat(parts, ignore_index=True)
    key = ["layer", "feature", "variant", "metric"]
    repeated = long.duplicated(key, keep=False)
    if repeated.any():
        first = long[repeated].iloc[0]
        raise InputError(
            f"model {model!r}: score of layer {first['layer']} feature {first['feature']} "
            f"variant {first['variant']!r} metric {first['metric']!r} appears more than once "
            "(overlapping shards or repeated evaluation rows)"
        )
    long.insert(0, "model", str(model))
    long = long.sort_values(key, kind="mergesort", ignore_index=True)
    return long[columns]


def _feature_keys(frame: pd.DataFrame) -> set[tuple[int, int]]:
    """The (layer, feature) pairs of a frame."""
    return set(
        zip(frame["layer"].astype(int).tolist(), frame["feature"].astype(int).tolist(), strict=True)
    )


def _pandas_dtype(name: str) -> str:
    return {"layer": "int64", "feature": "int64", "value": "float64"}.get(name, "object")
