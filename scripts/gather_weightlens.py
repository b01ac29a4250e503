"""Rule gather_weightlens: one layer's WeightLens shards as one table."""

from typing import TYPE_CHECKING

from circuit_insights.pipeline.logs import configure_logging
from circuit_insights.pipeline.stages.gather_weightlens import run_gather_weightlens

if TYPE_CHECKING:
    from snakemake.script import Snakemake

    snakemake: Snakemake

configure_logging(snakemake.log[0])
run_gather_weightlens(shard_files=list(snakemake.input.shards), out_path=snakemake.output.table)
