"""Simulation (OpenAI's simulator as EleutherAI/delphi runs it,
``delphi/scorers/simulator/simulation/``): from the explanation, a predicted activation per
token of each example; the score is Pearson's r between predicted and true activations.

- Sequences (``oai_simulator.py``): the activating examples (true activations normalised to
  0-10 by the feature's largest held-out activation, ``normalize_activations``) and the
  non-activating ones (true activations 0).
- Mode (``scores.simulation_mode``, column ``simulation_mode``): ``expected_value``, delphi's
  default (``_simulate_with_logprobs``): one prompt per sequence listing its tokens as
  ``token<tab>unknown``, nothing generated; at each ``unknown`` the server's top prompt
  log-probabilities (vLLM's ``prompt_logprobs``, ``PROMPT_LOGPROBS_COUNT`` = 15) over the tokens
  that read as an integer 0-10 are renormalised and their expected value is the prediction
  (``parse_simulation_response``, ``compute_predicted_activation_stats_for_token``). Or
  ``all_at_once`` (``_simulate_with_json``): the activations asked for as JSON.
- Parsing, expected value: a sequence whose prompt does not show exactly one ``unknown`` after a
  tab per token, or with a token whose top log-probabilities hold no integer 0-10 (where
  delphi's renormalisation divides by zero and its simulator returns zeros), is all 0 and
  *failed* (counted).
- Parsing, all at once (``_parse_json_response``): the whole answer as JSON, an object whose
  ``activations`` list has one entry per token; anything else makes the whole sequence 0 (a
  *failed* sequence, counted). Inside a good list, an entry without ``token`` / ``activation``,
  not a number, or outside [0, 10] is 0.
- Score (``scoring.py``): r over the concatenation of the sequences of a group: every sequence
  (``all``) or the sequences of one quantile (``q0``, ...), not a mean of per-sequence r.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from circuit_insights.evaluation.delphi.config import DelphiScoresConfig
from circuit_insights.evaluation.delphi.examples import Example, FeatureExamples
from circuit_insights.evaluation.delphi.metrics import normalized_activations
from circuit_insights.evaluation.delphi.prompts import (
    UNKNOWN,
    simulation_logprob_messages,
    simulation_messages,
    simulation_schema,
)
from circuit_insights.evaluation.delphi.rows import groups_of, simulation_rows
from circuit_insights.evaluation.delphi.rule_scorer import RuleView, rule_simulation
from circuit_insights.explain.executable.rule import TokenDisplayFn
from circuit_insights.llm.client import ChatRequest, ChatResult

__all__ = [
    "MODE_ALL_AT_ONCE",
    "MODE_EXPECTED_VALUE",
    "MODE_RULE",
    "SIMULATION",
    "SimulationScorer",
    "SimulationPlan",
    "expected_values",
    "parse_simulation",
    "simulation_plan",
    "simulation_requests",
]

MODE_ALL_AT_ONCE = "all_at_once"
"""``simulation_mode`` of LLM-rated rows: the JSON prompt (no token log-probabilities)."""
MODE_EXPECTED_VALUE = "expected_value"
"""``simulation_mode`` of LLM-rated rows: the expected value of the prompt log-probabilities."""
MODE_RULE = "rule"
"""``simulation_mode`` of rule-rated rows: the rule's 0 / 1 per token."""

_MAX = 10.0


@dataclass(frozen=True)
class SimulationPlan:
    """The sequences of one feature: ``examples`` and their true activations (each (k,));
    ``per_prompt``: sequences per LLM prompt (1 but in ``expected_value`` mode)."""

    examples: tuple[Example, ...]
    true: tuple[np.ndarray, ...]
    per_prompt: int = 1

    def prompt_groups(self) -> list[range]:
        """The sequences of each LLM prompt, in order."""
        n, size = len(self.examples), max(1, int(self.per_prompt))
        return [range(start, min(start + size, n)) for start in range(0, n, size)]

    @property
    def quantiles(self) -> np.ndarray:
        """(n,) int: the quantile of each sequence, -1 for non-activating ones."""
        return np.array([e.quantile for e in self.examples], dtype=np.int64)


def simulation_plan(examples: FeatureExamples, per_prompt: int = 1) -> SimulationPlan:
    """Activating examples (normalised activations), then non-activating ones (zeros)."""
    true = [
        normalized_activations(e.activations, examples.max_activation) for e in examples.activating
    ]
    true += [np.zeros(len(e.activations)) for e in examples.non_activating]
    return SimulationPlan(examples.all, tuple(true), per_prompt)


def simulation_requests(
    plan: SimulationPlan,
    explanation: str,
    display: TokenDisplayFn,
    config: DelphiScoresConfig,
    seed: int,
) -> list[ChatRequest]:
    """The requests of ``plan`` (temperature 0), in ``config.simulation_mode``: per group of
    :meth:`SimulationPlan.prompt_groups` an expected-value prompt asking for one token and the
    prompt log-probabilities after each tab, or per sequence an all-at-once JSON prompt."""
    shown = [[display(int(t)) for t in example.token_ids] for example in plan.examples]
    if config.simulation_mode == MODE_EXPECTED_VALUE:
        return [
            ChatRequest(
                messages=simulation_logprob_messages(explanation, [shown[i] for i in group]),
                temperature=0.0,
                max_tokens=1,
                seed=seed,
                prompt_logprobs=config.simulation_logprobs,
                prompt_logprobs_after="\t",
            )
            for group in plan.prompt_groups()
        ]
    return [
        ChatRequest(
            messages=simulation_messages(explanation, tokens),
            json_schema=simulation_schema(len(tokens)) if config.structured_output else None,
            temperature=0.0,
            max_tokens=config.simulation_max_tokens,
            seed=seed,
        )
        for tokens in shown
    ]


