"""Rule select_features: the seeded draw of one shard's features."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)


def run_select_features(
    *,
    samples_path: str,
    shard_name: str,
    explain_config: Mapping[str, Any],
    out_path: str,
) -> None:
    """Rule select_features: the seeded draw of the features later stages work on."""
    import pandas as pd

    from circuit_insights.data.selection import select_features, write_selection
    from circuit_insights.data.shards import parse_shard

    selection = select_features(
        pd.read_parquet(samples_path),
        parse_shard(shard_name),
        features_per_shard=explain_config["features_per_shard"],
        min_samples=explain_config["min_samples"],
        seed=explain_config["seed"],
    )
    write_selection(selection, out_path)
    log.info(
        "shard %s: %d of %d eligible features selected",
        shard_name,
        int(selection["selected"].sum()),
        len(selection),
    )
