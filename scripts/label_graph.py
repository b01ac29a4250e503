"""Rule label_graph: a copy of the model's attribution graph with our labels."""

from typing import TYPE_CHECKING

from circuit_insights.pipeline.logs import configure_logging
from circuit_insights.pipeline.stages.label_graph import run_label_graph_stage

if TYPE_CHECKING:
    from snakemake.script import Snakemake

    snakemake: Snakemake

configure_logging(snakemake.log[0])
run_label_graph_stage(
    graph_path=snakemake.input.graph,
    explanation_files=list(snakemake.input.explanations),
    label_variants=snakemake.params.labels,
    target_config=snakemake.params.target,
    out_dir=snakemake.output.folder,
)