def _expected_value(top: Mapping[str, float]) -> float | None:
    """The expected value over the tokens of ``top`` (text -> log-probability) that read as an
    integer 0-10, their probabilities renormalised; None when there is none."""
    values, weights = [], []
    for text, logprob in top.items():
        try:
            value = int(text)
        except ValueError:
            continue
        if 0 <= value <= _MAX:
            values.append(value)
            weights.append(np.exp(float(logprob)))
    total = float(np.sum(weights)) if weights else 0.0
    if total <= 0.0:
        return None
    return float(np.dot(values, weights) / total)


def expected_values(parsed: object, lengths: Sequence[int]) -> list[tuple[np.ndarray, bool]]:
    """(predicted (n,) float, parsed) per sequence of an expected-value prompt whose sequences
    have ``lengths`` tokens, from its answer's ``parsed``
    (:func:`~circuit_insights.llm.client.compact_prompt_logprobs` after tabs): the last
    ``sum(lengths)`` positions holding ``unknown`` are the sequences' tokens, in order. A
    sequence is zeros and False when the prompt shows fewer, or one of its tokens' top
    log-probabilities holds no integer 0-10."""
    failed = [(np.zeros(n), False) for n in lengths]
    if not isinstance(parsed, list):
        return failed
    unknown = [p for p in parsed if isinstance(p, Mapping) and p.get("token") == UNKNOWN]
    total = int(sum(lengths))
    if len(unknown) < total:
        return failed
    unknown = unknown[len(unknown) - total :]
    out = []
    start = 0
    for n in lengths:
        values = []
        for position in unknown[start : start + n]:
            top = position.get("top")
            values.append(_expected_value(top) if isinstance(top, Mapping) else None)
        start += n
        if any(value is None for value in values):
            out.append((np.zeros(n), False))
        else:
            out.append((np.array(values, dtype=np.float64), True))
    return out


def _entry_value(entry: object) -> float:
    if not isinstance(entry, Mapping) or "token" not in entry or "activation" not in entry:
        return 0.0
    try:
        value = float(entry["activation"])
    except (TypeError, ValueError):
        return 0.0
    return value if 0.0 <= value <= _MAX else 0.0


def parse_simulation(text: str | None, n_tokens: int) -> tuple[np.ndarray, bool]:
    """(predicted (n_tokens,) float, parsed): zeros and False when the answer is not a JSON
    object with ``activations`` for exactly ``n_tokens`` tokens."""
    zeros = np.zeros(n_tokens)
    try:
        answer = json.loads(text or "")
    except ValueError:
        return zeros, False
    if not isinstance(answer, Mapping) or not isinstance(answer.get("activations"), list):
        return zeros, False
    entries = answer["activations"]
    if len(entries) != n_tokens:
        return zeros, False
    return np.array([_entry_value(e) for e in entries], dtype=np.float64), True


@dataclass(frozen=True)
class SimulationScorer:
    """The simulation entry of :data:`circuit_insights.evaluation.delphi.scorers.SCORERS`."""

    name: str = "simulation"
    rule_mode: str | None = MODE_RULE

    def llm_mode(self, config: DelphiScoresConfig) -> str | None:
        return config.simulation_mode

    def groups(self, n_quantiles: int) -> list[tuple[str, int | None]]:
        return groups_of(n_quantiles, negative_group=False)

    def plan(
        self, examples: FeatureExamples, config: DelphiScoresConfig, seed: int
    ) -> SimulationPlan:
        per_prompt = (
            config.simulation_sequences_per_prompt
            if config.simulation_mode == MODE_EXPECTED_VALUE
            else 1
        )
        return simulation_plan(examples, per_prompt)

    def problem(self, examples: FeatureExamples, plan: SimulationPlan) -> str | None:
        return examples.shortage

    def requests(
        self,
        plan: SimulationPlan,
        explanation: str,
        display: TokenDisplayFn,
        config: DelphiScoresConfig,
        seed: int,
    ) -> list[ChatRequest]:
        return simulation_requests(plan, explanation, display, config, seed)

    def llm_rows(
        self,
        base: Mapping[str, Any],
        plan: SimulationPlan,
        results: Sequence[ChatResult],
        n_quantiles: int,
    ) -> list[dict[str, Any]]:
        """The rows from the answers to :meth:`requests` (in order: one per prompt group in
        ``expected_value`` mode, one per sequence in ``all_at_once``)."""
        lengths = [len(example.positions) for example in plan.examples]
        parsed: list[tuple[np.ndarray, bool]] = []
        if base.get("simulation_mode") == MODE_EXPECTED_VALUE:
            for result, group in zip(results, plan.prompt_groups(), strict=True):
                parsed += expected_values(result.parsed, [lengths[i] for i in group])
        else:
            parsed = [
                parse_simulation(result.text, n) for result, n in zip(results, lengths, strict=True)
            ]
        failed = np.array([not ok for _, ok in parsed], dtype=bool)
        return simulation_rows(base, plan, [p for p, _ in parsed], failed, n_quantiles)

    def rule_rows(
        self, base: Mapping[str, Any], plan: SimulationPlan, view: RuleView, n_quantiles: int
    ) -> list[dict[str, Any]]:
        """The rows of the rule's 0 / 1 prediction per token."""
        predicted = rule_simulation(plan, view)
        failed = np.zeros(len(predicted), dtype=bool)
        return simulation_rows(base, plan, predicted, failed, n_quantiles)


SIMULATION = SimulationScorer()
