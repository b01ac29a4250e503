"""Detection (EleutherAI/delphi ``delphi/scorers/classifier/detection.py``): the rater sees the
explanation and unmarked examples, activating and non-activating, and says which hold the latent.

The samples are the non-activating examples then the activating ones (``DetectionScorer._prepare``),
shuffled (``Classifier.__call__``) by the feature's generator, cut into prompts of
``batch_size``. The truth of a sample is whether its window activates.
"""

from __future__ import annotations

from circuit_insights.data.sampling import feature_rng
from circuit_insights.evaluation.delphi.classifier import ClassifierPlan, ClassifierScorer, Sample
from circuit_insights.evaluation.delphi.config import DelphiScoresConfig
from circuit_insights.evaluation.delphi.examples import STREAM_DETECTION, FeatureExamples
from circuit_insights.evaluation.delphi.prompts import DETECTION_PROMPT

__all__ = ["DETECTION", "detection_plan"]


def detection_plan(
    examples: FeatureExamples, config: DelphiScoresConfig, seed: int
) -> ClassifierPlan:
    """The detection samples of one feature, in the order they are shown."""
    samples = [Sample(e, False, -1) for e in examples.non_activating] + [
        Sample(e, True, e.quantile) for e in examples.activating
    ]
    order = feature_rng(int(seed), examples.feature, STREAM_DETECTION).permutation(len(samples))
    return ClassifierPlan(tuple(samples[i] for i in order), int(config.batch_size))


DETECTION = ClassifierScorer(name="detection", make_plan=detection_plan, prompt=DETECTION_PROMPT)
"""The detection entry of :data:`circuit_insights.evaluation.delphi.scorers.SCORERS`."""
