"""Rule gather_weightlens: one layer's WeightLens shards as one table."""

from __future__ import annotations

import logging
from collections.abc import Sequence

log = logging.getLogger(__name__)


def run_gather_weightlens(*, shard_files: Sequence[str], out_path: str) -> int:
    """Concatenate one layer's WeightLens shard files into ``out_path``; returns the row count."""
    from circuit_insights.weightlens.io import gather_weightlens

    rows = gather_weightlens(list(shard_files), out_path)
    log.info("%d features in %s", rows, out_path)
    return rows
