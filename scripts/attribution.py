"""Rule attribution: CircuitLens contributions of one feature shard's quantile samples."""

from typing import TYPE_CHECKING

from circuit_insights.models.loading import set_threads
from circuit_insights.pipeline.logs import configure_logging
from circuit_insights.pipeline.paths import job_model_location
from circuit_insights.pipeline.stages.attribution import run_attribution_stage
from circuit_insights.transcoders.loading import transcoder_location

if TYPE_CHECKING:
    from snakemake.script import Snakemake

    snakemake: Snakemake

configure_logging(snakemake.log[0])
set_threads(snakemake.threads)
model_config = snakemake.params.model
inputs = dict(snakemake.input.items())
run_attribution_stage(
    model_config=model_config,
    attribution_config=snakemake.params.attribution,
    location=job_model_location(model_config["source"], snakemake.input.model),
    layer=int(snakemake.wildcards.layer),
    transcoder_locations={
        layer: transcoder_location(model_config, inputs.get(f"transcoder_{layer}", []), layer)
        for layer in snakemake.params.layers
    },
    selection_path=inputs.get("selection"),
    samples_path=snakemake.input.samples,
    tokens_path=snakemake.input.tokens,
    contributions_path=snakemake.output.contributions,
    totals_path=snakemake.output.totals,
    model_name=snakemake.params.model_name,
)
