"""The result of FADE: one :data:`circuit_insights.data.schemas.FADE_EVALUATION_SCHEMA` row per
(feature, description), built here for the LLM rater and the rule rater alike, and the files
of such rows."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from circuit_insights.core.io import write_parquet_atomic
from circuit_insights.data.schemas import FADE_EVALUATION_SCHEMA
from circuit_insights.evaluation import metrics
from circuit_insights.evaluation.fade.judge import PROMPT_VERSION, LLMUsage
from circuit_insights.evaluation.fade.presets import FadePreset

__all__ = [
    "empty_row",
    "fade_frame",
    "finish_row",
    "read_fade_evaluation",
    "record_ratings",
    "set_metric",
    "write_fade_evaluation",
]


def empty_row(
    *, layer: int, feature: int, variant: str, description: str | None, preset: FadePreset
) -> dict[str, Any]:
    """A row of every FADE_EVALUATION_SCHEMA column: the metrics NaN (no reason yet), the counts
    0, the steering lists empty, everything else None."""
    row: dict[str, Any] = {name: None for name in FADE_EVALUATION_SCHEMA.names}
    row.update(
        layer=int(layer),
        feature=int(feature),
        variant=variant,
        description=description,
        preset=preset.name,
        prompt_version=PROMPT_VERSION,
        rater="llm",
        steering_factors=[],
        concept_share_by_factor=[],
        n_continuations_rated=[],
    )
    for name in ("clarity", "responsiveness", "purity", "faithfulness"):
        row[name] = math.nan
    for count in (
        "n_synthetic_texts",
        "n_synthetic_scored",
        "n_natural",
        "n_natural_active",
        "n_rated",
        "n_rated_0",
        "n_rated_1",
        "n_rated_2",
        "n_rating_missing",
    ):
        row[count] = 0
    return row


def set_metric(row: dict[str, Any], name: str, value: metrics.MetricValue) -> None:
    """Write a metric and its reason (None unless the value is NaN) into a result row."""
    row[name], row[f"{name}_reason"] = float(value[0]), value[1]


def record_ratings(
    row: dict[str, Any], rated_activations: np.ndarray, ratings: np.ndarray, preset: FadePreset
) -> None:
    """Write the rating counts, Responsiveness and Purity of rated samples into a result row
    (``rated_activations`` and ``ratings`` aligned, one per rated sample); shared by the LLM
    rater and the rule rater."""
    counts = metrics.count_ratings(ratings)
    row.update(
        n_rated=len(ratings),
        n_rated_0=counts.rated_0,
        n_rated_1=counts.rated_1,
        n_rated_2=counts.rated_2,
        n_rating_missing=counts.missing,
    )
    responsiveness, purity = metrics.responsiveness_and_purity(
        rated_activations, ratings, flip_negative=preset.flip_purity
    )
    set_metric(row, "responsiveness", responsiveness)
    set_metric(row, "purity", purity)


def finish_row(row: dict[str, Any], usage: LLMUsage, started: float) -> dict[str, Any]:
    """Write the LLM usage and the time since ``started`` (``time.perf_counter()``) into a
    result row; returns the row."""
    row.update(
        llm_calls=usage.calls,
        llm_failed_calls=usage.failed_calls,
        llm_error_calls=usage.error_calls,
        llm_cached_calls=usage.cached_calls,
        llm_tokens_in=usage.tokens_in,
        llm_tokens_out=usage.tokens_out,
        llm_latency_s=usage.latency_s,
        elapsed_s=time.perf_counter() - started,
    )
    return row


def fade_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Result rows as a frame with FADE_EVALUATION_SCHEMA columns."""
    table = FADE_EVALUATION_SCHEMA.empty_table().to_pandas()
    if not rows:
        return table
    return pd.DataFrame([dict(row) for row in rows], columns=FADE_EVALUATION_SCHEMA.names)


def write_fade_evaluation(
    rows: pd.DataFrame | Sequence[Mapping[str, Any]], path: str | os.PathLike[str]
) -> None:
    """Write evaluation rows atomically as parquet with FADE_EVALUATION_SCHEMA."""
    frame = rows if isinstance(rows, pd.DataFrame) else fade_frame(rows)
    write_parquet_atomic(frame, path, schema=FADE_EVALUATION_SCHEMA)


def read_fade_evaluation(paths: Sequence[str | os.PathLike[str]]) -> pd.DataFrame:
    """Concatenate evaluation files (FADE_EVALUATION_SCHEMA columns)."""
    import pyarrow.parquet as pq

    frames = [pq.read_table(path, schema=FADE_EVALUATION_SCHEMA).to_pandas() for path in paths]
    return pd.concat(frames, ignore_index=True) if frames else fade_frame([])
