"""Rule delphi_rules: detection, fuzzing and simulation of every executable rule, exactly."""

from typing import TYPE_CHECKING

from circuit_insights.models.loading import set_threads
from circuit_insights.pipeline.logs import configure_logging
from circuit_insights.pipeline.stages.delphi_rules import run_delphi_rules_stage

if TYPE_CHECKING:
    from snakemake.script import Snakemake

    snakemake: Snakemake

configure_logging(snakemake.log[0])
set_threads(snakemake.threads)
run_delphi_rules_stage(
    model_config=snakemake.params.model,
    rules_config=snakemake.params.rules,
    scores_config=snakemake.params.scores,
    seed=snakemake.params.evaluate["seed"],
    model_files=snakemake.input.model,
    layer=int(snakemake.wildcards.layer),
    explanations_path=snakemake.input.explanations,
    heldout_path=snakemake.input.heldout,
    tokens_path=snakemake.input.tokens,
    out_path=snakemake.output.scores,
)
