"""Simulation (OpenAI's simulator as EleutherAI/delphi runs it,
``delphi/scorers/simulator/simulation/``): from the explanation, a predicted activation per
token of each example; the score is Pearson's r between predicted and true activations.

- Sequences (``oai_simulator.py``): the activating examples (true activations normalised to
  0-10 by the feature's largest held-out activation, ``normalize_activations``) and the
  non-activating ones (true activations 0).
- Mode: delphi reads the prompt's token log-probabilities after each ``<tab>`` and takes the
  expected value over 0-10 when the server gives them (``_simulate_with_logprobs``), else asks
  for the activations all at once as JSON (``_simulate_with_json``). The project's LLM client
  returns text only, so every LLM-rated simulation here is ``all_at_once`` (column
  ``simulation_mode``).
- Parsing (``_parse_json_response``): the whole answer as JSON, an object whose
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
from circuit_insights.evaluation.delphi.prompts import simulation_messages, simulation_schema
from circuit_insights.evaluation.delphi.rows import groups_of, simulation_rows
from circuit_insights.evaluation.delphi.rule_scorer import RuleView, rule_simulation
from circuit_insights.explain.executable.rule import TokenDisplayFn
from circuit_insights.llm.client import ChatRequest, ChatResult

__all__ = [
    "MODE_ALL_AT_ONCE",
    "MODE_RULE",
    "SIMULATION",
    "SimulationScorer",
    "SimulationPlan",
    "parse_simulation",
    "simulation_plan",
    "simulation_requests",
]

MODE_ALL_AT_ONCE = "all_at_once"
"""``simulation_mode`` of LLM-rated rows: the JSON prompt (no token log-probabilities)."""
MODE_RULE = "rule"
"""``simulation_mode`` of rule-rated rows: the rule's 0 / 1 per token."""

_MAX = 10.0


@dataclass(frozen=True)
class SimulationPlan:
    """The sequences of one feature: ``examples`` and their true activations (each (k,))."""

    examples: tuple[Example, ...]
    true: tuple[np.ndarray, ...]

    @property
    def quantiles(self) -> np.ndarray:
        """(n,) int: the quantile of each sequence, -1 for non-activating ones."""
        return np.array([e.quantile for e in self.examples], dtype=np.int64)


def simulation_plan(examples: FeatureExamples) -> SimulationPlan:
    """Activating examples (normalised activations), then non-activating ones (zeros)."""
    true = [
        normalized_activations(e.activations, examples.max_activation) for e in examples.activating
    ]
    true += [np.zeros(len(e.activations)) for e in examples.non_activating]
    return SimulationPlan(examples.all, tuple(true))


def simulation_requests(
    plan: SimulationPlan,
    explanation: str,
    display: TokenDisplayFn,
    *,
    structured_output: bool,
    max_tokens: int,
    seed: int,
) -> list[ChatRequest]:
    """One all-at-once request per sequence (temperature 0)."""
    requests = []
    for example in plan.examples:
        tokens = [display(int(t)) for t in example.token_ids]
        requests.append(
            ChatRequest(
                messages=simulation_messages(explanation, tokens),
                json_schema=simulation_schema(len(tokens)) if structured_output else None,
                temperature=0.0,
                max_tokens=max_tokens,
                seed=seed,
            )
        )
    return requests


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
    llm_mode: str | None = MODE_ALL_AT_ONCE
    rule_mode: str | None = MODE_RULE

    def groups(self, n_quantiles: int) -> list[tuple[str, int | None]]:
        return groups_of(n_quantiles, negative_group=False)

    def plan(
        self, examples: FeatureExamples, config: DelphiScoresConfig, seed: int
    ) -> SimulationPlan:
        return simulation_plan(examples)

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
        return simulation_requests(
            plan,
            explanation,
            display,
            structured_output=config.structured_output,
            max_tokens=config.simulation_max_tokens,
            seed=seed,
        )

    def llm_rows(
        self,
        base: Mapping[str, Any],
        plan: SimulationPlan,
        results: Sequence[ChatResult],
        n_quantiles: int,
    ) -> list[dict[str, Any]]:
        """The rows from the answers to :meth:`requests` (one per sequence, in order)."""
        parsed = [
            parse_simulation(result.text, len(example.positions))
            for result, example in zip(results, plan.examples, strict=True)
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
