"""Rule merge_cache: one (layer, shard)'s cache files from every corpus chunk's cache."""

from typing import TYPE_CHECKING

from circuit_insights.pipeline.logs import configure_logging
from circuit_insights.pipeline.stages.merge_cache import run_merge_cache

if TYPE_CHECKING:
    from snakemake.script import Snakemake

    snakemake: Snakemake

configure_logging(snakemake.log[0])
run_merge_cache(
    chunk_dirs=snakemake.input.chunks,
    layer=int(snakemake.wildcards.layer),
    shard_name=snakemake.wildcards.shard,
    outputs=dict(snakemake.output.items()),
)
