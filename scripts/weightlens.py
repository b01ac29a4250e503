"""Rule weightlens: WeightLens explanations of one feature shard."""

from typing import TYPE_CHECKING

from circuit_insights.pipeline.logs import configure_logging
from circuit_insights.pipeline.paths import job_model_location
from circuit_insights.pipeline.stages import run_weightlens_stage, set_threads, transcoder_location

if TYPE_CHECKING:
    from snakemake.script import Snakemake

    snakemake: Snakemake

configure_logging(snakemake.log[0])
set_threads(snakemake.threads)
layer = int(snakemake.wildcards.layer)
model_config = snakemake.params.model
inputs = dict(snakemake.input.items())
run_weightlens_stage(
    model_config,
    snakemake.params.weightlens,
    job_model_location(model_config["source"], snakemake.input.model),
    layer,
    snakemake.wildcards.shard,
    {
        up: transcoder_location(model_config, inputs.get(f"transcoder_{up}", []), up)
        for up in snakemake.params.layers
    },
    {up: [inputs[f"upstream_{up}"]] for up in snakemake.params.layers if up < layer},
    snakemake.input.samples,
    snakemake.input.heldout,
    snakemake.input.tokens,
    snakemake.output.weightlens,
    snakemake.params.model_name,
)
