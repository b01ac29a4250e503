"""The delphi scores of one model in the summary: per (rater, score, figure, layer, variant) the
mean over features of the ``all`` group with a bootstrap CI (``DELPHI_TABLE_SCHEMA``), and its
markdown / HTML view (docs/delphi_scores.md, docs/report.md).

Rule-rated (``rater = rule``, exact) and LLM-rated (``rater = llm``) numbers are never pooled:
the rater is part of every cell's key and each rater gets its own table.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from circuit_insights.report.scores import NO_REASON_GIVEN, concat_frames, require_columns
from circuit_insights.report.stats import (
    MIN_FEATURES_FOR_CI,
    bootstrap_ci,
    cell_seed,
    reasons_text,
)
from circuit_insights.report.tables import Table, markdown_table
from circuit_insights.report.values import DASH, fixed

__all__ = [
    "DELPHI_FIGURES",
    "DELPHI_HEADLINE",
    "DELPHI_NOTE",
    "DELPHI_TABLE_SCHEMA",
    "delphi_table",
    "delphi_table_markdown",
    "delphi_table_views",
    "feature_delphi_scores",
]

#: The figures of each score (columns of the delphi scores rows).
DELPHI_FIGURES: dict[str, tuple[str, ...]] = {
    "detection": ("accuracy", "precision", "recall", "f1", "balanced_accuracy"),
    "fuzzing": ("accuracy", "precision", "recall", "f1", "balanced_accuracy"),
    "simulation": ("correlation",),
}

#: The figure each score is usually quoted by (delphi reports balanced accuracy; OpenAI's
#: simulation score is the correlation): the columns of the markdown table.
DELPHI_HEADLINE: dict[str, str] = {
    "detection": "balanced_accuracy",
    "fuzzing": "balanced_accuracy",
    "simulation": "correlation",
}

RATERS: tuple[str, ...] = ("rule", "llm")

DELPHI_NOTE = (
    "delphi's detection and fuzzing (balanced accuracy) and OpenAI's simulation score "
    "(correlation of predicted and true activations), docs/delphi_scores.md. Exact scores of the "
    "executable rules (rater = rule) and LLM-rated scores of the descriptions (rater = llm) are "
    "separate tables, never pooled. Cells: mean over features [95% percentile-bootstrap CI] "
    f"(n = features with a value; no CI below {MIN_FEATURES_FOR_CI}); chance is 0.5 for "
    "balanced accuracy and 0 for the correlation. Every figure, per quantile too: "
    "delphi_scores.parquet / delphi_table.parquet."
)

#: Per (model, rater, score, figure, layer, variant): mean over the features with a value of
#: the ``all`` group (``n``), its 95% percentile-bootstrap CI (null below 3 features),
#: ``n_missing`` and the reasons of the missing values.
DELPHI_TABLE_SCHEMA = pa.schema(
    [
        pa.field("model", pa.string(), nullable=False),
        pa.field("rater", pa.string(), nullable=False),
        pa.field("score", pa.string(), nullable=False),
        pa.field("figure", pa.string(), nullable=False),
        pa.field("layer", pa.int32(), nullable=False),
        pa.field("variant", pa.string(), nullable=False),
        pa.field("n", pa.int64(), nullable=False),
        pa.field("n_missing", pa.int64(), nullable=False),
        pa.field("mean", pa.float64()),
        pa.field("ci_low", pa.float64()),
        pa.field("ci_high", pa.float64()),
        pa.field("missing_reasons", pa.string(), nullable=False),
    ]
)


def _all_group(frames: pd.DataFrame | Iterable[pd.DataFrame] | None) -> pd.DataFrame:
    """The ``all`` rows of the delphi scores frames (one per layer, feature, variant, rater,
    score)."""
    frame = concat_frames(frames, "delphi scores frames")
    if len(frame) == 0:
        return frame
    require_columns(
        frame, ["layer", "feature", "variant", "rater", "score", "group", "reason"], "delphi scores"
    )
    return frame[frame["group"] == "all"].reset_index(drop=True)


def delphi_table(
    frames: pd.DataFrame | Iterable[pd.DataFrame] | None,
    *,
    model: str = "",
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Mean and CI of every figure per (rater, score, layer, variant): DELPHI_TABLE_SCHEMA rows,
    ordered by rater (rule, llm), score, figure, layer, variant."""
    rows: list[dict[str, Any]] = []
    frame = _all_group(frames)
    columns = DELPHI_TABLE_SCHEMA.names
    if len(frame) == 0:
        return pd.DataFrame(columns=columns)
    for (rater, score, layer, variant), cell in frame.groupby(
        ["rater", "score", "layer", "variant"], sort=True
    ):
        for figure in DELPHI_FIGURES.get(str(score), ()):
            if figure not in cell.columns:
                continue
            values = pd.to_numeric(cell[figure], errors="coerce").to_numpy(np.float64)
            finite = values[np.isfinite(values)]
            n = len(finite)
            low = high = math.nan
            if n >= MIN_FEATURES_FOR_CI:
                low, high = bootstrap_ci(
                    finite, n_boot, cell_seed(seed, rater, score, figure, layer, variant)
                )
            reasons = cell.loc[~np.isfinite(values), "reason"].fillna(NO_REASON_GIVEN)
            rows.append(
                {
                    "model": str(model),
                    "rater": str(rater),
                    "score": str(score),
                    "figure": figure,
                    "layer": int(layer),
                    "variant": str(variant),
                    "n": n,
                    "n_missing": int(len(values) - n),
                    "mean": float(finite.mean()) if n else math.nan,
                    "ci_low": low,
                    "ci_high": high,
                    "missing_reasons": reasons_text(reasons),
                }
            )
    table = pd.DataFrame(rows, columns=columns)
    scores = list(DELPHI_FIGURES)
    table = table.assign(
        _r=table["rater"].map(lambda r: RATERS.index(r) if r in RATERS else len(RATERS)),
        _s=table["score"].map(scores.index),
    ).sort_values(["_r", "_s", "figure", "layer", "variant"], kind="mergesort", ignore_index=True)
    return table[columns]


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return DASH
    if int(row["n"]) == 0:
        return f"{DASH} (n=0)"
    mean = fixed(row["mean"])
    if int(row["n"]) < MIN_FEATURES_FOR_CI:
        return f"{mean} (n={int(row['n'])}, no CI)"
    return f"{mean} [{fixed(row['ci_low'])}, {fixed(row['ci_high'])}] (n={int(row['n'])})"


