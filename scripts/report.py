"""Rule report: the static HTML report of the run."""

from pathlib import Path
from typing import TYPE_CHECKING

from circuit_insights.pipeline.logs import configure_logging
from circuit_insights.pipeline.stages import run_report_stage

if TYPE_CHECKING:
    from snakemake.script import Snakemake

    snakemake: Snakemake

configure_logging(snakemake.log[0])
run_report_stage(
    str(Path(snakemake.output.index).parents[1]),  # results_dir/report/index.html
    snakemake.params.locations,
    snakemake.output.index,
    snakemake.params.max_features,
)
