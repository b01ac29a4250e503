"""FADE for one (feature, description) and for a table of descriptions: the per-feature
orchestration of the judge LLM (:mod:`.judge`), the subject model (:mod:`.subject`) and the
metrics (:mod:`circuit_insights.evaluation.metrics`).

- Clarity: the LLM writes synthetic texts for the description; the feature's sample activations
  on them are compared with those of all natural (held-out) samples.
- Responsiveness and Purity: the LLM rates stratified natural samples 0 / 1 / 2
  (:func:`rating_rounds`, shared with the rule rater).
- Faithfulness: :func:`circuit_insights.evaluation.fade.faithfulness.measure_faithfulness`, when
  the gate lets it through.

:func:`evaluate_feature` returns one row of
:data:`circuit_insights.data.schemas.FADE_EVALUATION_SCHEMA` (:mod:`.rows`);
:func:`evaluate_descriptions` does it for every row of a descriptions table.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from circuit_insights.core.contexts import ContextTokens
from circuit_insights.core.errors import InputError
from circuit_insights.evaluation import metrics
from circuit_insights.evaluation.fade.faithfulness import measure_faithfulness
from circuit_insights.evaluation.fade.judge import LLMUsage, generate_synthetic_texts, rate_texts
from circuit_insights.evaluation.fade.presets import FadePreset, fade_preset
from circuit_insights.evaluation.fade.rows import (
    empty_row,
    fade_frame,
    finish_row,
    record_ratings,
    set_metric,
)
from circuit_insights.evaluation.fade.subject import (
    decode_tokens,
    encode_text,
    natural_sample_activations,
    text_activations,
)
from circuit_insights.evaluation.metrics import RatingSelection, select_rating_samples
from circuit_insights.llm.client import LLMBackend
from circuit_insights.models.subject import SubjectModel
from circuit_insights.transcoders.base import Transcoder

__all__ = [
    "as_context_tokens",
    "evaluate_descriptions",
    "evaluate_feature",
    "feature_seed",
    "rating_rounds",
]


def as_context_tokens(
    heldout_tokens: ContextTokens | tuple[np.ndarray, np.ndarray],
) -> ContextTokens:
    """``heldout_tokens`` as :class:`ContextTokens` (also from ``(context_ids, tokens)``, as
    :func:`circuit_insights.data.corpus.load_contexts` returns them)."""
    if isinstance(heldout_tokens, ContextTokens):
        return heldout_tokens
    context_ids, tokens = heldout_tokens
    return ContextTokens(np.asarray(context_ids), np.asarray(tokens))


def rating_rounds(
    natural: np.ndarray,
    preset: FadePreset,
    seed: int,
    rate: Callable[[np.ndarray], np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """FADE's choice of natural samples to rate, with any rater: (indices, ratings).

    ``rate`` maps indices into ``natural`` to ratings (0 / 1 / 2, NaN missing). Rounds of
    :func:`select_rating_samples` as in FADE (a sparse round when fewer than
    ``preset.sparse_threshold`` are rated 2). The LLM rater (:func:`_rate_natural`) and the rule
    rater (:mod:`circuit_insights.evaluation.rule_rater`) both choose their samples here.
    """
    rated_index = np.zeros(0, dtype=np.int64)
    ratings = np.zeros(0)
    for round_ in range(preset.sparse_retries + 1):
        if round_ > 0 and (np.sum(ratings == 2) >= preset.sparse_threshold):
            break
        selection: RatingSelection = select_rating_samples(
            natural,
            preset.n_rated,
            top_fraction=preset.top_fraction,
            percentiles=preset.percentiles,
            seed=seed + round_,
            exclude=rated_index,
            top_selection=preset.top_selection,
        )
        if len(selection.index) == 0:
            break
        new = np.asarray(rate(selection.index), dtype=np.float64)
        rated_index = np.concatenate([rated_index, selection.index])
        ratings = np.concatenate([ratings, new])
    return rated_index, ratings


def _rate_natural(
    *,
    backend: LLMBackend,
    description: str,
    model: SubjectModel,
    context_tokens: ContextTokens,
    natural: np.ndarray,
    preset: FadePreset,
    seed: int,
    usage: LLMUsage,
) -> tuple[np.ndarray, np.ndarray]:
    """FADE's rating of natural samples: (indices into the natural samples, their ratings)."""

    def rate(index: np.ndarray) -> np.ndarray:
        texts = [decode_tokens(model, context_tokens.tokens[i]) for i in index]
        return rate_texts(
            backend,
            description,
            texts,
            batch_size=preset.rating_batch_size,
            failed_retries=preset.failed_retries,
            seed=seed,
            max_tokens=preset.rating_max_tokens,
            max_chars=preset.max_text_chars,
            usage=usage,
        )

    return rating_rounds(natural, preset, seed, rate)


