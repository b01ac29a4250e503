"""Step 3b: ranking the kept upstream features, and the tokens a feature inherits from them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from circuit_insights.core.errors import InputError
from circuit_insights.weightlens.zscores import Outliers

INPUT_SOURCE = "input"
"""``candidate_sources`` value of a token found by the feature's own input projection."""

UPSTREAM_FIELDS = ("layer", "feature", "contribution", "z", "relative_contribution")


def rank_upstream(
    kept: list[tuple[int, Outliers]], totals: np.ndarray, max_keep: int
) -> list[dict[str, np.ndarray]]:
    """Merge the kept upstream features of every layer, per feature of the chunk: relative
    contribution ``|c| / totals``, highest first (ties: lower layer, lower feature), capped."""
    n_rows = len(totals)
    rows = np.concatenate([o.rows for _, o in kept] + [np.zeros(0, np.int64)])
    columns = {
        "layer": np.concatenate(
            [np.full(len(o.rows), up, np.int64) for up, o in kept] + [np.zeros(0, np.int64)]
        ),
        "feature": np.concatenate([o.indices for _, o in kept] + [np.zeros(0, np.int64)]),
        "contribution": np.concatenate([o.values for _, o in kept] + [np.zeros(0)]),
        "z": np.concatenate([o.z for _, o in kept] + [np.zeros(0)]),
    }
    denominator = np.where(totals > 0, totals, 1.0)
    columns["relative_contribution"] = np.abs(columns["contribution"]) / denominator[rows]
    order = np.lexsort(
        (columns["feature"], columns["layer"], -columns["relative_contribution"], rows)
    )
    rows = rows[order]
    counts = np.bincount(rows, minlength=n_rows)
    rank = np.arange(len(rows)) - (np.cumsum(counts) - counts)[rows]
    keep = order[rank < max_keep]
    kept_counts = np.bincount(rows[rank < max_keep], minlength=n_rows)
    split = {
        name: np.split(values[keep], np.cumsum(kept_counts)[:-1])
        for name, values in columns.items()
    }
    return [{name: split[name][k] for name in UPSTREAM_FIELDS} for k in range(n_rows)]


