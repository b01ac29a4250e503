"""The cache of one (layer, shard) from the caches of consecutive corpus chunks, exactly.

Rule cache writes, per corpus chunk (a range of context ids), every layer's and shard's
``activations`` and ``maxima`` as :class:`~circuit_insights.data.cache.ActivationCacheWriter`
writes them and, instead of ``feature_stats``, the raw counters behind it
(``statistics="parts"``). :func:`merge_shard` makes of the chunks of one (layer, shard) the files
one writer over the whole corpus makes:

- ``activations`` / ``maxima``: one row group per feature bucket (at most ``row_group_rows``
  rows each), its rows the bucket's row groups of every chunk, chunk after chunk, stably sorted
  by feature. Within a chunk a feature's rows over its bucket's row groups are in (context,
  position) order and the chunks' contexts increase, so each row group is sorted by (feature,
  context, position) and a reader gets the rows of a single-writer cache, in its order;
- ``feature_stats``: the chunks' counters added (integers and extremes: exact in any grouping,
  :class:`~circuit_insights.data.cache_stats.FeatureStatistics`), then the statistics computed
  once, as the single writer computes them.

Memory: one feature bucket of every chunk at a time.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from circuit_insights.core.errors import InputError
from circuit_insights.core.io import atomic_path
from circuit_insights.data.cache import ARTIFACTS, SPARSE_LAYOUT, open_sparse_writer
from circuit_insights.data.cache_stats import FeatureStatistics
from circuit_insights.data.schemas import FEATURE_STATS_SCHEMA
from circuit_insights.data.shards import Shard

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


def merge_shard(
    chunk_paths: Sequence[Mapping[str, PathLike]],
    out_paths: Mapping[str, PathLike],
    shard: Shard,
    *,
    bucket_features: int = 32,
    row_group_rows: int = 1_000_000,
) -> dict[str, int]:
    """Merge the caches of ``shard`` over consecutive corpus chunks into one cache.

    ``chunk_paths``: per chunk, in increasing context order, each of :data:`ARTIFACTS` -> its
    file (``feature_stats``: the FEATURE_STATS_PARTS_SCHEMA counters). ``out_paths``: each of
    :data:`ARTIFACTS` -> the merged file, written atomically. ``bucket_features`` must be the
    chunk writers' (a chunk row group spanning two buckets is refused). Returns the rows written
    per artifact.
    """
    if not chunk_paths:
        raise InputError(f"shard {shard.name}: no chunk caches to merge")
    for index, paths in enumerate(chunk_paths):
        missing = set(ARTIFACTS) - set(paths)
        if missing:
            raise InputError(f"chunk {index} of shard {shard.name} lacks {sorted(missing)}")
    missing = set(ARTIFACTS) - set(out_paths)
    if missing:
        raise InputError(f"merged shard {shard.name} lacks out paths {sorted(missing)}")
    rows = {
        artifact: _merge_sparse(
            [paths[artifact] for paths in chunk_paths],
            out_paths[artifact],
            artifact,
            shard,
            bucket_features=bucket_features,
            row_group_rows=row_group_rows,
        )
        for artifact in SPARSE_LAYOUT
    }
    statistics = merged_statistics([paths["feature_stats"] for paths in chunk_paths], shard)
    table = pa.Table.from_pandas(
        statistics.frame(shard), schema=FEATURE_STATS_SCHEMA, preserve_index=False
    )
    with atomic_path(out_paths["feature_stats"]) as temporary:
        pq.write_table(table, temporary)
    rows["feature_stats"] = table.num_rows
    return rows


def merged_statistics(paths: Sequence[PathLike], shard: Shard) -> FeatureStatistics:
    """The counters of ``shard`` in every parts file of ``paths``, added up."""
    total: FeatureStatistics | None = None
    for path in paths:
        if not os.path.isfile(path):
            raise InputError(f"statistics parts file {path} does not exist")
        part = FeatureStatistics.from_parts_table(pq.read_table(path), shard, str(path))
        if total is None:
            total = part
        else:
            total.merge(part)
    assert total is not None  # paths is not empty: checked by the caller
    return total


class _ChunkFile:
    """One chunk's sparse file of the shard: its row groups by bucket, its context range."""

    def __init__(self, path: PathLike, shard: Shard, bucket_features: int) -> None:
        if not os.path.isfile(path):
            raise InputError(f"chunk cache file {path} does not exist")
        self.path = str(path)
        self.parquet = pq.ParquetFile(path)
        metadata = self.parquet.metadata
        names = self.parquet.schema_arrow.names
        feature_column, context_column = names.index("feature"), names.index("context")
        self.groups: dict[int, list[int]] = {}  # bucket -> row groups, in file order
        self.first_context, self.last_context = None, None
        for group in range(metadata.num_row_groups):
            row_group = metadata.row_group(group)
            if row_group.num_rows == 0:
                continue
            low, high = self._range(group, feature_column)
            if low < shard.start or high >= shard.stop:
                raise InputError(f"{self.path}: features [{low}, {high}] outside {shard.name}")
            bucket = (low - shard.start) // bucket_features
            if (high - shard.start) // bucket_features != bucket:
                raise InputError(
                    f"{self.path}: row group {group} spans more than one bucket of "
                    f"{bucket_features} features ([{low}, {high}])"
                )
            self.groups.setdefault(bucket, []).append(group)
            first, last = self._range(group, context_column)
            self.first_context = (
                first if self.first_context is None else min(first, self.first_context)
            )
            self.last_context = last if self.last_context is None else max(last, self.last_context)

    def _range(self, group: int, column: int) -> tuple[int, int]:
        """Min and max of an integer column in one row group (its statistics, else its values)."""
        stats = self.parquet.metadata.row_group(group).column(column).statistics
        if stats is not None and stats.has_min_max:
            return int(stats.min), int(stats.max)
        values = self.parquet.read_row_group(group, columns=[column]).column(0).to_numpy()
        return int(values.min()), int(values.max())

    def bucket(self, bucket: int) -> pa.Table | None:
        """The rows of one bucket, in file order (None when the chunk has none)."""
        groups = self.groups.get(bucket)
        return None if not groups else self.parquet.read_row_groups(groups)


