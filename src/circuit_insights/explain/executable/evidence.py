"""What the executable rules of a feature are derived from, read from the stage tables: its
WeightLens row, the max-activation tokens of its top contexts, and per circuit cluster the
defining contributors and the tokens of its member samples."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["ClusterEvidence", "FeatureEvidence", "feature_evidence", "floats", "ints"]


def ints(values: Any) -> list[int]:
    """A list column's value as ints (``[]`` for None / NaN)."""
    if values is None or (isinstance(values, float) and math.isnan(values)):
        return []
    return [int(v) for v in values]


def floats(values: Any) -> list[float]:
    """A list column's value as floats (``[]`` for None / NaN)."""
    if values is None or (isinstance(values, float) and math.isnan(values)):
        return []
    return [float(v) for v in values]


def _optional_int(value: Any) -> int | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return int(value)


def _list(values: Any) -> list[Any]:
    if values is None or (isinstance(values, float) and math.isnan(values)):
        return []
    return list(values)


def _context_rows(context_ids: np.ndarray) -> dict[int, int]:
    return {int(c): i for i, c in enumerate(np.asarray(context_ids))}


@dataclass(frozen=True)
class ClusterEvidence:
    """What cl_rule needs of one cluster: its defining contributors (``CLUSTERS_SCHEMA`` lists)
    and the tokens of its member samples (``member_tokens`` (m, L), ``member_targets`` (m,))."""

    cluster: int
    kinds: tuple[str, ...]
    layers: tuple[int | None, ...]
    indices: tuple[int, ...]
    deltas: tuple[int | None, ...]
    frequency: tuple[float, ...]
    member_tokens: np.ndarray
    member_targets: np.ndarray
    exclude_token_ids: tuple[int, ...] = ()
    """Tokens that never name a condition (BOS: a head reading it is the attention sink, whose
    offset only encodes the absolute position)."""


@dataclass(frozen=True, eq=False)
class FeatureEvidence:
    """Everything the executable variants of one feature derive their rules from.

    ``weightlens_row``: the feature's ``WEIGHTLENS_SCHEMA`` row (None: no result);
    ``max_tokens``: the token at the max-activation position of each top context, by rank;
    ``upstream_tokens``: (layer, feature) -> validated token ids of its upstream features;
    ``clusters``: its real circuit clusters; ``clustering_status``: the clustering status of
    its cluster rows (``not clustered`` without any).
    """

    layer: int
    feature: int
    weightlens_row: Mapping[str, Any] | None
    max_tokens: tuple[int, ...]
    upstream_tokens: Mapping[tuple[int, int], Sequence[int]]
    clusters: tuple[ClusterEvidence, ...]
    clustering_status: str


