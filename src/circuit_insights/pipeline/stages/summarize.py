"""Rule summarize: one model's summary tables and plots."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

log = logging.getLogger(__name__)


def run_summarize_stage(
    *,
    model_config: Mapping[str, Any],
    evaluation_files: Sequence[str],
    weightlens_files: Sequence[str],
    out_dir: str,
    model_name: str,
    rule_evaluation_files: Sequence[str] = (),
    cluster_files: Sequence[str] = (),
    explanation_files: Sequence[str] = (),
    delphi_files: Sequence[str] = (),
) -> None:
    """Rule summarize: per-model summary parquet, tables in the paper's form, plots."""
    import pandas as pd

    from circuit_insights.report.paper import paper_family
    from circuit_insights.report.summary import write_summary

    written = write_summary(
        [pd.read_parquet(path) for path in evaluation_files],
        [pd.read_parquet(path) for path in weightlens_files],
        out_dir,
        model=model_name,
        family=paper_family(model_config["source"]) or paper_family(model_name),
        rule_evaluation_frames=[pd.read_parquet(path) for path in rule_evaluation_files],
        clusters_frames=[pd.read_parquet(path) for path in cluster_files],
        explanation_frames=[pd.read_parquet(path) for path in explanation_files],
        delphi_frames=[pd.read_parquet(path) for path in delphi_files],
    )
    log.info("summary of %s: %s", model_name, ", ".join(sorted(written)))
