"""Rule explain: descriptions of one shard's chosen features by every variant."""

from typing import TYPE_CHECKING

from circuit_insights.pipeline.logs import configure_logging
from circuit_insights.pipeline.params import llm_job_config
from circuit_insights.pipeline.stages.explain import run_explain_stage

if TYPE_CHECKING:
    from snakemake.script import Snakemake

    snakemake: Snakemake

configure_logging(snakemake.log[0])
run_explain_stage(
    model_config=snakemake.params.model,
    explain_config=snakemake.params.explain,
    llm_config=llm_job_config(snakemake.params.llm, snakemake.config),
    model_files=snakemake.input.model,
    llm_model_files=snakemake.input.llm,
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
