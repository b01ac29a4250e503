"""Rule clean_loss: a model's own next-token loss on the held-out split (once per model)."""

from typing import TYPE_CHECKING

from circuit_insights.models.loading import set_threads
from circuit_insights.pipeline.logs import configure_logging
from circuit_insights.pipeline.stages.clean_loss import run_clean_loss

if TYPE_CHECKING:
    from snakemake.script import Snakemake

    snakemake: Snakemake

configure_logging(snakemake.log[0])
set_threads(snakemake.threads)
run_clean_loss(
    model_config=snakemake.params.model,
    tokens_path=snakemake.input.tokens,
    model_files=snakemake.input.model,
    out_path=snakemake.output.loss,
    model_name=snakemake.params.model_name,
)
