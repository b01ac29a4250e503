"""Rule import_explanations: one imported variant's explanation rows."""

from typing import TYPE_CHECKING

from circuit_insights.pipeline.logs import configure_logging
from circuit_insights.pipeline.stages.import_explanations import run_import_explanations_stage

if TYPE_CHECKING:
    from snakemake.script import Snakemake

    snakemake: Snakemake

configure_logging(snakemake.log[0])
run_import_explanations_stage(
    model_name=snakemake.wildcards.model,
    variant=snakemake.wildcards.variant,
    import_config=snakemake.params.imported,
    target_config=snakemake.params.target,
    out_path=snakemake.output.explanations,
)
