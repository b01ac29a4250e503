"""The cache of one (layer, shard) from the caches of consecutive corpus chunks, exactly.

Rule cache writes, per corpus chunk (a range of context ids), every layer's and shard's
non-zeros (``activations``) and the chunk's token count (``tokens``) as
:class:`~circuit_insights.data.cache.ActivationCacheWriter` writes them with
``statistics="deferred"``: no maxima, no statistics, so that the job holding the model spends
nothing on them. :func:`merge_shard` makes of the chunks of one (layer, shard) the files one
writer over the whole corpus makes:

- ``activations``: one row group per feature bucket (at most ``row_group_rows`` rows each), its
  rows the bucket's rows of every chunk, chunk after chunk, stably sorted by feature. Within a
  chunk a feature's rows are in (context, position) order and the chunks' contexts increase, so
  each row group is sorted by (feature, context, position) and a reader gets the rows of a
  single-writer cache, in its order;
- ``maxima``: per (feature, context), from the bucket's sorted non-excluded rows, the maximum
  and its earliest position, as the writer finds them per batch (a context lies whole in one
  batch of one chunk); one row group per bucket;
- ``feature_stats``: the bucket's rows folded into one
  :class:`~circuit_insights.data.cache_stats.FeatureStatistics` of the shard (integer counters
  and extremes: exact in any grouping), the tokens the chunks' sum, then the statistics computed
  once, as the single writer computes them.

A chunk's non-zeros are read in either format of the writer (``sparse_format``): the Arrow IPC
files rule cache writes (record batches in stream order, unsorted across the writer's batches:
each bucket's rows are found in every run of rows sorted by feature, and sorted here) or parquet
files (one sorted row group per bucket and flush).

Memory: one feature bucket of every chunk at a time (plus, per Arrow chunk file, the row bounds
of each bucket in each of its runs), and the shard's statistics.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from circuit_insights.core.errors import InputError
from circuit_insights.core.io import atomic_path
from circuit_insights.data.cache import (
    ARTIFACTS,
    CHUNK_ARTIFACTS,
    SPARSE_LAYOUT,
    context_maxima,
    open_sparse_writer,
)
from circuit_insights.data.cache_stats import FeatureStatistics, LogHistogramSpec, read_tokens_table
from circuit_insights.data.schemas import ACTIVATIONS_SCHEMA, FEATURE_STATS_SCHEMA, MAXIMA_SCHEMA
from circuit_insights.data.shards import Shard

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

#: Above every position: the bound :func:`context_maxima` needs, where contexts of any length meet.
_POSITION_BOUND = 2**31


def merge_shard(
    chunk_paths: Sequence[Mapping[str, PathLike]],
    out_paths: Mapping[str, PathLike],
    shard: Shard,
    *,
    bucket_features: int = 32,
    row_group_rows: int = 1_000_000,
) -> dict[str, int]:
    """Merge the caches of ``shard`` over consecutive corpus chunks into one cache.

    ``chunk_paths``: per chunk, in increasing context order, each of :data:`CHUNK_ARTIFACTS`
    -> its file. ``out_paths``: each of :data:`ARTIFACTS` -> the merged file, written
    atomically. ``bucket_features`` must be the chunk writers' for parquet chunk files (a chunk
    row group spanning two buckets is refused). Returns the rows written per artifact.
    """
    if not chunk_paths:
        raise InputError(f"shard {shard.name}: no chunk caches to merge")
    for index, paths in enumerate(chunk_paths):
        missing = set(CHUNK_ARTIFACTS) - set(paths)
        if missing:
            raise InputError(f"chunk {index} of shard {shard.name} lacks {sorted(missing)}")
    missing = set(ARTIFACTS) - set(out_paths)
    if missing:
        raise InputError(f"merged shard {shard.name} lacks out paths {sorted(missing)}")
    n_tokens, spec = chunk_tokens([paths["tokens"] for paths in chunk_paths])
    files = _chunk_files([paths["activations"] for paths in chunk_paths], shard, bucket_features)
    statistics = FeatureStatistics(shard.start, shard.stop, spec)
    statistics.n_tokens_total = n_tokens
    rows = {"activations": 0, "maxima": 0}
    with contextlib.ExitStack() as stack:
        temporary = {name: stack.enter_context(atomic_path(out_paths[name])) for name in ARTIFACTS}
        writers = {name: open_sparse_writer(temporary[name], name) for name in SPARSE_LAYOUT}
        try:
            for bucket in range(-(-shard.size // bucket_features)):
                table = _bucket_rows(files, bucket, shard, bucket_features)
                if table is None:
                    continue
                maxima = _fold_bucket(table, shard, statistics)
                for name, rows_of in (("activations", table), ("maxima", maxima)):
                    if rows_of.num_rows:
                        writers[name].write_table(rows_of, row_group_size=row_group_rows)
                        rows[name] += rows_of.num_rows
        finally:
            for writer in writers.values():
                writer.close()
        stats = pa.Table.from_pandas(
            statistics.frame(shard), schema=FEATURE_STATS_SCHEMA, preserve_index=False
        )
        pq.write_table(stats, temporary["feature_stats"])
    rows["feature_stats"] = stats.num_rows
    return rows


def chunk_tokens(paths: Sequence[PathLike]) -> tuple[int, LogHistogramSpec]:
    """The tokens of every chunk's token record of ``paths``, added up, and their (common)
    histogram spec."""
    total, spec = 0, None
    for path in paths:
        if not os.path.isfile(path):
            raise InputError(f"chunk token record {path} does not exist")
        n_tokens, its_spec = read_tokens_table(pq.read_table(path), str(path))
        if spec is not None and its_spec != spec:
            raise InputError(f"{path}: histogram {its_spec} differs from the other chunks' {spec}")
        total, spec = total + n_tokens, its_spec
    assert spec is not None  # paths is not empty: checked by the caller
    return total, spec


def _fold_bucket(table: pa.Table, shard: Shard, statistics: FeatureStatistics) -> pa.Table:
    """Fold one bucket's rows, sorted by (feature, context, position), into ``statistics``;
    return the bucket's maxima (MAXIMA_SCHEMA) in (feature, context) order."""
    feature = table.column("feature").to_numpy() - np.int32(shard.start)  # (rows,) local
    context = table.column("context").to_numpy()
    position = table.column("position").to_numpy()
    value = table.column("activation").to_numpy()
    excluded = table.column("excluded").to_numpy()
    if excluded.any():
        counted = ~excluded
        excluded_feature = feature[excluded]
        feature, context = feature[counted], context[counted]
        position, value = position[counted], value[counted]
    else:
        excluded_feature = feature[:0]
    starts, max_value, max_position = context_maxima(
        feature, context, position, value, _POSITION_BOUND
    )
    maxima_feature = feature[starts]  # (n_maxima,) sorted
    statistics.add(
        n_tokens=0,
        feature=feature,
        value=value,
        excluded_feature=excluded_feature,
        maxima_feature=maxima_feature,
        max_value=max_value,
    )
    columns = {
        "feature": maxima_feature + np.int32(shard.start),
        "context": context[starts],
        "max_activation": max_value,
        "max_position": max_position,
    }
    return pa.Table.from_arrays(
        [pa.array(columns[name]) for name in MAXIMA_SCHEMA.names], schema=MAXIMA_SCHEMA
    )


