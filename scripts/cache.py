"""Rule cache_{model}: the sparse activation cache of one layer, every feature shard."""

from typing import TYPE_CHECKING

from circuit_insights.models.loading import set_threads
from circuit_insights.pipeline.logs import configure_logging
from circuit_insights.pipeline.paths import job_model_location
from circuit_insights.pipeline.stages.cache import run_cache
from circuit_insights.transcoders.loading import transcoder_location

if TYPE_CHECKING:
    from snakemake.script import Snakemake

    snakemake: Snakemake

configure_logging(snakemake.log[0])
set_threads(snakemake.threads)
layer = int(snakemake.wildcards.layer)
model_config = snakemake.params.model
run_cache(
    model_config=model_config,
    cache_config=snakemake.params.cache,
    tokens_path=snakemake.input.tokens,
    layer=layer,
    location=job_model_location(model_config["source"], snakemake.input.model),
    transcoder_path=transcoder_location(model_config, snakemake.input.transcoder, layer),
    outputs={kind: list(files) for kind, files in snakemake.output.items()},
    model_name=snakemake.params.model_name,
)