def inherited_lookup(
    upstream_results: Mapping[int, pd.DataFrame], upstream_layer: int
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """feature -> (validated token ids (n,), their activations (n,)), from one upstream layer's
    WeightLens results. Without a ``validated_activations`` column every activation is 1."""
    frame = upstream_results[upstream_layer]
    for column in ("feature", "validated_token_ids"):
        if column not in frame.columns:
            raise InputError(
                f"upstream results of layer {upstream_layer} lack the column {column!r}"
            )
    if "layer" in frame.columns and len(frame) and (frame["layer"] != upstream_layer).any():
        raise InputError(f"upstream results given for layer {upstream_layer} hold other layers")
    activations = (
        frame["validated_activations"]
        if "validated_activations" in frame.columns
        else [None] * len(frame)
    )
    lookup: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for feature, tokens, acts in zip(
        frame["feature"], frame["validated_token_ids"], activations, strict=True
    ):
        ids = np.asarray(tokens if tokens is not None else [], dtype=np.int64)
        values = np.ones(len(ids)) if acts is None else np.asarray(acts, dtype=np.float64)
        if len(values) != len(ids):
            raise InputError(
                f"upstream results of layer {upstream_layer}, feature {int(feature)}: "
                f"{len(ids)} validated_token_ids but {len(values)} validated_activations"
            )
        lookup[int(feature)] = (ids, values)
    return lookup


def inherited_candidates(
    own: np.ndarray,
    offers: Sequence[tuple[str, float, np.ndarray, np.ndarray]],
    max_tokens: int | None,
) -> tuple[list[int], dict[int, list[str]]]:
    """Step 3b for one feature: its candidates, own ones first, then the kept inherited ones.

    ``own`` (n_own,): the feature's own candidate ids. ``offers``: per kept upstream feature,
    ``(source label, contribution c, validated token ids (n,), their activations (n,))``.
    An inherited token's score is ``|c| * a`` (the largest over the upstream features offering
    it); the ``max_tokens`` highest-scoring tokens that are not own candidates are kept (ties:
    the earlier upstream feature, then the earlier token; None: all), in that order. Returns the
    candidate ids and each candidate's sources (``input`` and the labels of every upstream
    feature offering it).
    """
    sources: dict[int, list[str]] = {int(t): [INPUT_SOURCE] for t in own}
    best: dict[int, tuple[float, int]] = {}  # token -> (score, first-seen rank)
    for label, contribution, tokens, activations in offers:
        for token, activation in zip(tokens.tolist(), activations.tolist(), strict=True):
            sources.setdefault(token, []).append(label)
            if sources[token][0] == INPUT_SOURCE:
                continue
            score = abs(float(contribution)) * float(activation)
            if token not in best:
                best[token] = (score, len(best))
            elif score > best[token][0]:
                best[token] = (score, best[token][1])
    ranked = sorted(best, key=lambda t: (-best[t][0], best[t][1]))
    if max_tokens is not None:
        ranked = ranked[: int(max_tokens)]
    order = [int(t) for t in own] + ranked
    return order, {t: sources[t] for t in order}


@dataclass
class Candidates:
    """Step 3b for the features of a shard: their candidate tokens. Lists follow the features."""

    ids: list[np.ndarray]
    """Candidate token ids (n_k,): own ones (highest z first), then the kept inherited ones."""
    sources: list[list[str]]
    """Per candidate, ``input`` and the labels ``L{layer}#{feature}`` of the upstream features
    offering it, ``,``-joined."""
    inherited: list[list[np.ndarray]]
    """Per kept upstream feature, every validated token id it offers (before the bound)."""
    has_result: list[list[bool]]
    """Per kept upstream feature, whether its layer's results hold it."""
    n_offered: int
    """Inherited tokens offered over the shard (repeats counted), for the log."""


def shard_candidates(
    own: Sequence[np.ndarray],
    upstream: Sequence[Mapping[str, np.ndarray]],
    lookups: Mapping[int, Mapping[int, tuple[np.ndarray, np.ndarray]]],
    *,
    max_inherited_tokens: int | None,
) -> Candidates:
    """Step 3b for every feature of a shard: own candidates, then inherited ones not already own.

    ``own[k]``: feature ``k``'s own candidate ids, highest z first. ``upstream[k]``: its kept
    upstream features (``layer``, ``feature``, ``contribution`` arrays, by relative contribution,
    from :func:`rank_upstream`). ``lookups``: upstream layer -> :func:`inherited_lookup`.
    Each feature's candidates are :func:`inherited_candidates`; an upstream feature missing from
    its layer's results offers no tokens.
    """
    candidate_ids: list[np.ndarray] = []
    candidate_sources: list[list[str]] = []
    inherited_per_upstream: list[list[np.ndarray]] = []
    has_result: list[list[bool]] = []
    empty = (np.zeros(0, dtype=np.int64), np.zeros(0))
    n_inherited_offered = 0
    for own_k, upstream_k in zip(own, upstream, strict=True):
        offers = []
        inherited_lists = []
        found_flags = []
        for up, up_feature, contribution in zip(
            upstream_k["layer"], upstream_k["feature"], upstream_k["contribution"], strict=True
        ):
            found = lookups[int(up)].get(int(up_feature))
            found_flags.append(found is not None)
            tokens, activations = found if found is not None else empty
            inherited_lists.append(tokens)
            offers.append(
                (f"L{int(up)}#{int(up_feature)}", float(contribution), tokens, activations)
            )
            n_inherited_offered += len(tokens)
        kept_ids, sources = inherited_candidates(own_k, offers, max_inherited_tokens)
        candidate_ids.append(np.asarray(kept_ids, dtype=np.int64))
        candidate_sources.append([",".join(sources[t]) for t in kept_ids])
        inherited_per_upstream.append(inherited_lists)
        has_result.append(found_flags)
    return Candidates(
        ids=candidate_ids,
        sources=candidate_sources,
        inherited=inherited_per_upstream,
        has_result=has_result,
        n_offered=n_inherited_offered,
    )
