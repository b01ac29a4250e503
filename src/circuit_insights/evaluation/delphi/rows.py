"""The rows of the delphi scores: one per (layer, feature, variant, rater, score, group), the
schema of their file, and the figures of each group (docs/delphi_scores.md).

Groups: ``all`` (every sample); ``q0`` .. ``q{n-1}`` (detection and fuzzing: the activating
samples of that quantile together with every negative sample, so all five figures are defined;
simulation: the sequences of that quantile alone, as delphi groups them); ``non_activating``
(detection and fuzzing: the negatives alone, ``accuracy`` only, the share called negative).
Figures that do not apply to a row's score or group are NaN without a reason; a row whose
figures could not be computed has NaN and ``reason``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from circuit_insights.core.io import write_parquet_atomic
from circuit_insights.evaluation.delphi.metrics import (
    CLASSIFICATION_METRICS,
    classification_metrics,
    confusion,
    correlation,
)

if TYPE_CHECKING:
    from circuit_insights.evaluation.delphi.classifier import ClassifierPlan
    from circuit_insights.evaluation.delphi.simulation import SimulationPlan

__all__ = [
    "DELPHI_SCORES_SCHEMA",
    "NON_ACTIVATING",
    "REASONS",
    "classifier_rows",
    "groups_of",
    "missing_rows",
    "scores_frame",
    "simulation_rows",
    "write_delphi_scores",
]

NON_ACTIVATING = "non_activating"
ALL = "all"

#: Why a row's figures are NaN.
REASONS: dict[str, str] = {
    "no_description": "the variant has no description of the feature",
    "missing_input": "the rule variant lacks its input (the explanations row says which)",
    "no_activating_examples": "the feature is 0 in every held-out window",
    "too_few_activating_windows": "the feature fires in fewer held-out windows than "
    "scores.n_quantiles, so every quantile slice is empty (delphi's split_quantiles)",
    "no_non_activating_examples": "every held-out window activates (detection, fuzzing); a "
    "shorter scores.example_length gives dense features non-activating windows",
    "empty_quantile": "no activating example in this quantile (fewer activating windows than "
    "quantiles)",
    "no_valid_answers": "no sample of the group got a usable answer",
    "too_few_tokens": "fewer than two tokens to correlate",
    "constant_true": "the true activations of the group are constant",
    "constant_prediction": "the predicted activations of the group are constant",
}

#: One row per (layer, feature, variant, rater, score, group).
DELPHI_SCORES_SCHEMA = pa.schema(
    [
        pa.field("layer", pa.int32(), nullable=False),
        pa.field("feature", pa.int32(), nullable=False),
        pa.field("variant", pa.string(), nullable=False),
        pa.field("rater", pa.string(), nullable=False),
        pa.field("score", pa.string(), nullable=False),
        pa.field("group", pa.string(), nullable=False),
        pa.field("quantile", pa.int32()),
        pa.field("description", pa.string()),
        pa.field("accuracy", pa.float64()),
        pa.field("precision", pa.float64()),
        pa.field("recall", pa.float64()),
        pa.field("f1", pa.float64()),
        pa.field("balanced_accuracy", pa.float64()),
        pa.field("correlation", pa.float64()),
        pa.field("reason", pa.string()),
        pa.field("n_examples", pa.int32(), nullable=False),
        pa.field("n_positive", pa.int32(), nullable=False),
        pa.field("n_negative", pa.int32(), nullable=False),
        pa.field("n_failed", pa.int32(), nullable=False),
        pa.field("n_tokens", pa.int32(), nullable=False),
        pa.field("simulation_mode", pa.string()),
        pa.field("example_length", pa.int32(), nullable=False),
        pa.field("llm_model", pa.string(), nullable=False),
        pa.field("prompt_version", pa.string(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("llm_calls", pa.int32(), nullable=False),
        pa.field("llm_failed_calls", pa.int32(), nullable=False),
        pa.field("llm_error_calls", pa.int32(), nullable=False),
        pa.field("llm_cached_calls", pa.int32(), nullable=False),
        pa.field("llm_tokens_in", pa.int64(), nullable=False),
        pa.field("llm_tokens_out", pa.int64(), nullable=False),
    ]
)

_FIGURES = (*CLASSIFICATION_METRICS, "correlation")


def groups_of(n_quantiles: int, *, negative_group: bool) -> list[tuple[str, int | None]]:
    """(group, quantile) of every row of one score: ``all``, the quantiles, and with
    ``negative_group`` (detection, fuzzing) ``non_activating`` (quantile -1)."""
    groups: list[tuple[str, int | None]] = [(ALL, None)]
    groups += [(f"q{q}", q) for q in range(n_quantiles)]
    if negative_group:
        groups.append((NON_ACTIVATING, -1))
    return groups


def _row(base: Mapping[str, Any], group: str, quantile: int | None) -> dict[str, Any]:
    row: dict[str, Any] = {name: None for name in DELPHI_SCORES_SCHEMA.names}
    row.update(base)
    row.update(group=group, quantile=quantile)
    for name in _FIGURES:
        row[name] = math.nan
    for count in ("n_examples", "n_positive", "n_negative", "n_failed", "n_tokens"):
        row[count] = 0
    return row


def missing_rows(
    base: Mapping[str, Any], groups: Sequence[tuple[str, int | None]], reason: str
) -> list[dict[str, Any]]:
    """A row per group, all figures NaN with ``reason``."""
    rows = []
    for group, quantile in groups:
        row = _row(base, group, quantile)
        row["reason"] = reason
        rows.append(row)
    return rows


def classifier_rows(
    base: Mapping[str, Any], plan: ClassifierPlan, predictions: np.ndarray, n_quantiles: int
) -> list[dict[str, Any]]:
    """The group rows of a detection or fuzzing plan; ``predictions`` (n,) 1 / 0 / NaN."""
    truth, groups = plan.truth, plan.groups
    predictions = np.asarray(predictions, dtype=np.float64)
    rows = []
    for group, quantile in groups_of(n_quantiles, negative_group=True):
        if group == ALL:
            members = np.ones(len(truth), dtype=bool)
        elif group == NON_ACTIVATING:
            members = ~truth
        else:
            members = ~truth | (groups == quantile)
        row = _row(base, group, quantile)
        row.update(
            n_examples=int(members.sum()),
            n_positive=int((truth & members).sum()),
            n_negative=int((~truth & members).sum()),
            n_failed=int(np.isnan(predictions[members]).sum()),
        )
        if quantile is not None and quantile >= 0 and row["n_positive"] == 0:
            row["reason"] = "empty_quantile"
        else:
            counts = confusion(truth[members], predictions[members])
            figures = classification_metrics(counts)
            if counts.total == 0:
                row["reason"] = "no_valid_answers"
            elif group == NON_ACTIVATING:
                row["accuracy"] = figures["accuracy"]
            else:
                row.update(figures)
        rows.append(row)
    return rows


def simulation_rows(
    base: Mapping[str, Any],
    plan: SimulationPlan,
    predicted: Sequence[np.ndarray],
    failed: np.ndarray,
    n_quantiles: int,
) -> list[dict[str, Any]]:
    """The group rows of a simulation: r over each group's concatenated tokens."""
    quantiles = plan.quantiles
    failed = np.asarray(failed, dtype=bool)
    rows = []
    for group, quantile in groups_of(n_quantiles, negative_group=False):
        members = np.ones(len(quantiles), dtype=bool) if quantile is None else quantiles == quantile
        index = [int(i) for i in np.flatnonzero(members)]
        row = _row(base, group, quantile)
        row.update(
            n_examples=len(index),
            n_positive=int((quantiles[members] >= 0).sum()),
            n_negative=int((quantiles[members] < 0).sum()),
            n_failed=int(failed[members].sum()),
        )
        if quantile is not None and len(index) == 0:
            row["reason"] = "empty_quantile"
        else:
            true = np.concatenate([plan.true[i] for i in index]) if len(index) else np.zeros(0)
            pred = np.concatenate([predicted[i] for i in index]) if len(index) else np.zeros(0)
            row["n_tokens"] = len(true)
            row["correlation"], row["reason"] = correlation(true, pred)
        rows.append(row)
    return rows


def scores_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Rows as a frame with the columns of :data:`DELPHI_SCORES_SCHEMA`."""
    if not rows:
        return DELPHI_SCORES_SCHEMA.empty_table().to_pandas()
    frame = pd.DataFrame([dict(row) for row in rows], columns=DELPHI_SCORES_SCHEMA.names)
    frame["quantile"] = frame["quantile"].astype("Int32")
    return frame


def write_delphi_scores(frame: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write score rows atomically as parquet with :data:`DELPHI_SCORES_SCHEMA`."""
    write_parquet_atomic(frame[DELPHI_SCORES_SCHEMA.names], path, schema=DELPHI_SCORES_SCHEMA)
