"""Rule twera: the TWERA ranking of one feature shard's upstream connections."""

from typing import TYPE_CHECKING

from circuit_insights.models.loading import set_threads
from circuit_insights.pipeline.logs import configure_logging
from circuit_insights.pipeline.paths import job_model_location
from circuit_insights.pipeline.stages.twera import run_twera_stage
from circuit_insights.transcoders.loading import transcoder_location

if TYPE_CHECKING:
    from snakemake.script import Snakemake

    snakemake: Snakemake

configure_logging(snakemake.log[0])
set_threads(snakemake.threads)
layer = int(snakemake.wildcards.layer)
model_config = snakemake.params.model
inputs = dict(snakemake.input.items())
run_twera_stage(
    model_config=model_config,
    twera_config=snakemake.params.twera,
    projection=snakemake.params.projection,
    location=job_model_location(model_config["source"], snakemake.input.model),
    layer=layer,
    shard_name=snakemake.wildcards.shard,
    transcoder_locations={
        up: transcoder_location(model_config, inputs.get(f"transcoder_{up}", []), up)
        for up in snakemake.params.layers
    },
    activation_files={
        up: list(snakemake.input[f"activations_{up}"]) for up in snakemake.params.layers
    },
    out_path=snakemake.output.twera,
    model_name=snakemake.params.model_name,
)
