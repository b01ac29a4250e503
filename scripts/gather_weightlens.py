"""Rule gather_weightlens: one layer's WeightLens shards as one table."""

import logging
from typing import TYPE_CHECKING

from circuit_insights.pipeline.logs import configure_logging
from circuit_insights.weightlens import gather_weightlens

if TYPE_CHECKING:
    from snakemake.script import Snakemake

    snakemake: Snakemake

configure_logging(snakemake.log[0])
rows = gather_weightlens(list(snakemake.input.shards), snakemake.output.table)
logging.getLogger(__name__).info("%d features in %s", rows, snakemake.output.table)
