"""The delphi scores of one shard: every description rated by the LLM and every executable rule
rated exactly, on the same examples (docs/delphi_scores.md).

:func:`score_shard` draws each feature's examples once (:mod:`.examples`, seeded by (seed,
feature)), builds the samples of each score of :data:`.scorers.SCORERS`, sends every LLM request
of the shard in one stream (so a caching backend stores each answer as it arrives and the
server's concurrency is used), and returns :data:`.rows.DELPHI_SCORES_SCHEMA` rows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from circuit_insights.core.contexts import ContextTokens
from circuit_insights.core.errors import InputError
from circuit_insights.core.progress import Progress
from circuit_insights.core.tokens import TokenDisplay
from circuit_insights.evaluation.delphi.config import DelphiScoresConfig
from circuit_insights.evaluation.delphi.examples import (
    FeatureExamples,
    activation_matrix,
    draw_examples,
)
from circuit_insights.evaluation.delphi.prompts import PROMPT_VERSION
from circuit_insights.evaluation.delphi.rows import missing_rows, scores_frame
from circuit_insights.evaluation.delphi.rule_scorer import RuleView
from circuit_insights.evaluation.delphi.scorers import SCORERS, Scorer
from circuit_insights.evaluation.fade.judge import LLMUsage
from circuit_insights.evaluation.fade.run import as_context_tokens
from circuit_insights.explain.executable.rule import Rule, TokenDisplayFn
from circuit_insights.llm.client import ChatRequest, ChatResult, LLMBackend, iter_results

__all__ = ["FeaturePlans", "feature_plans", "score_shard"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeaturePlans:
    """One feature's examples and each score's samples (``plans``, by score name), shared by
    every variant and rater; ``problems``: score -> why it cannot be computed."""

    examples: FeatureExamples
    plans: dict[str, Any]
    problems: dict[str, str]


def feature_plans(
    *,
    feature: int,
    heldout_activations: pd.DataFrame,
    corpus: ContextTokens,
    bos_token_id: int | None,
    config: DelphiScoresConfig,
    seed: int,
) -> FeaturePlans:
    """The examples and samples of ``feature`` (``heldout_activations``: the sparse held-out rows)."""
    dense = activation_matrix(heldout_activations, feature, corpus)  # (n, L)
    examples = draw_examples(
        feature=feature,
        dense=dense,
        corpus=corpus,
        bos_token_id=bos_token_id,
        config=config,
        seed=seed,
    )
    plans: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for name in config.scorers:
        plans[name] = SCORERS[name].plan(examples, config, seed)
        problem = SCORERS[name].problem(examples, plans[name])
        if problem is not None:
            problems[name] = problem
    return FeaturePlans(examples, plans, problems)


def _description(value: Any) -> str | None:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    text = str(value).strip()
    return text or None


@dataclass
class _Job:
    """The LLM requests of one (feature, variant, score) and the slot their rows go to."""

    scorer: Scorer
    base: dict[str, Any]
    plan: Any
    requests: list[ChatRequest]
    slot: int


def _send(backend: LLMBackend, requests: list[ChatRequest], what: str) -> list[ChatResult]:
    """Results in request order, a progress line about every 30 s."""
    got: dict[int, ChatResult] = {}
    with Progress(what, len(requests), unit="requests") as progress:
        for index, result in iter_results(backend, requests):
            got[index] = result
            progress.update(1)
    if sorted(got) != list(range(len(requests))):
        raise InputError(
            f"LLM backend {getattr(backend, 'model_name', '?')!r} answered {len(got)} of "
            f"{len(requests)} requests"
        )
    return [got[i] for i in range(len(requests))]


def _usage(results: Sequence[ChatResult]) -> dict[str, Any]:
    usage = LLMUsage()
    usage.add(results)
    return {
        "llm_calls": usage.calls,
        "llm_failed_calls": usage.failed_calls,
        "llm_error_calls": usage.error_calls,
        "llm_cached_calls": usage.cached_calls,
        "llm_tokens_in": usage.tokens_in,
        "llm_tokens_out": usage.tokens_out,
    }


def score_shard(
    *,
    layer: int,
    heldout_activations: pd.DataFrame,
    heldout_tokens: ContextTokens | tuple[np.ndarray, np.ndarray],
    config: DelphiScoresConfig,
    seed: int,
    bos_token_id: int | None,
    descriptions: pd.DataFrame | None = None,
    backend: LLMBackend | None = None,
    rules: Sequence[Rule] | None = None,
    display: TokenDisplayFn | None = None,
) -> pd.DataFrame:
    """Detection, fuzzing and simulation of one shard's explanations; DELPHI_SCORES_SCHEMA rows.

    Args:
        heldout_activations: the sparse held-out activations (``feature``, ``context``,
            ``position``, ``activation``, optional ``excluded``), as the cache writes them.
        heldout_tokens: the held-out contexts (``ContextTokens`` or ``(context_ids, tokens)``
            from :func:`circuit_insights.data.corpus.load_contexts` with split ``eval``).
        descriptions: rows ``feature``, ``variant``, ``description`` (null: ``no_description``
            rows) rated by ``backend`` (``rater = "llm"``); needs ``backend``.
        rules: executable explanations rated exactly (``rater = "rule"``; a missing rule gives
            ``missing_input`` rows).
        seed: the run's seed; a feature's examples depend on (seed, feature) only, so every
            variant and both raters see the same samples.
        bos_token_id: the model's BOS (never shown, never counted), None without one.
        display: token id -> text shown to the LLM (default ``<id>``; the stage passes
            :class:`circuit_insights.core.tokens.TokenDisplay` of the model's tokenizer).

    Rows: the descriptions in input order, then the rules; per (feature, variant) the scores in
    the order of :data:`.config.SCORES`, per score its groups. The caller checks the backend's
    failed requests (``raise_if_failed``) before writing.
    """
    if descriptions is not None and backend is None:
        raise InputError("delphi scores: descriptions to rate need an LLM backend")
    if descriptions is not None:
        for column in ("feature", "variant", "description"):
            if column not in descriptions.columns:
                raise InputError(f"descriptions table lacks column {column!r}")
    corpus = as_context_tokens(heldout_tokens)
    show: TokenDisplayFn = display if display is not None else TokenDisplay(None)
    records = [] if descriptions is None else descriptions.to_dict("records")
    rule_list = list(rules or ())
    features = sorted({int(r["feature"]) for r in records} | {r.feature for r in rule_list})
    own = heldout_activations[heldout_activations["feature"].isin(features)]
    by_feature = {int(f): g for f, g in own.groupby("feature")}
    memo: dict[int, FeaturePlans] = {}

    def plans_of(feature: int) -> FeaturePlans:
        if feature not in memo:
            memo[feature] = feature_plans(
                feature=feature,
                heldout_activations=by_feature.get(feature, own.iloc[:0]),
                corpus=corpus,
                bos_token_id=bos_token_id,
                config=config,
                seed=seed,
            )
        return memo[feature]

    n_quantiles = int(config.n_quantiles)
    common = {
        "layer": int(layer),
        "prompt_version": PROMPT_VERSION,
        "seed": int(seed),
        "example_length": int(config.example_length),
        **_usage([]),
    }
    model_name = str(getattr(backend, "model_name", "")) if backend is not None else ""
    slots: list[list[dict[str, Any]]] = []
    jobs: list[_Job] = []
    for record in records:
        feature, text = int(record["feature"]), _description(record["description"])
        for name in config.scorers:
            scorer = SCORERS[name]
            base = dict(
                common,
                feature=feature,
                variant=str(record["variant"]),
                rater="llm",
                score=name,
                description=text,
                llm_model=model_name,
                simulation_mode=scorer.llm_mode(config),
            )
            plans = plans_of(feature) if text is not None else None
            reason = "no_description" if plans is None else plans.problems.get(name)
            if plans is None or reason is not None:
                slots.append(missing_rows(base, scorer.groups(n_quantiles), str(reason)))
                continue
            plan = plans.plans[name]
            requests = scorer.requests(plan, str(text), show, config, seed)
            jobs.append(_Job(scorer, base, plan, requests, len(slots)))
            slots.append([])
    if jobs:
        assert backend is not None
        requests = [r for job in jobs for r in job.requests]
        results = _send(backend, requests, f"delphi scores layer {layer} ({model_name})")
        start = 0
        for job in jobs:
            done = results[start : start + len(job.requests)]
            base = dict(job.base, **_usage(done))
            slots[job.slot] = job.scorer.llm_rows(base, job.plan, done, n_quantiles)
            start += len(job.requests)

    for rule in rule_list:
        plans = plans_of(rule.feature)
        view = None if rule.is_missing else RuleView(rule, corpus, plans.examples.all)
        for name in config.scorers:
            scorer = SCORERS[name]
            base = dict(
                common,
                feature=int(rule.feature),
                variant=rule.variant,
                rater="rule",
                score=name,
                description=rule.text(show) or None,
                llm_model="",
                simulation_mode=scorer.rule_mode,
            )
            reason = "missing_input" if view is None else plans.problems.get(name)
            if view is None or reason is not None:
                slots.append(missing_rows(base, scorer.groups(n_quantiles), str(reason)))
            else:
                slots.append(scorer.rule_rows(base, plans.plans[name], view, n_quantiles))
    log.info(
        "delphi scores layer %d: %d descriptions, %d rules, %d features, %d LLM requests",
        layer,
        len(records),
        len(rule_list),
        len(features),
        sum(len(job.requests) for job in jobs),
    )
    return scores_frame([row for slot in slots for row in slot])
