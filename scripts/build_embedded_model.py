"""Rule build_embedded_model: Gemma 3 270M from its PyPI GGUF chunks to a float32 HF folder."""

from pathlib import Path
from typing import TYPE_CHECKING

from circuit_insights.models.embedded import build_gemma3_270m
from circuit_insights.pipeline.logs import configure_logging

if TYPE_CHECKING:
    from snakemake.script import Snakemake

    snakemake: Snakemake

configure_logging(snakemake.log[0])
build_gemma3_270m(Path(snakemake.output.config).parent)