def evaluate_feature(
    *,
    model: SubjectModel,
    transcoder: Transcoder,
    feature: int,
    description: str | None,
    heldout_activations: pd.DataFrame,
    heldout_tokens: ContextTokens | tuple[np.ndarray, np.ndarray],
    backend: LLMBackend,
    max_activation: float | None = None,
    preset: FadePreset | str = "paper",
    seed: int = 0,
    variant: str = "",
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """FADE's four metrics for one (feature, description): one FADE_EVALUATION_SCHEMA row.

    Args:
        heldout_activations: sparse activation rows of held-out contexts (``feature``,
            ``context``, ``position``, ``activation``, optional ``excluded``); other features'
            rows are ignored.
        heldout_tokens: the held-out contexts (``ContextTokens`` or ``(context_ids, tokens)``
            as :func:`circuit_insights.data.corpus.load_contexts` returns); every one is a natural
            sample, activation 0 where it has no row.
        max_activation: reference activation for steering; None (the workflow's choice): FADE's,
            the largest |sample activation| over the held-out contexts
            (:func:`circuit_insights.evaluation.metrics.steering_reference`).
        seed: seeds the sample choice and the LLM requests; keep it the same across the
            variants of one feature so that they are rated on the same samples.
        details: if given, filled with the texts, activations and ratings behind the metrics.

    A missing or blank description gives every metric NaN with reason ``no_description`` and
    makes no LLM call. A metric that cannot be computed is NaN with a reason
    (:data:`circuit_insights.evaluation.metrics.REASONS`); nothing here raises for degenerate data.
    """
    preset = fade_preset(preset)
    started = time.perf_counter()
    row = empty_row(
        layer=transcoder.layer,
        feature=feature,
        variant=variant,
        description=description,
        preset=preset,
    )
    row["seed"] = int(seed)
    row["llm_model"] = str(getattr(backend, "model_name", ""))
    usage = LLMUsage()
    details = details if details is not None else {}
    corpus = as_context_tokens(heldout_tokens)
    natural = natural_sample_activations(heldout_activations, feature, corpus.context_ids)
    row["n_natural"] = len(natural)
    row["n_natural_active"] = int(np.count_nonzero(natural))
    details["natural_activations"] = natural

    if description is None or not str(description).strip():
        for name in ("clarity", "responsiveness", "purity", "faithfulness"):
            set_metric(row, name, (math.nan, "no_description"))
        return finish_row(row, usage, started)
    description = str(description).strip()

    # Clarity.
    texts = generate_synthetic_texts(
        backend,
        description,
        n_calls=preset.generation_calls,
        temperature=preset.generation_temperature,
        max_tokens=preset.generation_max_tokens,
        seed=seed,
        usage=usage,
    )
    token_lists = [encode_text(model, text, preset.max_text_tokens) for text in texts]
    synthetic = text_activations(
        model, transcoder, feature, token_lists, batch_size=preset.batch_size
    )
    details["synthetic_texts"], details["synthetic_activations"] = texts, synthetic
    scored = synthetic[np.isfinite(synthetic)]
    row["n_synthetic_texts"], row["n_synthetic_scored"] = len(texts), len(scored)
    set_metric(row, "clarity", metrics.clarity(scored, natural))

    # Responsiveness and Purity.
    if len(natural) == 0:
        reason = "no_natural_samples"
    elif not np.isfinite(natural).all():
        reason = "non_finite_activations"
    elif natural.min() == natural.max():
        reason = "no_heldout_activations" if natural.max() == 0 else "no_variance"
    else:
        reason = None
    if reason is not None:
        set_metric(row, "responsiveness", (math.nan, reason))
        set_metric(row, "purity", (math.nan, reason))
    else:
        rated_index, ratings = _rate_natural(
            backend=backend,
            description=description,
            model=model,
            context_tokens=corpus,
            natural=natural,
            preset=preset,
            seed=seed,
            usage=usage,
        )
        details["rated_contexts"] = corpus.context_ids[rated_index]
        details["ratings"] = ratings
        record_ratings(row, natural[rated_index], ratings, preset)

    # Faithfulness.
    gate = metrics.faithfulness_gate(row["clarity"], row["responsiveness"], preset.gate)
    reference = (
        float(max_activation) if max_activation is not None else metrics.steering_reference(natural)
    )
    row["steering_reference"] = reference if math.isfinite(reference) else None
    if gate is not None:
        set_metric(row, "faithfulness", (math.nan, gate))
    elif not np.isfinite(natural).all():
        set_metric(row, "faithfulness", (math.nan, "non_finite_activations"))
    elif not math.isfinite(reference) or reference == 0.0 or preset.n_prompts == 0:
        set_metric(row, "faithfulness", (math.nan, "no_max_activation"))
    else:
        faithfulness = measure_faithfulness(
            model=model,
            transcoder=transcoder,
            feature=feature,
            description=description,
            corpus=corpus,
            reference=reference,
            backend=backend,
            preset=preset,
            seed=seed,
            usage=usage,
        )
        row.update(faithfulness.row_fields())
        details.update(faithfulness.details())
        set_metric(row, "faithfulness", faithfulness.value)
    return finish_row(row, usage, started)


def feature_seed(seed: int, feature: int) -> int:
    """The seed of one feature: the same for every variant, different across features."""
    return int(np.random.default_rng([int(seed), int(feature)]).integers(0, 2**31 - 1))


def evaluate_descriptions(
    model: SubjectModel,
    transcoder: Transcoder,
    descriptions: pd.DataFrame,
    heldout_activations: pd.DataFrame,
    heldout_tokens: ContextTokens | tuple[np.ndarray, np.ndarray],
    backend: LLMBackend,
    preset: FadePreset | str = "paper",
    seed: int = 0,
) -> pd.DataFrame:
    """:func:`evaluate_feature` for every row of ``descriptions`` (``feature``, ``variant``,
    ``description``; description may be null); FADE_EVALUATION_SCHEMA columns.

    The steering reference of each feature is FADE's: the largest |sample activation| over the
    held-out contexts it is evaluated on (not a maximum over another split).
    """
    for column in ("feature", "variant", "description"):
        if column not in descriptions.columns:
            raise InputError(f"descriptions table lacks column {column!r}")
    preset = fade_preset(preset)
    corpus = as_context_tokens(heldout_tokens)
    features = descriptions["feature"].astype(int).unique()
    own = heldout_activations[heldout_activations["feature"].isin(features)]
    rows = []
    by_feature = {int(f): g for f, g in own.groupby("feature")}
    for record in descriptions.itertuples(index=False):
        feature = int(record.feature)
        description = record.description
        if description is not None and not isinstance(description, str):
            description = None if pd.isna(description) else str(description)
        rows.append(
            evaluate_feature(
                model=model,
                transcoder=transcoder,
                feature=feature,
                description=description,
                heldout_activations=by_feature.get(feature, own.iloc[:0]),
                heldout_tokens=corpus,
                backend=backend,
                max_activation=None,
                preset=preset,
                seed=feature_seed(seed, feature),
                variant=str(record.variant),
            )
        )
    return fade_frame(rows)