def _merge_sparse(
    paths: Sequence[PathLike],
    out_path: PathLike,
    artifact: str,
    shard: Shard,
    *,
    bucket_features: int,
    row_group_rows: int,
) -> int:
    """Merge one sparse artifact (``activations`` or ``maxima``) of the chunks; rows written."""
    schema = SPARSE_LAYOUT[artifact][0]
    files = [_ChunkFile(path, shard, bucket_features) for path in paths]
    filled = [file for file in files if file.first_context is not None]
    for before, after in zip(filled, filled[1:], strict=False):
        assert before.last_context is not None and after.first_context is not None
        if after.first_context <= before.last_context:
            raise InputError(
                f"chunk caches out of context order: {after.path} starts at context "
                f"{after.first_context}, not after {before.path}'s last context "
                f"{before.last_context}"
            )
    key_dtype = np.uint8 if bucket_features <= 256 else np.int32
    n_rows = 0
    with atomic_path(out_path) as temporary:
        writer = open_sparse_writer(temporary, artifact)
        try:
            for bucket in range(-(-shard.size // bucket_features)):
                tables = [table for file in filled if (table := file.bucket(bucket)) is not None]
                if not tables:
                    continue
                table = pa.concat_tables(tables).cast(schema)
                if sum(len(file.groups.get(bucket, ())) for file in filled) > 1:
                    local = table.column("feature").to_numpy() - (
                        shard.start + bucket * bucket_features
                    )  # (rows,) in [0, bucket_features)
                    order = np.argsort(local.astype(key_dtype), kind="stable")
                    table = table.take(pa.array(order))
                writer.write_table(table, row_group_size=row_group_rows)
                n_rows += table.num_rows
        finally:
            writer.close()
    return n_rows
