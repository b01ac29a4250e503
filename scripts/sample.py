"""Rule sample: quantile samples, top-k contexts and negatives of one feature shard."""

from typing import TYPE_CHECKING

from circuit_insights.pipeline.logs import configure_logging
from circuit_insights.pipeline.stages import run_sample

if TYPE_CHECKING:
    from snakemake.script import Snakemake

    snakemake: Snakemake

configure_logging(snakemake.log[0])
run_sample(
    snakemake.input.maxima,
    snakemake.input.tokens,
    snakemake.wildcards.shard,
    snakemake.params.sampling,
    snakemake.output.samples,
)
