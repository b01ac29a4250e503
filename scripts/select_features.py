"""Rule select_features: one shard's named features and seeded draw for the later stages."""

from typing import TYPE_CHECKING

from circuit_insights.pipeline.logs import configure_logging
from circuit_insights.pipeline.stages.select_features import run_select_features

if TYPE_CHECKING:
    from snakemake.script import Snakemake

    snakemake: Snakemake

configure_logging(snakemake.log[0])
run_select_features(
    samples_path=snakemake.input.samples,
    shard_name=snakemake.wildcards.shard,
    explain_config=snakemake.params.explain,
    named=list(snakemake.params.named),
    out_path=snakemake.output.selection,
)