def delphi_table_views(table: pd.DataFrame) -> list[tuple[str, Table]]:
    """One table per rater: rows (variant, layer), columns the headline figure of each score
    (detection and fuzzing balanced accuracy, simulation correlation)."""
    out: list[tuple[str, Table]] = []
    for rater in RATERS:
        part = table[table["rater"] == rater]
        if len(part) == 0:
            continue
        cells = {
            (str(r["variant"]), int(r["layer"]), str(r["score"])): r
            for r in part.to_dict("records")
            if DELPHI_HEADLINE.get(str(r["score"])) == r["figure"]
        }
        scores = [s for s in DELPHI_FIGURES if s in set(part["score"])]
        keys = sorted({(variant, layer) for variant, layer, _ in cells}, key=lambda k: (k[1], k[0]))
        header = ["layer", "variant"] + [
            f"{score} ({DELPHI_HEADLINE[score].replace('_', ' ')})" for score in scores
        ]
        rows = [
            [str(layer), variant] + [_cell(cells.get((variant, layer, s))) for s in scores]
            for variant, layer in keys
        ]
        title = (
            "Exact scores of the executable rules (rater = rule)"
            if rater == "rule"
            else "LLM-rated scores of the descriptions (rater = llm)"
        )
        out.append((title, Table(header, rows)))
    return out


def delphi_table_markdown(table: pd.DataFrame) -> str:
    """:func:`delphi_table_views` as markdown, one section per rater."""
    if len(table) == 0:
        return "No delphi scores.\n"
    parts: list[str] = []
    for title, view in delphi_table_views(table):
        parts += [
            f"## {title}",
            "",
            markdown_table(view.header, view.rows, ["r", "l"] + ["r"] * (len(view.header) - 2)),
        ]
    return "\n".join(parts) + "\n"


def feature_delphi_scores(frames: pd.DataFrame | Iterable[pd.DataFrame] | None) -> pd.DataFrame:
    """Per (layer, feature, variant, rater) the headline figure of each score (columns
    ``detection``, ``fuzzing``, ``simulation``) and the reasons of missing ones: what a feature
    page shows beside FADE."""
    frame = _all_group(frames)
    keys = ["layer", "feature", "variant", "rater"]
    if len(frame) == 0:
        return pd.DataFrame(columns=[*keys, *DELPHI_FIGURES, "reasons"])
    records: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in frame.to_dict("records"):
        key = tuple(row[k] for k in keys)
        record = records.setdefault(
            key, dict(zip(keys, key, strict=True)) | {s: math.nan for s in DELPHI_FIGURES}
        )
        score = str(row["score"])
        figure = DELPHI_HEADLINE.get(score)
        if figure is None:
            continue
        value = row.get(figure)
        record[score] = float(value) if value is not None else math.nan
        if isinstance(row.get("reason"), str) and row["reason"]:
            record.setdefault("reasons", {})[score] = row["reason"]
    out = pd.DataFrame(list(records.values()))
    if "reasons" not in out.columns:
        out["reasons"] = None
    out["reasons"] = out["reasons"].map(
        lambda r: "; ".join(f"{k}: {v}" for k, v in r.items()) if isinstance(r, dict) else ""
    )
    return out.sort_values(keys, kind="mergesort", ignore_index=True)
