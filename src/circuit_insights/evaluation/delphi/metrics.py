"""The formulas of the delphi scores, as EleutherAI/delphi computes them.

- :func:`confusion` / :func:`classification_metrics`: ``delphi/log/result_analysis.py``
  (``compute_confusion``, ``compute_classification_metrics``). A sample whose prediction is
  missing (a malformed or missing answer) is dropped before counting; a prediction counts as
  positive when ``>= 0.5``. Undefined ratios are 0 as in delphi (precision without a positive
  prediction, recall without a positive example, ...). delphi's ``accuracy`` key holds the
  balanced accuracy; ``accuracy`` here is the plain share correct (its commented-out line).
- :func:`normalized_activations`: ``delphi/latents/samplers.py`` (``normalize_activations``):
  ``ceil(10 * a / max)`` clipped to [0, 10], the simulator's true activations.
- :func:`correlation`: ``delphi/scorers/simulator/simulation/scoring.py``
  (``_calculate_correlation``): Pearson's r of the concatenated true and predicted values.
- :func:`n_incorrect`: ``delphi/scorers/classifier/fuzz.py`` (``mean_n_activations_ceil``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "CLASSIFICATION_METRICS",
    "Confusion",
    "classification_metrics",
    "confusion",
    "correlation",
    "n_incorrect",
    "normalized_activations",
]

#: The per-group figures of detection and fuzzing.
CLASSIFICATION_METRICS: tuple[str, ...] = (
    "accuracy",
    "precision",
    "recall",
    "f1",
    "balanced_accuracy",
)


@dataclass(frozen=True)
class Confusion:
    """Counts over the samples that have a prediction (``failed``: those that have none)."""

    true_positives: int
    true_negatives: int
    false_positives: int
    false_negatives: int
    failed: int

    @property
    def total(self) -> int:
        return (
            self.true_positives + self.true_negatives + self.false_positives + self.false_negatives
        )

    @property
    def positives(self) -> int:
        return self.true_positives + self.false_negatives

    @property
    def negatives(self) -> int:
        return self.true_negatives + self.false_positives


def confusion(activating: np.ndarray, prediction: np.ndarray, threshold: float = 0.5) -> Confusion:
    """delphi's confusion counts. ``activating`` (n,) bool: the truth; ``prediction`` (n,)
    float: 1 / 0, NaN where the answer was malformed or missing (dropped, counted ``failed``)."""
    truth = np.asarray(activating, dtype=bool)
    pred = np.asarray(prediction, dtype=np.float64)
    if truth.shape != pred.shape:
        raise ValueError(f"activating {truth.shape} and prediction {pred.shape} differ in shape")
    valid = ~np.isnan(pred)
    truth, said = truth[valid], pred[valid] >= threshold
    return Confusion(
        true_positives=int(np.sum(said & truth)),
        true_negatives=int(np.sum(~said & ~truth)),
        false_positives=int(np.sum(said & ~truth)),
        false_negatives=int(np.sum(~said & truth)),
        failed=int(np.sum(~valid)),
    )


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator > 0 else 0.0


def classification_metrics(counts: Confusion) -> dict[str, float]:
    """Accuracy, precision, recall, F1 and balanced accuracy from delphi's formulas.

    accuracy = (tp + tn) / total; precision = tp / (tp + fp); recall = tp / positives;
    F1 = 2 p r / (p + r); balanced accuracy = (tp / positives + tn / negatives) / 2; each
    undefined ratio is 0 (delphi's convention). Without any sample that has a prediction all
    are NaN (delphi would give 0: see docs/delphi_scores.md).
    """
    if counts.total == 0:
        return {name: math.nan for name in CLASSIFICATION_METRICS}
    tp, tn, fp = counts.true_positives, counts.true_negatives, counts.false_positives
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, counts.positives)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {
        "accuracy": (tp + tn) / counts.total,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "balanced_accuracy": (recall + _ratio(tn, counts.negatives)) / 2,
    }


def normalized_activations(activations: np.ndarray, max_activation: float) -> np.ndarray:
    """delphi's simulator targets: ``ceil(10 * a / max(max_activation, 1e-6))`` in [0, 10]."""
    scale = max(float(max_activation), 1e-6)
    values = np.ceil(np.asarray(activations, dtype=np.float64) * 10.0 / scale)
    return np.clip(values, 0.0, 10.0)


def correlation(true: np.ndarray, predicted: np.ndarray) -> tuple[float, str | None]:
    """Pearson's r of ``true`` and ``predicted`` (same length): ``(r, None)``, or NaN and why
    (delphi's ``np.corrcoef`` gives NaN there too): ``too_few_tokens``, ``constant_true``
    (e.g. non-activating examples alone), ``constant_prediction``."""
    x = np.asarray(true, dtype=np.float64)
    y = np.asarray(predicted, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"true {x.shape} and predicted {y.shape} differ in shape")
    if len(x) < 2:
        return math.nan, "too_few_tokens"
    dx, dy = x - x.mean(), y - y.mean()
    sx, sy = float(np.sqrt(np.sum(dx * dx))), float(np.sqrt(np.sum(dy * dy)))
    if sx == 0.0:
        return math.nan, "constant_true"
    if sy == 0.0:
        return math.nan, "constant_prediction"
    return float(np.clip(np.sum(dx * dy) / (sx * sy), -1.0, 1.0)), None


def n_incorrect(activations_of_examples: list[np.ndarray]) -> int:
    """Tokens to mark in a wrongly marked fuzzing example: the ceiling of the mean number of
    non-zero activations per activating example (0 without examples)."""
    if not activations_of_examples:
        return 0
    mean = sum(int(np.count_nonzero(a)) for a in activations_of_examples) / len(
        activations_of_examples
    )
    return int(math.ceil(mean))
