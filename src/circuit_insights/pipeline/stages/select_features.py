"""Rule select_features: one shard's named features and the seeded draw."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

log = logging.getLogger(__name__)


def run_select_features(
    *,
    samples_path: str,
    shard_name: str,
    explain_config: Mapping[str, Any],
    out_path: str,
    named: Sequence[int] = (),
) -> None:
    """Rule select_features: the features later stages work on, the shard's ``named`` ones
    (from the config's feature lists and graph) and the seeded draw."""
    import pandas as pd

    from circuit_insights.data.selection import NAMED, select_features, write_selection
    from circuit_insights.data.shards import parse_shard

    selection = select_features(
        pd.read_parquet(samples_path),
        parse_shard(shard_name),
        features_per_shard=explain_config["features_per_shard"],
        min_samples=explain_config["min_samples"],
        seed=explain_config["seed"],
        named=named,
    )
    write_selection(selection, out_path)
    named_rows = selection[selection["reason"] == NAMED]
    log.info(
        "shard %s: %d features selected (%d named, %d of them with fewer than %d quantile "
        "samples), of %d rows",
        shard_name,
        int(selection["selected"].sum()),
        len(named_rows),
        int((named_rows["n_quantile_samples"] < explain_config["min_samples"]).sum()),
        explain_config["min_samples"],
        len(selection),
    )
