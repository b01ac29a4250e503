"""Rule evaluate_rules: every feature's executable explanations scored by the rule rater."""

from typing import TYPE_CHECKING

from circuit_insights.models.loading import set_threads
from circuit_insights.pipeline.logs import configure_logging
from circuit_insights.pipeline.stages.evaluate_rules import run_evaluate_rules_stage

if TYPE_CHECKING:
    from snakemake.script import Snakemake

    snakemake: Snakemake

configure_logging(snakemake.log[0])
set_threads(snakemake.threads)
run_evaluate_rules_stage(
    model_config=snakemake.params.model,
    rules_config=snakemake.params.rules,
    evaluate_config=snakemake.params.evaluate,
    model_files=snakemake.input.model,
    layer=int(snakemake.wildcards.layer),
    transcoder_files=snakemake.input.transcoder,
    explanations_path=snakemake.input.explanations,
    heldout_path=snakemake.input.heldout,
    tokens_path=snakemake.input.tokens,
    out_path=snakemake.output.evaluation,
    model_name=snakemake.params.model_name,
)
