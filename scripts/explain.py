"""Rule explain: descriptions of one shard's chosen features by every variant."""

from typing import TYPE_CHECKING

from circuit_insights.pipeline.logs import configure_logging
from circuit_insights.pipeline.params import llm_job_config
from circuit_insights.pipeline.paths import job_model_location
from circuit_insights.pipeline.stages.explain import run_explain_stage

if TYPE_CHECKING:
    from snakemake.script import Snakemake

    snakemake: Snakemake

configure_logging(snakemake.log[0])
llm = llm_job_config(snakemake.params.llm, snakemake.config)
run_explain_stage(
    model_config=snakemake.params.model,
    explain_config=snakemake.params.explain,
    llm_config=llm,
    model_location=job_model_location(snakemake.params.model["source"], snakemake.input.model),
    llm_location=job_model_location(llm["model"], snakemake.input.llm),
    layer=int(snakemake.wildcards.layer),
    shard_name=snakemake.wildcards.shard,
    selection_path=snakemake.input.selection,
    weightlens_path=snakemake.input.weightlens,
    clusters_path=snakemake.input.clusters,
    samples_path=snakemake.input.samples,
    tokens_path=snakemake.input.tokens,
    out_path=snakemake.output.explanations,
    llm_files=snakemake.params.llm_files,
    rules_config=snakemake.params.rules,
)
