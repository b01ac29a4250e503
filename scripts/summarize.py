"""Rule summarize: one model's summary parquet, paper-form tables and plots."""

from pathlib import Path
from typing import TYPE_CHECKING

from circuit_insights.pipeline.logs import configure_logging
from circuit_insights.pipeline.stages.summarize import run_summarize_stage

if TYPE_CHECKING:
    from snakemake.script import Snakemake

    snakemake: Snakemake

configure_logging(snakemake.log[0])
run_summarize_stage(
    model_config=snakemake.params.model,
    evaluation_files=list(snakemake.input.evaluation),
    weightlens_files=list(snakemake.input.weightlens),
    out_dir=str(Path(snakemake.output.summary).parent),
    model_name=snakemake.params.model_name,
    rule_evaluation_files=list(snakemake.input.rule_evaluation),
    cluster_files=list(snakemake.input.clusters),
    explanation_files=list(snakemake.input.explanations),
    delphi_files=list(snakemake.input.delphi_scores),
)
