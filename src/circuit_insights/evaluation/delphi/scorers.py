"""The table of delphi scores: one object per score, in the order they are computed and written.

A new score is an object with the :class:`Scorer` methods in its own module, added here and to
:data:`circuit_insights.evaluation.delphi.config.SCORES` (``tests/test_delphi_scores.py``
checks that both name the same scores); :func:`circuit_insights.evaluation.delphi.run.score_shard`
asks the object, never the name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from circuit_insights.evaluation.delphi.classifier import TokenDisplayFn
from circuit_insights.evaluation.delphi.config import DelphiScoresConfig
from circuit_insights.evaluation.delphi.detection import DETECTION
from circuit_insights.evaluation.delphi.examples import FeatureExamples
from circuit_insights.evaluation.delphi.fuzzing import FUZZING
from circuit_insights.evaluation.delphi.rule_scorer import RuleView
from circuit_insights.evaluation.delphi.simulation import SIMULATION
from circuit_insights.llm.client import ChatRequest, ChatResult

__all__ = ["SCORERS", "Scorer"]


class Scorer(Protocol):
    """One delphi score: its samples (a *plan*), LLM requests and rows, and rule rows."""

    @property
    def name(self) -> str: ...

    def llm_mode(self, config: DelphiScoresConfig) -> str | None:
        """``simulation_mode`` of its LLM-rated rows under ``config``."""
        ...

    @property
    def rule_mode(self) -> str | None:
        """``simulation_mode`` of its rule-rated rows."""
        ...

    def groups(self, n_quantiles: int) -> list[tuple[str, int | None]]:
        """(group, quantile) of its rows."""
        ...

    def plan(self, examples: FeatureExamples, config: DelphiScoresConfig, seed: int) -> Any:
        """The samples of one feature, shared by every variant and both raters."""
        ...

    def problem(self, examples: FeatureExamples, plan: Any) -> str | None:
        """Why the score cannot be computed for the feature (a reason of ``REASONS``)."""
        ...

    def requests(
        self,
        plan: Any,
        explanation: str,
        display: TokenDisplayFn,
        config: DelphiScoresConfig,
        seed: int,
    ) -> list[ChatRequest]: ...

    def llm_rows(
        self,
        base: Mapping[str, Any],
        plan: Any,
        results: Sequence[ChatResult],
        n_quantiles: int,
    ) -> list[dict[str, Any]]: ...

    def rule_rows(
        self, base: Mapping[str, Any], plan: Any, view: RuleView, n_quantiles: int
    ) -> list[dict[str, Any]]: ...


#: score name -> its scorer.
SCORERS: dict[str, Scorer] = {scorer.name: scorer for scorer in (DETECTION, FUZZING, SIMULATION)}
