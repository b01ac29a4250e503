"""Per-model summary of the scores: long table, paper-style metric tables, shares, plots.

Inputs are the FADE evaluation tables (``FADE_EVALUATION_SCHEMA``) and the WeightLens tables
(``WEIGHTLENS_SCHEMA``) of one model, any number of (layer, shard) frames each.

- :func:`summarize_model`: one row per (layer, feature, variant, metric) (``SUMMARY_SCHEMA``):
  the four FADE metrics of every evaluated variant, plus the LLM-free WeightLens scores
  (``weightlens_auroc``, ``weightlens_precision`` under the variant ``weightlens_rule``) for every
  feature, so each feature has at least one score that does not depend on the evaluator LLM.
  Missing values stay as rows (``value`` NaN) with their ``reason``.
- :func:`metric_table`: per (model, variant, layer, metric) the mean over features with a 95%
  percentile-bootstrap CI, ``n`` (features in the mean, ``n_degenerate`` of them degenerate
  features counted as FADE's code counts them) and ``n_missing`` (features without, with their
  reasons) (``METRIC_TABLE_SCHEMA``); :func:`metric_grid` lays it out like the paper's
  tables (rows: variant, columns: layer x metric); :func:`markdown_table` / :func:`html_table`
  render any table (no extra dependency).
- :func:`token_based_shares`: per layer the share of features with validated tokens and of
  token-based features, next to the paper's figures (``TOKEN_SHARES_SCHEMA``).
- :func:`plot_metrics`: one PNG per metric, mean by layer per variant with CI error bars.
- :func:`rule_comparison_table`: the LLM-free comparison of the executable explanations
  (``rater`` = ``rule``; maxact_rule, weightlens_rule, cl_rule, wl_cl_rule) in the paper's form,
  metric x layer x method, split into token-based and context-dependent features
  (``RULE_COMPARISON_SCHEMA``); :func:`plot_rule_comparison` draws it.
- :func:`write_summary`: all of the above as files, written atomically.

Definitions and choices: ``docs/report.md``.
"""

from __future__ import annotations

import math
import os
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from markupsafe import Markup

from circuit_insights.circuitlens import clustering
from circuit_insights.core.errors import InputError
from circuit_insights.core.io import atomic_path, write_parquet_atomic
from circuit_insights.data.schemas import (
    METRIC_TABLE_SCHEMA,
    RULE_COMPARISON_SCHEMA,
    SUMMARY_SCHEMA,
    TOKEN_SHARES_SCHEMA,
)
from circuit_insights.evaluation.metrics import fade_counted_value
from circuit_insights.explain import VARIANTS

__all__ = [
    "FADE_METRICS",
    "LLM_FREE_METRICS",
    "LLM_FREE_VARIANT",
    "METRICS",
    "MIN_FEATURES_FOR_CI",
    "NO_WEIGHTLENS_RESULT",
    "PAPER_SCORES",
    "PAPER_TOKEN_SHARES",
    "DESCRIPTION_FLAGS",
    "bootstrap_ci",
    "cluster_coverage",
    "coverage_html",
    "description_flags",
    "flag_counts",
    "flag_counts_html",
    "is_small_embedded_llm",
    "normalized_description",
    "html_document",
    "html_table",
    "markdown_table",
    "metric_grid",
    "metric_grid_html",
    "metric_grid_markdown",
    "metric_table",
    "missing_html",
    "missing_markdown",
    "missing_table",
    "order_variants",
    "paper_family",
    "paper_scores_table",
    "plot_metrics",
    "plot_rule_comparison",
    "rule_comparison_html",
    "rule_comparison_markdown",
    "rule_comparison_table",
    "shares_html",
    "shares_markdown",
    "summarize_model",
    "token_based_shares",
    "write_summary",
]

#: FADE metrics, in the paper's order (columns of ``FADE_EVALUATION_SCHEMA``, each with a
#: ``<metric>_reason`` column).
FADE_METRICS: tuple[str, ...] = ("clarity", "responsiveness", "purity", "faithfulness")
#: LLM-free WeightLens scores (``auroc``, ``precision`` of ``WEIGHTLENS_SCHEMA``).
LLM_FREE_METRICS: tuple[str, ...] = ("weightlens_auroc", "weightlens_precision")
#: The variant the LLM-free scores are filed under: the WeightLens rule description.
LLM_FREE_VARIANT = "weightlens_rule"
METRICS: tuple[str, ...] = FADE_METRICS + LLM_FREE_METRICS
#: Reason of the LLM-free rows of a feature that was evaluated but has no WeightLens row.
NO_WEIGHTLENS_RESULT = "no_weightlens_result"
#: Reason of a NaN value whose table gave no reason.
NO_REASON_GIVEN = "no_reason_given"
#: Fewest features a cell needs for a bootstrap CI (and an error bar in the plots): with one or
#: two values, resampling gives back the values themselves, not an interval worth showing.
MIN_FEATURES_FOR_CI = 3

#: Display order of the explanation variants: the paper's (``explain.VARIANTS``); others follow
#: alphabetically.
_VARIANT_ORDER: tuple[str, ...] = VARIANTS

#: Share of token-based features, as reported in the paper (secondhand; docs/method.md):
#: family -> (the paper's model, share).
PAPER_TOKEN_SHARES: dict[str, tuple[str, float]] = {
    "gemma": ("Gemma-2-2B", 0.327),
    "gpt2": ("GPT-2 small", 0.588),
    "llama": ("Llama-3.2-1B", 0.254),
}

#: FADE figures of the paper (secondhand; Gemma-2-2B transcoders; docs/method.md):
#: (method, setting, layer, metric, value). ``neuronpedia`` is not a variant of this project.
PAPER_SCORES: tuple[tuple[str, str, int, str, float], ...] = (
    ("weightlens", "", 18, "clarity", 0.80),
    ("weightlens", "", 18, "responsiveness", 0.85),
    ("neuronpedia", "", 18, "clarity", 0.58),
    ("maxact", "", 18, "clarity", 0.62),
    ("neuronpedia", "", 21, "purity", 0.73),
    ("cl_input", "24M tokens", 15, "clarity", 0.56),
    ("cl_input", "24M tokens", 23, "clarity", 0.41),
    ("cl_input", "24M tokens", 15, "responsiveness", 0.77),
    ("wl_cl_full", "24M tokens", 15, "clarity", 0.66),
    ("wl_cl_full", "24M tokens", 23, "clarity", 0.65),
    ("wl_cl_full", "24M tokens", 15, "responsiveness", 0.81),
    ("cl_full", "2.3B tokens", 15, "clarity", 0.79),
    ("cl_full", "2.3B tokens", 23, "clarity", 0.68),
    ("cl_full", "2.3B tokens", 15, "responsiveness", 0.92),
    ("maxact", "2.3B tokens", 15, "clarity", 0.49),
    ("maxact", "2.3B tokens", 23, "clarity", 0.54),
    ("maxact", "2.3B tokens", 15, "responsiveness", 0.78),
)

