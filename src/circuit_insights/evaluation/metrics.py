"""FADE metrics as pure functions (Puri et al. 2025; definitions in docs/fade.md).

Every metric returns ``(value, reason)``: a float and ``None`` when defined, ``NaN`` and a short
reason (one of :data:`REASONS`) when not. Nothing here raises on degenerate input (empty arrays,
missing ratings, constant activations); only programming errors such as mismatched lengths do.

Conventions, as in the published FADE code (``fade/results.py``, ``fade/llm.py`` of the
``fade-language`` package, version 0.1.2):

- The activation of a sample is the *signed* activation at the position of the largest
  ``|activation|`` (:func:`sample_activation`).
- Clarity and Responsiveness are ``|2 · AUROC − 1|`` (the absolute Gini coefficient) with the
  concept samples as positives: the synthetic texts against all natural samples, and the
  natural samples rated 2 against those rated 0. The absolute value makes a feature whose
  activation is *lower* on concept samples score as high as one whose activation is higher.
- Purity is the average precision on the Responsiveness labels; when ``2 · AUROC − 1 < 0``
  FADE negates the activations first (so the precision is measured in the direction in which
  the feature separates the two groups). ``flip_negative`` turns this off.
- Faithfulness is ``max(max_f p2(f) − p2(0), 0) / (1 − p2(0))``, ``p2(f)`` the share of
  continuations rated 2 under steering factor ``f`` (over those the LLM rated), computed only
  when Clarity and Responsiveness both reach the gate (0.5); the factors multiply
  :func:`steering_reference`, the largest ``|activation|`` over the evaluated natural samples.
- The rated selection (:func:`select_rating_samples`) is FADE's stratified one; its top part
  either as FADE's code takes it (``top_selection="fade"``) or without repeats (``"distinct"``).
- A degenerate metric (all compared activations equal) is NaN with a reason here; in means it
  counts the way FADE's code scores it (:func:`fade_counted_value`: Clarity and Responsiveness 0).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

MetricValue = tuple[float, "str | None"]
"""A metric value and, when it is NaN, why."""

NAN = float("nan")

#: Every reason a metric can be missing, with its meaning (used in docs/fade.md and the schema).
REASONS: dict[str, str] = {
    "no_description": "the variant has no description to evaluate",
    "no_synthetic_samples": "the LLM returned no usable synthetic text (or none was tokenizable)",
    "no_natural_samples": "there are no natural (held-out) samples",
    "no_variance": "all activations compared are equal, so no ranking is defined",
    "no_heldout_activations": "the feature never fires on the held-out contexts",
    "no_rated_0": "no natural sample was rated 0",
    "no_rated_2": "no natural sample was rated 2",
    "gated": "Clarity or Responsiveness is below the gate (or missing)",
    "no_baseline_ratings": "no continuation under steering factor 0 got a rating",
    "baseline_saturated": "every continuation under steering factor 0 was rated 2 (p2(0) = 1)",
    "no_max_activation": "the reference activation for steering is zero or not finite",
    "non_finite_activations": "an activation is NaN or infinite",
}


def _missing(reason: str) -> MetricValue:
    assert reason in REASONS, reason
    return NAN, reason


# --- activations of samples ------------------------------------------------------------------


def sample_activation(activations: np.ndarray | Sequence[float]) -> float:
    """The signed activation at the position of the largest ``|activation|`` (first on ties).

    ``activations``: (positions,) of one sample, already restricted to the positions that count
    (no padding, no excluded positions). An empty sample has activation 0.
    """
    values = np.asarray(activations, dtype=np.float64).reshape(-1)
    if values.size == 0:
        return 0.0
    return float(values[int(np.argmax(np.abs(values)))])


def sample_activations(activations: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """:func:`sample_activation` of each row of ``activations`` (n, positions) -> (n,) float64.

    ``valid`` (n, positions) bool marks the positions that count; a row with none has 0.
    """
    values = np.asarray(activations, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"activations must be (n, positions), got shape {values.shape}")
    if valid is None:
        valid = np.ones(values.shape, dtype=bool)
    magnitude = np.where(valid, np.abs(values), -1.0)  # (n, positions)
    if values.shape[1] == 0:
        return np.zeros(values.shape[0])
    index = magnitude.argmax(axis=1)  # (n,) first position of the largest |activation|
    picked = values[np.arange(values.shape[0]), index]
    return np.where(valid.any(axis=1), picked, 0.0)


# --- choosing the natural samples to rate ----------------------------------------------------

#: FADE's activation percentiles: strata [0, 50), [50, 75), [75, 95), [95, 100].
FADE_PERCENTILES: tuple[float, ...] = (0.0, 50.0, 75.0, 95.0, 100.0)
TOP_STRATUM = -1
"""Stratum label of the samples taken from the very top (the ``top_fraction`` part)."""


#: How the top part of the rated selection is taken (``top_selection``):
#: ``fade``: the highest-activation candidates whether or not a stratum already drew them, then
#: de-duplicated, so fewer than ``n_samples`` may be chosen (FADE's code,
#: ``fade/llm.py: RateSamples.get_activation_based_subset``); ``distinct``: the highest ones not
#: drawn yet, so exactly ``n_samples`` are chosen.
TOP_SELECTIONS: tuple[str, ...] = ("fade", "distinct")


@dataclass(frozen=True)
class RatingSelection:
    """Natural samples chosen for rating: ``index`` into the candidates, in stratum order.

    ``stratum[i]`` is the percentile stratum (0 .. len(percentiles) - 2) of ``index[i]``, or
    :data:`TOP_STRATUM` for the top samples (a candidate both drawn by a stratum and among the
    top ones keeps its stratum label).
    """

    index: np.ndarray  # (k,) int64
    stratum: np.ndarray  # (k,) int64


def select_rating_samples(
    activations: np.ndarray | Sequence[float],
    n_samples: int,
    *,
    top_fraction: float = 0.1,
    percentiles: Sequence[float] = FADE_PERCENTILES,
    seed: int = 0,
    exclude: np.ndarray | Sequence[int] | None = None,
    top_selection: str = "distinct",
) -> RatingSelection:
    """FADE's stratified choice of natural samples to rate.

    The candidates (``activations`` (n,), the sample activations, zeros included) are sorted by
    activation (stable, so equal activations keep their order); each percentile stratum of the
    sorted list contributes ``floor(n_samples · (1 − top_fraction) / n_strata)`` samples drawn
    without replacement (all of it when smaller); the rest, ``rest = n_samples − drawn``, come
    from the top of the sorted list. All candidates when ``n <= n_samples``. ``exclude``:
    candidate indices that may not be chosen (already rated ones).

    ``top_selection`` (:data:`TOP_SELECTIONS`): ``"fade"`` takes the ``rest`` highest candidates
    whether or not a stratum drew them and keeps each candidate once, as FADE's code does, so
    ``n_samples − (duplicates)`` are chosen; ``"distinct"`` takes the ``rest`` highest candidates
    not drawn yet, so exactly ``n_samples`` are chosen.
    """
    if top_selection not in TOP_SELECTIONS:
        raise ValueError(f"top_selection {top_selection!r} is not one of {list(TOP_SELECTIONS)}")
    values = np.asarray(activations, dtype=np.float64).reshape(-1)
    candidates = np.arange(len(values))
    if exclude is not None and len(exclude):
        candidates = np.setdiff1d(candidates, np.asarray(exclude, dtype=np.int64))
    n_samples = max(int(n_samples), 0)
    rng = np.random.default_rng(seed)
    order = candidates[np.argsort(values[candidates], kind="stable")]  # ascending activation
    n = len(order)
    bounds = [int(p / 100.0 * n) for p in percentiles]
    n_strata = len(bounds) - 1
    if n <= n_samples:
        stratum = np.full(n, TOP_STRATUM, dtype=np.int64)
        for label, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            stratum[start:stop] = label
        return RatingSelection(order.astype(np.int64), stratum)
    per_stratum = int(n_samples * (1.0 - top_fraction) // n_strata) if n_strata else 0
    chosen: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for label, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        members = order[start:stop]
        if len(members) > per_stratum:
            members = np.sort(rng.choice(members, size=per_stratum, replace=False))
        chosen.append(members)
        labels.append(np.full(len(members), label, dtype=np.int64))
    drawn = np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)
    rest = n_samples - len(drawn)
    if rest > 0:
        # "fade": the top `rest` of all candidates, then the ones drawn already are dropped;
        # "distinct": the top `rest` of the candidates not drawn yet.
        pool = order if top_selection == "fade" else order[~np.isin(order, drawn)]
        top = pool[len(pool) - rest :][::-1]
        top = top[~np.isin(top, drawn)]
        chosen.append(top)
        labels.append(np.full(len(top), TOP_STRATUM, dtype=np.int64))
    return RatingSelection(
        np.concatenate(chosen).astype(np.int64), np.concatenate(labels).astype(np.int64)
    )


def steering_reference(natural_activations: np.ndarray | Sequence[float]) -> float:
    """FADE's steering reference: the largest ``|activation|`` over the natural samples (n,).

    FADE (``fade/pipeline.py``, ``sae_max_value = natural_activations.abs().max()``) multiplies
    the steering factors by this value. NaN when a value is not finite or there is none.
    """
    values = np.asarray(natural_activations, dtype=np.float64).reshape(-1)
    if len(values) == 0 or not np.isfinite(values).all():
        return NAN
    return float(np.abs(values).max())


# --- ranking metrics -------------------------------------------------------------------------


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing their average rank."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    boundaries = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1], True])
    for start, stop in zip(boundaries[:-1], boundaries[1:], strict=True):
        ranks[order[start:stop]] = (start + stop + 1) / 2.0
    return ranks


def auroc(
    negatives: np.ndarray | Sequence[float], positives: np.ndarray | Sequence[float]
) -> MetricValue:
    """Area under the ROC curve of ``positives`` against ``negatives`` (ties count one half).

    Equals ``sklearn.metrics.roc_auc_score`` with positives labelled 1. Missing when either
    group is empty, a value is not finite, or all values are equal.
    """
    neg = np.asarray(negatives, dtype=np.float64).reshape(-1)
    pos = np.asarray(positives, dtype=np.float64).reshape(-1)
    if len(neg) == 0 or len(pos) == 0:
        return _missing("no_natural_samples" if len(neg) == 0 else "no_synthetic_samples")
    both = np.concatenate([neg, pos])
    if not np.isfinite(both).all():
        return _missing("non_finite_activations")
    if both.min() == both.max():
        return _missing("no_variance")
    ranks = _average_ranks(both)
    rank_sum = ranks[len(neg) :].sum()
    u_statistic = rank_sum - len(pos) * (len(pos) + 1) / 2.0
    return float(u_statistic / (len(pos) * len(neg))), None


def average_precision(
    negatives: np.ndarray | Sequence[float], positives: np.ndarray | Sequence[float]
) -> MetricValue:
    """Average precision of ranking ``positives`` above ``negatives`` by value.

    Equals ``sklearn.metrics.average_precision_score`` (step-wise: the sum over thresholds of
    precision times the increase in recall; tied values form one threshold).
    """
    neg = np.asarray(negatives, dtype=np.float64).reshape(-1)
    pos = np.asarray(positives, dtype=np.float64).reshape(-1)
    if len(pos) == 0:
        return _missing("no_rated_2")
    if len(neg) == 0:
        return _missing("no_rated_0")
    scores = np.concatenate([neg, pos])
    if not np.isfinite(scores).all():
        return _missing("non_finite_activations")
    labels = np.concatenate([np.zeros(len(neg)), np.ones(len(pos))])
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    last_of_threshold = np.r_[scores[1:] != scores[:-1], True]
    true_positives = np.cumsum(labels)[last_of_threshold]
    predicted = (np.arange(len(scores)) + 1)[last_of_threshold]
    precision = true_positives / predicted
    recall_gain = np.diff(np.r_[0.0, true_positives]) / len(pos)
    return float((precision * recall_gain).sum()), None


def gini(
    negatives: np.ndarray | Sequence[float], positives: np.ndarray | Sequence[float]
) -> MetricValue:
    """The signed Gini coefficient ``2 · AUROC − 1`` of positives against negatives."""
    value, reason = auroc(negatives, positives)
    return (NAN, reason) if reason else (2.0 * value - 1.0, None)


# --- the four FADE metrics -------------------------------------------------------------------


def clarity(
    synthetic_activations: np.ndarray | Sequence[float],
    natural_activations: np.ndarray | Sequence[float],
) -> MetricValue:
    """Clarity = ``|2 · AUROC − 1|``, synthetic-text activations (positives) vs natural ones.

    ``natural_activations``: the sample activations of *all* natural samples (not only the rated
    ones), as in FADE. Synthetic activations that are all *lower* than the natural ones give
    Clarity 1 as well (FADE takes the absolute Gini coefficient).
    """
    synthetic = np.asarray(synthetic_activations, dtype=np.float64).reshape(-1)
    natural = np.asarray(natural_activations, dtype=np.float64).reshape(-1)
    if len(synthetic) == 0:
        return _missing("no_synthetic_samples")
    if len(natural) == 0:
        return _missing("no_natural_samples")
    value, reason = gini(natural, synthetic)
    return (NAN, reason) if reason else (abs(value), None)


@dataclass(frozen=True)
class RatingCounts:
    """How many natural samples got each rating (``missing``: no valid rating)."""

    rated_0: int
    rated_1: int
    rated_2: int
    missing: int


def count_ratings(ratings: np.ndarray | Sequence[float]) -> RatingCounts:
    """Count ratings 0 / 1 / 2; anything else (NaN, -1, 3) counts as missing."""
    values = np.asarray(ratings, dtype=np.float64).reshape(-1)
    counts = [int((values == rating).sum()) for rating in (0, 1, 2)]
    rated_0, rated_1, rated_2 = counts
    return RatingCounts(rated_0, rated_1, rated_2, missing=len(values) - sum(counts))


def responsiveness_and_purity(
    activations: np.ndarray | Sequence[float],
    ratings: np.ndarray | Sequence[float],
    *,
    flip_negative: bool = True,
) -> tuple[MetricValue, MetricValue]:
    """Responsiveness = ``|2 · AUROC − 1|`` and Purity = average precision, rated 2 vs rated 0.

    ``activations`` and ``ratings`` (n,) are aligned per natural sample; ratings of 1 and
    missing ratings (NaN or anything outside {0, 1, 2}) are dropped. With ``flip_negative``
    (FADE's behaviour) Purity is computed on negated activations when the Gini coefficient is
    negative.
    """
    values = np.asarray(activations, dtype=np.float64).reshape(-1)
    labels = np.asarray(ratings, dtype=np.float64).reshape(-1)
    if len(values) != len(labels):
        raise ValueError(f"{len(values)} activations but {len(labels)} ratings")
    concept = values[labels == 2]
    non_concept = values[labels == 0]
    if len(non_concept) == 0 or len(concept) == 0:
        empty = "no_rated_0" if len(non_concept) == 0 else "no_rated_2"
        return _missing(empty), _missing(empty)
    signed, reason = gini(non_concept, concept)
    if reason is not None:
        return _missing(reason), _missing(reason)
    if flip_negative and signed < 0:
        non_concept, concept = -non_concept, -concept
    return (abs(signed), None), average_precision(non_concept, concept)


def faithfulness_gate(
    clarity_value: float, responsiveness_value: float, gate: float = 0.5
) -> str | None:
    """``"gated"`` unless Clarity and Responsiveness are both ``>= gate`` (NaN fails), else None."""
    passes = (
        math.isfinite(clarity_value)
        and math.isfinite(responsiveness_value)
        and clarity_value >= gate
        and responsiveness_value >= gate
    )
    return None if passes else "gated"


def concept_shares(
    ratings_by_factor: Mapping[float, np.ndarray | Sequence[float]],
) -> dict[float, tuple[float, int]]:
    """Per steering factor: (share of rated continuations rated 2, number rated).

    Continuations without a valid rating are left out of the share; a factor with no rated
    continuation has share NaN.
    """
    shares: dict[float, tuple[float, int]] = {}
    for factor, ratings in ratings_by_factor.items():
        counts = count_ratings(ratings)
        n_rated = counts.rated_0 + counts.rated_1 + counts.rated_2
        shares[float(factor)] = (counts.rated_2 / n_rated if n_rated else NAN, n_rated)
    return shares


def faithfulness(
    ratings_by_factor: Mapping[float, np.ndarray | Sequence[float]],
    *,
    baseline_factor: float = 0.0,
) -> MetricValue:
    """Faithfulness = ``max(max_f p2(f) − p2(0), 0) / (1 − p2(0))`` over the steering factors.

    ``ratings_by_factor``: factor -> ratings (0 / 1 / 2; anything else is missing) of the
    continuations generated under it. Factors without rated continuations are skipped; no rated
    continuation at the baseline factor, or ``p2(0) = 1``, gives a missing value. When no
    continuation is rated 2 at all the value is 0 (FADE does the same).
    """
    shares = concept_shares(ratings_by_factor)
    baseline = shares.get(float(baseline_factor), (NAN, 0))[0]
    if not math.isfinite(baseline):
        return _missing("no_baseline_ratings")
    if baseline >= 1.0:
        return _missing("baseline_saturated")
    best = max(share for share, _ in shares.values() if math.isfinite(share))
    return max(best - baseline, 0.0) / (1.0 - baseline), None


# --- how FADE counts degenerate features in its means ----------------------------------------

#: Reasons for which a metric is undefined because the compared activations are all equal.
#: FADE's code does not stop there: ``roc_auc_score`` of tied values is 0.5, so its Clarity and
#: Responsiveness are ``|2 · 0.5 − 1| = 0`` (``fade/results.py: gini_ap_metric``).
DEGENERATE_REASONS: frozenset[str] = frozenset({"no_variance", "no_heldout_activations"})
#: The metrics whose degenerate value FADE's code makes 0.
FADE_ZERO_METRICS: frozenset[str] = frozenset({"clarity", "responsiveness"})


def is_degenerate(metric: str, value: float, reason: str | None) -> bool:
    """True when ``metric`` is missing for a reason FADE's code would score as 0."""
    return (
        metric in FADE_ZERO_METRICS
        and not (value is not None and math.isfinite(value))
        and reason in DEGENERATE_REASONS
    )


def fade_counted_value(metric: str, value: float, reason: str | None) -> float:
    """The value a feature contributes to a mean the way FADE counts it.

    A finite ``value`` as it is; a degenerate Clarity or Responsiveness (:func:`is_degenerate`)
    as 0; anything else NaN (left out of the mean). Purity of tied activations is not counted:
    FADE's average precision there is the share of samples rated 2, which says nothing about the
    feature (and no ratings are made for a feature whose held-out activations are all equal).
    """
    if value is not None and math.isfinite(value):
        return float(value)
    return 0.0 if is_degenerate(metric, value, reason) else NAN
