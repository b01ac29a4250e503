"""Rule export: the model's explanations and scores in Neuronpedia's and delphi's formats."""

from typing import TYPE_CHECKING

from circuit_insights.pipeline.logs import configure_logging
from circuit_insights.pipeline.stages.export import run_export_stage

if TYPE_CHECKING:
    from snakemake.script import Snakemake

    snakemake: Snakemake

configure_logging(snakemake.log[0])
run_export_stage(
    explanation_files=list(snakemake.input.explanations),
    summary_path=snakemake.input.summary,
    target_config=snakemake.params.target,
    neuronpedia_path=snakemake.output.neuronpedia,
    delphi_dir=snakemake.output.delphi,
)