_DASH = "\u2014"


# --- inputs ------------------------------------------------------------------------------------


def _concat(frames: pd.DataFrame | Iterable[pd.DataFrame] | None, what: str) -> pd.DataFrame:
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


def _require(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [name for name in columns if name not in frame.columns]
    if missing:
        raise InputError(f"{what} lacks columns {missing}")


def order_variants(variants: Iterable[str]) -> list[str]:
    """Variants in the paper's order (``explain.VARIANTS``), unknown ones after, by name."""
    unique = set(variants)
    known = [v for v in _VARIANT_ORDER if v in unique]
    return known + sorted(unique - set(_VARIANT_ORDER))


def _order_metrics(metrics: Iterable[str]) -> list[str]:
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
    evaluation = _concat(evaluation_frames, "evaluation frames")
    weightlens = _concat(weightlens_frames, "WeightLens frames")
    parts: list[pd.DataFrame] = []
    if len(evaluation):
        needed = ["layer", "feature", "variant"]
        for metric in FADE_METRICS:
            needed += [metric, f"{metric}_reason"]
        _require(evaluation, needed, "evaluation frame")
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
        _require(
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


# --- statistics ----------------------------------------------------------------------------------


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


def _cell_seed(seed: int, *key: Any) -> list[int]:
    """A seed per table cell, independent of the order in which cells are computed."""
    return [int(seed), zlib.crc32("\x1f".join(map(str, key)).encode())]


def _reasons_text(reasons: pd.Series) -> str:
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
    _require(summary, ["model", "layer", "feature", "variant", "metric", "value"], "summary")
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
            present, n_boot, _cell_seed(seed, model, variant, layer, metric), confidence
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
                "missing_reasons": _reasons_text(missing_reasons),
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
    metric_rank = {m: i for i, m in enumerate(_order_metrics(table["metric"]))}
    keys = table.assign(_v=table["variant"].map(variant_rank), _m=table["metric"].map(metric_rank))
    keys = keys.sort_values(["model", "_v", "layer", "_m"], kind="mergesort", ignore_index=True)
    return keys.drop(columns=["_v", "_m"])


def missing_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Missing values by (model, variant, layer, metric, reason), with their count.

    Degenerate values that :func:`metric_table` counts as 0 (FADE's way) are listed here too,
    under their reason (``no_variance``, ``no_heldout_activations``)."""
    _require(summary, ["model", "layer", "variant", "metric", "value", "reason"], "summary")
    missing = summary[~np.isfinite(pd.to_numeric(summary["value"], errors="coerce"))]
    missing = missing.assign(reason=missing["reason"].fillna(NO_REASON_GIVEN))
    columns = ["model", "variant", "layer", "metric", "reason"]
    if missing.empty:
        return pd.DataFrame({name: [] for name in [*columns, "count"]})
    counts = missing.groupby(columns, sort=False).size().rename("count").reset_index()
    return _sorted_cells(counts)[[*columns, "count"]]


# --- tables in the paper's form ------------------------------------------------------------------


def _number(value: Any, digits: int = 2) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return _DASH
    return f"{value:.{digits}f}" if math.isfinite(value) else _DASH


def _has_ci(row: Mapping[str, Any]) -> bool:
    """Whether a cell rests on enough features for its CI to be shown."""
    return int(row["n"]) >= MIN_FEATURES_FOR_CI and math.isfinite(float(row["ci_low"]))


def _cell_text(row: Mapping[str, Any], digits: int) -> str:
    missing = f", {int(row['n_missing'])} missing" if int(row["n_missing"]) else ""
    degenerate = int(row.get("n_degenerate", 0) or 0)
    missing = (f", {degenerate} degenerate as 0" if degenerate else "") + missing
    if int(row["n"]) == 0:
        return f"{_DASH} (n=0{missing})"
    if not _has_ci(row):
        return f"{_number(row['mean'], digits)} (n={int(row['n'])}{missing}; too few for a CI)"
    ci = f"[{_number(row['ci_low'], digits)}, {_number(row['ci_high'], digits)}]"
    return f"{_number(row['mean'], digits)} {ci} (n={int(row['n'])}{missing})"


def _row_label(model: str, variant: str, several_models: bool) -> str:
    return f"{model} / {variant}" if several_models else variant


def metric_grid(stats: pd.DataFrame, *, digits: int = 2) -> pd.DataFrame:
    """:func:`metric_table` in the paper's form: one row per variant (``model / variant`` when
    there are several models), columns a (layer, metric) MultiIndex, cells
    ``"mean [ci_low, ci_high] (n=N, M missing)"``, without the CI below
    :data:`MIN_FEATURES_FOR_CI` features; ``— (n=0)`` where a variant has no row."""
    if stats.empty:
        return pd.DataFrame()
    several = stats["model"].nunique() > 1
    columns = sorted(
        {(int(r.layer), str(r.metric)) for r in stats.itertuples()},
        key=lambda c: (c[0], _order_metrics(stats["metric"]).index(c[1])),
    )
    labels: list[str] = []
    cells: dict[str, dict[tuple[int, str], str]] = {}
    for row in stats.to_dict("records"):
        label = _row_label(str(row["model"]), str(row["variant"]), several)
        if label not in cells:
            labels.append(label)
            cells[label] = {}
        cells[label][(int(row["layer"]), str(row["metric"]))] = _cell_text(row, digits)
    index = pd.MultiIndex.from_tuples(columns, names=["layer", "metric"])
    data = [[cells[label].get(column, f"{_DASH} (n=0)") for column in columns] for label in labels]
    return pd.DataFrame(data, index=pd.Index(labels, name="variant"), columns=index)


def _escape_markdown(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], align: Sequence[str] | None = None
) -> str:
    """A GitHub-flavoured markdown table; ``align`` per column: ``l``, ``r`` or ``c``."""
    marks = {"l": ":---", "r": "---:", "c": ":---:"}
    align = list(align) if align is not None else ["l"] * len(header)
    lines = [
        "| " + " | ".join(_escape_markdown(h) for h in header) + " |",
        "|" + "|".join(marks.get(a, "---") for a in align) + "|",
    ]
    for row in rows:
        if len(row) != len(header):
            raise InputError(
                f"markdown table row {list(row)} has {len(row)} cells, not {len(header)}"
            )
        lines.append("| " + " | ".join(_escape_markdown(str(c)) for c in row) + " |")
    return "\n".join(lines) + "\n"


def html_table(
    header: Sequence[Any],
    rows: Sequence[Sequence[Any]],
    *,
    groups: Sequence[tuple[Any, int]] | None = None,
    caption: str | None = None,
    css_class: str = "table",
) -> Markup:
    """An HTML ``<table>``; every cell is escaped unless it is :class:`markupsafe.Markup`.

    ``groups``: an extra header row above ``header`` of (label, column span) pairs.
    """
    parts = [Markup('<table class="{}">').format(css_class)]
    if caption:
        parts.append(Markup("<caption>{}</caption>").format(caption))
    parts.append(Markup("<thead>"))
    if groups:
        parts.append(Markup("<tr>"))
        for label, span in groups:
            parts.append(Markup('<th colspan="{}">{}</th>').format(int(span), label))
        parts.append(Markup("</tr>"))
    parts.append(Markup("<tr>") + Markup("").join(Markup("<th>{}</th>").format(h) for h in header))
    parts.append(Markup("</tr></thead><tbody>"))
    for row in rows:
        if len(row) != len(header):
            raise InputError(f"HTML table row {list(row)} has {len(row)} cells, not {len(header)}")
        cells = Markup("").join(Markup("<td>{}</td>").format(c) for c in row)
        parts.append(Markup("<tr>") + cells + Markup("</tr>"))
    parts.append(Markup("</tbody></table>"))
    return Markup("").join(parts)


def _grid_layout(grid: pd.DataFrame) -> tuple[list[int], list[str], list[tuple[int, str]]]:
    columns = [(int(layer), str(metric)) for layer, metric in grid.columns]
    layers = sorted({layer for layer, _ in columns})
    return layers, [str(i) for i in grid.index], columns


def metric_grid_markdown(stats: pd.DataFrame, *, digits: int = 2) -> str:
    """:func:`metric_grid` as a markdown table (column names ``L<layer> <metric>``)."""
    grid = metric_grid(stats, digits=digits)
    if grid.empty:
        return "_No scores._\n"
    _, labels, columns = _grid_layout(grid)
    header = ["variant"] + [f"L{layer} {metric}" for layer, metric in columns]
    rows = [[label, *grid.loc[label].tolist()] for label in labels]
    return markdown_table(header, rows, ["l"] + ["r"] * len(columns))


def _cell_markup(row: Mapping[str, Any] | None, digits: int) -> Markup:
    if row is None:  # the variant has no score of this metric at this layer
        return Markup('<span class="na" title="not scored">{} <small>n=0</small></span>').format(
            _DASH
        )
    title = str(row["missing_reasons"]) if int(row["n_missing"]) else ""
    missing = f", {int(row['n_missing'])} missing" if int(row["n_missing"]) else ""
    if int(row["n"]) == 0:
        return Markup('<span class="na" title="{}">{} <small>n=0{}</small></span>').format(
            title, _DASH, missing
        )
    if not _has_ci(row):
        return Markup(
            '<span class="few" title="{}">{}<br><small>n={}{}, no CI (&lt; {} features)</small>'
            "</span>"
        ).format(title, _number(row["mean"], digits), int(row["n"]), missing, MIN_FEATURES_FOR_CI)
    return Markup('<span title="{}"><b>{}</b><br><small>[{}, {}] n={}{}</small></span>').format(
        title,
        _number(row["mean"], digits),
        _number(row["ci_low"], digits),
        _number(row["ci_high"], digits),
        int(row["n"]),
        missing,
    )


def metric_grid_html(stats: pd.DataFrame, *, digits: int = 2) -> Markup:
    """:func:`metric_grid` as an HTML table with a layer header row over the metric columns;
    a cell's tooltip lists the reasons of its missing values."""
    if stats.empty:
        return Markup("<p><em>No scores.</em></p>")
    several = stats["model"].nunique() > 1
    by_key: dict[str, dict[tuple[int, str], Mapping[str, Any]]] = {}
    labels: list[str] = []
    for row in stats.to_dict("records"):
        label = _row_label(str(row["model"]), str(row["variant"]), several)
        if label not in by_key:
            labels.append(label)
            by_key[label] = {}
        by_key[label][(int(row["layer"]), str(row["metric"]))] = row
    metric_order = _order_metrics(stats["metric"])
    columns = sorted(
        {key for cells in by_key.values() for key in cells},
        key=lambda c: (c[0], metric_order.index(c[1])),
    )
    layers = sorted({layer for layer, _ in columns})
    groups = [("", 1)] + [
        (f"layer {layer}", sum(1 for c in columns if c[0] == layer)) for layer in layers
    ]
    header = ["variant"] + [metric for _, metric in columns]
    rows = [
        [label] + [_cell_markup(by_key[label].get(column), digits) for column in columns]
        for label in labels
    ]
    return html_table(header, rows, groups=groups, css_class="table metric-table")


def paper_scores_table() -> pd.DataFrame:
    """:data:`PAPER_SCORES` as a frame: method, setting, layer, metric, value."""
    return pd.DataFrame(PAPER_SCORES, columns=["method", "setting", "layer", "metric", "value"])


# --- token-based shares --------------------------------------------------------------------------


def paper_family(model: str) -> str | None:
    """The paper's model family a model name belongs to (``gemma``, ``gpt2``, ``llama``) or None."""
    name = re.sub(r"[^a-z0-9]", "", str(model).lower())
    for family in ("gemma", "gpt2", "llama"):
        if family in name:
            return family
    return None


def _validated_count(values: Any) -> int:
    if values is None or (isinstance(values, float) and math.isnan(values)):
        return 0
    return len(values)


def token_based_shares(
    weightlens_frames: pd.DataFrame | Iterable[pd.DataFrame] | None,
    *,
    model: str = "",
    family: str | None = None,
) -> pd.DataFrame:
    """Per layer, and over all layers (``layer`` null), ``TOKEN_SHARES_SCHEMA`` rows.

    ``validated_share``: features with at least one validated token; ``token_based_share``:
    features classified token-based (``is_token_based``, ``docs/weightlens.md``), what the paper
    reports. ``paper_model`` / ``paper_share``:
    the paper's figure for ``family`` (default: :func:`paper_family` of ``model``), null when the
    model is of none of its families.
    """
    weightlens = _concat(weightlens_frames, "WeightLens frames")
    columns = TOKEN_SHARES_SCHEMA.names
    if weightlens.empty:
        return pd.DataFrame({name: [] for name in columns})
    _require(
        weightlens,
        ["layer", "feature", "validated_token_ids", "is_token_based"],
        "WeightLens frame",
    )
    family = family if family is not None else paper_family(model)
    if family is not None and family not in PAPER_TOKEN_SHARES:
        raise InputError(f"paper family {family!r}: choose from {list(PAPER_TOKEN_SHARES)}")
    paper_model, paper_share = (
        PAPER_TOKEN_SHARES.get(family, (None, None)) if family else (None, None)
    )
    frame = pd.DataFrame(
        {
            "layer": weightlens["layer"].astype(int),
            "validated": [_validated_count(v) > 0 for v in weightlens["validated_token_ids"]],
            "token_based": weightlens["is_token_based"].astype(bool),
        }
    )

    def row(layer: int | None, part: pd.DataFrame) -> dict[str, Any]:
        n = len(part)
        return {
            "model": str(model),
            "layer": layer,
            "n_features": n,
            "n_validated": int(part["validated"].sum()),
            "validated_share": float(part["validated"].mean()) if n else math.nan,
            "n_token_based": int(part["token_based"].sum()),
            "token_based_share": float(part["token_based"].mean()) if n else math.nan,
            "paper_model": paper_model,
            "paper_share": paper_share,
        }

    rows = [row(int(layer), part) for layer, part in frame.groupby("layer", sort=True)]
    rows.append(row(None, frame))
    out = pd.DataFrame(rows)
    out["layer"] = out["layer"].astype("Int64")
    return out[columns]


def _percent(value: Any) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return _DASH
    return f"{100 * value:.1f}%" if math.isfinite(value) else _DASH


def _shares_rows(shares: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    header = [
        "model",
        "layer",
        "features",
        "validated",
        "validated share",
        "token-based",
        "token-based share",
        "paper (share token-based)",
    ]
    rows = []
    for row in shares.to_dict("records"):
        layer = row["layer"]
        paper = (
            f"{row['paper_model']}: {_percent(row['paper_share'])}"
            if isinstance(row["paper_model"], str)
            else _DASH
        )
        rows.append(
            [
                str(row["model"]),
                "all" if layer is None or pd.isna(layer) else str(int(layer)),
                str(int(row["n_features"])),
                str(int(row["n_validated"])),
                _percent(row["validated_share"]),
                str(int(row["n_token_based"])),
                _percent(row["token_based_share"]),
                paper,
            ]
        )
    return header, rows


def shares_markdown(shares: pd.DataFrame) -> str:
    """:func:`token_based_shares` as a markdown table."""
    header, rows = _shares_rows(shares)
    return markdown_table(header, rows, ["l", "l", "r", "r", "r", "r", "r", "l"])


def shares_html(shares: pd.DataFrame) -> Markup:
    """:func:`token_based_shares` as an HTML table."""
    header, rows = _shares_rows(shares)
    return html_table(header, rows, css_class="table shares-table")


# --- description quality ------------------------------------------------------------------------

#: Quality flags of a description (:func:`description_flags`), in display order.
DESCRIPTION_FLAGS: tuple[str, ...] = ("unparseable", "placeholder", "repeated", "degenerate")

#: Texts that are a stand-in, not a description: a code-like name (``feature_fire(s)``), an
#: ellipsis, a bracketed slot (``<description>``, ``[concept]``), the answer format echoed back
#: (``{"description": ...}``), or a bare "description" / "n/a" / "todo" / "unknown" / "none".
_PLACEHOLDERS: tuple[re.Pattern[str], ...] = (
    re.compile(r"^\W*[a-z0-9]+(?:_[a-z0-9]+)+(?:\(s\))?\W*$", re.IGNORECASE),
    re.compile(r"\bfeature_fires?\b|\w\(s\)_|_\w+\(s\)", re.IGNORECASE),
    re.compile(r"^\W*(?:\.\.\.|…)\W*$"),
    re.compile(
        r"[<\[{]\s*(?:description|concept|feature|pattern|token|text|word|\.\.\.)s?\s*[>\]}]",
        re.IGNORECASE,
    ),
    re.compile(r"[\"']description[\"']\s*:", re.IGNORECASE),
    re.compile(r"^\W*(?:description|n/?a|todo|tbd|unknown|none|null)\W*$", re.IGNORECASE),
)
#: One character 12+ times, or one word 6+ times separated only by spaces: a small model's
#: runaway output. Quoted text (tokens a description lists) is left out before the check.
_RUNAWAY = re.compile(r"(.)\1{11,}|\b(\w+)(?:\s+\2\b){5,}")
_QUOTED = re.compile(r"\"[^\"]*\"|“[^”]*”")
#: ``parse_status`` values of an answer that gave no usable description.
_UNPARSED = {"unparseable", "empty", "error"}


def normalized_description(text: str) -> str:
    """A description as compared for repeats: lower case, runs of spaces and outer punctuation
    dropped."""
    return re.sub(r"\s+", " ", str(text)).strip().strip(".!;:,").strip().lower()


def description_flags(explanations: pd.DataFrame) -> pd.Series:
    """Quality flags of each row of an explanations table (``variant``, ``feature``,
    ``description``; ``layer`` and ``parse_status`` used when present): a Series of tuples, in
    :data:`DESCRIPTION_FLAGS` order, aligned with the rows.

    - ``unparseable``: the answer was unparseable, empty or an error (no description);
    - ``placeholder``: the text matches a stand-in pattern (``feature_fire(s)``, ``...``,
      ``<description>``, the answer format echoed back);
    - ``repeated``: the same text (:func:`normalized_description`) describes two or more features
      of the same variant in the table (rule variants included: their template says the same
      thing about features with the same tokens);
    - ``degenerate``: one character or word repeated many times (outside quoted tokens).

    An empty tuple means no check fired; it says nothing about whether the description is right.
    """
    _require(explanations, ["variant", "feature", "description"], "explanations")
    texts = explanations["description"].astype(object)
    status = (
        explanations["parse_status"].astype(object)
        if "parse_status" in explanations.columns
        else pd.Series([None] * len(explanations), index=explanations.index)
    )
    has_text = texts.map(lambda v: isinstance(v, str) and bool(v.strip()))
    normal = texts.where(has_text, None).map(
        lambda v: normalized_description(v) if isinstance(v, str) else None
    )
    feature_key = explanations["feature"].astype(int).astype(str)
    if "layer" in explanations.columns:
        feature_key = explanations["layer"].astype(int).astype(str) + ":" + feature_key
    keyed = pd.DataFrame(
        {"variant": explanations["variant"].astype(str), "text": normal, "feature": feature_key}
    )
    spread = keyed.dropna(subset=["text"]).groupby(["variant", "text"])["feature"].nunique()
    repeated = {key for key, count in spread.items() if count >= 2}
    flags = []
    for variant, text, raw, state, ok in zip(
        keyed["variant"], normal, texts, status, has_text, strict=True
    ):
        row: list[str] = []
        if not ok and str(state) in _UNPARSED:
            row.append("unparseable")
        if ok and any(p.search(str(raw)) for p in _PLACEHOLDERS):
            row.append("placeholder")
        if ok and (variant, text) in repeated:
            row.append("repeated")
        if ok and _RUNAWAY.search(_QUOTED.sub('""', str(raw))):
            row.append("degenerate")
        flags.append(tuple(row))
    return pd.Series(flags, index=explanations.index, dtype=object)


def flag_counts(explanations: pd.DataFrame) -> pd.DataFrame:
    """Per variant: final descriptions (``n``, rows with text) and how many carry each flag of
    :func:`description_flags` (one column per flag); final rows only when ``is_final`` exists."""
    columns = ["variant", "n", *DESCRIPTION_FLAGS]
    if explanations is None or explanations.empty:
        return pd.DataFrame({name: [] for name in columns})
    final = explanations
    if "is_final" in final.columns:
        final = final[final["is_final"].astype(bool)]
    elif "cluster" in final.columns:
        final = final[final["cluster"].astype(int) < 0]
    flags = description_flags(final)
    rows = []
    for variant in order_variants(final["variant"].astype(str).unique()):
        mask = (final["variant"].astype(str) == variant).to_numpy()
        own = flags[mask]
        texts = final.loc[mask, "description"].map(lambda v: isinstance(v, str) and bool(v.strip()))
        row: dict[str, Any] = {"variant": variant, "n": int(texts.sum())}
        for flag in DESCRIPTION_FLAGS:
            row[flag] = int(sum(flag in f for f in own))
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def flag_counts_html(counts: pd.DataFrame) -> Markup:
    """:func:`flag_counts` as an HTML table (a flagged count is marked)."""
    header = ["variant", "descriptions", *DESCRIPTION_FLAGS]
    rows = []
    for row in counts.to_dict("records"):
        cells: list[Any] = [str(row["variant"]), str(int(row["n"]))]
        for flag in DESCRIPTION_FLAGS:
            count = int(row[flag])
            cells.append(Markup('<span class="flag">{}</span>').format(count) if count else "0")
        rows.append(cells)
    return html_table(header, rows, css_class="table flag-table")


#: Served names of the embedded SmolLM2-135M explainer / rater (``llm.served_model_name``
#: default ``smollm2``; the model folder name).
_SMALL_EMBEDDED_LLM = re.compile(r"^smollm2$|smollm2?[-_ ]?135m", re.IGNORECASE)


def is_small_embedded_llm(name: str | None) -> bool:
    """Whether an LLM name (``llm_model`` of the tables) is the embedded SmolLM2-135M."""
    return bool(name) and bool(_SMALL_EMBEDDED_LLM.search(str(name)))


# --- cluster coverage ----------------------------------------------------------------------------


def cluster_coverage(clusters: pd.DataFrame) -> pd.DataFrame:
    """Per layer, how far the clustering reaches (``CLUSTERS_SCHEMA`` rows, any shards):
    :func:`circuit_insights.circuitlens.clustering.cluster_coverage`."""
    return clustering.cluster_coverage(clusters)


#: The paper's clusters per feature (Gemma-2-2B transcoders), for the coverage tables.
PAPER_CLUSTERS_PER_FEATURE = (
    "the paper: about 4.5 clusters per feature at layer 7 and 2.8 at layer 12 of Gemma-2-2B"
)


def _coverage_rows(
    coverage: pd.DataFrame, n_features: Mapping[int, int] | None
) -> tuple[list[str], list[list[str]]]:
    header = [
        "layer",
        "features of the layer",
        "clustered (attributed)",
        "with a cluster",
        "clusters per feature",
        "samples",
        "noise share",
        "all noise",
    ]
    rows = []
    for row in coverage.to_dict("records"):
        layer = int(row["layer"])
        total = (n_features or {}).get(layer)
        clustered = int(row["n_features"])
        share_of_all = f" ({_percent(clustered / total)})" if total else ""
        rows.append(
            [
                str(layer),
                str(total) if total is not None else _DASH,
                f"{clustered}{share_of_all}",
                f"{int(row['n_features_clustered'])} ({_percent(row['share_features_clustered'])})",
                _number(row["clusters_per_feature"]),
                str(int(row["n_samples"])),
                _percent(row["noise_share"]),
                _percent(row["share_all_noise"]),
            ]
        )
    return header, rows


def coverage_html(coverage: pd.DataFrame, n_features: Mapping[int, int] | None = None) -> Markup:
    """:func:`cluster_coverage` as an HTML table; ``n_features``: layer -> features of the layer
    (the WeightLens rows), to show how many of them were clustered at all."""
    header, rows = _coverage_rows(coverage, n_features)
    return html_table(header, rows, css_class="table coverage-table")


def coverage_markdown(coverage: pd.DataFrame, n_features: Mapping[int, int] | None = None) -> str:
    """:func:`cluster_coverage` as a markdown table (columns as :func:`coverage_html`)."""
    header, rows = _coverage_rows(coverage, n_features)
    return markdown_table(header, rows, ["r", "r", "r", "r", "r", "r", "r", "r"])


# --- plots ---------------------------------------------------------------------------------------


def plot_metrics(
    stats: pd.DataFrame, out_dir: str | os.PathLike[str], *, metrics: Sequence[str] | None = None
) -> dict[str, Path]:
    """One PNG per metric, ``{out_dir}/{metric}.png``: the mean by layer of every variant (one
    series per (model, variant)) as points labelled with their ``n``; a filled point with its CI
    as an error bar where ``n`` >= :data:`MIN_FEATURES_FOR_CI`, a hollow point without one below
    it; no lines join the layers. Written atomically.

    ``metrics``: default every metric of ``stats``. A metric without any value still gets a plot
    that says so. Uses matplotlib's Agg canvas (no display, no pyplot state).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out_dir)
    metrics = list(metrics) if metrics is not None else _order_metrics(stats["metric"])
    several = stats["model"].nunique() > 1 if len(stats) else False
    written: dict[str, Path] = {}
    for metric in metrics:
        cells = stats[(stats["metric"] == metric) & (stats["n"] > 0)] if len(stats) else stats
        figure = Figure(figsize=(7.0, 4.2), dpi=100)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot(1, 1, 1)
        series = list(cells.groupby(["model", "variant"], sort=False)) if len(cells) else []
        order = order_variants(cells["variant"]) if len(cells) else []
        series.sort(key=lambda item: (item[0][0], order.index(item[0][1])))
        width = 0.6 / max(1, len(series))
        for i, ((model, variant), part) in enumerate(series):
            part = part.sort_values("layer")
            x = part["layer"].to_numpy(dtype=float) + (i - (len(series) - 1) / 2) * width
            mean = part["mean"].to_numpy(dtype=float)
            n = part["n"].to_numpy(dtype=int)
            ci = (n >= MIN_FEATURES_FOR_CI) & np.isfinite(part["ci_low"].to_numpy(dtype=float))
            low = np.clip(mean - part["ci_low"].to_numpy(dtype=float), 0, None)
            high = np.clip(part["ci_high"].to_numpy(dtype=float) - mean, 0, None)
            color = f"C{i % 10}"
            label = _row_label(str(model), str(variant), several)
            if ci.any():
                axes.errorbar(
                    x[ci],
                    mean[ci],
                    yerr=np.vstack([low[ci], high[ci]]),
                    marker="o",
                    linestyle="none",
                    capsize=3,
                    color=color,
                    label=label,
                )
            if (~ci).any():
                axes.plot(
                    x[~ci],
                    mean[~ci],
                    marker="o",
                    linestyle="none",
                    markerfacecolor="none",
                    color=color,
                    label=None if ci.any() else label,
                )
            for xi, yi, ni in zip(x, mean, n, strict=True):
                axes.annotate(
                    f"n={ni}", (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7
                )
        if series:
            layers = sorted(int(v) for v in cells["layer"].unique())
            axes.set_xticks(layers)
            axes.set_xlim(layers[0] - 0.7, layers[-1] + 0.7)
            axes.legend(fontsize=8, loc="best")
        else:
            axes.text(
                0.5, 0.5, f"no {metric} values", ha="center", va="center", transform=axes.transAxes
            )
        axes.set_ylim(-0.02, 1.05)
        axes.set_xlabel("layer")
        axes.set_ylabel(metric)
        axes.set_title(
            f"{metric}: mean by layer; bars: 95% bootstrap CI (n \u2265 {MIN_FEATURES_FOR_CI}); "
            f"hollow: n < {MIN_FEATURES_FOR_CI}, no CI",
            fontsize=9,
        )
        axes.grid(True, alpha=0.3)
        figure.tight_layout()
        path = out / f"{metric}.png"
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png")
        written[metric] = path
    return written


# --- files ---------------------------------------------------------------------------------------


_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; vertical-align: top; }
th { background: #f1f3f6; }
td small { color: #666; }
.na { color: #999; }
caption { text-align: left; font-weight: 600; padding: 4px 0; }
"""


def html_document(title: str, body: Markup | str, *, css: str = _CSS) -> str:
    """A standalone HTML page (inline CSS, no external assets); ``body`` escaped unless Markup."""
    return str(
        Markup(
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            "<title>{}</title><style>{}</style></head><body><h1>{}</h1>{}</body></html>\n"
        ).format(title, Markup(css), title, body)
    )


def _write_text(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def _paper_scores_markdown() -> str:
    paper = paper_scores_table()
    rows = [
        [r.method, r.setting or _DASH, str(r.layer), r.metric, f"{r.value:.2f}"]
        for r in paper.itertuples()
    ]
    return markdown_table(
        ["method", "setting", "layer", "metric", "value"], rows, ["l", "l", "r", "l", "r"]
    )


def _paper_scores_html() -> Markup:
    paper = paper_scores_table()
    rows = [
        [r.method, r.setting or _DASH, str(r.layer), r.metric, f"{r.value:.2f}"]
        for r in paper.itertuples()
    ]
    return html_table(
        ["method", "setting", "layer", "metric", "value"],
        rows,
        caption="Paper figures (Gemma-2-2B transcoders; secondhand, see docs/method.md)",
    )


def _missing_rows(missing: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    header = ["model", "variant", "layer", "metric", "reason", "count"]
    rows = [
        [
            str(r.model),
            str(r.variant),
            str(int(r.layer)),
            str(r.metric),
            str(r.reason),
            str(r.count),
        ]
        for r in missing.itertuples()
    ]
    return header, rows


def missing_markdown(missing: pd.DataFrame) -> str:
    """:func:`missing_table` as a markdown table (``_None._`` when empty)."""
    header, rows = _missing_rows(missing)
    return markdown_table(header, rows) if rows else "_None._\n"


def missing_html(missing: pd.DataFrame) -> Markup:
    """:func:`missing_table` as an HTML table."""
    header, rows = _missing_rows(missing)
    return html_table(header, rows) if rows else Markup("<p><em>None.</em></p>")


def write_summary(
    evaluation_frames: pd.DataFrame | Iterable[pd.DataFrame] | None,
    weightlens_frames: pd.DataFrame | Iterable[pd.DataFrame] | None,
    out_dir: str | os.PathLike[str],
    *,
    model: str = "",
    family: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    rule_evaluation_frames: pd.DataFrame | Iterable[pd.DataFrame] | None = None,
    clusters_frames: pd.DataFrame | Iterable[pd.DataFrame] | None = None,
) -> dict[str, Path]:
    """Write the summary of one model into ``out_dir``, every file atomically.

    Files: ``summary.parquet`` (:func:`summarize_model`), ``metric_table.parquet``
    (:func:`metric_table`), ``metric_table.md`` / ``.html`` (the paper-form table, the missing
    values by reason, the paper's figures), ``token_based_shares.parquet`` / ``.md`` / ``.html``,
    ``plots/{metric}.png``; with rule-rated evaluations (``rule_evaluation_frames``, or rows of
    the evaluation frames with ``rater`` = ``rule``): ``rule_comparison.parquet`` / ``.md`` /
    ``.html``, ``plots/rule_comparison.png`` and ``paper_claims.parquet`` / ``.md`` (paired
    differences between methods, ``circuit_insights.report.claims``); with cluster tables (``clusters_frames``):
    ``cluster_coverage.parquet`` / ``.md`` (clusters per feature and noise share per layer,
    :func:`cluster_coverage`). Returns name -> path (``plot_<metric>`` for plots).
    """
    out = Path(out_dir)
    evaluation = _concat(evaluation_frames, "evaluation frames")
    weightlens = _concat(weightlens_frames, "WeightLens frames")
    rule_rated = _concat(rule_evaluation_frames, "rule evaluation frames")
    if "rater" in evaluation.columns:
        by_rule = evaluation["rater"].astype(str) == "rule"
        rule_rated = _concat([rule_rated, evaluation[by_rule]], "rule evaluation frames")
        evaluation = evaluation[~by_rule]
    summary = summarize_model(evaluation, weightlens, model=model)
    stats = metric_table(summary, n_boot=n_boot, seed=seed)
    missing = missing_table(summary)
    shares = token_based_shares(weightlens, model=model, family=family)
    written: dict[str, Path] = {}

    written["summary"] = out / "summary.parquet"
    write_parquet_atomic(summary, written["summary"], schema=SUMMARY_SCHEMA)
    written["metric_table"] = out / "metric_table.parquet"
    write_parquet_atomic(stats, written["metric_table"], schema=METRIC_TABLE_SCHEMA)
    written["token_based_shares"] = out / "token_based_shares.parquet"
    write_parquet_atomic(shares, written["token_based_shares"], schema=TOKEN_SHARES_SCHEMA)

    title = f"Scores of {model}" if model else "Scores"
    note = (
        "Cells: mean over features [95% percentile-bootstrap CI] (n = features in the mean; "
        "a degenerate Clarity or Responsiveness, all compared activations equal, counts as 0 "
        "as in FADE's code and is counted as such; other missing values are excluded and "
        "counted). Cells resting on fewer than "
        f"{MIN_FEATURES_FOR_CI} features show their mean and n without a CI."
    )
    markdown = "\n".join(
        [
            f"# {title}",
            "",
            note,
            "",
            metric_grid_markdown(stats),
            "## Missing values",
            "",
            missing_markdown(missing),
            "## Paper figures (Gemma-2-2B transcoders; secondhand, see docs/method.md)",
            "",
            _paper_scores_markdown(),
        ]
    )
    written["metric_table_md"] = _write_text(out / "metric_table.md", markdown)
    body = Markup("").join(
        [
            Markup("<p>{}</p>").format(note),
            metric_grid_html(stats),
            Markup("<h2>Missing values</h2>"),
            missing_html(missing),
            _paper_scores_html(),
        ]
    )
    written["metric_table_html"] = _write_text(
        out / "metric_table.html", html_document(title, body)
    )
    shares_title = f"Token-based features of {model}" if model else "Token-based features"
    written["token_based_shares_md"] = _write_text(
        out / "token_based_shares.md", f"# {shares_title}\n\n" + shares_markdown(shares)
    )
    written["token_based_shares_html"] = _write_text(
        out / "token_based_shares.html", html_document(shares_title, shares_html(shares))
    )
    for metric, path in plot_metrics(stats, out / "plots").items():
        written[f"plot_{metric}"] = path
    if len(rule_rated):
        comparison = rule_comparison_table(
            rule_rated, weightlens, model=model, n_boot=n_boot, seed=seed
        )
        written["rule_comparison"] = out / "rule_comparison.parquet"
        write_parquet_atomic(comparison, written["rule_comparison"], schema=RULE_COMPARISON_SCHEMA)
        rule_title = (
            f"Executable explanations of {model}, rule-rated"
            if model
            else ("Executable explanations, rule-rated")
        )
        written["rule_comparison_md"] = _write_text(
            out / "rule_comparison.md",
            f"# {rule_title}\n\n{RULE_NOTE}\n\n" + rule_comparison_markdown(comparison),
        )
        written["rule_comparison_html"] = _write_text(
            out / "rule_comparison.html",
            html_document(
                rule_title,
                Markup("<p>{}</p>").format(RULE_NOTE) + rule_comparison_html(comparison),
            ),
        )
        written["plot_rule_comparison"] = plot_rule_comparison(
            comparison, out / "plots" / "rule_comparison.png"
        )
        from circuit_insights.report import claims  # claims builds on this module

        checks = claims.claim_checks(rule_rated, weightlens, n_boot=n_boot, seed=seed)
        written["paper_claims"] = out / "paper_claims.parquet"
        write_parquet_atomic(checks, written["paper_claims"])
        claims_title = f"The paper's claims on {model}" if model else "The paper's claims"
        written["paper_claims_md"] = _write_text(
            out / "paper_claims.md",
            f"# {claims_title}, rule-rated\n\n{claims.CLAIMS_NOTE}\n\n"
            + claims.claims_markdown(checks),
        )
    clusters = _concat(clusters_frames, "cluster frames")
    if len(clusters):
        coverage = cluster_coverage(clusters)
        written["cluster_coverage"] = out / "cluster_coverage.parquet"
        write_parquet_atomic(coverage, written["cluster_coverage"])
        n_features = (
            weightlens.groupby("layer")["feature"].nunique().astype(int).to_dict()
            if {"layer", "feature"} <= set(weightlens.columns)
            else None
        )
        coverage_title = f"Circuit clusters of {model}" if model else "Circuit clusters"
        written["cluster_coverage_md"] = _write_text(
            out / "cluster_coverage.md",
            f"# {coverage_title}\n\nPer layer: features clustered (the attributed draw), those "
            "with at least one cluster, clusters per feature (mean over the attributed features), the share of samples "
            f"labelled noise. Compare with {PAPER_CLUSTERS_PER_FEATURE}.\n\n"
            + coverage_markdown(coverage, n_features),
        )
    return written


# --- the rule-rated comparison -------------------------------------------------------------------

#: The executable explanation methods, in the paper's comparison order.
RULE_METHODS: tuple[str, ...] = ("maxact_rule", "weightlens_rule", "cl_rule", "wl_cl_rule")
#: The metrics a rule is rated on (no Faithfulness: it needs a judge of free text).
RULE_METRICS: tuple[str, ...] = ("clarity", "responsiveness", "purity")
#: Fewer features than this give no CI and no point in the plot.
MIN_FEATURES_FOR_CI = 3
#: Classes of features, WeightLens's own classification first.
CLASSIFICATIONS: tuple[str, ...] = ("token_based", "context_dependent", "unclassified", "all")
RULE_NOTE = (
    "LLM-free: each method's explanation applied as a rule (rater = rule; docs/rules.md). "
    "Cells: mean over features [95% percentile-bootstrap CI] (n = features with a value; no CI "
    "below 3). Split by WeightLens's classification (token-based vs context-dependent)."
)


def _classification(evaluation: pd.DataFrame, weightlens: pd.DataFrame) -> pd.Series:
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
    frame = _concat(rule_evaluation, "rule evaluation frames")
    wl = _concat(weightlens, "WeightLens frames")
    columns = RULE_COMPARISON_SCHEMA.names
    if len(frame) == 0:
        return pd.DataFrame(columns=columns)
    _require(frame, ["layer", "feature", "variant", "rater"], "rule evaluation frame")
    frame = frame[(frame["rater"] == "rule") & frame["variant"].isin(RULE_METHODS)]
    frame = frame.assign(classification=_classification(frame, wl))
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
                        finite, n_boot, _cell_seed(seed, classification, metric, layer, variant)
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
                        "missing_reasons": _reasons_text(reasons.fillna(NO_REASON_GIVEN)),
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


def _rule_cell(row: Mapping[str, Any]) -> str:
    if int(row["n"]) == 0:
        return f"{_DASH} (n=0)"
    mean = _number(row["mean"])
    if int(row["n"]) < MIN_FEATURES_FOR_CI:
        return f"{mean} (n={int(row['n'])}, no CI)"
    return f"{mean} [{_number(row['ci_low'])}, {_number(row['ci_high'])}] (n={int(row['n'])})"


def _rule_grids(table: pd.DataFrame) -> list[tuple[str, list[str], list[list[str]]]]:
    """Per classification: (title, header, rows): rows method, columns (metric, layer)."""
    out = []
    for classification in CLASSIFICATIONS:
        part = table[table["classification"] == classification]
        if len(part) == 0:
            continue
        columns = sorted(
            {(str(m), int(layer)) for m, layer in zip(part["metric"], part["layer"], strict=True)},
            key=lambda c: (RULE_METRICS.index(c[0]), c[1]),
        )
        cells = {
            (str(r["variant"]), str(r["metric"]), int(r["layer"])): _rule_cell(r)
            for r in part.to_dict("records")
        }
        methods = [m for m in RULE_METHODS if m in set(part["variant"])]
        header = ["method"] + [f"{m.capitalize()} L{layer}" for m, layer in columns]
        rows = [
            [method] + [cells.get((method, m, layer), _DASH) for m, layer in columns]
            for method in methods
        ]
        out.append((classification.replace("_", "-") + " features", header, rows))
    return out


def rule_comparison_markdown(table: pd.DataFrame) -> str:
    """:func:`rule_comparison_table` as markdown: one table per feature class."""
    if len(table) == 0:
        return "No rule-rated scores.\n"
    parts = []
    for title, header, rows in _rule_grids(table):
        parts += [
            f"## {title}",
            "",
            markdown_table(header, rows, ["l"] + ["r"] * (len(header) - 1)),
        ]
    return "\n".join(parts) + "\n"


def rule_comparison_html(table: pd.DataFrame) -> Markup:
    """:func:`rule_comparison_table` as HTML: one table per feature class."""
    if len(table) == 0:
        return Markup("<p>No rule-rated scores.</p>")
    return Markup("").join(
        Markup("<h3>{}</h3>").format(title) + html_table(header, rows)
        for title, header, rows in _rule_grids(table)
    )


def plot_rule_comparison(table: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """One PNG: a panel per (feature class, metric), the mean by layer of each method with its CI;
    cells with fewer than :data:`MIN_FEATURES_FOR_CI` features are not drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    classes = [c for c in ("token_based", "context_dependent") if c in set(table["classification"])]
    classes = classes or ["all"]
    figure = Figure(figsize=(10.5, 3.4 * len(classes)), dpi=100)
    FigureCanvasAgg(figure)
    for row, classification in enumerate(classes):
        for col, metric in enumerate(RULE_METRICS):
            axes = figure.add_subplot(len(classes), len(RULE_METRICS), row * 3 + col + 1)
            cells = table[
                (table["classification"] == classification)
                & (table["metric"] == metric)
                & (table["n"] >= MIN_FEATURES_FOR_CI)
            ]
            methods = [m for m in RULE_METHODS if m in set(cells["variant"])]
            width = 0.6 / max(1, len(methods))
            for i, method in enumerate(methods):
                part = cells[cells["variant"] == method].sort_values("layer")
                x = part["layer"].to_numpy(float) + (i - (len(methods) - 1) / 2) * width
                mean = part["mean"].to_numpy(float)
                low = np.clip(mean - part["ci_low"].to_numpy(float), 0, None)
                high = np.clip(part["ci_high"].to_numpy(float) - mean, 0, None)
                axes.errorbar(
                    x,
                    mean,
                    yerr=np.vstack([low, high]),
                    marker="o",
                    capsize=3,
                    linewidth=1.2,
                    label=method,
                )
            if methods:
                layers = sorted(int(v) for v in cells["layer"].unique())
                axes.set_xticks(layers)
                axes.set_xlim(layers[0] - 0.7, layers[-1] + 0.7)
                if col == 0:
                    axes.legend(fontsize=7, loc="best")
            else:
                axes.text(
                    0.5,
                    0.5,
                    "fewer than 3 features",
                    ha="center",
                    va="center",
                    transform=axes.transAxes,
                )
            axes.set_ylim(-0.02, 1.05)
            axes.set_xlabel("layer")
            axes.set_title(f"{metric} · {classification.replace('_', '-')}", fontsize=9)
            axes.grid(True, alpha=0.3)
    figure.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        figure.savefig(tmp, format="png")
    return out
