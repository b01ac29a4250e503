"""Rule cache: the sparse activation cache of one corpus chunk, every layer, every shard."""

from typing import TYPE_CHECKING

from circuit_insights.models.loading import set_threads
from circuit_insights.pipeline.locations import layer_files
from circuit_insights.pipeline.logs import configure_logging
from circuit_insights.pipeline.stages.cache import run_cache

if TYPE_CHECKING:
    from snakemake.script import Snakemake

    snakemake: Snakemake

configure_logging(snakemake.log[0])
set_threads(snakemake.threads)
inputs = dict(snakemake.input.items())
run_cache(
    model_config=snakemake.params.model,
    cache_config=snakemake.params.cache,
    tokens_path=snakemake.input.tokens,
    chunk_name=snakemake.wildcards.chunk,
    layers=snakemake.params.layers,
    model_files=snakemake.input.model,
    transcoder_files=layer_files(inputs, "transcoder", snakemake.params.layers),
    out_dir=snakemake.output.chunk,
    model_name=snakemake.params.model_name,
)
