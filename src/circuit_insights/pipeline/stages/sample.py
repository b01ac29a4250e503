"""Rule sample: quantile, top-k and negative contexts of one shard."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)


def run_sample(
    *,
    maxima_path: str,
    tokens_path: str,
    shard_name: str,
    sampling_config: Mapping[str, Any],
    out_path: str,
) -> None:
    """Rule sample: quantile, top-k and negative contexts of every feature of one shard."""
    from circuit_insights.data.corpus import load_contexts
    from circuit_insights.data.sampling import SamplingConfig, write_shard_samples
    from circuit_insights.data.shards import parse_shard

    context_ids, tokens = load_contexts(tokens_path, "cache")
    frame = write_shard_samples(
        maxima_path,
        context_ids,
        parse_shard(shard_name),
        SamplingConfig.from_mapping(sampling_config),
        context_length=tokens.shape[1],
        out_path=out_path,
    )
    log.info(
        "shard %s: %d samples of %d features",
        shard_name,
        len(frame),
        frame["feature"].nunique() if len(frame) else 0,
    )
