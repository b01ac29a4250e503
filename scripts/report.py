"""Rule report: the static HTML report of the run."""

from pathlib import Path
from typing import TYPE_CHECKING

from circuit_insights.pipeline.logs import configure_logging
from circuit_insights.pipeline.stages.report import run_report_stage

if TYPE_CHECKING:
    from snakemake.script import Snakemake

    snakemake: Snakemake

configure_logging(snakemake.log[0])
run_report_stage(
    results=str(Path(snakemake.output.index).parents[1]),  # results_dir/report/index.html
    model_locations=snakemake.params.locations,
    out_index=snakemake.output.index,
    max_features=snakemake.params.max_features,
    tables=list(snakemake.input.tables),
    graphs=snakemake.params.graphs,
    label_variants=snakemake.params.labels,
)
