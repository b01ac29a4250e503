"""Rule delphi_llm: detection, fuzzing and simulation of the compared descriptions, by the LLM."""

from typing import TYPE_CHECKING

from circuit_insights.models.loading import set_threads
from circuit_insights.pipeline.logs import configure_logging
from circuit_insights.pipeline.params import llm_job_config
from circuit_insights.pipeline.stages.delphi_llm import run_delphi_llm_stage

if TYPE_CHECKING:
    from snakemake.script import Snakemake

    snakemake: Snakemake

configure_logging(snakemake.log[0])
set_threads(snakemake.threads)
run_delphi_llm_stage(
    model_config=snakemake.params.model,
    scores_config=snakemake.params.scores,
    evaluate_config=snakemake.params.evaluate,
    llm_config=llm_job_config(snakemake.params.llm, snakemake.config),
    model_files=snakemake.input.model,
    llm_model_files=snakemake.input.llm,
    layer=int(snakemake.wildcards.layer),
    selection_path=snakemake.input.selection,
    explanations_path=snakemake.input.explanations,
    imported_paths=list(snakemake.input.imported),
    heldout_path=snakemake.input.heldout,
    tokens_path=snakemake.input.tokens,
    out_path=snakemake.output.scores,
    llm_files=snakemake.params.llm_files,
)
