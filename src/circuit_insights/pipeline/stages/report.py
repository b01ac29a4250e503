"""Rule report: the static HTML report of the run."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

log = logging.getLogger(__name__)


def run_report_stage(
    results: str,
    model_locations: Mapping[str, str],
    out_index: str,
    max_features: int | None,
    tables: Sequence[str],
) -> None:
    """Rule report: the static HTML report of the run (opens from disk, no server), from the
    per-shard ``tables`` the rule declares (nothing else under ``results`` is read)."""
    from transformers import AutoTokenizer

    from circuit_insights.report.html import build_report

    tokenizers = {
        name: AutoTokenizer.from_pretrained(location) for name, location in model_locations.items()
    }
    index = build_report(results, Path(out_index).parent, tokenizers, max_features, files=tables)
    log.info("report written from %d tables: %s", len(tables), index)
