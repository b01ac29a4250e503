"""The rule rater: FADE's metrics for executable explanations, with the rule in place of the LLM.

Definitions in ``docs/rules.md``; the rules themselves are
:mod:`circuit_insights.explain.executable`.

- Responsiveness and Purity: the natural samples are chosen exactly as for LLM-rated FADE
  (:func:`circuit_insights.evaluation.fade.run.rating_rounds`); a sample is rated 2 when the rule
  holds at any of its positions (BOS excluded), else 0 (:func:`rule_ratings`); the metrics are
  :func:`circuit_insights.evaluation.metrics.responsiveness_and_purity`.
- Clarity: contexts the rule generates
  (:func:`circuit_insights.explain.executable.synthetic.synthetic_contexts`: its trigger tokens
  written at their offsets into held-out contexts where the feature does not fire) are run
  through the subject model and compared with all natural samples by
  :func:`circuit_insights.evaluation.metrics.clarity`, as FADE compares its synthetic texts.
- Faithfulness is not defined for a rule (it needs a judge of free text): NaN, ``not_rule_rated``.

Every row has ``rater = "rule"``. A rule that holds on no natural sample or on every one gets NaN
Responsiveness and Purity with reason ``rule_holds_nowhere`` / ``rule_holds_everywhere``; a
feature without the variant's input gets NaN everywhere with ``missing_input``.
:func:`rule_heldout_auroc` is the position-level check against WeightLens's held-out AUROC.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from circuit_insights.core.config import from_block
from circuit_insights.core.contexts import ContextTokens
from circuit_insights.core.errors import InputError
from circuit_insights.evaluation import metrics
from circuit_insights.evaluation.fade.judge import LLMUsage
from circuit_insights.evaluation.fade.presets import FadePreset, fade_preset
from circuit_insights.evaluation.fade.rows import (
    empty_row,
    fade_frame,
    finish_row,
    record_ratings,
    set_metric,
)
from circuit_insights.evaluation.fade.run import as_context_tokens, feature_seed, rating_rounds
from circuit_insights.evaluation.fade.subject import natural_sample_activations, text_activations
from circuit_insights.explain.executable.config import RuleConfig
from circuit_insights.explain.executable.rule import Rule
from circuit_insights.explain.variants import EXECUTABLE_VARIANTS

__all__ = [
    "PROMPT_VERSION",
    "RULE_REASONS",
    "RuleRaterConfig",
    "evaluate_rule",
    "rule_heldout_auroc",
    "rule_ratings",
    "rules_from_explanations",
    "rules_settings",
    "score_rules",
]

PROMPT_VERSION = "rules_v1"
"""Recorded in ``prompt_version`` of rule-rated rows (no prompt: the rule derivation's version)."""

#: Reasons of missing rule-rated values, beyond :data:`metrics.REASONS`.
RULE_REASONS: dict[str, str] = {
    "missing_input": "the feature lacks the rule variant's input (no clusters, no validated "
    "tokens, no top contexts); the explanations row says which",
    "rule_holds_nowhere": "the rule holds on no natural sample, so nothing is rated 2",
    "rule_holds_everywhere": "the rule holds on every natural sample, so nothing is rated 0",
    "not_rule_rated": "Faithfulness needs a judge of free-text continuations; a rule gives none",
}

#: activations of token sequences (each starting with BOS where used) -> (n,) sample activations.
ActivationFn = Callable[[Sequence[Sequence[int]]], np.ndarray]


@dataclass(frozen=True)
class RuleRaterConfig:
    """Knobs of the rule rater (config key ``evaluate.rule_rater``)."""

    n_synthetic: int = 16
    """Synthetic contexts per rule for Clarity (FADE's LLM writes ~15 calls x <= 10 texts; 16
    keeps the rule rater of every feature affordable on 2 CPU cores)."""
    max_synthetic_tokens: int = 16
    """Synthetic contexts are cut to this many tokens (BOS included)."""

    def __post_init__(self) -> None:
        if int(self.n_synthetic) < 1 or int(self.max_synthetic_tokens) < 2:
            raise InputError(
                "evaluate.rule_rater: n_synthetic must be >= 1 and max_synthetic_tokens >= 2"
            )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> RuleRaterConfig:
        """The rater keys of the workflow config's ``rules`` block (:func:`~circuit_insights.core.config.from_block`)."""
        return from_block(cls, values, "rules")


def _counted(tokens: np.ndarray, bos_token_id: int | None) -> np.ndarray:
    """(n, L) bool: the positions that count (not BOS)."""
    counted = np.ones(tokens.shape, dtype=bool)
    if bos_token_id is not None:
        counted &= tokens != int(bos_token_id)
    return counted


def rule_ratings(rule: Rule, tokens: np.ndarray, bos_token_id: int | None) -> np.ndarray:
    """FADE ratings from a rule: 2 where it holds at any counted position of the context, else 0.

    ``tokens`` (n, L) -> (n,) float64. "Anywhere" as the LLM rater, which reads the whole
    sample; the max-activation position is not used (see docs/rules.md).
    """
    matrix = np.asarray(tokens, dtype=np.int64)
    holds = rule.holds(matrix) & _counted(matrix, bos_token_id)  # (n, L)
    return np.where(holds.any(axis=1), 2.0, 0.0)


def _rule_row(rule: Rule, preset: FadePreset, description: str | None) -> dict[str, Any]:
    row = empty_row(
        layer=rule.layer,
        feature=rule.feature,
        variant=rule.variant,
        description=description,
        preset=preset,
    )
    row.update(rater="rule", llm_model="", prompt_version=PROMPT_VERSION)
    return row


def evaluate_rule(
    rule: Rule,
    heldout_activations: pd.DataFrame,
    heldout_tokens: ContextTokens | tuple[np.ndarray, np.ndarray],
    activations_of: ActivationFn,
    *,
    bos_token_id: int | None,
    preset: FadePreset | str = "paper",
    seed: int = 0,
    config: RuleRaterConfig | None = None,
    description: str | None = None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Clarity, Responsiveness and Purity of one rule: one ``FADE_EVALUATION_SCHEMA`` row.

    ``heldout_activations`` / ``heldout_tokens``: as :func:`fade.run.evaluate_feature` (every
    held-out context is a natural sample). ``activations_of``: the feature's sample activations
    on token sequences (the subject model, :func:`fade.subject.text_activations`). ``seed``: the
    same per-feature seed as LLM-rated FADE, so both rate the same samples. ``description``: the
    text shown (default: the rule's own text with token ids).
    """
    preset = fade_preset(preset)
    config = config or RuleRaterConfig()
    started = time.perf_counter()
    details = details if details is not None else {}
    text = description if description is not None else (rule.text() or None)
    row = _rule_row(rule, preset, text)
    row["seed"] = int(seed)
    corpus = as_context_tokens(heldout_tokens)
    natural = natural_sample_activations(heldout_activations, rule.feature, corpus.context_ids)
    row["n_natural"], row["n_natural_active"] = len(natural), int(np.count_nonzero(natural))
    details["natural_activations"] = natural
    if rule.is_missing:
        for name in ("clarity", "responsiveness", "purity", "faithfulness"):
            set_metric(row, name, (math.nan, "missing_input"))
        return finish_row(row, LLMUsage(), started)
    set_metric(row, "faithfulness", (math.nan, "not_rule_rated"))

    # Clarity: contexts the rule generates, inside the silent prefixes of held-out contexts.
    first = 1 if bos_token_id is not None else 0
    silent = silent_lengths(heldout_activations, rule.feature, corpus)  # (n_natural,)
    generated = synthetic_for(rule, corpus.tokens, silent, config, seed, first)
    synthetic = (
        np.asarray(activations_of(generated), dtype=np.float64) if generated else np.zeros(0)
    )
    scored = synthetic[np.isfinite(synthetic)]
    details["synthetic_contexts"], details["synthetic_activations"] = generated, synthetic
    row["n_synthetic_texts"], row["n_synthetic_scored"] = len(generated), len(scored)
    set_metric(row, "clarity", metrics.clarity(scored, natural))

    # Responsiveness and Purity: FADE's sample choice, ratings from the rule.
    all_ratings = rule_ratings(rule, corpus.tokens, bos_token_id)  # (n_natural,)
    reason = None
    if len(natural) == 0:
        reason = "no_natural_samples"
    elif not np.isfinite(natural).all():
        reason = "non_finite_activations"
    elif not (all_ratings == 2).any():
        reason = "rule_holds_nowhere"
    elif (all_ratings == 2).all():
        reason = "rule_holds_everywhere"
    elif natural.min() == natural.max():
        reason = "no_heldout_activations" if natural.max() == 0 else "no_variance"
    if reason is not None:
        set_metric(row, "responsiveness", (math.nan, reason))
        set_metric(row, "purity", (math.nan, reason))
        return finish_row(row, LLMUsage(), started)
    rated_index, ratings = rating_rounds(natural, preset, seed, lambda index: all_ratings[index])
    details["rated_contexts"], details["ratings"] = corpus.context_ids[rated_index], ratings
    record_ratings(row, natural[rated_index], ratings, preset)
    return finish_row(row, LLMUsage(), started)


def silent_lengths(
    heldout_activations: pd.DataFrame, feature: int, corpus: ContextTokens
) -> np.ndarray:
    """(n_contexts,) int64: per held-out context the feature's first firing position (non-zero,
    not ``excluded``), the context length where it never fires: the silent prefix."""
    out = np.full(len(corpus.context_ids), corpus.context_length, dtype=np.int64)
    rows = heldout_activations[heldout_activations["feature"].to_numpy() == feature]
    if "excluded" in rows.columns:
        rows = rows[~rows["excluded"].to_numpy(bool)]
    rows = rows[rows["activation"].to_numpy(np.float64) != 0]
    if len(rows) == 0:
        return out
    first = rows.groupby("context")["position"].min()
    index = corpus.rows(first.index.to_numpy(), "held-out activations")
    out[index] = first.to_numpy(np.int64)
    return out


def synthetic_for(
    rule: Rule,
    tokens: np.ndarray,
    silent: np.ndarray,
    config: RuleRaterConfig,
    seed: int,
    first: int,
) -> list[list[int]]:
    """:func:`circuit_insights.explain.executable.synthetic.synthetic_contexts` with the rater's
    settings."""
    from circuit_insights.explain.executable.synthetic import synthetic_contexts

    return synthetic_contexts(
        rule,
        tokens,
        config.n_synthetic,
        seed=seed,
        first_position=first,
        max_length=config.max_synthetic_tokens,
        silent_length=silent,
    )


def score_rules(
    rules: Sequence[Rule],
    heldout_activations: pd.DataFrame,
    heldout_tokens: ContextTokens | tuple[np.ndarray, np.ndarray],
    activations_of: Callable[[int, Sequence[Sequence[int]]], np.ndarray],
    *,
    bos_token_id: int | None,
    preset: FadePreset | str = "paper",
    seed: int = 0,
    config: RuleRaterConfig | None = None,
    descriptions: Mapping[tuple[int, str], str] | None = None,
) -> pd.DataFrame:
    """:func:`evaluate_rule` for every rule; ``FADE_EVALUATION_SCHEMA`` frame.

    ``activations_of(feature, sequences)``; ``seed``: the run's seed, turned into the same
    per-feature seed as LLM-rated FADE (:func:`fade.run.feature_seed`). ``descriptions``:
    (feature, variant) -> readable text (default: the rule's own text).
    """
    corpus = as_context_tokens(heldout_tokens)
    features = {r.feature for r in rules}
    own = heldout_activations[heldout_activations["feature"].isin(features)]
    by_feature = {int(f): g for f, g in own.groupby("feature")}
    # The synthetic contexts depend only on (seed, feature, clauses): a rule equal to another of
    # the same feature (wl_cl_rule of a feature without clusters is its weightlens_rule) reuses
    # its activations instead of running the subject model again.
    memo: dict[tuple[int, tuple[tuple[int, ...], ...]], np.ndarray] = {}

    def cached(feature: int, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        key = (feature, tuple(tuple(int(t) for t in ids) for ids in sequences))
        if key not in memo:
            memo[key] = np.asarray(activations_of(feature, sequences), dtype=np.float64)
        return memo[key]

    rows = []
    for rule in rules:
        rows.append(
            evaluate_rule(
                rule,
                by_feature.get(rule.feature, own.iloc[:0]),
                corpus,
                functools.partial(cached, rule.feature),
                bos_token_id=bos_token_id,
                preset=preset,
                seed=feature_seed(seed, rule.feature),
                config=config,
                description=(descriptions or {}).get((rule.feature, rule.variant)),
            )
        )
    return fade_frame(rows)


def model_activations(
    model: Any, transcoder: Any, batch_size: int = 16
) -> Callable[[int, Sequence[Sequence[int]]], np.ndarray]:
    """``activations_of`` for :func:`score_rules`: the subject model through the transcoder."""

    def activations_of(feature: int, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        return text_activations(model, transcoder, feature, sequences, batch_size=batch_size)

    return activations_of


def rule_heldout_auroc(
    rule: Rule,
    heldout_activations: pd.DataFrame,
    heldout_tokens: ContextTokens,
    *,
    bos_token_id: int | None,
    positive_fraction: float = 0.0,
) -> metrics.MetricValue:
    """Position-level AUROC of the rule's strength as a predictor of firing.

    Every held-out (context, position) that counts (not BOS, not flagged ``excluded``) is a unit;
    positives: the feature's activation there is > 0 and >= ``positive_fraction`` x its largest
    one; score: :meth:`Rule.strength` (for weightlens_rule the token's single-token activation).
    Configured like :func:`circuit_insights.weightlens.score_heldout`, this is the same number by
    another code path (the rank AUROC of :func:`metrics.auroc` over a dense grid).
    """
    tokens = heldout_tokens.tokens  # (n, L)
    counted = _counted(tokens, bos_token_id)
    rows = heldout_tokens.rows(heldout_activations["context"].to_numpy(), "held-out activations")
    positions = heldout_activations["position"].to_numpy(np.int64)
    if "excluded" in heldout_activations.columns:
        flagged = heldout_activations["excluded"].to_numpy(bool)
        counted[rows[flagged], positions[flagged]] = False
    mine = heldout_activations["feature"].to_numpy(np.int64) == rule.feature
    activation = np.zeros(tokens.shape)  # (n, L)
    activation[rows[mine], positions[mine]] = heldout_activations["activation"].to_numpy(
        np.float64
    )[mine]
    fires = (activation > 0) & counted
    if positive_fraction > 0 and fires.any():
        fires &= activation >= positive_fraction * activation[fires].max()
    score = rule.strength(tokens)
    return metrics.auroc(score[counted & ~fires], score[counted & fires])


def rules_settings(
    block: Mapping[str, Any] | None,
) -> tuple[list[str], RuleConfig, RuleRaterConfig]:
    """The config block ``rules`` split: (variants, derivation thresholds, rater knobs)."""
    values = dict(block or {})
    variants = [str(v) for v in values.pop("variants", EXECUTABLE_VARIANTS)]
    unknown = [v for v in variants if v not in EXECUTABLE_VARIANTS]
    if unknown:
        raise InputError(f"rules.variants {unknown}: choose from {list(EXECUTABLE_VARIANTS)}")
    rater_keys = set(RuleRaterConfig.__dataclass_fields__)
    rater = RuleRaterConfig.from_mapping({k: v for k, v in values.items() if k in rater_keys})
    derivation = RuleConfig.from_mapping({k: v for k, v in values.items() if k not in rater_keys})
    return variants, derivation, rater


def rules_from_explanations(
    explanations: pd.DataFrame, variants: Sequence[str], layer: int
) -> tuple[list[Rule], dict[tuple[int, str], str]]:
    """The rules of the final explanation rows of ``variants`` and their readable texts.

    A rule row carries its rule as JSON in ``raw_text``; a ``missing_input`` row (or a row without
    JSON) gives a missing rule whose reason is the row's ``error``. Rows by feature, then variant.
    """
    for column in ("feature", "variant", "is_final", "raw_text", "description"):
        if column not in explanations.columns:
            raise InputError(f"explanations table lacks column {column!r}")
    final = explanations[explanations["is_final"].astype(bool)]
    final = final[final["variant"].isin(list(variants))]
    order = {v: i for i, v in enumerate(variants)}
    final = final.assign(_v=final["variant"].map(order)).sort_values(["feature", "_v"])
    rules: list[Rule] = []
    texts: dict[tuple[int, str], str] = {}
    for record in final.to_dict("records"):
        feature, variant = int(record["feature"]), str(record["variant"])
        raw = record.get("raw_text")
        if isinstance(raw, str) and raw.strip().startswith("{"):
            rule = Rule.from_json(raw)
        else:
            reason = record.get("error") if isinstance(record.get("error"), str) else None
            rule = Rule(int(layer), feature, variant, (), reason or "no rule in the explanations")
        rules.append(rule)
        if isinstance(record.get("description"), str) and record["description"].strip():
            texts[(feature, variant)] = record["description"]
    return rules, texts
