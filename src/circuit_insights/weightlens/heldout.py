"""The LLM-free score: validated tokens as a token-level predictor of firing on held-out data."""

from __future__ import annotations

import numpy as np
import pandas as pd

from circuit_insights.core.contexts import HeldOut
from circuit_insights.core.errors import InputError


def score_heldout(
    features: np.ndarray,
    validated: pd.DataFrame,
    heldout: HeldOut | None,
    *,
    vocab_size: int,
    bos_token_id: int | None,
    positive_fraction: float = 0.0,
) -> pd.DataFrame:
    """LLM-free score of the validated tokens as a token-level predictor of firing.

    Over every scored held-out (context, position), label = the feature fires (activation > 0,
    and at least ``positive_fraction`` times the feature's largest activation at a scored
    held-out position; 0 = any firing);
    prediction = the position's token is one of the feature's validated tokens; score = the
    single-token activation of that token (0 for other tokens). ``auroc`` of the score (ties
    count one half), ``precision`` = fires among predicted, ``recall`` = predicted among firing.
    ``validated``: columns feature, token_id, activation. Undefined values are NaN with the
    reasons in ``score_reason`` ("; "-joined; empty when all are defined).
    """
    features = np.asarray(features, dtype=np.int64)
    n = len(features)
    result = pd.DataFrame(
        {
            "feature": features,
            "auroc": np.full(n, np.nan),
            "precision": np.full(n, np.nan),
            "recall": np.full(n, np.nan),
            "n_positive": np.zeros(n, dtype=np.int64),
            "n_predicted": np.zeros(n, dtype=np.int64),
            "n_true_positive": np.zeros(n, dtype=np.int64),
            "n_scored_positions": np.zeros(n, dtype=np.int64),
            "score_reason": np.full(n, "", dtype=object),
        }
    )
    if heldout is None:
        result["score_reason"] = "no held-out data"
        return result
    corpus = heldout.corpus
    tokens = corpus.tokens  # (n_contexts, context_length)
    length = corpus.context_length
    scored = np.ones(tokens.shape, dtype=bool)
    exclude_ids = (
        heldout.exclude_token_ids
        if heldout.exclude_token_ids is not None
        else (() if bos_token_id is None else (int(bos_token_id),))
    )
    if exclude_ids:
        scored &= ~np.isin(tokens, np.asarray(exclude_ids, dtype=np.int64))
    table = heldout.activations
    for column in ("context", "position", "feature", "activation"):
        if column not in table.columns:
            raise InputError(f"held-out activations need a {column!r} column")
    rows = corpus.rows(table["context"].to_numpy(), "held-out activations")
    positions = table["position"].to_numpy(np.int64)
    if len(positions) and (positions.min() < 0 or positions.max() >= length):
        raise InputError(f"held-out activations: positions outside [0, {length})")
    if "excluded" in table.columns:
        flagged = table["excluded"].to_numpy(bool)
        scored[rows[flagged], positions[flagged]] = False
    if not 0.0 <= positive_fraction <= 1.0:
        raise InputError(
            f"weightlens.heldout_positive_fraction must be in [0, 1], got {positive_fraction}"
        )
    n_scored = int(scored.sum())
    flat = rows * length + positions
    activation = table["activation"].to_numpy(np.float64)
    positive = (
        table["feature"].isin(features).to_numpy() & (activation > 0) & scored.reshape(-1)[flat]
    )
    if positive_fraction > 0:
        feature_of = table["feature"].to_numpy(np.int64)
        largest = pd.Series(activation[positive]).groupby(feature_of[positive]).max()
        floor = np.full(len(activation), np.inf)
        floor[positive] = positive_fraction * largest.reindex(feature_of[positive]).to_numpy()
        positive &= activation >= floor
    positives = pd.DataFrame(
        {"feature": table["feature"].to_numpy(np.int64)[positive], "flat": flat[positive]}
    ).drop_duplicates()
    # Predicted positions: every scored position holding a validated token of the feature.
    flat_tokens = tokens.reshape(-1)
    scored_flat = np.flatnonzero(scored.reshape(-1))
    pairs = validated[validated["feature"].isin(features)]
    positions_of = pd.DataFrame({"token_id": flat_tokens[scored_flat], "flat": scored_flat})
    positions_of = positions_of[positions_of["token_id"].isin(pairs["token_id"].unique())]
    predicted = pairs[["feature", "token_id", "activation"]].merge(positions_of, on="token_id")
    predicted = predicted.merge(
        positives.assign(is_positive=True), on=["feature", "flat"], how="left"
    )
    predicted["is_positive"] = predicted["is_positive"].fillna(False).astype(bool)
    index = pd.Index(features)
    n_pos = positives.groupby("feature").size().reindex(index, fill_value=0).to_numpy(np.int64)
    n_pred = predicted.groupby("feature").size().reindex(index, fill_value=0).to_numpy(np.int64)
    # Mann-Whitney U: the non-predicted positions tie at score 0, below every predicted one.
    predicted["rank"] = predicted.groupby("feature")["activation"].rank(method="average")
    true_positive = predicted[predicted["is_positive"]]
    n_tp = true_positive.groupby("feature").size().reindex(index, fill_value=0).to_numpy(np.int64)
    rank_sum_tp = (
        true_positive.groupby("feature")["rank"].sum().reindex(index, fill_value=0.0).to_numpy()
    )
    n_zero = n_scored - n_pred
    positive_rank_sum = (n_pos - n_tp) * (n_zero + 1) / 2.0 + rank_sum_tp + n_tp * n_zero
    n_neg = n_scored - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        u = positive_rank_sum - n_pos * (n_pos + 1) / 2.0
        auroc = np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)
        precision = np.where(n_pred > 0, n_tp / np.maximum(n_pred, 1), np.nan)
        recall = np.where(n_pos > 0, n_tp / np.maximum(n_pos, 1), np.nan)
    n_validated = pairs.groupby("feature").size().reindex(index, fill_value=0).to_numpy(np.int64)
    reasons = []
    for has_tokens, pos, neg, pred in zip(n_validated > 0, n_pos, n_neg, n_pred, strict=True):
        why = []
        if not has_tokens:
            why.append("no validated tokens")
        if pos == 0:
            why.append("feature never fires at scored held-out positions")
        if neg == 0:
            why.append("feature fires at every scored held-out position")
        if pred == 0 and has_tokens:
            why.append("no validated token occurs at scored held-out positions")
        reasons.append("; ".join(why))
    result["n_positive"] = n_pos
    result["n_predicted"] = n_pred
    result["n_true_positive"] = n_tp
    result["n_scored_positions"] = n_scored
    result["auroc"] = np.where(n_validated > 0, auroc, np.nan)
    result["precision"] = np.where(n_validated > 0, precision, np.nan)
    result["recall"] = np.where(n_validated > 0, recall, np.nan)
    result["score_reason"] = reasons
    return result
