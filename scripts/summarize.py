"""Rule summarize: one model's summary parquet, paper-form tables and plots."""

from pathlib import Path
from typing import TYPE_CHECKING

from circuit_insights.pipeline.logs import configure_logging
from circuit_insights.pipeline.stages import run_summarize_stage

if TYPE_CHECKING:
    from snakemake.script import Snakemake

    snakemake: Snakemake

configure_logging(snakemake.log[0])
run_summarize_stage(
    snakemake.params.model,
    list(snakemake.input.evaluation),
    list(snakemake.input.weightlens),
    str(Path(snakemake.output.summary).parent),
    snakemake.params.model_name,
    list(snakemake.input.rule_evaluation),
)
