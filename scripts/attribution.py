"""Rule attribution: CircuitLens contributions of one feature shard's quantile samples."""

from typing import TYPE_CHECKING

from circuit_insights.pipeline.logs import configure_logging
from circuit_insights.pipeline.paths import job_model_location
from circuit_insights.pipeline.stages import run_attribution_stage, set_threads, transcoder_location

if TYPE_CHECKING:
    from snakemake.script import Snakemake

    snakemake: Snakemake

configure_logging(snakemake.log[0])
set_threads(snakemake.threads)
model_config = snakemake.params.model
inputs = dict(snakemake.input.items())
run_attribution_stage(
    model_config,
    snakemake.params.attribution,
    snakemake.params.explain,
    job_model_location(model_config["source"], snakemake.input.model),
    int(snakemake.wildcards.layer),
    snakemake.wildcards.shard,
    {
        layer: transcoder_location(model_config, inputs.get(f"transcoder_{layer}", []), layer)
        for layer in snakemake.params.layers
    },
    snakemake.input.samples,
    snakemake.input.tokens,
    snakemake.output.contributions,
    snakemake.output.totals,
    snakemake.params.model_name,
)
