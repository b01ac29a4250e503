"""Rule evaluate_rules: every feature's executable explanations scored by the rule rater."""

from typing import TYPE_CHECKING

from circuit_insights.models.loading import set_threads
from circuit_insights.pipeline.logs import configure_logging
from circuit_insights.pipeline.paths import job_model_location
from circuit_insights.pipeline.stages.evaluate_rules import run_evaluate_rules_stage
from circuit_insights.transcoders.loading import transcoder_location

if TYPE_CHECKING:
    from snakemake.script import Snakemake

    snakemake: Snakemake

configure_logging(snakemake.log[0])
set_threads(snakemake.threads)
model_config = snakemake.params.model
layer = int(snakemake.wildcards.layer)
run_evaluate_rules_stage(
    model_config=model_config,
    rules_config=snakemake.params.rules,
    evaluate_config=snakemake.params.evaluate,
    model_location=job_model_location(model_config["source"], snakemake.input.model),
    layer=layer,
    transcoder_path=transcoder_location(model_config, snakemake.input.transcoder, layer),
    explanations_path=snakemake.input.explanations,
    heldout_path=snakemake.input.heldout,
    tokens_path=snakemake.input.tokens,
    out_path=snakemake.output.evaluation,
    model_name=snakemake.params.model_name,
)
