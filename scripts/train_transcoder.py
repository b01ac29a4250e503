"""Rule train_transcoder: a transcoder for one (model, layer) from MLP input/output pairs."""

from typing import TYPE_CHECKING

from circuit_insights.pipeline.logs import configure_logging
from circuit_insights.pipeline.paths import job_model_location
from circuit_insights.pipeline.stages import run_train_transcoder, set_threads

if TYPE_CHECKING:
    from snakemake.script import Snakemake

    snakemake: Snakemake

configure_logging(snakemake.log[0])
set_threads(snakemake.threads)
run_train_transcoder(
    snakemake.params.model,
    snakemake.input.tokens,
    int(snakemake.wildcards.layer),
    job_model_location(snakemake.params.model["source"], snakemake.input.model),
    snakemake.output.weights,
    snakemake.output.report,
    model_name=snakemake.params.model_name,
    clean_loss_path=snakemake.input.clean_loss,
)
