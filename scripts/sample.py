"""Rule sample: quantile samples, top-k contexts and negatives of one feature shard."""

from typing import TYPE_CHECKING

from circuit_insights.pipeline.logs import configure_logging
from circuit_insights.pipeline.stages.sample import run_sample

if TYPE_CHECKING:
    from snakemake.script import Snakemake

    snakemake: Snakemake

configure_logging(snakemake.log[0])
run_sample(
    maxima_path=snakemake.input.maxima,
    tokens_path=snakemake.input.tokens,
    shard_name=snakemake.wildcards.shard,
    sampling_config=snakemake.params.sampling,
    out_path=snakemake.output.samples,
)
