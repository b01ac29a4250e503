"""Rule train_transcoder: a transcoder for one (model, layer) from MLP input/output pairs."""

from typing import TYPE_CHECKING

from circuit_insights.models.loading import set_threads
from circuit_insights.pipeline.logs import configure_logging
from circuit_insights.pipeline.stages.train_transcoder import run_train_transcoder

if TYPE_CHECKING:
    from snakemake.script import Snakemake

    snakemake: Snakemake

configure_logging(snakemake.log[0])
set_threads(snakemake.threads)
run_train_transcoder(
    model_config=snakemake.params.model,
    tokens_path=snakemake.input.tokens,
    pairs_dir=snakemake.input.pairs,
    layer=int(snakemake.wildcards.layer),
    model_files=snakemake.input.model,
    weights_path=snakemake.output.weights,
    report_path=snakemake.output.report,
    model_name=snakemake.params.model_name,
    clean_loss_path=snakemake.input.clean_loss,
)