def feature_evidence(
    *,
    layer: int,
    features: Iterable[int],
    tokens: np.ndarray,
    context_ids: np.ndarray,
    weightlens_df: pd.DataFrame | None = None,
    clusters_df: pd.DataFrame | None = None,
    samples_df: pd.DataFrame | None = None,
    assignments_df: pd.DataFrame | None = None,
    exclude_token_ids: Sequence[int] = (),
) -> dict[int, FeatureEvidence]:
    """:class:`FeatureEvidence` of every feature of one layer (ascending feature ids).

    Tables as the stages write them: ``weightlens_df`` (``WEIGHTLENS_SCHEMA``), ``clusters_df``
    (``CLUSTERS_SCHEMA``), ``samples_df`` (``SAMPLES_SCHEMA``: ``top`` rows for the max tokens,
    the ``quantile`` rows keyed by ``rank`` = attribution sample id for the clusters' members),
    ``assignments_df`` (``CLUSTER_ASSIGNMENTS_SCHEMA``, optional: without it a cluster's members
    are its ``example_samples``). ``tokens`` (n, L) / ``context_ids`` (n,): the cached contexts.
    ``exclude_token_ids`` (the model's BOS): never a token read at a cluster member's position.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    row_of = _context_rows(context_ids)

    def of_layer(frame: pd.DataFrame | None) -> pd.DataFrame:
        if frame is None:
            return pd.DataFrame(columns=["feature"])
        if "layer" in frame.columns:
            frame = frame[frame["layer"].astype(int) == int(layer)]
        return frame

    wl = {int(r["feature"]): r for r in of_layer(weightlens_df).to_dict("records")}
    samples = samples_df if samples_df is not None else pd.DataFrame(columns=["feature", "kind"])
    top = (
        samples[samples["kind"] == "top"].sort_values(["feature", "rank"])
        if len(samples)
        else samples
    )
    top_by_feature = {int(f): g for f, g in top.groupby("feature")} if len(top) else {}
    quantile = samples[samples["kind"] == "quantile"] if len(samples) else samples
    sample_at: dict[tuple[int, int], tuple[int, int]] = {
        (int(f), int(r)): (int(c), int(p))
        for f, r, c, p in zip(
            quantile.get("feature", []),
            quantile.get("rank", []),
            quantile.get("context", []),
            quantile.get("target_position", []),
            strict=False,
        )
    }
    clusters = of_layer(clusters_df)
    clusters_by_feature = (
        {int(f): g for f, g in clusters.groupby("feature")} if len(clusters) else {}
    )
    members_by_cluster: dict[tuple[int, int], list[int]] = {}
    if assignments_df is not None and len(assignments_df):
        assigned = of_layer(assignments_df)
        for f, s, c in zip(
            assigned["feature"], assigned["sample"], assigned["cluster"], strict=True
        ):
            if int(c) >= 0:
                members_by_cluster.setdefault((int(f), int(c)), []).append(int(s))

    def member_tokens(feature: int, samples_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        rows, targets = [], []
        for sample in samples_ids:
            found = sample_at.get((feature, int(sample)))
            if found is None or found[0] not in row_of:
                continue
            rows.append(row_of[found[0]])
            targets.append(found[1])
        width = tokens.shape[1] if tokens.ndim == 2 else 0
        if not rows:
            return np.zeros((0, width), np.int64), np.zeros(0, np.int64)
        return tokens[np.asarray(rows)], np.asarray(targets, dtype=np.int64)

    out: dict[int, FeatureEvidence] = {}
    for feature in sorted({int(f) for f in features}):
        row = wl.get(feature)
        # The token at the max position of each top context.
        top_rows = top_by_feature.get(feature)
        max_tokens: list[int] = []
        if top_rows is not None:
            for context, position in zip(
                top_rows["context"], top_rows["target_position"], strict=True
            ):
                if int(context) in row_of and 0 <= int(position) < tokens.shape[1]:
                    max_tokens.append(int(tokens[row_of[int(context)], int(position)]))
        upstream: dict[tuple[int, int], list[int]] = {}
        if row is not None:
            for up_layer, up_feature, ids in zip(
                ints(row.get("upstream_layers")),
                ints(row.get("upstream_features")),
                _list(row.get("upstream_inherited_token_ids")),
                strict=False,
            ):
                upstream[(up_layer, up_feature)] = ints(ids)
        # The feature's real clusters.
        evidence: list[ClusterEvidence] = []
        status = None
        frame = clusters_by_feature.get(feature)
        if frame is not None:
            for record in frame.sort_values("cluster").to_dict("records"):
                status = str(record.get("status") or "") or status
                if int(record["cluster"]) < 0 or bool(record.get("is_noise", False)):
                    continue
                members = members_by_cluster.get(
                    (feature, int(record["cluster"])), ints(record.get("example_samples"))
                )
                member_ctx, member_targets = member_tokens(feature, members)
                evidence.append(
                    ClusterEvidence(
                        cluster=int(record["cluster"]),
                        kinds=tuple(str(k) for k in _list(record.get("defining_kinds"))),
                        layers=tuple(
                            _optional_int(v) for v in _list(record.get("defining_layers"))
                        ),
                        indices=tuple(int(v) for v in _list(record.get("defining_indices"))),
                        deltas=tuple(
                            _optional_int(v) for v in _list(record.get("defining_deltas"))
                        ),
                        frequency=tuple(floats(record.get("defining_frequency"))),
                        member_tokens=member_ctx,
                        member_targets=member_targets,
                        exclude_token_ids=tuple(int(t) for t in exclude_token_ids),
                    )
                )
        out[feature] = FeatureEvidence(
            layer=int(layer),
            feature=feature,
            weightlens_row=row,
            max_tokens=tuple(max_tokens),
            upstream_tokens=upstream,
            clusters=tuple(evidence),
            clustering_status=status or "not clustered",
        )
    return out
