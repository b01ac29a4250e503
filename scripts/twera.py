"""Rule twera: the TWERA ranking of one feature shard's upstream connections."""

from typing import TYPE_CHECKING

from circuit_insights.models.loading import set_threads
from circuit_insights.pipeline.locations import layer_files
from circuit_insights.pipeline.logs import configure_logging
from circuit_insights.pipeline.stages.twera import run_twera_stage

if TYPE_CHECKING:
    from snakemake.script import Snakemake

    snakemake: Snakemake

configure_logging(snakemake.log[0])
set_threads(snakemake.threads)
inputs = dict(snakemake.input.items())
run_twera_stage(
    model_config=snakemake.params.model,
    twera_config=snakemake.params.twera,
    projection=snakemake.params.projection,
    model_files=snakemake.input.model,
    layer=int(snakemake.wildcards.layer),
    shard_name=snakemake.wildcards.shard,
    transcoder_files=layer_files(inputs, "transcoder", snakemake.params.layers),
    activation_files=layer_files(inputs, "activations", snakemake.params.layers),
    out_path=snakemake.output.twera,
    model_name=snakemake.params.model_name,
)
