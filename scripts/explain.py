"""Rule explain: descriptions of one shard's chosen features by every variant."""

from typing import TYPE_CHECKING

from circuit_insights.pipeline.logs import configure_logging
from circuit_insights.pipeline.paths import job_model_location
from circuit_insights.pipeline.stages import run_explain_stage

if TYPE_CHECKING:
    from snakemake.script import Snakemake

    snakemake: Snakemake

configure_logging(snakemake.log[0])
llm = snakemake.params.llm
run_explain_stage(
    snakemake.params.model,
    snakemake.params.explain,
    llm,
    job_model_location(snakemake.params.model["source"], snakemake.input.model),
    job_model_location(llm["model"], snakemake.input.llm),
    int(snakemake.wildcards.layer),
    snakemake.wildcards.shard,
    snakemake.input.weightlens,
    snakemake.input.clusters,
    snakemake.input.samples,
    snakemake.input.tokens,
    snakemake.output.explanations,
    snakemake.params.llm_files,
    snakemake.params.rules,
)
