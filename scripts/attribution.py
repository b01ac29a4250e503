"""Rule attribution: CircuitLens contributions of one feature shard's quantile samples."""

from typing import TYPE_CHECKING

from circuit_insights.models.loading import set_threads
from circuit_insights.pipeline.locations import layer_files
from circuit_insights.pipeline.logs import configure_logging
from circuit_insights.pipeline.stages.attribution import run_attribution_stage

if TYPE_CHECKING:
    from snakemake.script import Snakemake

    snakemake: Snakemake

configure_logging(snakemake.log[0])
set_threads(snakemake.threads)
inputs = dict(snakemake.input.items())
run_attribution_stage(
    model_config=snakemake.params.model,
    attribution_config=snakemake.params.attribution,
    model_files=snakemake.input.model,
    layer=int(snakemake.wildcards.layer),
    transcoder_files=layer_files(inputs, "transcoder", snakemake.params.layers),
    selection_path=inputs.get("selection"),
    samples_path=snakemake.input.samples,
    tokens_path=snakemake.input.tokens,
    contributions_path=snakemake.output.contributions,
    totals_path=snakemake.output.totals,
    model_name=snakemake.params.model_name,
)
