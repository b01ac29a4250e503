"""Rule select_features: the seeded draw of one shard's features for the later stages."""

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
    out_path=snakemake.output.selection,
)
