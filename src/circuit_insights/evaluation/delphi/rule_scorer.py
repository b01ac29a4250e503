"""The exact delphi scores of an executable explanation: the rule answers for the rater, on the
same samples (docs/delphi_scores.md).

A rule is evaluated on the whole held-out context (:meth:`Rule.holds`, (n, L) bool), so a
condition on earlier tokens sees them even at a window's first position; then read at the
example's shown positions (BOS never counts, as in :mod:`circuit_insights.evaluation.rule_rater`).

- Detection: 1 when the rule holds at any shown position of the example.
- Fuzzing: 1 when the rule holds at every marked token (the question the rater is asked: is each
  marked token an instance of the explanation); an example without marks is 0.
- Simulation: the rule's 0 / 1 per shown token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from circuit_insights.core.contexts import ContextTokens
from circuit_insights.evaluation.delphi.examples import Example
from circuit_insights.explain.executable.rule import Rule

if TYPE_CHECKING:
    from circuit_insights.evaluation.delphi.classifier import ClassifierPlan
    from circuit_insights.evaluation.delphi.simulation import SimulationPlan

__all__ = ["RuleView", "rule_classifier_answers", "rule_simulation"]


class RuleView:
    """Where ``rule`` holds in the contexts of the given examples: (k,) bool per example."""

    def __init__(self, rule: Rule, corpus: ContextTokens, examples: Sequence[Example]) -> None:
        rows = np.unique(np.array([e.row for e in examples], dtype=np.int64))
        holds = rule.holds(corpus.tokens[rows]) if len(rows) else np.zeros((0, 0), bool)
        self._holds = {int(row): holds[i] for i, row in enumerate(rows)}  # row -> (L,)

    def at(self, example: Example) -> np.ndarray:
        """(k,) bool: the rule at the example's shown positions."""
        return self._holds[example.row][example.positions]


def rule_classifier_answers(plan: ClassifierPlan, view: RuleView) -> np.ndarray:
    """(n,) float 1 / 0: the rule's answer to each sample of a detection or fuzzing plan."""
    answers = np.zeros(len(plan.samples))
    for i, sample in enumerate(plan.samples):
        holds = view.at(sample.example)
        if sample.marked is None:
            answers[i] = float(holds.any())
        else:
            answers[i] = float(bool(sample.marked.any()) and bool(holds[sample.marked].all()))
    return answers


def rule_simulation(plan: SimulationPlan, view: RuleView) -> list[np.ndarray]:
    """The rule's 0 / 1 prediction per token of each sequence."""
    return [view.at(e).astype(np.float64) for e in plan.examples]
