"""Rule cache_{model}: the sparse activation cache of one layer, every feature shard."""

from typing import TYPE_CHECKING

from circuit_insights.models.loading import set_threads
from circuit_insights.pipeline.logs import configure_logging
from circuit_insights.pipeline.stages.cache import run_cache

if TYPE_CHECKING:
    from snakemake.script import Snakemake

    snakemake: Snakemake

configure_logging(snakemake.log[0])
set_threads(snakemake.threads)
run_cache(
    model_config=snakemake.params.model,
    cache_config=snakemake.params.cache,
    tokens_path=snakemake.input.tokens,
    layer=int(snakemake.wildcards.layer),
    model_files=snakemake.input.model,
    transcoder_files=snakemake.input.transcoder,
    outputs={kind: list(files) for kind, files in snakemake.output.items()},
    model_name=snakemake.params.model_name,
)
