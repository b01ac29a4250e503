"""Pure, seeded choice of the contexts to explain and evaluate each feature with.

Per feature, from the ``maxima`` table of the activation cache (one row per context where the
feature fires at a non-excluded position: ``context``, ``max_activation``, ``max_position``):

- ``quantile`` (CircuitLens): the firing contexts are split into ``n_bins`` bins of their
  maximum activation; a context in bin ``b`` (holding ``n_b`` contexts) gets weight
  ``w = n_b ** -alpha``; ``n_samples`` contexts are drawn without replacement by *successive
  sampling*: each draw picks one of the contexts not drawn yet with probability proportional to
  its weight (so the first draw picks context i with probability ``w_i / sum(w)``). Fewer firing
  contexts than ``n_samples``: all of them, in draw order.
- ``top`` (the MaxAct baseline): the ``top_k`` contexts of highest maximum activation.
- ``negative``: contexts drawn uniformly without replacement from the cached contexts where the
  feature does not fire at any non-excluded position.

Each sample's ``target_position`` is the position of the maximum (the last position for
negatives): the consumer truncates the context to ``tokens[: target_position + 1]`` so the
target token is the last one. Randomness comes from a generator seeded by (seed, feature,
stream), so a feature's samples do not depend on which shard or batch of features it is in.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from circuit_insights.core.config import from_block
from circuit_insights.core.errors import InputError
from circuit_insights.core.io import write_parquet_atomic
from circuit_insights.data.schemas import SAMPLES_SCHEMA
from circuit_insights.data.shards import Shard

Binning = Literal["width", "count"]

_STREAM_QUANTILE = 0
_STREAM_NEGATIVE = 1
_MAXIMA_COLUMNS = ("context", "max_activation", "max_position")


@dataclass(frozen=True)
class SamplingConfig:
    """How many contexts of each kind to keep per feature, and how to draw them."""

    n_bins: int = 20
    """Bins of the per-context maximum activation for quantile sampling (B)."""
    alpha: float = 0.9
    """Exponent of the inverse-frequency weight ``n_b ** -alpha`` (0: uniform over contexts,
    1: uniform over bins)."""
    n_samples: int = 100
    """Quantile samples per feature (N)."""
    top_k: int = 20
    """Top-activating contexts per feature (MaxAct baseline)."""
    n_negatives: int = 20
    """Random contexts where the feature does not fire, per feature."""
    seed: int = 0
    """Base seed; each feature draws from a generator seeded by (seed, feature, stream)."""
    binning: Binning = "width"
    """``width``: equal-width bins over [min, max] of the maxima, so rare strong activations sit
    in small bins and are oversampled; ``count``: equal-count bins (every n_b nearly equal, so the
    draw is close to uniform)."""

    def __post_init__(self) -> None:
        for key in ("n_bins", "n_samples"):
            if getattr(self, key) <= 0:
                raise InputError(f"sampling.{key} must be positive, got {getattr(self, key)}")
        for key in ("top_k", "n_negatives", "seed"):
            if getattr(self, key) < 0:
                raise InputError(f"sampling.{key} must be >= 0, got {getattr(self, key)}")
        if not np.isfinite(self.alpha) or self.alpha < 0:
            raise InputError(f"sampling.alpha must be a finite number >= 0, got {self.alpha}")
        if self.binning not in ("width", "count"):
            raise InputError(f"sampling.binning must be 'width' or 'count', got {self.binning!r}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> SamplingConfig:
        """From the workflow config's ``sampling`` block (:func:`~circuit_insights.core.config.from_block`)."""
        return from_block(cls, values, "sampling")


def feature_rng(seed: int, feature: int, stream: int) -> np.random.Generator:
    """The generator of one feature and one purpose (``stream``), independent of shards."""
    if seed < 0 or feature < 0:
        raise InputError(f"seed and feature must be >= 0, got seed={seed}, feature={feature}")
    return np.random.default_rng(np.random.SeedSequence([seed, feature, stream]))


def quantile_bins(
    max_activation: np.ndarray, n_bins: int, binning: Binning = "width"
) -> np.ndarray:
    """Bin in ``[0, n_bins)`` of each context's maximum activation (bin 0: the weakest).

    ``width``: bins of equal width over [min, max] (all in bin 0 when min == max); ``count``:
    equal-count bins by rank (ties ordered by input order), sizes differing by at most one.
    """
    values = np.asarray(max_activation, dtype=np.float64)
    n = len(values)
    if n == 0:
        return np.zeros(0, np.int64)
    if binning == "count":
        rank = np.empty(n, np.int64)
        rank[np.argsort(values, kind="stable")] = np.arange(n)
        return rank * n_bins // n
    if binning != "width":
        raise InputError(f"binning must be 'width' or 'count', got {binning!r}")
    low, high = values.min(), values.max()
    if high == low:
        return np.zeros(n, np.int64)
    scaled = np.floor((values - low) / (high - low) * n_bins)
    return np.clip(scaled, 0, n_bins - 1).astype(np.int64)


