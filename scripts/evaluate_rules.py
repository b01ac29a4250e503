"""Rule evaluate_rules: every feature's executable explanations scored by the rule rater."""

from typing import TYPE_CHECKING

from circuit_insights.pipeline.logs import configure_logging
from circuit_insights.pipeline.paths import job_model_location
from circuit_insights.pipeline.stages import (
    run_evaluate_rules_stage,
    set_threads,
    transcoder_location,
)

if TYPE_CHECKING:
    from snakemake.script import Snakemake

    snakemake: Snakemake

configure_logging(snakemake.log[0])
set_threads(snakemake.threads)
model_config = snakemake.params.model
layer = int(snakemake.wildcards.layer)
run_evaluate_rules_stage(
    model_config,
    snakemake.params.rules,
    snakemake.params.evaluate,
    job_model_location(model_config["source"], snakemake.input.model),
    layer,
    transcoder_location(model_config, snakemake.input.transcoder, layer),
    snakemake.input.explanations,
    snakemake.input.heldout,
    snakemake.input.tokens,
    snakemake.output.evaluation,
    snakemake.params.model_name,
)
