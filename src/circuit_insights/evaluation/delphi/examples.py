"""The examples every delphi score reads: windows of held-out contexts, drawn per quantile.

As EleutherAI/delphi builds them (``delphi/latents/constructors.py``, ``samplers.py``):

- Each held-out context is cut into non-overlapping windows of ``example_length`` tokens
  (``constructor``: ``tokens.reshape(-1, example_ctx_len)``; a tail shorter than a window is
  dropped, a context shorter than one window is one window). BOS tokens are not shown and
  excluded positions (BOS, attention sinks flagged by the cache) count as activation 0.
- A window is *activating* when the feature's largest activation over its shown tokens is
  > 0. Activating windows are sorted by that maximum, strongest first, and cut into
  ``n_quantiles`` slices of ``n // n_quantiles`` windows (the remainder, the weakest, is left
  out as in ``split_quantiles``); ``n_per_quantile`` are drawn from each slice without
  replacement (all of a smaller slice). Quantile 0 is the strongest.
- ``n_non_activating`` windows where the feature is 0 at every shown token are drawn uniformly
  (``random_non_activating_windows``; with or without replacement: config).

Randomness: a generator per (seed, feature, stream) (:func:`circuit_insights.data.sampling.feature_rng`),
so a feature's examples are the same for every variant and both raters, in any shard.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from circuit_insights.core.contexts import ContextTokens
from circuit_insights.data.sampling import feature_rng
from circuit_insights.evaluation.delphi.config import DelphiScoresConfig

__all__ = [
    "STREAM_DETECTION",
    "STREAM_FUZZ_MARKS",
    "STREAM_FUZZING",
    "Example",
    "FeatureExamples",
    "activation_matrix",
    "draw_examples",
    "shown_mask",
]

STREAM_QUANTILES = 10
STREAM_NON_ACTIVATING = 11
STREAM_DETECTION = 12
STREAM_FUZZING = 13
STREAM_FUZZ_MARKS = 14


@dataclass(frozen=True)
class Example:
    """One window of a held-out context.

    ``positions`` (k,): the context positions shown (the window less BOS); ``token_ids`` and
    ``activations`` (k,) at those positions. ``quantile``: 0 (strongest) .. n_quantiles - 1 for
    activating windows, -1 for non-activating ones. ``row``: the context's row in the corpus.
    """

    context: int
    row: int
    positions: np.ndarray
    token_ids: np.ndarray
    activations: np.ndarray
    quantile: int

    @property
    def activating(self) -> bool:
        return self.quantile >= 0

    @property
    def max_activation(self) -> float:
        return float(self.activations.max()) if len(self.activations) else 0.0


@dataclass(frozen=True)
class FeatureExamples:
    """The examples of one feature: activating ones in quantile order, then non-activating.

    ``max_activation``: the feature's largest held-out activation (the simulator's scale);
    ``n_activating_windows`` / ``n_non_activating_windows``: the pools drawn from.
    """

    feature: int
    activating: tuple[Example, ...]
    non_activating: tuple[Example, ...]
    max_activation: float
    n_activating_windows: int
    n_non_activating_windows: int

    @property
    def all(self) -> tuple[Example, ...]:
        return self.activating + self.non_activating

    @property
    def shortage(self) -> str | None:
        """Why there is no activating example: the feature never fires in a held-out window
        (``no_activating_examples``), or in fewer windows than quantiles, so every slice is
        empty (``too_few_activating_windows``); None when there are examples."""
        if self.activating:
            return None
        if self.n_activating_windows == 0:
            return "no_activating_examples"
        return "too_few_activating_windows"


def shown_mask(tokens: np.ndarray, bos_token_id: int | None) -> np.ndarray:
    """(n, L) bool: the positions shown and counted (not BOS)."""
    mask = np.ones(np.shape(tokens), dtype=bool)
    if bos_token_id is not None:
        mask &= np.asarray(tokens) != int(bos_token_id)
    return mask


def activation_matrix(
    heldout_activations: pd.DataFrame, feature: int, corpus: ContextTokens
) -> np.ndarray:
    """(n_contexts, L) float64: the feature's held-out activation per (context, position), 0
    where the sparse table has no row or the row is ``excluded``."""
    dense = np.zeros(corpus.tokens.shape, dtype=np.float64)
    rows = heldout_activations[heldout_activations["feature"].to_numpy(np.int64) == int(feature)]
    if "excluded" in rows.columns:
        rows = rows[~rows["excluded"].to_numpy(bool)]
    if len(rows) == 0:
        return dense
    index = corpus.rows(rows["context"].to_numpy(np.int64), "held-out activations")
    positions = rows["position"].to_numpy(np.int64)
    dense[index, positions] = rows["activation"].to_numpy(np.float64)
    return dense


def _window_starts(context_length: int, example_length: int) -> np.ndarray:
    if example_length >= context_length:
        return np.zeros(1, dtype=np.int64)
    return np.arange(context_length // example_length, dtype=np.int64) * example_length


def _example(
    corpus: ContextTokens,
    dense: np.ndarray,
    shown: np.ndarray,
    row: int,
    start: int,
    length: int,
    quantile: int,
) -> Example:
    window = np.arange(start, min(start + length, corpus.context_length))
    positions = window[shown[row, window]]
    return Example(
        context=int(corpus.context_ids[row]),
        row=int(row),
        positions=positions,
        token_ids=corpus.tokens[row, positions].astype(np.int64),
        activations=dense[row, positions],
        quantile=int(quantile),
    )


def draw_examples(
    *,
    feature: int,
    dense: np.ndarray,
    corpus: ContextTokens,
    bos_token_id: int | None,
    config: DelphiScoresConfig,
    seed: int,
) -> FeatureExamples:
    """The examples of ``feature`` from its activation matrix ``dense`` (n, L) (:func:`activation_matrix`)."""
    shown = shown_mask(corpus.tokens, bos_token_id)  # (n, L)
    counted = np.where(shown, dense, 0.0)
    length = min(int(config.example_length), corpus.context_length)
    starts = _window_starts(corpus.context_length, int(config.example_length))
    n_windows = len(starts)
    used = counted[:, : n_windows * length].reshape(len(corpus.tokens), n_windows, length)
    has_shown = shown[:, : n_windows * length].reshape(used.shape).any(axis=2)  # (n, W)
    window_max = used.max(axis=2)  # (n, W)
    flat_max, flat_shown = window_max.reshape(-1), has_shown.reshape(-1)
    flat = np.arange(len(flat_max))
    active = flat[(flat_max > 0) & flat_shown]
    silent = flat[(flat_max == 0) & flat_shown]
    # Strongest first (delphi's argsort descending); ties by window order, for determinism.
    active = active[np.lexsort((active, -flat_max[active]))]

    rng = feature_rng(int(seed), int(feature), STREAM_QUANTILES)
    chosen: list[tuple[int, int]] = []  # (window index, quantile)
    size = len(active) // int(config.n_quantiles)
    for quantile in range(int(config.n_quantiles)):
        pool = active[quantile * size : (quantile + 1) * size]
        take = int(config.n_per_quantile)
        drawn = pool if len(pool) < take else pool[rng.choice(len(pool), take, replace=False)]
        chosen.extend((int(k), quantile) for k in drawn)

    rng = feature_rng(int(seed), int(feature), STREAM_NON_ACTIVATING)
    n = int(config.n_non_activating)
    if config.non_activating_with_replacement:
        silent_drawn = silent[rng.integers(0, len(silent), n)] if len(silent) >= n else silent[:0]
    else:
        silent_drawn = silent[rng.choice(len(silent), min(n, len(silent)), replace=False)]

    def make(k: int, quantile: int) -> Example:
        row, window = divmod(int(k), n_windows)
        return _example(corpus, dense, shown, row, int(starts[window]), length, quantile)

    return FeatureExamples(
        feature=int(feature),
        activating=tuple(make(k, q) for k, q in chosen),
        non_activating=tuple(make(int(k), -1) for k in silent_drawn),
        max_activation=float(counted.max()) if counted.size else 0.0,
        n_activating_windows=len(active),
        n_non_activating_windows=len(silent),
    )
