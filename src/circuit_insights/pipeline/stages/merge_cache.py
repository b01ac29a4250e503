"""Rule merge_cache: one (layer, shard)'s cache files from the caches of every corpus chunk."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

log = logging.getLogger(__name__)


def run_merge_cache(
    *,
    chunk_dirs: Sequence[str] | str,
    layer: int,
    shard_name: str,
    outputs: Mapping[str, str],
) -> None:
    """Rule merge_cache: merge the chunks' files of (``layer``, ``shard_name``), both splits.

    ``chunk_dirs``: rule cache's folders, one per chunk (any order: merged in context order; a
    single folder may come as a string).
    ``outputs``: each of ``paths.CACHE_KINDS`` -> its merged file.
    """
    from circuit_insights.core.errors import InputError
    from circuit_insights.data.cache_chunks import parse_chunk
    from circuit_insights.data.cache_merge import merge_shard
    from circuit_insights.data.cache_split import CACHE_SPLITS
    from circuit_insights.data.shards import parse_shard
    from circuit_insights.pipeline.paths import CACHE_KINDS
    from circuit_insights.pipeline.stages.cache import chunk_shard_paths

    if set(outputs) != set(CACHE_KINDS):
        raise InputError(f"merge_cache outputs {sorted(outputs)} are not {sorted(CACHE_KINDS)}")
    shard = parse_shard(shard_name)
    folders = [chunk_dirs] if isinstance(chunk_dirs, str) else list(chunk_dirs)
    ordered = sorted(folders, key=lambda folder: parse_chunk(Path(folder).name))
    for split, prefix in CACHE_SPLITS.items():
        rows = merge_shard(
            [chunk_shard_paths(folder, layer, prefix, shard) for folder in ordered],
            {
                artifact: outputs[f"{prefix}{artifact}"]
                for artifact in ("activations", "maxima", "feature_stats")
            },
            shard,
        )
        log.info(
            "layer %d shard %s, split %s: %d chunks merged, %s",
            layer,
            shard_name,
            split,
            len(ordered),
            rows,
        )