_PARQUET_MAGIC, _ARROW_MAGIC = b"PAR1", b"ARROW1"


def _chunk_file(path: PathLike, shard: Shard, bucket_features: int) -> _ChunkFile | _ArrowChunkFile:
    """One chunk's sparse file, parquet or Arrow IPC (told by its first bytes)."""
    if not os.path.isfile(path):
        raise InputError(f"chunk cache file {path} does not exist")
    with open(path, "rb") as handle:
        magic = handle.read(len(_ARROW_MAGIC))
    if magic.startswith(_PARQUET_MAGIC):
        return _ChunkFile(path, shard, bucket_features)
    if magic == _ARROW_MAGIC:
        return _ArrowChunkFile(path, shard, bucket_features)
    raise InputError(f"chunk cache file {path} is neither parquet nor an Arrow IPC file")


class _ArrowChunkFile:
    """One chunk's Arrow IPC sparse file of the shard (``sparse_format="arrow"``), memory-mapped.

    Each record batch is a sequence of runs sorted by feature (one per writer batch, or several
    such batches that happen to continue each other's order), so in each run a bucket's rows
    are one range: a run starts wherever the feature decreases. ``bucket`` gathers a bucket's
    ranges of every run in file order, which is stream order, unsorted by feature.
    """

    def __init__(self, path: PathLike, shard: Shard, bucket_features: int) -> None:
        self.path = str(path)
        reader = pa.ipc.open_file(pa.memory_map(self.path))
        n_buckets = -(-shard.size // bucket_features)
        self.batches: list[pa.RecordBatch] = []
        self.bounds: list[np.ndarray] = []  # per record batch: (n_runs, n_buckets + 1) rows
        self.first_context: int | None = None
        self.last_context: int | None = None
        for index in range(reader.num_record_batches):
            batch = reader.get_batch(index)
            if batch.num_rows == 0:
                continue
            feature = batch.column("feature").to_numpy()  # (rows,) zero-copy
            low, high = int(feature.min()), int(feature.max())
            if low < shard.start or high >= shard.stop:
                raise InputError(f"{self.path}: features [{low}, {high}] outside {shard.name}")
            run = np.zeros(len(feature), np.int64)  # (rows,) run of each row
            run[1:] = np.cumsum(feature[1:] < feature[:-1])
            # (run, bucket) is non-decreasing over the rows: one searchsorted gives every bound
            key = run * n_buckets + (feature - shard.start) // bucket_features
            edges = np.arange(int(run[-1]) + 1)[:, None] * n_buckets + np.arange(n_buckets + 1)
            self.bounds.append(np.searchsorted(key, edges))
            self.batches.append(batch)
            context = batch.column("context").to_numpy()
            first, last = int(context.min()), int(context.max())
            self.first_context = (
                first if self.first_context is None else min(first, self.first_context)
            )
            self.last_context = last if self.last_context is None else max(last, self.last_context)

    def bucket(self, bucket: int) -> tuple[pa.Table, bool] | None:
        """The rows of one bucket in stream order, and False (not sorted by feature); None when
        the chunk has none."""
        pieces = []
        for batch, bounds in zip(self.batches, self.bounds, strict=True):
            begin, end = bounds[:, bucket], bounds[:, bucket + 1]  # (n_runs,) each
            lengths = end - begin
            total = int(lengths.sum())
            if total == 0:
                continue
            # the row indices of every range, one after another
            index = np.repeat(begin - (np.cumsum(lengths) - lengths), lengths) + np.arange(total)
            pieces.append(batch.take(pa.array(index)))
        return None if not pieces else (pa.Table.from_batches(pieces), False)


class _ChunkFile:
    """One chunk's parquet sparse file of the shard: its row groups by bucket, its context
    range."""

    def __init__(self, path: PathLike, shard: Shard, bucket_features: int) -> None:
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

    def bucket(self, bucket: int) -> tuple[pa.Table, bool] | None:
        """The rows of one bucket, in file order, and whether they are sorted by feature (one
        row group); None when the chunk has none."""
        groups = self.groups.get(bucket)
        if not groups:
            return None
        return self.parquet.read_row_groups(groups), len(groups) == 1


def _chunk_files(
    paths: Sequence[PathLike], shard: Shard, bucket_features: int
) -> list[_ChunkFile | _ArrowChunkFile]:
    """The chunks' non-zero files that hold rows, checked to follow each other in context
    order."""
    files = [_chunk_file(path, shard, bucket_features) for path in paths]
    filled = [file for file in files if file.first_context is not None]
    for before, after in zip(filled, filled[1:], strict=False):
        assert before.last_context is not None and after.first_context is not None
        if after.first_context <= before.last_context:
            raise InputError(
                f"chunk caches out of context order: {after.path} starts at context "
                f"{after.first_context}, not after {before.path}'s last context "
                f"{before.last_context}"
            )
    return filled


def _bucket_rows(
    files: Sequence[_ChunkFile | _ArrowChunkFile], bucket: int, shard: Shard, bucket_features: int
) -> pa.Table | None:
    """One bucket's rows of every chunk, sorted by (feature, context, position); None when no
    chunk has any."""
    parts = [part for file in files if (part := file.bucket(bucket)) is not None]
    if not parts:
        return None
    table = pa.concat_tables([table for table, _ in parts]).cast(ACTIVATIONS_SCHEMA)
    if len(parts) > 1 or not parts[0][1]:  # not one piece sorted by feature
        local = table.column("feature").to_numpy() - (shard.start + bucket * bucket_features)
        key_dtype = np.uint8 if bucket_features <= 256 else np.int32  # (rows,) bucket-local
        order = np.argsort(local.astype(key_dtype), kind="stable")
        table = table.take(pa.array(order))
    return table
