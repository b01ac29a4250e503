"""Faithfulness of one description: steer the feature, continue natural prompts greedily, and
have the judge LLM rate the continuations of each steering factor (definition in docs/fade.md).

:func:`measure_faithfulness` returns a :class:`Faithfulness`: the metric, what goes into the
result row (:meth:`Faithfulness.row_fields`) and the texts and ratings behind it
(:meth:`Faithfulness.details`). The gate (Clarity and Responsiveness high enough, a usable
steering reference) is the caller's: :func:`circuit_insights.evaluation.fade.run.evaluate_feature`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from circuit_insights.core.contexts import ContextTokens
from circuit_insights.evaluation import metrics
from circuit_insights.evaluation.fade.judge import LLMUsage, rate_text_groups
from circuit_insights.evaluation.fade.presets import FadePreset
from circuit_insights.evaluation.fade.subject import decode_tokens, steered_continuations
from circuit_insights.llm.client import LLMBackend
from circuit_insights.models.subject import SubjectModel
from circuit_insights.transcoders.base import Transcoder

__all__ = ["Faithfulness", "measure_faithfulness"]


@dataclass(frozen=True)
class Faithfulness:
    """Faithfulness of one description and what it was computed from."""

    value: metrics.MetricValue
    """The metric and, when it is NaN, why."""
    steering_prompts: np.ndarray
    """Context ids of the natural prompts that were continued, (P,) ascending."""
    continuations: dict[float, list[str]]
    """Steering factor -> the P continuations' texts."""
    continuation_ratings: dict[float, np.ndarray]
    """Steering factor -> ratings 0 / 1 / 2 of its continuations (NaN missing), (P,) float64."""
    concept_shares: dict[float, tuple[float, int]]
    """Steering factor -> (share of rated continuations rated 2, number rated)."""

    def row_fields(self) -> dict[str, Any]:
        """The per-factor columns of FADE_EVALUATION_SCHEMA (the metric itself excluded)."""
        return {
            "steering_factors": [float(f) for f in self.concept_shares],
            "concept_share_by_factor": [
                None if math.isnan(share) else float(share)
                for share, _ in self.concept_shares.values()
            ],
            "n_continuations_rated": [int(n) for _, n in self.concept_shares.values()],
        }

    def details(self) -> dict[str, Any]:
        """The prompts, continuations and ratings, under the names of ``evaluate_feature``'s
        ``details``."""
        return {
            "steering_prompts": self.steering_prompts,
            "continuations": self.continuations,
            "continuation_ratings": self.continuation_ratings,
        }


def measure_faithfulness(
    *,
    model: SubjectModel,
    transcoder: Transcoder,
    feature: int,
    description: str,
    corpus: ContextTokens,
    reference: float,
    backend: LLMBackend,
    preset: FadePreset,
    seed: int,
    usage: LLMUsage,
) -> Faithfulness:
    """Steer ``feature`` to ``factor × reference`` for every factor of ``preset``, continue
    ``preset.n_prompts`` held-out contexts of ``corpus`` (chosen with ``seed``) and rate the
    continuations for ``description`` (the LLM calls are added to ``usage``)."""
    rng = np.random.default_rng([seed, 1])
    n_prompts = min(preset.n_prompts, len(corpus.context_ids))
    chosen = np.sort(rng.choice(len(corpus.context_ids), size=n_prompts, replace=False))
    prompts = torch.as_tensor(corpus.tokens[chosen], dtype=torch.long)  # (P, L)
    if preset.max_prompt_tokens is not None:
        prompts = prompts[:, : preset.max_prompt_tokens]
    continuations = steered_continuations(
        model,
        transcoder,
        feature=feature,
        prompts=prompts,
        factors=preset.factors,
        reference_activation=reference,
        n_tokens=preset.n_generated_tokens,
        baseline=preset.baseline,
        batch_size=preset.batch_size,
    )
    texts_by_factor = {
        factor: [decode_tokens(model, ids.tolist()) for ids in tokens]
        for factor, tokens in continuations.items()
    }
    rated = rate_text_groups(
        backend,
        description,
        list(texts_by_factor.values()),
        batch_size=preset.rating_batch_size,
        failed_retries=preset.faithfulness_failed_retries,
        seed=seed,
        max_tokens=preset.rating_max_tokens,
        max_chars=preset.max_text_chars,
        usage=usage,
    )
    ratings_by_factor = dict(zip(texts_by_factor, rated, strict=True))
    shares = metrics.concept_shares(ratings_by_factor)
    return Faithfulness(
        value=metrics.faithfulness(ratings_by_factor),
        steering_prompts=corpus.context_ids[chosen],
        continuations=texts_by_factor,
        continuation_ratings=ratings_by_factor,
        concept_shares=shares,
    )
