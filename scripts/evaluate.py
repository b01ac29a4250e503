"""Rule evaluate: FADE scores of one variant's descriptions of one shard."""

from typing import TYPE_CHECKING

from circuit_insights.pipeline.logs import configure_logging
from circuit_insights.pipeline.paths import job_model_location
from circuit_insights.pipeline.stages import run_evaluate_stage, set_threads, transcoder_location

if TYPE_CHECKING:
    from snakemake.script import Snakemake

    snakemake: Snakemake

configure_logging(snakemake.log[0])
set_threads(snakemake.threads)
model_config = snakemake.params.model
llm = snakemake.params.llm
layer = int(snakemake.wildcards.layer)
run_evaluate_stage(
    model_config,
    snakemake.params.evaluate,
    llm,
    job_model_location(model_config["source"], snakemake.input.model),
    job_model_location(llm["model"], snakemake.input.llm),
    layer,
    snakemake.wildcards.variant,
    transcoder_location(model_config, snakemake.input.transcoder, layer),
    snakemake.input.explanations,
    snakemake.input.heldout,
    snakemake.input.feature_stats,
    snakemake.input.tokens,
    snakemake.output.evaluation,
    snakemake.params.llm_files,
    snakemake.params.model_name,
)
