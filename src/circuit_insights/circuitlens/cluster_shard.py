"""Clustering of one (layer, shard): every selected feature's samples clustered and summarised,
written as the clusters and cluster-assignment tables; the coverage table of the summary."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from circuit_insights.circuitlens.cluster_summaries import summarize_clusters
from circuit_insights.circuitlens.clustering import (
    ClusteringConfig,
    Element,
    cluster_feature,
    contribution_occurrences,
    top_occurrences,
)
from circuit_insights.core.errors import InputError
from circuit_insights.core.io import write_parquet_atomic
from circuit_insights.core.tokens import TokenDisplay
from circuit_insights.data.schemas import CLUSTER_ASSIGNMENTS_SCHEMA, CLUSTERS_SCHEMA

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
    *,
    attribution_threshold: float = 0.0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cluster every feature of one attribution shard: ``(clusters_df, assignments_df)``.

    ``totals_df`` (``ATTRIBUTION_TOTALS_SCHEMA``) lists the samples: those with ``status`` "ok"
    (and ``fires``, unless ``include_not_firing``) are clustered; the others get cluster -1 and
    their reason in the assignments. ``weightlens_df`` (``WEIGHTLENS_SCHEMA``; rows of the
    upstream layers) names the validated tokens of upstream features in trigger patterns.
    ``tokenizer`` renders token ids (``<id>`` without one) and names the BOS token (head
    elements reading a BOS at position 0 are anchored, ``ClusteringConfig.anchor_first_position``).
    ``attribution_threshold``: the attribution's ``threshold``; unless ``config.fillers``,
    contributors below it (the ``keep_top`` fillers) stay out of the contribution sets. Columns: :data:`CLUSTERS_SCHEMA`
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
        bos_token_id=getattr(tokenizer, "bos_token_id", None),
        significant_share=0.0 if config.fillers else attribution_threshold,
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
