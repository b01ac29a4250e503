"""Rule cache_{model}: the sparse activation cache of one layer, every feature shard."""

from typing import TYPE_CHECKING

from circuit_insights.logs import configure_logging
from circuit_insights.shards import parse_shard
from circuit_insights.stages import run_cache, set_threads
from circuit_insights.workflow_paths import shard_of

if TYPE_CHECKING:
    from snakemake.script import Snakemake

    snakemake: Snakemake

configure_logging(snakemake.log[0])
set_threads(snakemake.threads)
run_cache(
    snakemake.params.model,
    snakemake.params.cache,
    snakemake.input.tokens,
    int(snakemake.wildcards.layer),
    [parse_shard(shard_of(path)) for path in snakemake.output.maxima],
    snakemake.params.resources,
    snakemake.params.results,
    snakemake.params.model_name,
)
