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
pure and deterministic; every choice is listed in ``docs/clustering_and_explanations.md``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from circuit_insights.core.config import from_block
from circuit_insights.core.errors import InputError

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
    """A head reading a BOS token at the context's first position (the attention sink) gets the
    offset :data:`FIRST_POSITION` instead of ``-target``. Its offset otherwise only says where
    the target is, so one sink head would split into an element per target position. Only a
    BOS is anchored (the source token is the tokenizer's ``bos_token_id``): in a model whose
    contexts start without BOS, position 0 holds text like any other position."""
    fillers: bool = False
    """Cluster on the attribution's ``keep_top`` fillers too. The attribution keeps the
    ``keep_top`` largest contributors of every sample even below ``attribution.threshold``, so
    that no sample is left without contributors; those fillers differ from sample to sample
    and put samples of one mechanism at Jaccard distance >= 0.5 (one mechanism split in two).
    False (default): a contribution set holds only contributors at or above the threshold."""
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
    bos_token_id: int | None = None,
    significant_share: float = 0.0,
) -> pd.DataFrame:
    """One row per contributor occurrence: ``feature, sample, element, delta, token, value``.

    ``element`` is the contributor's key (see :data:`Element`); a feature element can occur at
    several positions of one sample (one row each). ``token`` is the token at the source position.
    ``anchor_first_position``: a head element whose source ``position`` is 0 and whose source
    token is ``bos_token_id`` takes the offset :data:`FIRST_POSITION` (the ``delta`` column keeps
    the true offset); without a ``bos_token_id`` nothing is anchored.
    ``significant_share``: the attribution's threshold; rows whose ``share`` is below it are the
    ``keep_top`` fillers and are dropped (0 keeps them). ``share`` is stored as float32 and
    compared with the threshold rounded to float32: rounding is monotone, so every row the
    attribution found significant is kept.
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
        if significant_share > 0:
            if "share" not in rows.columns:
                raise InputError("contributions table lacks column 'share'")
            stored = rows["share"].to_numpy(dtype=np.float32)
            rows = rows[stored >= np.float32(significant_share)]
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
            if anchor_first_position and bos_token_id is not None:
                if "position" not in rows.columns:
                    raise InputError("contributions table lacks column 'position'")
                at_bos = (_int_column(rows, "position") == 0) & (token == int(bos_token_id))
                offset = np.where(at_bos, FIRST_POSITION, delta)
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
    bos_token_id: int | None = None,
    significant_share: float = 0.0,
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
        bos_token_id=bos_token_id,
        significant_share=significant_share,
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
