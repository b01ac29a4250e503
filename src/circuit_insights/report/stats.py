"""Means over features with percentile-bootstrap confidence intervals: the metric table
(``METRIC_TABLE_SCHEMA``) and the missing values by reason.

CI: features resampled with replacement within a cell, each cell seeded from the seed and its
key (:func:`cell_seed`), none from fewer than :data:`MIN_FEATURES_FOR_CI` features
(``docs/report.md``).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from circuit_insights.data.schemas import METRIC_TABLE_SCHEMA
from circuit_insights.evaluation.metrics import fade_counted_value
from circuit_insights.report.paper import order_variants
from circuit_insights.report.scores import NO_REASON_GIVEN, order_metrics, require_columns

#: Fewest features a cell needs for a bootstrap CI (and an error bar in the plots): with one or
#: two values, resampling gives back the values themselves, not an interval worth showing.
MIN_FEATURES_FOR_CI = 3


def bootstrap_ci(
    values: np.ndarray | Sequence[float],
    n_boot: int = 1000,
    seed: int | Sequence[int] = 0,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile-bootstrap CI of the mean of ``values`` (n,), finite values only.

    ``n_boot`` resamples of n values with replacement; the CI is the
    ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of their means. One value:
    (value, value); none: (NaN, NaN). Deterministic for a given ``seed``.
    """
    data = np.asarray(values, dtype=np.float64)
    data = data[np.isfinite(data)]
    if len(data) == 0:
        return math.nan, math.nan
    if n_boot < 1 or np.all(data == data[0]):
        mean = float(data.mean())
        return mean, mean
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    chunk = max(1, 2_000_000 // len(data))  # keep (chunk, n) index blocks small
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, len(data), size=(stop - start, len(data)))  # (chunk, n)
        means[start:stop] = data[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def cell_seed(seed: int, *key: Any) -> list[int]:
    """A seed per table cell, independent of the order in which cells are computed."""
    return [int(seed), zlib.crc32("\x1f".join(map(str, key)).encode())]


def reasons_text(reasons: pd.Series) -> str:
    """Reasons with their counts, most frequent first: ``"gated: 3; no_rated_0: 1"``."""
    counts = reasons.dropna().astype(str).value_counts()
    items = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return "; ".join(f"{name}: {count}" for name, count in items)


def metric_table(
    summary: pd.DataFrame,
    n_boot: int = 1000,
    seed: int = 0,
    *,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Mean and bootstrap CI per (model, variant, layer, metric): ``METRIC_TABLE_SCHEMA`` rows.

    ``n``: features in the mean: those with a value and the degenerate ones, which count as
    FADE's code counts them (:func:`circuit_insights.evaluation.metrics.fade_counted_value`: a
    Clarity or Responsiveness missing because all compared activations are equal counts as 0);
    ``n_degenerate``: how many of ``n`` are such features (their ``reason`` stays in the
    summary); ``n_missing``: features left out of the mean,
    ``missing_reasons`` their reasons with counts (``"gated: 3; no_rated_0: 1"``). ``mean``,
    ``ci_low``, ``ci_high`` are NaN when ``n`` is 0; ``ci_low``, ``ci_high`` are NaN when ``n`` is
    below :data:`MIN_FEATURES_FOR_CI`. The bootstrap resamples features within the
    cell (:func:`bootstrap_ci`), seeded per cell from ``seed`` and the cell's key.
    """
    require_columns(summary, ["model", "layer", "feature", "variant", "metric", "value"], "summary")
    rows: list[dict[str, Any]] = []
    reasons = summary["reason"] if "reason" in summary.columns else pd.Series([None] * len(summary))
    frame = summary.assign(reason=reasons.to_numpy())
    for (model, variant, layer, metric), cell in frame.groupby(
        ["model", "variant", "layer", "metric"], sort=False
    ):
        raw = pd.to_numeric(cell["value"], errors="coerce").to_numpy(dtype=np.float64)
        values = _fade_counted(str(metric), raw, cell["reason"])
        finite = np.isfinite(values)
        present = values[finite]
        low, high = bootstrap_ci(
            present, n_boot, cell_seed(seed, model, variant, layer, metric), confidence
        )
        if len(present) < MIN_FEATURES_FOR_CI:
            low = high = math.nan
        missing_reasons = cell.loc[~finite, "reason"].fillna(NO_REASON_GIVEN)
        rows.append(
            {
                "model": str(model),
                "variant": str(variant),
                "layer": int(layer),
                "metric": str(metric),
                "n": int(finite.sum()),
                "n_degenerate": int((finite & ~np.isfinite(raw)).sum()),
                "n_missing": int((~finite).sum()),
                "mean": float(present.mean()) if len(present) else math.nan,
                "ci_low": low,
                "ci_high": high,
                "missing_reasons": reasons_text(missing_reasons),
            }
        )
    columns = METRIC_TABLE_SCHEMA.names
    if not rows:
        return pd.DataFrame({name: [] for name in columns})
    table = pd.DataFrame(rows)
    return _sorted_cells(table)[columns]


def _fade_counted(metric: str, values: np.ndarray, reasons: pd.Series) -> np.ndarray:
    """``values`` (n,) with degenerate ones replaced as FADE counts them (else NaN stays)."""
    return np.array(
        [
            fade_counted_value(metric, value, None if pd.isna(reason) else str(reason))
            for value, reason in zip(values.tolist(), reasons.tolist(), strict=True)
        ],
        dtype=np.float64,
    )


def _sorted_cells(table: pd.DataFrame) -> pd.DataFrame:
    variant_rank = {v: i for i, v in enumerate(order_variants(table["variant"]))}
    metric_rank = {m: i for i, m in enumerate(order_metrics(table["metric"]))}
    keys = table.assign(_v=table["variant"].map(variant_rank), _m=table["metric"].map(metric_rank))
    keys = keys.sort_values(["model", "_v", "layer", "_m"], kind="mergesort", ignore_index=True)
    return keys.drop(columns=["_v", "_m"])


def missing_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Missing values by (model, variant, layer, metric, reason), with their count.

    Degenerate values that :func:`metric_table` counts as 0 (FADE's way) are listed here too,
    under their reason (``no_variance``, ``no_heldout_activations``)."""
    require_columns(summary, ["model", "layer", "variant", "metric", "value", "reason"], "summary")
    missing = summary[~np.isfinite(pd.to_numeric(summary["value"], errors="coerce"))]
    missing = missing.assign(reason=missing["reason"].fillna(NO_REASON_GIVEN))
    columns = ["model", "variant", "layer", "metric", "reason"]
    if missing.empty:
        return pd.DataFrame({name: [] for name in [*columns, "count"]})
    counts = missing.groupby(columns, sort=False).size().rename("count").reset_index()
    return _sorted_cells(counts)[[*columns, "count"]]
