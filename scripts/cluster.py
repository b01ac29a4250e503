"""Rule cluster: one shard's samples clustered by their circuits."""

from typing import TYPE_CHECKING

from circuit_insights.pipeline.logs import configure_logging
from circuit_insights.pipeline.stages.cluster import run_cluster_stage

if TYPE_CHECKING:
    from snakemake.script import Snakemake

    snakemake: Snakemake

configure_logging(snakemake.log[0])
run_cluster_stage(
    clustering_config=snakemake.params.clustering,
    attribution_config=snakemake.params.attribution,
    contributions_path=snakemake.input.contributions,
    totals_path=snakemake.input.totals,
    weightlens_path=snakemake.input.weightlens,
    model_config=snakemake.params.model,
    model_files=snakemake.input.model,
    clusters_path=snakemake.output.clusters,
    assignments_path=snakemake.output.assignments,
)
