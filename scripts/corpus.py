"""Rule corpus: documents -> fixed-length contexts (BOS first) -> cache / eval split parquet."""

from typing import TYPE_CHECKING

from circuit_insights.pipeline.logs import configure_logging
from circuit_insights.pipeline.stages.corpus import run_corpus

if TYPE_CHECKING:
    from snakemake.script import Snakemake

    snakemake: Snakemake

configure_logging(snakemake.log[0])
run_corpus(
    model_config=snakemake.params.model,
    corpus_config=snakemake.params.corpus,
    model_files=snakemake.input.model,
    out_path=snakemake.output.tokens,
)
