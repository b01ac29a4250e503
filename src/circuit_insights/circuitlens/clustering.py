"""CircuitLens clustering of a feature's samples by the circuits that make it fire (docs/method.md).

Per (feature, sample), the *contribution set* is the set of significant contributors that the
attribution stage kept (``circuit_insights.circuitlens.attribution``; ``ATTRIBUTION_CONTRIBUTIONS_SCHEMA``):

- upstream transcoder features ``("feature", layer, source_feature)`` (any position),
- attention heads at a relative source position ``("head", layer, head, delta)`` with
  ``delta = source position - target position`` (<= 0),
- optionally (``kinds`` containing ``"token"``; off by default) token embeddings
  ``("token", token_id, delta)``.

Per feature: elements present in fewer than ``rho`` of its ``N`` samples are dropped; the
samples' Jaccard distances ``1 - |A ∩ B| / |A ∪ B|`` are computed from a sparse boolean
membership matrix; HDBSCAN (default) or DBSCAN clusters them on the precomputed distances;
label -1 is noise. Clusters are numbered by size (largest first). Every cluster is then summarised
for the explainer: its defining contributors (frequency inside the cluster, lift over the
feature's samples), its trigger patterns in words, and its output influence. Everything here is
pure and deterministic; every choice is listed in ``docs/clustering_and_explanations.md``.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from circuit_insights.core.config import from_block
from circuit_insights.core.errors import InputError
from circuit_insights.core.io import write_parquet_atomic
from circuit_insights.core.tokens import TokenDisplay
from circuit_insights.data.schemas import CLUSTER_ASSIGNMENTS_SCHEMA, CLUSTERS_SCHEMA

__all__ = [
    "COVERAGE_COLUMNS",
    "ELEMENT_KINDS",
    "FIRST_POSITION",
    "ClusteringConfig",
    "Element",
    "FeatureClustering",
    "cluster_coverage",
    "cluster_feature",
    "cluster_shard",
    "contribution_occurrences",
    "contribution_sets",
    "density_labels",
    "element_label",
    "jaccard_distances",
    "membership_matrix",
    "relabel_by_size",
    "rho_filter",
    "summarize_clusters",
    "top_occurrences",
    "write_clusters",
]

#: A contributor: ``("feature", layer, source_feature)``, ``("head", layer, head, delta)`` or
#: ``("token", token_id, delta)``.
Element = tuple[Any, ...]

#: Contributor kinds of a contribution set and the attribution ``kind`` each comes from.
ELEMENT_KINDS: dict[str, str] = {"feature": "feature", "head": "head", "token": "embedding"}

Method = Literal["hdbscan", "dbscan"]

#: The offset of a head element whose source is the context's first position (BOS where the model
#: has one: the attention sink), whatever the target position (``anchor_first_position``).
FIRST_POSITION: int = -(2**31)

#: Feature-level outcomes (the ``status`` column of the clusters table).
STATUSES = ("clustered", "all_noise", "too_few_samples", "no_contributors")


@dataclass(frozen=True)
class ClusteringConfig:
    """Every knob of the clustering and of the cluster summaries."""

    kinds: tuple[str, ...] = ("feature", "head")
    """Contributor kinds in a contribution set: ``feature``, ``head``, ``token`` (embeddings;
    off by default: the source token is already a head element's context, and token identities
    split clusters by vocabulary instead of by mechanism)."""
    anchor_first_position: bool = True
    """A head reading the context's first position (BOS: the attention sink) gets the offset
    :data:`FIRST_POSITION` instead of ``-target``. Its offset otherwise only says where the
    target is, so one sink head would split into an element per target position."""
    rho: float = 0.05
    """Drop elements present in fewer than ``rho`` of the feature's samples."""
    min_count: int = 2
    """... and those present in fewer than this many samples, whatever ``rho * N`` is. An
    element seen in one sample is shared by no pair, so it can only push distances towards 1
    (with 20 samples and rho 0.05, ``rho * N`` = 1 kept every singleton)."""
    min_share: float = 0.0
    """Also drop contribution rows whose ``share`` is below this (0: every row the attribution
    stage kept)."""
    positive_only: bool = False
    """Keep only contributions that raise the pre-activation (default: both signs)."""
    top_per_sample: int | None = None
    """Keep, per sample, only the contributors with the largest ``|value|`` (a feature element's
    values summed over its positions first); None: every significant contributor."""
    include_not_firing: bool = False
    """Cluster samples whose feature did not fire (``fires`` False in the totals) too."""
    method: Method = "hdbscan"
    min_cluster_size: int = 5
    """HDBSCAN ``min_cluster_size`` (>= 2)."""
    min_samples: int = 3
    """HDBSCAN ``min_samples`` (neighbours besides the point) / DBSCAN ``min_samples`` (the point
    included, sklearn's definition)."""
    eps: float = 0.4
    """DBSCAN radius on the Jaccard distance."""
    cluster_selection_epsilon: float = 0.35
    """HDBSCAN: clusters that join below this distance are merged. Contribution sets are small
    and often identical, so their Jaccard distances take few values and duplicates are
    infinitely dense; plain HDBSCAN (0) then splits one mechanism into its variants, each
    missing another contributor (two 6-element sets missing different ones are at distance
    1/3)."""
    single_cluster_fallback: bool = True
    """HDBSCAN never returns the whole data set as one cluster unless ``allow_single_cluster``;
    when the ordinary run finds no cluster, run again with it, so a feature with one mechanism
    gets one cluster instead of all noise."""
    min_cluster_frequency: float = 0.5
    """A defining contributor is present in at least this share of the cluster's samples."""
    min_lift: float = 0.0
    """... and its in-cluster frequency is at least this multiple of its overall frequency."""
    max_defining: int = 8
    """Defining contributors (and trigger patterns) kept per cluster."""
    max_pattern_tokens: int = 3
    """Source tokens named in one trigger pattern."""
    max_weightlens_tokens: int = 5
    """WeightLens tokens named for an upstream feature."""
    top_output_tokens: int = 5
    """Promoted / suppressed / next tokens kept per cluster."""
    n_examples: int = 5
    """Example samples per cluster (the most central first)."""

    def __post_init__(self) -> None:
        kinds = tuple(self.kinds)
        object.__setattr__(self, "kinds", kinds)
        unknown = [kind for kind in kinds if kind not in ELEMENT_KINDS]
        if unknown or not kinds:
            raise InputError(
                f"clustering.kinds {list(kinds)}: choose one or more of {list(ELEMENT_KINDS)}"
            )
        if not (0.0 <= self.rho <= 1.0):
            raise InputError(f"clustering.rho must be in [0, 1], got {self.rho}")
        if self.top_per_sample is not None and self.top_per_sample < 1:
            raise InputError(
                f"clustering.top_per_sample must be >= 1 or null, got {self.top_per_sample}"
            )
        if self.min_count < 1:
            raise InputError(f"clustering.min_count must be >= 1, got {self.min_count}")
        if not (0.0 <= self.min_share <= 1.0):
            raise InputError(f"clustering.min_share must be in [0, 1], got {self.min_share}")
        if self.method not in ("hdbscan", "dbscan"):
            raise InputError(
                f"clustering.method must be 'hdbscan' or 'dbscan', got {self.method!r}"
            )
        if self.min_cluster_size < 2:
            raise InputError(
                f"clustering.min_cluster_size must be >= 2, got {self.min_cluster_size}"
            )
        if self.min_samples < 1:
            raise InputError(f"clustering.min_samples must be >= 1, got {self.min_samples}")
        if not (0.0 < self.eps <= 1.0):
            raise InputError(f"clustering.eps must be in (0, 1], got {self.eps}")
        if self.cluster_selection_epsilon < 0:
            raise InputError("clustering.cluster_selection_epsilon must be >= 0")
        if not (0.0 <= self.min_cluster_frequency <= 1.0):
            raise InputError("clustering.min_cluster_frequency must be in [0, 1]")
        if self.min_lift < 0:
            raise InputError("clustering.min_lift must be >= 0")
        for name in (
            "max_defining",
            "max_pattern_tokens",
            "max_weightlens_tokens",
            "top_output_tokens",
            "n_examples",
        ):
            if int(getattr(self, name)) < 0:
                raise InputError(f"clustering.{name} must be >= 0, got {getattr(self, name)}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> ClusteringConfig:
        """From the workflow config's ``clustering`` block (:func:`~circuit_insights.core.config.from_block`)."""
        values = dict(values or {})
        if "kinds" in values:
            values["kinds"] = tuple(values["kinds"])
        return from_block(cls, values, "clustering")

    @property
    def min_points(self) -> int:
        """Fewest samples with a non-empty set for the method to run at all."""
        if self.method == "hdbscan":
            return max(self.min_cluster_size, self.min_samples + 1)
        return self.min_samples


# --- contribution sets -------------------------------------------------------------------------


def _int_column(frame: pd.DataFrame, name: str) -> np.ndarray:
    """``frame[name]`` as int64; nulls are an error (the kinds selected never have them)."""
    column = frame[name]
    if column.isna().any():
        raise InputError(
            f"contributions column {name!r} has nulls in {sorted(frame['kind'].unique())} rows"
        )
    return column.to_numpy(dtype=np.int64)


def contribution_occurrences(
    contributions_df: pd.DataFrame,
    *,
    kinds: Sequence[str] = ("feature", "head"),
    min_share: float = 0.0,
    positive_only: bool = False,
    anchor_first_position: bool = False,
) -> pd.DataFrame:
    """One row per contributor occurrence: ``feature, sample, element, delta, token, value``.

    ``element`` is the contributor's key (see :data:`Element`); a feature element can occur at
    several positions of one sample (one row each). ``token`` is the token at the source position.
    ``anchor_first_position``: a head element whose source ``position`` is 0 takes the offset
    :data:`FIRST_POSITION` (the ``delta`` column keeps the true offset).
    """
    for name in ("feature", "sample", "kind", "layer", "head", "source_feature", "delta", "token"):
        if name not in contributions_df.columns:
            raise InputError(f"contributions table lacks column {name!r}")
    unknown = [kind for kind in kinds if kind not in ELEMENT_KINDS]
    if unknown:
        raise InputError(f"contribution kinds {unknown}: choose from {list(ELEMENT_KINDS)}")
    frames = []
    for kind in kinds:
        rows = contributions_df[contributions_df["kind"] == ELEMENT_KINDS[kind]]
        if min_share > 0 and "share" in rows.columns:
            rows = rows[rows["share"].to_numpy(dtype=np.float64) >= min_share]
        if positive_only:
            rows = rows[rows["value"].to_numpy(dtype=np.float64) > 0]
        if rows.empty:
            continue
        delta = _int_column(rows, "delta")
        token = _int_column(rows, "token")
        # set elements: (kind, layer, source) features, (kind, layer, head, delta) heads,
        # (kind, token, delta) tokens
        elements: list[tuple[str | int, ...]]
        if kind == "feature":
            layer, source = _int_column(rows, "layer"), _int_column(rows, "source_feature")
            elements = [("feature", int(a), int(b)) for a, b in zip(layer, source, strict=True)]
        elif kind == "head":
            layer, head = _int_column(rows, "layer"), _int_column(rows, "head")
            offset = delta
            if anchor_first_position:
                if "position" not in rows.columns:
                    raise InputError("contributions table lacks column 'position'")
                offset = np.where(_int_column(rows, "position") == 0, FIRST_POSITION, delta)
            elements = [
                ("head", int(a), int(b), int(c))
                for a, b, c in zip(layer, head, offset, strict=True)
            ]
        else:
            elements = [("token", int(a), int(b)) for a, b in zip(token, delta, strict=True)]
        frames.append(
            pd.DataFrame(
                {
                    "feature": rows["feature"].to_numpy(dtype=np.int64),
                    "sample": rows["sample"].to_numpy(dtype=np.int64),
                    "element": pd.Series(elements, dtype=object).to_numpy(),
                    "delta": delta,
                    "token": token,
                    "value": rows["value"].to_numpy(dtype=np.float64)
                    if "value" in rows.columns
                    else np.zeros(len(rows)),
                }
            )
        )
    if not frames:
        return pd.DataFrame(
            {
                "feature": np.empty(0, np.int64),
                "sample": np.empty(0, np.int64),
                "element": np.empty(0, object),
                "delta": np.empty(0, np.int64),
                "token": np.empty(0, np.int64),
                "value": np.empty(0, np.float64),
            }
        )
    return pd.concat(frames, ignore_index=True)


def top_occurrences(occurrences: pd.DataFrame, k: int | None) -> pd.DataFrame:
    """The rows of ``occurrences`` whose element is among its sample's ``k`` largest.

    An element's size in a sample is its summed ``|value|`` over that sample's rows (a feature
    active at several positions counts once, with all of them); ties go to the smaller element.
    ``k`` None returns ``occurrences`` unchanged.
    """
    if k is None or occurrences.empty:
        return occurrences
    magnitude = occurrences.assign(
        _magnitude=np.abs(occurrences["value"].to_numpy(dtype=np.float64)),
        _key=occurrences["element"].map(repr),
    )
    per_element = magnitude.groupby(["feature", "sample", "_key"], sort=True)["_magnitude"].sum()
    ranked = per_element.reset_index().sort_values(
        ["feature", "sample", "_magnitude", "_key"],
        ascending=[True, True, False, True],
        kind="mergesort",
    )
    top = ranked.groupby(["feature", "sample"], sort=False).head(k)
    keep = pd.MultiIndex.from_frame(top[["feature", "sample", "_key"]])
    rows = pd.MultiIndex.from_frame(magnitude[["feature", "sample", "_key"]])
    return occurrences[rows.isin(keep)].reset_index(drop=True)


def contribution_sets(
    contributions_df: pd.DataFrame,
    *,
    kinds: Sequence[str] = ("feature", "head"),
    min_share: float = 0.0,
    positive_only: bool = False,
    top_per_sample: int | None = None,
    anchor_first_position: bool = False,
) -> dict[tuple[int, int], frozenset[Element]]:
    """Per ``(feature, sample)`` of ``contributions_df``, the set of its significant contributors.

    Kinds: ``feature`` -> ``("feature", layer, source_feature)``, ``head`` ->
    ``("head", layer, head, delta)``, ``token`` (embeddings, off by default) ->
    ``("token", token_id, delta)``. Every (feature, sample) present in the table gets an entry
    (empty when none of its rows is of a selected kind).
    """
    occurrences = contribution_occurrences(
        contributions_df,
        kinds=kinds,
        min_share=min_share,
        positive_only=positive_only,
        anchor_first_position=anchor_first_position,
    )
    occurrences = top_occurrences(occurrences, top_per_sample)
    sets: dict[tuple[int, int], set[Element]] = {
        (int(f), int(s)): set()
        for f, s in zip(contributions_df["feature"], contributions_df["sample"], strict=True)
    }
    for f, s, element in zip(
        occurrences["feature"], occurrences["sample"], occurrences["element"], strict=True
    ):
        sets[(int(f), int(s))].add(element)
    return {key: frozenset(value) for key, value in sets.items()}


# --- distances and labels ----------------------------------------------------------------------


def rho_filter(
    sets: Sequence[frozenset[Element]], rho: float, min_count: int = 1
) -> tuple[list[frozenset[Element]], list[Element]]:
    """Drop elements present in fewer than ``rho`` of the ``len(sets)`` sets (or in fewer than
    ``min_count`` sets).

    Returns the filtered sets and the kept elements, sorted. An element in ``c`` sets is kept
    when ``c >= max(rho * N, min_count)``, with a 1e-9 tolerance for float rounding
    (``0.07 * 100`` is ``7.000000000000001``: 7 of 100 is kept at rho 0.07).
    """
    n = len(sets)
    counts = Counter(element for members in sets for element in members)
    need = max(rho * n, float(min_count))
    kept = sorted(element for element, count in counts.items() if count >= need - 1e-9 * max(n, 1))
    keep = set(kept)
    return [frozenset(members & keep) for members in sets], kept


def membership_matrix(
    sets: Sequence[frozenset[Element]], elements: Sequence[Element]
) -> sp.csr_matrix:
    """Boolean (n_sets, n_elements) CSR matrix: entry (i, j) is 1 when set i holds element j.

    Elements of a set that are not in ``elements`` are ignored.
    """
    index = {element: j for j, element in enumerate(elements)}
    rows: list[int] = []
    cols: list[int] = []
    for i, members in enumerate(sets):
        for element in members:
            j = index.get(element)
            if j is not None:
                rows.append(i)
                cols.append(j)
    data = np.ones(len(rows), dtype=np.int32)
    return sp.csr_matrix((data, (rows, cols)), shape=(len(sets), len(elements)), dtype=np.int32)


def jaccard_distances(membership: sp.spmatrix | np.ndarray) -> np.ndarray:
    """Pairwise Jaccard distances ``1 - |A ∩ B| / |A ∪ B|`` of the rows of a 0/1 matrix. (n, n)

    Two empty sets are at distance 0 (identical), an empty and a non-empty set at distance 1.
    The diagonal is exactly 0 and the matrix exactly symmetric.
    """
    matrix = sp.csr_matrix(membership, dtype=np.float64)
    matrix.data[:] = 1.0
    intersection = (matrix @ matrix.T).toarray()  # (n, n)
    sizes = np.asarray(matrix.sum(axis=1)).ravel()  # (n,)
    union = sizes[:, None] + sizes[None, :] - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        similarity = np.where(union > 0, intersection / np.where(union > 0, union, 1.0), 1.0)
    distances = 1.0 - similarity
    distances = np.clip((distances + distances.T) / 2.0, 0.0, 1.0)
    np.fill_diagonal(distances, 0.0)
    return distances


def relabel_by_size(labels: np.ndarray) -> np.ndarray:
    """Clusters renumbered 0, 1, ... by size (largest first; ties: smallest first member)."""
    labels = np.asarray(labels, dtype=np.int64)
    out = np.full(labels.shape, -1, dtype=np.int64)
    found = [label for label in np.unique(labels) if label >= 0]
    order = sorted(
        found, key=lambda label: (-int((labels == label).sum()), int(np.argmax(labels == label)))
    )
    for new, old in enumerate(order):
        out[labels == old] = new
    return out


def density_labels(distances: np.ndarray, config: ClusteringConfig) -> np.ndarray:
    """Cluster labels (-1: noise) of points with precomputed ``distances`` (n, n), by size.

    Fewer than ``config.min_points`` points: all noise.
    """
    n = distances.shape[0]
    if n < config.min_points or n == 0:
        return np.full(n, -1, dtype=np.int64)
    distances = np.ascontiguousarray(distances, dtype=np.float64)
    if config.method == "dbscan":
        from sklearn.cluster import DBSCAN

        labels = DBSCAN(
            eps=config.eps, min_samples=config.min_samples, metric="precomputed"
        ).fit_predict(distances)
        return relabel_by_size(labels)
    import hdbscan

    def run(allow_single_cluster: bool) -> np.ndarray:
        return hdbscan.HDBSCAN(
            metric="precomputed",
            min_cluster_size=config.min_cluster_size,
            min_samples=config.min_samples,
            cluster_selection_epsilon=config.cluster_selection_epsilon,
            allow_single_cluster=allow_single_cluster,
        ).fit_predict(distances)

    labels = run(False)
    if config.single_cluster_fallback and not (labels >= 0).any():
        labels = run(True)
    return relabel_by_size(labels)


@dataclass(frozen=True)
class FeatureClustering:
    """The clustering of one feature's samples.

    ``samples`` (n,) sorted ids of the samples clustered (``N = n``); ``labels`` (n,) cluster per
    sample (-1 noise, also for samples whose filtered set is empty); ``set_sizes`` (n,) sizes after
    the rho filter; ``elements`` the kept elements (columns of ``membership``, (n, m) CSR);
    ``distances`` (n, n) Jaccard distances; ``status`` one of :data:`STATUSES`.
    """

    samples: np.ndarray
    labels: np.ndarray
    set_sizes: np.ndarray
    elements: list[Element]
    membership: sp.csr_matrix
    distances: np.ndarray
    status: str
    method: str = field(default="hdbscan")

    @property
    def n_clusters(self) -> int:
        return int(self.labels.max() + 1) if len(self.labels) else 0


def cluster_feature(
    sets: Mapping[int, frozenset[Element]], config: ClusteringConfig | None = None
) -> FeatureClustering:
    """Cluster one feature's samples (``sample -> contribution set``) by their contribution sets.

    The rho filter counts over all ``N = len(sets)`` samples. Samples whose filtered set is empty
    carry no circuit evidence: they are noise and take no part in the density clustering.
    Status: ``no_contributors`` (every filtered set empty: all noise), ``too_few_samples`` (fewer
    non-empty sets than the method needs: all noise), ``all_noise`` (the method found no
    cluster), ``clustered``.
    """
    config = config or ClusteringConfig()
    samples = np.array(sorted(int(s) for s in sets), dtype=np.int64)
    filtered, elements = rho_filter([sets[int(s)] for s in samples], config.rho, config.min_count)
    membership = membership_matrix(filtered, elements)
    set_sizes = np.asarray(membership.sum(axis=1)).ravel().astype(np.int64)
    distances = jaccard_distances(membership)
    labels = np.full(len(samples), -1, dtype=np.int64)
    nonempty = np.flatnonzero(set_sizes > 0)
    if len(nonempty) == 0:
        status = "no_contributors"
    elif len(nonempty) < config.min_points:
        status = "too_few_samples"
    else:
        labels[nonempty] = density_labels(distances[np.ix_(nonempty, nonempty)], config)
        labels = relabel_by_size(labels)
        status = "clustered" if (labels >= 0).any() else "all_noise"
    return FeatureClustering(
        samples=samples,
        labels=labels,
        set_sizes=set_sizes,
        elements=elements,
        membership=membership,
        distances=distances,
        status=status,
        method=config.method,
    )


# --- cluster summaries -------------------------------------------------------------------------


def _quote(text: str) -> str:
    return '"' + text.replace('"', '\\"') + '"'


def element_label(element: Element) -> str:
    """Short name of a contributor: ``L3#12``, ``L2.H1@-3``, ``tok123@-3``."""
    kind = element[0]
    if kind == "feature":
        return f"L{element[1]}#{element[2]}"
    if kind == "head":
        where = "first" if element[3] == FIRST_POSITION else element[3]
        return f"L{element[1]}.H{element[2]}@{where}"
    return f"tok{element[1]}@{element[2]}"


def _offset(delta: int) -> str:
    if delta == FIRST_POSITION:
        return "the first position (BOS, the attention sink)"
    return "offset 0 (the target token itself)" if delta == 0 else f"offset {delta}"


def _counted(items: Sequence[tuple[str, int]], limit: int) -> str:
    """``"a" (3), "b" (2), +4 more`` (counts omitted when there is one item)."""
    shown = items[:limit]
    if len(items) == 1:
        return _quote(items[0][0])
    text = ", ".join(f"{_quote(name)} ({count})" for name, count in shown)
    more = len(items) - len(shown)
    return text + (f", +{more} more" if more > 0 else "")


def _weightlens_tokens(
    weightlens: Mapping[tuple[int, int], Sequence[str]] | None, layer: int, feature: int, limit: int
) -> str | None:
    """``WeightLens tokens: "a", "b"`` for an upstream feature; None when it has no result."""
    if weightlens is None or (layer, feature) not in weightlens:
        return None
    tokens = list(weightlens[(layer, feature)])
    if not tokens:
        return "no validated WeightLens tokens"
    shown = ", ".join(_quote(t) for t in tokens[:limit])
    more = len(tokens) - limit
    return "WeightLens tokens: " + shown + (f", +{more} more" if more > 0 else "")


#: One occurrence of a contributor: (sample, source token, delta).
Occurrence = tuple[int, int, int]


def trigger_pattern(
    element: Element,
    occurrences: Sequence[Occurrence],
    n_members: int,
    display: TokenDisplay,
    weightlens: Mapping[tuple[int, int], Sequence[str]] | None,
    config: ClusteringConfig,
) -> str:
    """One contributor in words, from its occurrences in the cluster's samples.

    ``occurrences``: (sample, token, delta) of this element in the cluster's samples. Source
    tokens (and offsets) are counted once per sample.
    """
    n_with = len({sample for sample, _, _ in occurrences})
    where = f"in {n_with} of {n_members} samples"
    limit = config.max_pattern_tokens
    if element[0] == "head":
        _, layer, head, delta = element
        tokens = _top_counts({(s, t) for s, t, _ in occurrences})
        noun = "token" if len(tokens) == 1 else "tokens"
        shown = _counted([(display(token), count) for token, count in tokens], limit)
        return f"{noun} {shown} at {_offset(delta)} via head L{layer}.H{head} ({where})"
    if element[0] == "token":
        _, token_id, delta = element
        return f"token {_quote(display(token_id))} at {_offset(delta)} (its embedding; {where})"
    _, layer, source = element
    facts = _weightlens_tokens(weightlens, layer, source, config.max_weightlens_tokens)
    name = f"upstream feature L{layer}#{source}" + (f" ({facts})" if facts else "")
    pairs = _top_counts({(s, (t, d)) for s, t, d in occurrences})
    shown = ", ".join(
        f"{_quote(display(token))} at offset {delta}" + (f" ({count})" if len(pairs) > 1 else "")
        for (token, delta), count in pairs[:limit]
    )
    more = len(pairs) - limit
    shown += f", +{more} more" if more > 0 else ""
    return f"{name} active on {shown} ({where})"


def _top_counts(pairs: Iterable[tuple[int, Any]]) -> list[tuple[Any, int]]:
    """Values of distinct (sample, value) pairs by their number of samples (ties: by value)."""
    counts = Counter(value for _, value in pairs)
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def _output_tokens(
    rows: pd.DataFrame, display: TokenDisplay, limit: int
) -> tuple[list[int], list[str], list[int]]:
    """Tokens of ``rows`` by the number of samples they appear in, then by mean |value|."""
    if rows.empty or limit == 0:
        return [], [], []
    grouped = rows.groupby("token").agg(
        count=("sample", "nunique"), magnitude=("value", lambda v: float(np.abs(v).mean()))
    )
    grouped = grouped.reset_index().sort_values(
        ["count", "magnitude", "token"], ascending=[False, False, True], kind="mergesort"
    )
    top = grouped.head(limit)
    ids = [int(t) for t in top["token"]]
    return ids, display.many(ids), [int(c) for c in top["count"]]


def _empty_summary_lists() -> dict[str, list[Any]]:
    return {
        "defining_labels": [],
        "defining_kinds": [],
        "defining_layers": [],
        "defining_indices": [],
        "defining_deltas": [],
        "defining_frequency": [],
        "defining_lift": [],
        "trigger_patterns": [],
    }


def summarize_clusters(
    clustering: FeatureClustering,
    *,
    layer: int,
    feature: int,
    occurrences: pd.DataFrame,
    outputs: pd.DataFrame | None = None,
    activations: Mapping[int, float] | None = None,
    weightlens: Mapping[tuple[int, int], Sequence[str]] | None = None,
    display: TokenDisplay | None = None,
    config: ClusteringConfig | None = None,
) -> list[dict[str, Any]]:
    """One :data:`CLUSTERS_SCHEMA` row per cluster of ``clustering`` and one for its noise.

    ``occurrences``: this feature's rows of :func:`contribution_occurrences` (the same kinds as the
    clustering); ``outputs``: its ``logit`` / ``top_token`` contribution rows; ``activations``:
    sample -> activation; ``weightlens``: ``(layer, feature) -> validated tokens`` of upstream
    features. Defining contributors: kept elements present in at least ``min_cluster_frequency``
    of the cluster's samples with lift >= ``min_lift``, by in-cluster frequency, then lift.
    """
    config = config or ClusteringConfig()
    display = display or TokenDisplay(None)
    n_total = len(clustering.samples)
    membership = clustering.membership.tocsc()
    overall = (
        np.asarray(membership.sum(axis=0)).ravel() / n_total
        if n_total
        else np.zeros(len(clustering.elements))
    )
    by_element: dict[Element, list[Occurrence]] = {}
    for element, sample, token, delta in zip(
        occurrences["element"],
        occurrences["sample"],
        occurrences["token"],
        occurrences["delta"],
        strict=True,
    ):
        by_element.setdefault(element, []).append((int(sample), int(token), int(delta)))
    outputs = outputs if outputs is not None else pd.DataFrame(columns=["sample", "kind"])
    rows = []
    labels = clustering.labels
    groups = list(range(clustering.n_clusters)) + ([-1] if (labels == -1).any() else [])
    for cluster in groups:
        members_idx = np.flatnonzero(labels == cluster)
        members = clustering.samples[members_idx]
        n_members = len(members)
        row: dict[str, Any] = {
            "layer": int(layer),
            "feature": int(feature),
            "cluster": int(cluster),
            "is_noise": cluster == -1,
            "status": clustering.status,
            "method": clustering.method,
            "n_clusters": clustering.n_clusters,
            "n_samples": n_members,
            "share": n_members / n_total if n_total else math.nan,
            "n_feature_samples": n_total,
            "n_elements": len(clustering.elements),
        }
        row.update(_empty_summary_lists())
        if len(clustering.elements) and n_members:
            sub = membership[members_idx]
            inside = np.asarray(sub.sum(axis=0)).ravel() / n_members
            with np.errstate(divide="ignore", invalid="ignore"):
                lift = np.where(overall > 0, inside / np.where(overall > 0, overall, 1.0), 0.0)
            chosen = [
                j
                for j in range(len(clustering.elements))
                if inside[j] > 0
                and inside[j] >= config.min_cluster_frequency - 1e-12
                and lift[j] >= config.min_lift
            ]
            chosen.sort(key=lambda j: (-inside[j], -lift[j], clustering.elements[j]))
            member_set = set(int(s) for s in members)
            for j in chosen[: config.max_defining]:
                element = clustering.elements[j]
                row["defining_labels"].append(element_label(element))
                row["defining_kinds"].append(element[0])
                row["defining_layers"].append(int(element[1]) if element[0] != "token" else None)
                row["defining_indices"].append(
                    int(element[2] if element[0] != "token" else element[1])
                )
                row["defining_deltas"].append(
                    int(element[-1]) if element[0] in ("head", "token") else None
                )
                row["defining_frequency"].append(float(inside[j]))
                row["defining_lift"].append(float(lift[j]))
                found = [o for o in by_element.get(element, ()) if o[0] in member_set]
                row["trigger_patterns"].append(
                    trigger_pattern(element, found, n_members, display, weightlens, config)
                )
        member_outputs = outputs[outputs["sample"].isin(members)] if len(outputs) else outputs
        k = config.top_output_tokens
        for direction in ("promoted", "suppressed"):
            part = (
                member_outputs[
                    (member_outputs["kind"] == "top_token")
                    & (member_outputs["detail"] == direction)
                ]
                if len(member_outputs)
                else member_outputs
            )
            ids, names, counts = _output_tokens(part, display, k)
            row[f"output_{direction}_token_ids"] = ids
            row[f"output_{direction}_tokens"] = names
            row[f"output_{direction}_counts"] = counts
        logits = (
            member_outputs[(member_outputs["kind"] == "logit") & (member_outputs["delta"] == 0)]
            if len(member_outputs)
            else member_outputs
        )
        row["output_n_logit_samples"] = int(logits["sample"].nunique()) if len(logits) else 0
        row["output_mean_logit"] = (
            float(logits.groupby("sample")["value"].sum().mean()) if len(logits) else None
        )
        ids, names, counts = _output_tokens(logits, display, k)
        row["output_next_token_ids"] = ids
        row["output_next_tokens"] = names
        row["output_next_counts"] = counts
        values = [
            activations[int(s)]
            for s in members
            if activations is not None and int(s) in activations
        ]
        values = [v for v in values if v is not None and math.isfinite(v)]
        row["mean_activation"] = float(np.mean(values)) if values else None
        # Examples: the most central samples (lowest mean distance to the other members).
        if n_members:
            block = clustering.distances[np.ix_(members_idx, members_idx)]
            centrality = block.mean(axis=1)
            order = sorted(range(n_members), key=lambda i: (centrality[i], int(members[i])))
            row["example_samples"] = [int(members[i]) for i in order[: config.n_examples]]
        else:
            row["example_samples"] = []
        rows.append(row)
    return rows


# --- shards ------------------------------------------------------------------------------------


def _weightlens_lookup(
    weightlens_df: pd.DataFrame | None,
) -> dict[tuple[int, int], list[str]] | None:
    if weightlens_df is None:
        return None
    for name in ("layer", "feature", "validated_tokens"):
        if name not in weightlens_df.columns:
            raise InputError(f"WeightLens table lacks column {name!r}")
    return {
        (int(layer), int(feature)): [str(t) for t in tokens]
        for layer, feature, tokens in zip(
            weightlens_df["layer"],
            weightlens_df["feature"],
            weightlens_df["validated_tokens"],
            strict=True,
        )
    }


def _included(totals_df: pd.DataFrame, config: ClusteringConfig) -> pd.Series:
    """Per totals row, ``"ok"`` or the reason it is left out of the clustering."""
    status = pd.Series("ok", index=totals_df.index, dtype=object)
    not_ok = totals_df["status"].astype(str) != "ok"
    status[not_ok] = totals_df.loc[not_ok, "status"].astype(str)
    if not config.include_not_firing:
        not_firing = ~not_ok & ~totals_df["fires"].astype(bool)
        status[not_firing] = "not_firing"
    return status


def cluster_shard(
    contributions_df: pd.DataFrame,
    totals_df: pd.DataFrame,
    weightlens_df: pd.DataFrame | None = None,
    tokenizer: object | None = None,
    config: ClusteringConfig | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cluster every feature of one attribution shard: ``(clusters_df, assignments_df)``.

    ``totals_df`` (``ATTRIBUTION_TOTALS_SCHEMA``) lists the samples: those with ``status`` "ok"
    (and ``fires``, unless ``include_not_firing``) are clustered; the others get cluster -1 and
    their reason in the assignments. ``weightlens_df`` (``WEIGHTLENS_SCHEMA``; rows of the
    upstream layers) names the validated tokens of upstream features in trigger patterns.
    ``tokenizer`` renders token ids (``<id>`` without one). Columns: :data:`CLUSTERS_SCHEMA`
    (one row per (feature, cluster), plus cluster -1 for the feature's noise samples) and
    :data:`CLUSTER_ASSIGNMENTS_SCHEMA` (one row per totals row).
    """
    config = config or ClusteringConfig()
    for name in ("feature", "sample", "layer", "status", "fires"):
        if name not in totals_df.columns:
            raise InputError(f"attribution totals table lacks column {name!r}")
    if totals_df.duplicated(["feature", "sample"]).any():
        raise InputError("attribution totals table has duplicate (feature, sample) rows")
    display = TokenDisplay(tokenizer)
    weightlens = _weightlens_lookup(weightlens_df)
    occurrences = contribution_occurrences(
        contributions_df,
        kinds=config.kinds,
        min_share=config.min_share,
        positive_only=config.positive_only,
        anchor_first_position=config.anchor_first_position,
    )
    occurrences = top_occurrences(occurrences, config.top_per_sample)
    output_kinds = contributions_df["kind"].isin(["logit", "top_token"])
    outputs = contributions_df.loc[
        output_kinds, ["feature", "sample", "kind", "detail", "token", "delta", "value"]
    ]
    reasons = _included(totals_df, config)
    occurrences_by_feature = dict(iter(occurrences.groupby("feature", sort=False)))
    outputs_by_feature = dict(iter(outputs.groupby("feature", sort=False)))
    cluster_rows: list[dict[str, Any]] = []
    assignment_rows: list[pd.DataFrame] = []
    totals = totals_df.assign(_reason=reasons.to_numpy())
    for feature, group in totals.groupby("feature", sort=True):
        feature = int(feature)
        layers = group["layer"].unique()
        if len(layers) != 1:
            raise InputError(
                f"attribution totals of feature {feature} span layers {sorted(layers)}"
            )
        layer = int(layers[0])
        included = group[group["_reason"] == "ok"]
        feature_occ = occurrences_by_feature.get(feature, occurrences.iloc[0:0])
        sample_ids = [int(s) for s in included["sample"]]
        keep = set(sample_ids)
        feature_occ = feature_occ[feature_occ["sample"].isin(keep)]
        sets: dict[int, set[Element]] = {s: set() for s in sample_ids}
        for sample, element in zip(feature_occ["sample"], feature_occ["element"], strict=True):
            sets[int(sample)].add(element)
        clustering = cluster_feature({s: frozenset(v) for s, v in sets.items()}, config)
        activations = (
            {
                int(s): float(a)
                for s, a in zip(included["sample"], included["activation"], strict=True)
            }
            if "activation" in included.columns
            else None
        )
        if len(clustering.samples):
            cluster_rows.extend(
                summarize_clusters(
                    clustering,
                    layer=layer,
                    feature=feature,
                    occurrences=feature_occ,
                    outputs=outputs_by_feature.get(feature),
                    activations=activations,
                    weightlens=weightlens,
                    display=display,
                    config=config,
                )
            )
        label_of = dict(zip(clustering.samples.tolist(), clustering.labels.tolist(), strict=True))
        size_of = dict(zip(clustering.samples.tolist(), clustering.set_sizes.tolist(), strict=True))
        status = []
        for sample, reason in zip(group["sample"], group["_reason"], strict=True):
            sample = int(sample)
            if reason != "ok":
                status.append(reason)
            elif size_of[sample] == 0:
                status.append("empty_set")
            else:
                status.append("clustered" if label_of[sample] >= 0 else "noise")
        assignment_rows.append(
            pd.DataFrame(
                {
                    "layer": layer,
                    "feature": feature,
                    "sample": group["sample"].to_numpy(dtype=np.int64),
                    "cluster": [label_of.get(int(s), -1) for s in group["sample"]],
                    "status": status,
                    "set_size": [size_of.get(int(s), 0) for s in group["sample"]],
                }
            )
        )
    clusters_df = _frame(cluster_rows, CLUSTERS_SCHEMA.names)
    assignments_df = (
        pd.concat(assignment_rows, ignore_index=True)
        if assignment_rows
        else _frame([], CLUSTER_ASSIGNMENTS_SCHEMA.names)
    )
    return clusters_df, assignments_df[CLUSTER_ASSIGNMENTS_SCHEMA.names]


def _frame(rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> pd.DataFrame:
    frame = pd.DataFrame(list(rows))
    for name in columns:
        if name not in frame.columns:
            frame[name] = pd.Series(dtype=object)
    return frame[list(columns)]


def write_clusters(
    clusters_df: pd.DataFrame,
    assignments_df: pd.DataFrame,
    clusters_path: str | os.PathLike[str],
    assignments_path: str | os.PathLike[str],
) -> None:
    """Write both tables atomically with their schemas."""
    write_parquet_atomic(clusters_df[CLUSTERS_SCHEMA.names], clusters_path, schema=CLUSTERS_SCHEMA)
    write_parquet_atomic(
        assignments_df[CLUSTER_ASSIGNMENTS_SCHEMA.names],
        assignments_path,
        schema=CLUSTER_ASSIGNMENTS_SCHEMA,
    )


# --- coverage ----------------------------------------------------------------------------------

#: Columns of :func:`cluster_coverage`.
COVERAGE_COLUMNS = (
    "layer",
    "n_features",
    "n_features_clustered",
    "share_features_clustered",
    "clusters_per_feature",
    "clusters_per_clustered_feature",
    "max_clusters",
    "n_samples",
    "noise_share",
    "share_all_noise",
)


def cluster_coverage(clusters_df: pd.DataFrame) -> pd.DataFrame:
    """Per layer, how much of the attributed samples the clustering explains.

    ``clusters_df``: rows of :data:`CLUSTERS_SCHEMA` (one per (feature, cluster), cluster -1 for a
    feature's noise samples), any number of shards and layers. One row per layer:

    - ``n_features``: features clustered (those with at least one attributed sample that fires);
      ``n_features_clustered`` / ``share_features_clustered``: those with at least one cluster;
    - ``clusters_per_feature``: mean number of clusters over all ``n_features`` (the paper's
      figure); ``clusters_per_clustered_feature``: over the features with a cluster;
      ``max_clusters``;
    - ``n_samples``: samples clustered; ``noise_share``: share of them labelled -1 (noise,
      including samples whose filtered contribution set is empty), pooled over features;
    - ``share_all_noise``: share of features whose every sample is noise (status other than
      ``clustered``).

    An empty table gives an empty frame with these columns.
    """
    for name in ("layer", "feature", "cluster", "n_samples", "n_clusters", "status"):
        if name not in clusters_df.columns:
            raise InputError(f"clusters table lacks column {name!r}")
    if clusters_df.empty:
        return pd.DataFrame({name: pd.Series(dtype=object) for name in COVERAGE_COLUMNS})
    if clusters_df.duplicated(["layer", "feature", "cluster"]).any():
        raise InputError("clusters table has duplicate (layer, feature, cluster) rows")
    frame = clusters_df.assign(
        noise_samples=np.where(clusters_df["cluster"] < 0, clusters_df["n_samples"], 0)
    )
    per_feature = frame.groupby(["layer", "feature"], sort=True).agg(
        n_clusters=("n_clusters", "max"),
        n_samples=("n_samples", "sum"),
        noise_samples=("noise_samples", "sum"),
        status=("status", "first"),
    )
    rows = []
    for layer, group in per_feature.groupby(level="layer", sort=True):
        n_clusters = group["n_clusters"].to_numpy(dtype=np.int64)
        clustered = n_clusters > 0
        n_samples = int(group["n_samples"].sum())
        rows.append(
            {
                "layer": int(layer),
                "n_features": len(group),
                "n_features_clustered": int(clustered.sum()),
                "share_features_clustered": float(clustered.mean()),
                "clusters_per_feature": float(n_clusters.mean()),
                "clusters_per_clustered_feature": float(n_clusters[clustered].mean())
                if clustered.any()
                else math.nan,
                "max_clusters": int(n_clusters.max()),
                "n_samples": n_samples,
                "noise_share": float(group["noise_samples"].sum() / n_samples)
                if n_samples
                else math.nan,
                "share_all_noise": float((group["status"] != "clustered").mean()),
            }
        )
    return pd.DataFrame(rows, columns=list(COVERAGE_COLUMNS))
