"""The context types every method reads: token ids of contexts, top contexts, held-out data."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from torch import Tensor

from circuit_insights.core.errors import InputError


@dataclass(frozen=True)
class ContextTokens:
    """Token ids of contexts: ``context_ids`` (n,) and ``tokens`` (n, context_length)."""

    context_ids: np.ndarray
    tokens: np.ndarray

    def __post_init__(self) -> None:
        context_ids = np.asarray(self.context_ids, dtype=np.int64)
        tokens = np.asarray(self.tokens, dtype=np.int64)
        if tokens.ndim != 2 or context_ids.ndim != 1 or len(context_ids) != len(tokens):
            raise InputError(
                f"context tokens must be (n_contexts, context_length) with n context ids, got "
                f"{tokens.shape} and {context_ids.shape}"
            )
        if len(np.unique(context_ids)) != len(context_ids):
            raise InputError("context tokens: context ids are not unique")
        object.__setattr__(self, "context_ids", context_ids)
        object.__setattr__(self, "tokens", tokens)

    @classmethod
    def from_matrix(cls, tokens: np.ndarray | Tensor) -> ContextTokens:
        """Contexts numbered 0..n-1 by row."""
        tokens = np.asarray(tokens)
        return cls(np.arange(len(tokens)), tokens)

    @property
    def context_length(self) -> int:
        return int(self.tokens.shape[1])

    def rows(self, contexts: np.ndarray, what: str) -> np.ndarray:
        """Row index of each context id; :class:`InputError` naming ``what`` for unknown ids."""
        contexts = np.asarray(contexts, dtype=np.int64)
        order = np.argsort(self.context_ids, kind="stable")
        sorted_ids = self.context_ids[order]
        slot = np.minimum(np.searchsorted(sorted_ids, contexts), max(len(sorted_ids) - 1, 0))
        known = sorted_ids[slot] == contexts if len(sorted_ids) else np.zeros(len(contexts), bool)
        if not known.all():
            missing = np.unique(contexts[~known])[:5].tolist()
            raise InputError(f"{what}: context ids {missing} are not in the given context tokens")
        return order[slot]

    def token_at(self, contexts: np.ndarray, positions: np.ndarray, what: str) -> np.ndarray:
        """Token ids at (context, position) pairs."""
        rows = self.rows(contexts, what)
        positions = np.asarray(positions, dtype=np.int64)
        if len(positions) and (positions.min() < 0 or positions.max() >= self.context_length):
            raise InputError(f"{what}: positions outside [0, {self.context_length})")
        return self.tokens[rows, positions]


@dataclass(frozen=True)
class TopContexts:
    """The top contexts of each feature, with the position of the maximum.

    ``table`` columns: ``feature``, ``context`` and one of ``position`` / ``target_position`` /
    ``max_position`` (e.g. the ``kind == "top"`` rows of a samples file: rows of other kinds are
    ignored when a ``kind`` column is present). ``corpus`` holds those contexts' tokens.
    """

    table: pd.DataFrame
    corpus: ContextTokens


@dataclass(frozen=True)
class HeldOut:
    """Held-out activations for the LLM-free score.

    ``activations``: sparse non-zero activations, columns ``context``, ``position``, ``feature``,
    ``activation`` (optional ``excluded``: flagged (context, position) pairs are not scored, for
    any feature). ``corpus``: the held-out contexts' tokens; every position of every context is
    scored except excluded ones and those holding a token of ``exclude_token_ids`` (None: the
    model's BOS, if it has one).
    """

    activations: pd.DataFrame
    corpus: ContextTokens
    exclude_token_ids: tuple[int, ...] | None = None
