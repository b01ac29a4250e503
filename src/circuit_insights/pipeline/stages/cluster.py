"""Rule cluster: one shard's samples clustered by their circuits."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from circuit_insights.pipeline.locations import model_location

log = logging.getLogger(__name__)


def run_cluster_stage(
    *,
    clustering_config: Mapping[str, Any],
    attribution_config: Mapping[str, Any],
    contributions_path: str,
    totals_path: str,
    weightlens_path: str,
    model_config: Mapping[str, Any],
    model_files: Sequence[str] | str,
    clusters_path: str,
    assignments_path: str,
) -> None:
    """Rule cluster: each feature's samples clustered by their circuits (contribution sets).

    ``attribution_config`` holds the attribution's ``threshold``: contributors below it are the
    ``keep_top`` fillers, left out of the sets unless ``clustering.fillers``."""
    import pandas as pd
    from transformers import AutoTokenizer

    from circuit_insights.circuitlens.cluster_shard import cluster_shard, write_clusters
    from circuit_insights.circuitlens.clustering import ClusteringConfig

    clusters, assignments = cluster_shard(
        pd.read_parquet(contributions_path),
        pd.read_parquet(totals_path),
        pd.read_parquet(weightlens_path),
        AutoTokenizer.from_pretrained(model_location(model_config, model_files)),
        ClusteringConfig.from_mapping(clustering_config),
        attribution_threshold=float(attribution_config["threshold"]),
    )
    write_clusters(clusters, assignments, clusters_path, assignments_path)
    real = clusters[clusters["cluster"] >= 0]
    per_feature = real.groupby("feature").size()
    log.info(
        "%d features clustered, %.2f clusters per feature on average",
        assignments["feature"].nunique(),
        per_feature.mean() if len(per_feature) else 0.0,
    )
