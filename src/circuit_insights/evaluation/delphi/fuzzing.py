"""Fuzzing (EleutherAI/delphi ``delphi/scorers/classifier/fuzz.py``, ``sample.py``): the rater
sees examples with tokens marked ``<<like this>>`` and says whether the marks fit the explanation.

- Correctly marked (positives): every activating example, its tokens marked where the activation
  is at least ``fuzz_threshold`` x the example's own maximum (``_prepare_text`` with
  ``n_incorrect = 0``).
- Wrongly marked (negatives), ``fuzz_type``:
  ``default``: each non-activating example with ``n_incorrect`` tokens marked at random, where
  ``n_incorrect`` is the ceiling of the mean number of non-zero activations per activating
  example (``mean_n_activations_ceil``); ``active``: each activating example with
  ``n_incorrect`` of its tokens below the threshold marked (an example without such tokens is
  left out; delphi shows a fixed placeholder text there).
  The marked tokens are drawn uniformly among those at or below the threshold, by the feature's
  generator (delphi re-seeds Python's ``random`` with 22 and always marks the window's
  3/4 position when it can, where its centred windows put the maximum; our windows are not
  centred).

Samples are the negatives then the positives, shuffled, cut into prompts of ``batch_size``.
"""

from __future__ import annotations

import numpy as np

from circuit_insights.data.sampling import feature_rng
from circuit_insights.evaluation.delphi.classifier import ClassifierPlan, ClassifierScorer, Sample
from circuit_insights.evaluation.delphi.config import DelphiScoresConfig
from circuit_insights.evaluation.delphi.examples import (
    STREAM_FUZZ_MARKS,
    STREAM_FUZZING,
    Example,
    FeatureExamples,
)
from circuit_insights.evaluation.delphi.metrics import n_incorrect
from circuit_insights.evaluation.delphi.prompts import FUZZING_PROMPT

__all__ = ["FUZZING", "correct_marks", "fuzzing_plan", "random_marks"]


def correct_marks(example: Example, threshold: float) -> np.ndarray:
    """(k,) bool: the tokens at or above ``threshold`` x the example's maximum activation."""
    return example.activations >= threshold * example.max_activation


def random_marks(
    example: Example, threshold: float, n: int, rng: np.random.Generator
) -> np.ndarray | None:
    """(k,) bool: ``min(n, available)`` tokens at or below ``threshold`` x the example's maximum,
    drawn uniformly; None when no token is available."""
    below = np.flatnonzero(example.activations <= threshold * example.max_activation)
    if len(below) == 0 or n <= 0:
        return None
    marked = np.zeros(len(example.activations), dtype=bool)
    marked[rng.choice(below, min(n, len(below)), replace=False)] = True
    return marked


def fuzzing_plan(
    examples: FeatureExamples, config: DelphiScoresConfig, seed: int
) -> ClassifierPlan:
    """The fuzzing samples of one feature, in the order they are shown."""
    threshold = float(config.fuzz_threshold)
    n_marks = n_incorrect([e.activations for e in examples.activating])
    rng = feature_rng(int(seed), examples.feature, STREAM_FUZZ_MARKS)
    sources = examples.non_activating if config.fuzz_type == "default" else examples.activating
    negatives = []
    for example in sources:
        marked = random_marks(example, threshold, n_marks, rng)
        if marked is not None:
            negatives.append(Sample(example, False, -1, marked))
    positives = [
        Sample(e, True, e.quantile, correct_marks(e, threshold)) for e in examples.activating
    ]
    samples = negatives + positives
    order = feature_rng(int(seed), examples.feature, STREAM_FUZZING).permutation(len(samples))
    return ClassifierPlan(tuple(samples[i] for i in order), int(config.batch_size))


FUZZING = ClassifierScorer(name="fuzzing", make_plan=fuzzing_plan, prompt=FUZZING_PROMPT)
"""The fuzzing entry of :data:`circuit_insights.evaluation.delphi.scorers.SCORERS`."""
