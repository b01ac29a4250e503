"""What detection and fuzzing share (EleutherAI/delphi ``delphi/scorers/classifier/classifier.py``,
``sample.py``): samples shuffled and cut into prompts of ``batch_size`` examples, the marking
of tokens ``<<like this>>``, and the parsing of the answer list.

Answer parsing as delphi's ``Classifier._parse``: the first ``[...]`` of the answer (on one line)
is read as JSON; it must hold one entry per example of the prompt, and each entry counts as its
truth value (``bool(entry)``; a JSON ``null`` entry is no prediction). An answer without such a
list, one that is not JSON, one of the wrong length, an empty answer or a failed request gives
every example of the prompt no prediction (NaN), and delphi's metrics drop those examples.

:class:`ClassifierScorer` is the entry of :data:`.scorers.SCORERS` for both (its ``make_plan``
from :mod:`.detection` or :mod:`.fuzzing`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from circuit_insights.evaluation.delphi.config import DelphiScoresConfig
from circuit_insights.evaluation.delphi.examples import Example, FeatureExamples
from circuit_insights.evaluation.delphi.prompts import (
    ClassifierPrompt,
    classifier_messages,
    classifier_schema,
)
from circuit_insights.evaluation.delphi.rows import classifier_rows, groups_of
from circuit_insights.evaluation.delphi.rule_scorer import RuleView, rule_classifier_answers
from circuit_insights.explain.executable.rule import TokenDisplayFn
from circuit_insights.llm.client import ChatRequest, ChatResult

__all__ = [
    "ClassifierPlan",
    "ClassifierScorer",
    "Sample",
    "TokenDisplayFn",
    "batches",
    "classifier_requests",
    "marked_text",
    "parse_predictions",
]

_LIST = re.compile(r"\[.*?\]")


@dataclass(frozen=True)
class Sample:
    """One example as a classifier sees it.

    ``activating``: the true answer (detection: the window activates; fuzzing: it is marked
    correctly). ``group``: the example's quantile for a positive, -1 for a negative.
    ``marked`` (k,) bool over the example's shown tokens (fuzzing), None for detection.
    """

    example: Example
    activating: bool
    group: int
    marked: np.ndarray | None = None


@dataclass(frozen=True)
class ClassifierPlan:
    """The samples of one feature for one classifier score, in the order they are shown."""

    samples: tuple[Sample, ...]
    batch_size: int

    @property
    def truth(self) -> np.ndarray:
        """(n,) bool."""
        return np.array([s.activating for s in self.samples], dtype=bool)

    @property
    def groups(self) -> np.ndarray:
        """(n,) int."""
        return np.array([s.group for s in self.samples], dtype=np.int64)


def batches(n: int, batch_size: int) -> list[range]:
    """Consecutive prompts of ``batch_size`` samples (the last may be smaller)."""
    return [range(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def marked_text(
    token_ids: Sequence[int] | np.ndarray, marked: np.ndarray | None, display: TokenDisplayFn
) -> str:
    """The shown tokens joined, each run of marked tokens inside ``<<`` ``>>`` (delphi's
    ``_highlight``)."""
    pieces: list[str] = []
    inside = False
    for i, token in enumerate(token_ids):
        mark = bool(marked[i]) if marked is not None else False
        if mark and not inside:
            pieces.append("<<")
        elif not mark and inside:
            pieces.append(">>")
        inside = mark
        pieces.append(display(int(token)))
    if inside:
        pieces.append(">>")
    return "".join(pieces)


def classifier_requests(
    prompt: ClassifierPrompt,
    plan: ClassifierPlan,
    explanation: str,
    display: TokenDisplayFn,
    *,
    structured_output: bool,
    max_tokens: int,
    seed: int,
) -> list[ChatRequest]:
    """One request per prompt of ``plan`` (temperature 0, as delphi's scorers)."""
    requests = []
    for batch in batches(len(plan.samples), plan.batch_size):
        texts = [
            marked_text(plan.samples[i].example.token_ids, plan.samples[i].marked, display)
            for i in batch
        ]
        requests.append(
            ChatRequest(
                messages=classifier_messages(prompt, explanation, texts),
                json_schema=classifier_schema(len(texts)) if structured_output else None,
                temperature=0.0,
                max_tokens=max_tokens,
                seed=seed,
            )
        )
    return requests


def parse_predictions(text: str | None, n_examples: int) -> np.ndarray:
    """(n_examples,) float: 1 / 0 per example, NaN where the answer gives no prediction."""
    missing = np.full(n_examples, np.nan)
    match = _LIST.search(text or "")
    if match is None:
        return missing
    try:
        values = json.loads(match.group(0))
    except ValueError:
        return missing
    if not isinstance(values, list) or len(values) != n_examples:
        return missing
    return np.array([np.nan if v is None else float(bool(v)) for v in values], dtype=np.float64)


@dataclass(frozen=True)
class ClassifierScorer:
    """Detection or fuzzing: samples from ``make_plan``, rated in prompts of ``batch_size``
    built from ``prompt``."""

    name: str
    make_plan: Callable[[FeatureExamples, DelphiScoresConfig, int], ClassifierPlan]
    prompt: ClassifierPrompt
    rule_mode: str | None = None

    def llm_mode(self, config: DelphiScoresConfig) -> str | None:
        """``simulation_mode`` of its rows (none: it is not a simulation)."""
        return None

    def groups(self, n_quantiles: int) -> list[tuple[str, int | None]]:
        return groups_of(n_quantiles, negative_group=True)

    def plan(
        self, examples: FeatureExamples, config: DelphiScoresConfig, seed: int
    ) -> ClassifierPlan:
        return self.make_plan(examples, config, seed)

    def problem(self, examples: FeatureExamples, plan: ClassifierPlan) -> str | None:
        """Why the score cannot be computed: no positive, or no negative sample (delphi's
        fuzzing refuses a latent without non-activating examples; detection here too)."""
        if examples.shortage is not None:
            return examples.shortage
        if not (~plan.truth).any():
            return "no_non_activating_examples"
        return None

    def requests(
        self,
        plan: ClassifierPlan,
        explanation: str,
        display: TokenDisplayFn,
        config: DelphiScoresConfig,
        seed: int,
    ) -> list[ChatRequest]:
        return classifier_requests(
            self.prompt,
            plan,
            explanation,
            display,
            structured_output=config.structured_output,
            max_tokens=config.max_tokens,
            seed=seed,
        )

    def llm_rows(
        self,
        base: Mapping[str, Any],
        plan: ClassifierPlan,
        results: Sequence[ChatResult],
        n_quantiles: int,
    ) -> list[dict[str, Any]]:
        """The rows from the answers to :meth:`requests` (in order)."""
        predictions = np.full(len(plan.samples), np.nan)
        for batch, result in zip(batches(len(plan.samples), plan.batch_size), results, strict=True):
            predictions[batch.start : batch.stop] = parse_predictions(result.text, len(batch))
        return classifier_rows(base, plan, predictions, n_quantiles)

    def rule_rows(
        self, base: Mapping[str, Any], plan: ClassifierPlan, view: RuleView, n_quantiles: int
    ) -> list[dict[str, Any]]:
        """The rows of a rule answering every sample itself."""
        return classifier_rows(base, plan, rule_classifier_answers(plan, view), n_quantiles)
