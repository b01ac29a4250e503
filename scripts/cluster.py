"""Rule cluster: one shard's samples clustered by their circuits."""

from typing import TYPE_CHECKING

from circuit_insights.pipeline.logs import configure_logging
from circuit_insights.pipeline.paths import job_model_location
from circuit_insights.pipeline.stages import run_cluster_stage

if TYPE_CHECKING:
    from snakemake.script import Snakemake

    snakemake: Snakemake

configure_logging(snakemake.log[0])
run_cluster_stage(
    snakemake.params.clustering,
    snakemake.input.contributions,
    snakemake.input.totals,
    snakemake.input.weightlens,
    job_model_location(snakemake.params.model["source"], snakemake.input.model),
    snakemake.output.clusters,
    snakemake.output.assignments,
)