def bin_weights(bins: np.ndarray, alpha: float) -> np.ndarray:
    """Weight ``n_b ** -alpha`` of each context, ``n_b`` being the size of its bin."""
    bins = np.asarray(bins, dtype=np.int64)
    if len(bins) == 0:
        return np.zeros(0, np.float64)
    bin_size = np.bincount(bins)[bins].astype(np.float64)
    return bin_size**-alpha


def successive_sampling_order(weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random order of all items, drawn one by one without replacement ∝ ``weights``.

    Exponential race: item i gets an arrival time ``E_i / w_i`` with ``E_i ~ Exp(1)``; the
    arrival order has exactly the law of successive sampling (the first arrival is i with
    probability ``w_i / sum(w)``, and by memorylessness each later one is drawn ∝ w among the
    items left). The first N entries are a weighted sample of size N without replacement, in
    draw order. Weights must be positive.
    """
    weights = np.asarray(weights, dtype=np.float64)
    if len(weights) and not np.all(weights > 0):
        raise InputError("successive sampling needs positive weights")
    arrival = rng.standard_exponential(len(weights)) / weights
    return np.argsort(arrival, kind="stable")


def _one_feature_maxima(maxima_of_one_feature: pd.DataFrame) -> pd.DataFrame:
    missing = [name for name in _MAXIMA_COLUMNS if name not in maxima_of_one_feature.columns]
    if missing:
        raise InputError(f"maxima lack the columns {missing}")
    frame = maxima_of_one_feature.sort_values("context", kind="stable", ignore_index=True)
    if frame["context"].duplicated().any():
        raise InputError("maxima of one feature hold a context twice")
    return frame


def quantile_sample(
    maxima_of_one_feature: pd.DataFrame,
    n_bins: int = 20,
    alpha: float = 0.9,
    n_samples: int = 100,
    seed: int | np.random.SeedSequence | np.random.Generator = 0,
    binning: Binning = "width",
) -> pd.DataFrame:
    """CircuitLens quantile sample of one feature's firing contexts.

    Returns columns ``rank`` (draw order from 0), ``context``, ``target_position``
    (``max_position``), ``activation`` (``max_activation``), ``bin`` and ``weight``
    (``n_b ** -alpha``); ``min(n_samples, n_contexts)`` rows. The result does not depend on the
    input's row order (contexts are sorted before drawing).
    """
    frame = _one_feature_maxima(maxima_of_one_feature)
    bins = quantile_bins(frame["max_activation"].to_numpy(), n_bins, binning)
    weights = bin_weights(bins, alpha)
    order = successive_sampling_order(weights, np.random.default_rng(seed))[:n_samples]
    return pd.DataFrame(
        {
            "rank": np.arange(len(order), dtype=np.int32),
            "context": frame["context"].to_numpy(np.int64)[order],
            "target_position": frame["max_position"].to_numpy(np.int64)[order],
            "activation": frame["max_activation"].to_numpy(np.float32)[order],
            "bin": bins[order].astype(np.int32),
            "weight": weights[order],
        }
    )


def top_k_contexts(maxima_of_one_feature: pd.DataFrame, k: int) -> pd.DataFrame:
    """The ``k`` contexts of highest maximum activation (ties: lower context id first).

    Columns ``rank``, ``context``, ``target_position``, ``activation``.
    """
    frame = _one_feature_maxima(maxima_of_one_feature)
    order = np.lexsort(
        (frame["context"].to_numpy(), -frame["max_activation"].to_numpy(np.float64))
    )[:k]
    return pd.DataFrame(
        {
            "rank": np.arange(len(order), dtype=np.int32),
            "context": frame["context"].to_numpy(np.int64)[order],
            "target_position": frame["max_position"].to_numpy(np.int64)[order],
            "activation": frame["max_activation"].to_numpy(np.float32)[order],
        }
    )


def negative_contexts(
    all_context_ids: np.ndarray | Sequence[int],
    firing_contexts: np.ndarray | Sequence[int],
    n: int,
    seed: int | np.random.SeedSequence | np.random.Generator = 0,
) -> np.ndarray:
    """``min(n, n_non_firing)`` contexts drawn uniformly without replacement, in draw order,
    from ``all_context_ids`` minus ``firing_contexts``.

    Draws indices into the sorted non-firing contexts and maps them back without building that
    set, so the cost is O(n + n_firing log n_firing), not O(n_contexts), per feature once
    ``all_context_ids`` is sorted.
    """
    all_sorted = _sorted_unique_contexts(all_context_ids)
    firing = np.unique(np.asarray(firing_contexts, dtype=np.int64))
    slot = np.searchsorted(all_sorted, firing)  # (n_firing,) positions in all_sorted
    if len(firing) and (
        slot.max() >= len(all_sorted) or not np.array_equal(all_sorted[slot], firing)
    ):
        raise InputError("firing contexts are missing from all_context_ids")
    n_non_firing = len(all_sorted) - len(firing)
    n_draw = min(n, n_non_firing)
    if n_draw <= 0:
        return np.zeros(0, np.int64)
    rng = np.random.default_rng(seed)
    drawn = rng.choice(n_non_firing, size=n_draw, replace=False)  # ranks among non-firing
    non_firing_before = slot - np.arange(len(slot))  # non-firing contexts before each firing one
    return all_sorted[drawn + np.searchsorted(non_firing_before, drawn, side="right")]


def _sorted_unique_contexts(all_context_ids: np.ndarray | Sequence[int]) -> np.ndarray:
    contexts = np.asarray(all_context_ids, dtype=np.int64)
    if len(contexts) > 1 and not np.all(np.diff(contexts) > 0):
        contexts = np.sort(contexts)
        if np.any(np.diff(contexts) == 0):
            raise InputError("all_context_ids holds a context twice")
    return contexts


def _part(
    feature: int,
    kind: str,
    frame: pd.DataFrame,
) -> dict[str, np.ndarray]:
    n = len(frame)
    return {
        "feature": np.full(n, feature, np.int64),
        "kind": np.full(n, kind, dtype=object),
        "rank": frame["rank"].to_numpy(np.int64),
        "context": frame["context"].to_numpy(np.int64),
        "target_position": frame["target_position"].to_numpy(np.int64),
        "activation": frame["activation"].to_numpy(np.float32),
        "bin": frame["bin"].to_numpy(np.int64) if "bin" in frame else np.full(n, -1, np.int64),
        "weight": frame["weight"].to_numpy(np.float64) if "weight" in frame else np.full(n, np.nan),
    }


def sample_shard(
    maxima: pd.DataFrame,
    all_context_ids: np.ndarray | Sequence[int],
    features: Shard | Iterable[int],
    config: SamplingConfig,
    *,
    context_length: int,
) -> pd.DataFrame:
    """Quantile, top and negative samples of ``features``, one table (columns of SAMPLES_SCHEMA).

    ``maxima``: a maxima table (columns ``feature``, ``context``, ``max_activation``,
    ``max_position``); rows of other features are ignored. ``all_context_ids``: every cached
    context. ``context_length``: tokens per context (negatives target the last position). A
    feature that never fires gets no rows. Rows are ordered by feature, then kind (quantile, top,
    negative), then rank.
    """
    if context_length <= 0:
        raise InputError(f"context_length must be positive, got {context_length}")
    if "feature" not in maxima.columns:
        raise InputError("maxima lack the column 'feature'")
    wanted = (
        np.arange(features.start, features.stop)
        if isinstance(features, Shard)
        else np.unique(np.fromiter(features, dtype=np.int64))
    )
    all_sorted = _sorted_unique_contexts(all_context_ids)
    feature_column = maxima["feature"].to_numpy(np.int64)
    order = np.lexsort((maxima["context"].to_numpy(np.int64), feature_column))
    sorted_maxima = maxima.iloc[order].reset_index(drop=True)
    sorted_features = feature_column[order]
    bounds = np.searchsorted(sorted_features, np.stack([wanted, wanted + 1]))  # (2, n_features)
    parts: list[dict[str, np.ndarray]] = []
    for feature, begin, end in zip(wanted.tolist(), bounds[0], bounds[1], strict=True):
        if end == begin:
            continue  # never fires: nothing to explain, no contrast for negatives
        of_feature = sorted_maxima.iloc[begin:end]
        sample = quantile_sample(
            of_feature,
            n_bins=config.n_bins,
            alpha=config.alpha,
            n_samples=config.n_samples,
            seed=feature_rng(config.seed, feature, _STREAM_QUANTILE),
            binning=config.binning,
        )
        parts.append(_part(feature, "quantile", sample))
        parts.append(_part(feature, "top", top_k_contexts(of_feature, config.top_k)))
        negatives = negative_contexts(
            all_sorted,
            of_feature["context"].to_numpy(np.int64),
            config.n_negatives,
            feature_rng(config.seed, feature, _STREAM_NEGATIVE),
        )
        negative_frame = pd.DataFrame(
            {
                "rank": np.arange(len(negatives)),
                "context": negatives,
                "target_position": np.full(len(negatives), context_length - 1),
                "activation": np.zeros(len(negatives), np.float32),
            }
        )
        parts.append(_part(feature, "negative", negative_frame))
    if not parts:
        return SAMPLES_SCHEMA.empty_table().to_pandas()
    columns = {
        name: np.concatenate([part[name] for part in parts]) for name in SAMPLES_SCHEMA.names
    }
    frame = pd.DataFrame(columns)
    for name, dtype in (
        ("feature", np.int32),
        ("rank", np.int32),
        ("context", np.int32),
        ("target_position", np.int32),
        ("bin", np.int32),
    ):
        frame[name] = frame[name].astype(dtype)
    return frame


def write_shard_samples(
    maxima_path: str | os.PathLike[str],
    all_context_ids: np.ndarray | Sequence[int],
    shard: Shard,
    config: SamplingConfig,
    *,
    context_length: int,
    out_path: str | os.PathLike[str],
) -> pd.DataFrame:
    """Read a shard's maxima file, sample it, and write the samples parquet atomically."""
    maxima = pd.read_parquet(maxima_path)
    frame = sample_shard(maxima, all_context_ids, shard, config, context_length=context_length)
    write_parquet_atomic(frame, out_path, SAMPLES_SCHEMA)
    return frame
