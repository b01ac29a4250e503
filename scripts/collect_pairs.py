"""Rule collect_pairs: the MLP input/output pairs of every trained layer of a model at once."""

from typing import TYPE_CHECKING

from circuit_insights.models.loading import set_threads
from circuit_insights.pipeline.logs import configure_logging
from circuit_insights.pipeline.stages.collect_pairs import run_collect_pairs

if TYPE_CHECKING:
    from snakemake.script import Snakemake

    snakemake: Snakemake

configure_logging(snakemake.log[0])
set_threads(snakemake.threads)
run_collect_pairs(
    model_config=snakemake.params.model,
    tokens_path=snakemake.input.tokens,
    layers=snakemake.params.layers,
    model_files=snakemake.input.model,
    out_dir=snakemake.output.pairs,
    model_name=snakemake.params.model_name,
)
