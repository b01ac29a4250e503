"""Token-based vs context-dependent: validated tokens against the feature's top contexts."""

from __future__ import annotations

import numpy as np
import pandas as pd

from circuit_insights.core.contexts import TopContexts
from circuit_insights.core.errors import InputError


def _pair_keys(features: np.ndarray, tokens: np.ndarray, vocab: int) -> np.ndarray:
    return np.asarray(features, dtype=np.int64) * int(vocab) + np.asarray(tokens, dtype=np.int64)


def _position_column(table: pd.DataFrame, what: str) -> str:
    for name in ("position", "target_position", "max_position"):
        if name in table.columns:
            return name
    raise InputError(f"{what} needs a position, target_position or max_position column")


def classify_features(
    features: np.ndarray,
    validated: pd.DataFrame,
    top_contexts: TopContexts | None,
    *,
    vocab_size: int,
    min_token_share: float,
) -> pd.DataFrame:
    """Token-based vs context-dependent, with the rule's inputs. One row per feature, in order.

    ``validated``: (feature, token_id) pairs of validated tokens. Rule: token-based when the
    feature has >= 1 validated token and, over its top contexts, the share whose max-position
    token is validated is >= ``min_token_share``. Without top contexts (None), or for a feature
    with none, the rule is ">= 1 validated token", recorded in ``classification_basis``
    (``validated_tokens_only`` / ``no_top_contexts``; ``top_contexts`` when the share was used).
    """
    features = np.asarray(features, dtype=np.int64)
    n_validated = (
        validated.groupby("feature").size().reindex(features, fill_value=0).to_numpy(np.int64)
    )
    has_tokens = n_validated > 0
    n_top = np.zeros(len(features), dtype=np.int64)
    n_explained = np.zeros(len(features), dtype=np.int64)
    if top_contexts is None:
        basis = np.full(len(features), "validated_tokens_only", dtype=object)
        share = np.full(len(features), np.nan)
        token_based = has_tokens
    else:
        table = top_contexts.table
        if "kind" in table.columns:
            table = table[table["kind"] == "top"]
        for column in ("feature", "context"):
            if column not in table.columns:
                raise InputError(f"top contexts need a {column!r} column")
        position_column = _position_column(table, "top contexts")
        table = table[table["feature"].isin(features)]
        max_tokens = top_contexts.corpus.token_at(
            table["context"].to_numpy(), table[position_column].to_numpy(), "top contexts"
        )
        row_feature = table["feature"].to_numpy(np.int64)
        explained = np.isin(
            _pair_keys(row_feature, max_tokens, vocab_size),
            _pair_keys(
                validated["feature"].to_numpy(), validated["token_id"].to_numpy(), vocab_size
            ),
        )
        local = pd.Index(features).get_indexer(row_feature)  # row -> index in features
        n_top = np.bincount(local, minlength=len(features)).astype(np.int64)
        n_explained = np.bincount(local, weights=explained, minlength=len(features)).astype(
            np.int64
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(n_top > 0, n_explained / np.maximum(n_top, 1), np.nan)
        basis = np.where(n_top > 0, "top_contexts", "no_top_contexts").astype(object)
        token_based = np.where(
            n_top > 0, has_tokens & (np.nan_to_num(share) >= min_token_share), has_tokens
        )
    return pd.DataFrame(
        {
            "feature": features,
            "is_token_based": token_based.astype(bool),
            "classification": np.where(token_based, "token_based", "context_dependent"),
            "classification_basis": basis,
            "n_top_contexts": n_top,
            "n_top_contexts_explained": n_explained,
            "top_context_share": share,
            "min_token_share": float(min_token_share),
        }
    )
