"""Rule weightlens: WeightLens explanations of one feature shard."""

from typing import TYPE_CHECKING

from circuit_insights.models.loading import set_threads
from circuit_insights.pipeline.locations import layer_files
from circuit_insights.pipeline.logs import configure_logging
from circuit_insights.pipeline.stages.weightlens import run_weightlens_stage

if TYPE_CHECKING:
    from snakemake.script import Snakemake

    snakemake: Snakemake

configure_logging(snakemake.log[0])
set_threads(snakemake.threads)
inputs = dict(snakemake.input.items())
run_weightlens_stage(
    model_config=snakemake.params.model,
    weightlens_config=snakemake.params.weightlens,
    model_files=snakemake.input.model,
    layer=int(snakemake.wildcards.layer),
    shard_name=snakemake.wildcards.shard,
    transcoder_files=layer_files(inputs, "transcoder", snakemake.params.layers),
    upstream_files=layer_files(inputs, "upstream", snakemake.params.layers),
    samples_path=snakemake.input.samples,
    heldout_path=snakemake.input.heldout,
    tokens_path=snakemake.input.tokens,
    out_path=snakemake.output.weightlens,
    model_name=snakemake.params.model_name,
)
