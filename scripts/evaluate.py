"""Rule evaluate: FADE scores of one variant's descriptions of one shard."""

from typing import TYPE_CHECKING

from circuit_insights.models.loading import set_threads
from circuit_insights.pipeline.logs import configure_logging
from circuit_insights.pipeline.params import llm_job_config
from circuit_insights.pipeline.stages.evaluate import run_evaluate_stage

if TYPE_CHECKING:
    from snakemake.script import Snakemake

    snakemake: Snakemake

configure_logging(snakemake.log[0])
set_threads(snakemake.threads)
run_evaluate_stage(
    model_config=snakemake.params.model,
    evaluate_config=snakemake.params.evaluate,
    llm_config=llm_job_config(snakemake.params.llm, snakemake.config),
    model_files=snakemake.input.model,
    llm_model_files=snakemake.input.llm,
    layer=int(snakemake.wildcards.layer),
    variant=snakemake.wildcards.variant,
    transcoder_files=snakemake.input.transcoder,
    selection_path=snakemake.input.selection,
    explanations_path=snakemake.input.explanations,
    imported_path=snakemake.input.imported or None,
    heldout_path=snakemake.input.heldout,
    tokens_path=snakemake.input.tokens,
    out_path=snakemake.output.evaluation,
    llm_files=snakemake.params.llm_files,
    model_name=snakemake.params.model_name,
)
