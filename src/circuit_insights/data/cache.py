"""Streaming, sharded, sparse activation cache for one (model, layer).

The model side hands :class:`ActivationCacheWriter` one batch of feature activations at a time;
per feature shard the writer streams three parquet artifacts (schemas in
:mod:`circuit_insights.data.schemas`):

- ``activations``: every non-zero activation (context, position, feature, activation, excluded),
  in row groups that each hold one *feature bucket* (``bucket_features`` consecutive features)
  sorted by (feature, context, position), so :func:`read_feature_activations` reads only the row
  groups of the requested features' buckets;
- ``maxima``: per (feature, context) where the feature fires at a non-excluded position, the
  maximum activation and its position; written the same way;
- ``feature_stats``: one row per feature of the shard (dead ones included) with counts, mean,
  max and quantiles of the active values, from a fixed log-spaced histogram per feature
  (:class:`~circuit_insights.data.cache_stats.LogHistogramSpec`), so memory does not grow with
  the corpus.

``statistics="deferred"`` is the writer of one corpus chunk (rule cache): it writes only the
non-zeros (``activations``) and the chunk's token count (``tokens``, :data:`CHUNK_ARTIFACTS`),
neither maxima nor statistics; the merge of the chunks derives both from the merged non-zeros
(:mod:`circuit_insights.data.cache_merge`), off the job that holds the model.
``sparse_format="arrow"`` writes the non-zeros of a corpus chunk, which only the merge reads, as
uncompressed Arrow IPC files instead (:data:`SPARSE_FORMATS`): the same rows, one record batch
per flush, in stream order (each batch's rows sorted by feature, the batches one after another)
and not sorted by feature across batches. Writing them is little more than a copy; the merge
sorts each bucket once over all chunks anyway and encodes the parquet shard files that every
reader reads, so the rows are encoded and sorted once.

Memory: rows wait in one buffer per (shard, sparse artifact) of at most
``max_buffered_rows / (n_sparse_artifacts * n_shards)`` rows (plus one batch); when a buffer is
full, every bucket holding at least ``1 / (2 * n_buckets)`` of it is written as a row group,
which frees at least half of it; with ``background_writes`` (the default) the row groups of one
flush are encoded and written on a background thread while the next batches are processed.
Statistics take ``n_features * (n_histogram_bins + 40) * 8`` bytes (none when deferred). Nothing
else is kept: a context arrives whole in one batch, so its maxima are final when the batch is
done.

Conventions: an activation "fires" when it is non-zero (activations must be non-negative, as the
outputs of ReLU, JumpReLU and TopK transcoders are). Excluded positions (BOS and other attention
sinks; ``exclude_positions`` for every context, plus the per-token ``excluded`` mask of a batch)
are stored in ``activations`` with ``excluded = True`` but count nowhere else: not in maxima,
not in statistics, not as tokens. Context ids must increase strictly over the whole stream."""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from circuit_insights.core.errors import InputError
from circuit_insights.core.io import atomic_path
from circuit_insights.data.cache_stats import (
    STATS_QUANTILES,
    FeatureStatistics,
    LogHistogramSpec,
    histogram_quantiles,
    tokens_table,
)
from circuit_insights.data.schemas import ACTIVATIONS_SCHEMA, FEATURE_STATS_SCHEMA, MAXIMA_SCHEMA
from circuit_insights.data.shards import Shard

__all__ = [  # the statistics' spec and quantiles, re-exported where the writer's users look
    "ARTIFACTS",
    "CHUNK_ARTIFACTS",
    "STATISTICS_KINDS",
    "STATS_QUANTILES",
    "ActivationCacheWriter",
    "LogHistogramSpec",
    "histogram_quantiles",
    "open_sparse_writer",
]
log = logging.getLogger(__name__)


#: The keys of ``out_paths[shard]``: one parquet artifact each.
ARTIFACTS: tuple[str, ...] = ("activations", "maxima", "feature_stats")

#: The keys of ``out_paths[shard]`` of a corpus chunk's writer (``statistics="deferred"``): its
#: non-zeros and its token record (CHUNK_TOKENS_SCHEMA), all the merge needs.
CHUNK_ARTIFACTS: tuple[str, ...] = ("activations", "tokens")

#: What the writer computes: the maxima and statistics (``final``: :data:`ARTIFACTS`) or
#: neither (``deferred``: :data:`CHUNK_ARTIFACTS`, for the merge of corpus chunks to derive).
STATISTICS_KINDS: tuple[str, ...] = ("final", "deferred")

#: How the sparse artifacts are written: ``parquet`` (the shard files every reader reads: one row
#: group per feature bucket, sorted by (feature, context, position)) or ``arrow`` (a corpus
#: chunk's files, which only the merge reads: Arrow IPC, uncompressed, one record batch per
#: flushed bucket, rows in stream order).
SPARSE_FORMATS: tuple[str, ...] = ("parquet", "arrow")

#: Per sparse artifact: schema, dictionary-encoded columns, declared sort order.
SPARSE_LAYOUT: dict[str, tuple[pa.Schema, list[str], list[str]]] = {
    "activations": (
        ACTIVATIONS_SCHEMA,
        ["feature", "position"],
        ["feature", "context", "position"],
    ),
    "maxima": (MAXIMA_SCHEMA, ["feature", "max_position"], ["feature", "context"]),
}

_MAX_INT32 = np.iinfo(np.int32).max


def open_sparse_writer(path: str | os.PathLike[str], artifact: str) -> pq.ParquetWriter:
    """A parquet writer of a sparse artifact (``activations`` or ``maxima``) at ``path``, with
    the layout's dictionary columns and declared sort order."""
    schema, dictionary, sorted_by = SPARSE_LAYOUT[artifact]
    return pq.ParquetWriter(
        path,
        schema,
        use_dictionary=dictionary,
        sorting_columns=[pq.SortingColumn(schema.get_field_index(name)) for name in sorted_by],
    )


class _SparseFile:
    """One open sparse artifact: a parquet writer (``parquet``) or an Arrow IPC file writer
    (``arrow``) at ``path``; :meth:`write` appends tables, :meth:`close` finishes the file."""

    def __init__(
        self, path: str | os.PathLike[str], artifact: str, sparse_format: str, row_group_rows: int
    ) -> None:
        self.row_group_rows = row_group_rows
        self.parquet: pq.ParquetWriter | None = None
        self.arrow: pa.ipc.RecordBatchFileWriter | None = None
        if sparse_format == "parquet":
            self.parquet = open_sparse_writer(path, artifact)
        else:
            self.arrow = pa.ipc.new_file(str(path), SPARSE_LAYOUT[artifact][0])

    def write(self, tables: list[pa.Table]) -> None:
        for table in tables:
            if self.parquet is not None:
                self.parquet.write_table(table, row_group_size=self.row_group_rows)
            elif self.arrow is not None:
                self.arrow.write_table(table, max_chunksize=self.row_group_rows)

    def close(self) -> None:
        if self.parquet is not None:
            self.parquet.close()
        if self.arrow is not None:
            self.arrow.close()


class _BackgroundWrites:
    """Tables written in order, on one background thread (``background``) or inline.

    Arrow encodes and writes without the GIL, so in the background the next batches are found,
    sorted and counted while a flush is written. At most one flush is in flight: the next one
    waits for it (and raises its error, if any) before it is queued.
    """

    def __init__(self, background: bool) -> None:
        self.executor = (
            ThreadPoolExecutor(1, thread_name_prefix="activation-cache-writes")
            if background
            else None
        )
        self.pending: Future[None] | None = None

    def write(self, file: _SparseFile, tables: list[pa.Table]) -> None:
        if self.executor is None:
            file.write(tables)
            return
        self.wait()
        self.pending = self.executor.submit(file.write, tables)

    def wait(self) -> None:
        """Wait for the flush in flight; raise its error."""
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.result()

    def shutdown(self) -> None:
        """Stop the thread after the write in progress (its error is dropped)."""
        self.pending = None
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)


class _FeatureBucketBuffer:
    """Rows of one artifact of one shard, written as one row group per feature bucket.

    Rows arrive in chunks sorted by (feature, context, position) with contexts increasing over
    the stream. Each chunk is kept with the bounds of its buckets; a bucket's row group is the
    concatenation of its slices of every chunk, in stream order, stably sorted by feature: so a
    feature's rows over the row groups of its bucket, in file order, are in (context, position)
    order too. Sorting one bucket at a time keeps the sort and its gathers in cache. Rows of
    buckets not yet written are compacted into one chunk ordered by bucket, stream order within
    a bucket.
    """

    def __init__(
        self,
        file: _SparseFile,
        writes: _BackgroundWrites,
        schema: pa.Schema,
        shard: Shard,
        bucket_features: int,
        max_rows: int,
    ) -> None:
        self.file = file
        self.writes = writes
        self.schema = schema
        self.shard = shard
        self.bucket_features = bucket_features
        self.n_buckets = math.ceil(shard.size / bucket_features)
        self.max_rows = max_rows
        # First feature of each bucket, and one past the shard: searchsorted gives the bounds.
        self.edges = np.minimum(
            shard.start + np.arange(self.n_buckets + 1) * bucket_features, shard.stop
        ).astype(np.int32)
        self.chunks: list[dict[str, np.ndarray]] = []
        self.bounds: list[np.ndarray] = []  # per chunk: (n_buckets + 1,) row bounds of buckets
        self.sizes = np.zeros(self.n_buckets, np.int64)  # buffered rows per bucket
        self.n_rows = 0

    def add(self, chunk: dict[str, np.ndarray]) -> None:
        """Buffer ``chunk`` (columns of equal length, sorted by feature); flush when full."""
        n = len(chunk["feature"])
        if n == 0:
            return
        bounds = np.searchsorted(chunk["feature"], self.edges)  # (n_buckets + 1,)
        self.chunks.append(chunk)
        self.bounds.append(bounds)
        self.sizes += np.diff(bounds)
        self.n_rows += n
        if self.n_rows > self.max_rows:
            self.flush(everything=False)

    def flush(self, *, everything: bool) -> None:
        """Write the large buckets (``everything=False``) or all buckets as row groups."""
        if self.n_rows == 0:
            return
        if everything:
            flushed = self.sizes > 0
        else:
            flushed = self.sizes >= max(1, self.n_rows // (2 * self.n_buckets))
        names = self.schema.names
        tables = []
        for index in np.flatnonzero(flushed):
            columns = self._bucket_rows(int(index))
            if len(columns["feature"]) > 1:
                local = columns["feature"] - self.edges[index]  # (rows,) in [0, bucket_features)
                if self.bucket_features <= 256:  # numpy's stable sort is a radix sort for
                    local = local.astype(np.uint8)  # 8- and 16-bit keys: one pass for 8 bits
                elif self.bucket_features <= np.iinfo(np.int16).max:
                    local = local.astype(np.int16)
                order = np.argsort(local, kind="stable")
                columns = {name: values[order] for name, values in columns.items()}
            arrays = [pa.array(columns[name]) for name in names]
            tables.append(pa.Table.from_arrays(arrays, schema=self.schema))
        self.writes.write(self.file, tables)
        kept = np.flatnonzero(~flushed & (self.sizes > 0))
        self.n_rows = int(self.sizes[kept].sum())
        if self.n_rows == 0:
            self.chunks, self.bounds = [], []
            self.sizes[:] = 0
            return
        parts = [self._bucket_rows(int(index)) for index in kept]
        remaining = {name: np.concatenate([part[name] for part in parts]) for name in names}
        bounds = np.zeros(self.n_buckets + 1, np.int64)
        self.sizes[flushed] = 0
        bounds[1:] = np.cumsum(self.sizes)
        self.chunks, self.bounds = [remaining], [bounds]

    def _bucket_rows(self, index: int) -> dict[str, np.ndarray]:
        """Buffered rows of bucket ``index`` in stream order (chunk by chunk)."""
        slices = [
            (chunk, bounds[index], bounds[index + 1])
            for chunk, bounds in zip(self.chunks, self.bounds, strict=True)
            if bounds[index + 1] > bounds[index]
        ]
        if len(slices) == 1:
            chunk, begin, end = slices[0]
            return {name: chunk[name][begin:end] for name in self.schema.names}
        return {
            name: np.concatenate([chunk[name][begin:end] for chunk, begin, end in slices])
            for name in self.schema.names
        }


class _StreamBuffer:
    """Rows of one artifact of one shard for an ``arrow`` chunk file: written in stream order,
    one record batch per flush, with no bucketing and no sort.

    Each chunk of rows (one batch's rows of the shard) is sorted by (feature, context,
    position) and the chunks' contexts increase, so a record batch is a sequence of runs
    sorted by feature, each starting where the feature decreases or ties with a later context:
    the merge (:mod:`circuit_insights.data.cache_merge`) finds a bucket's rows in each run and
    sorts them once over all chunks.
    """

    def __init__(
        self, file: _SparseFile, writes: _BackgroundWrites, schema: pa.Schema, max_rows: int
    ) -> None:
        self.file = file
        self.writes = writes
        self.schema = schema
        self.max_rows = max_rows
        self.chunks: list[dict[str, np.ndarray]] = []
        self.n_rows = 0

    def add(self, chunk: dict[str, np.ndarray]) -> None:
        """Buffer ``chunk`` (columns of equal length, sorted by feature); flush when full."""
        n = len(chunk["feature"])
        if n == 0:
            return
        self.chunks.append(chunk)
        self.n_rows += n
        if self.n_rows > self.max_rows:
            self.flush(everything=True)

    def flush(self, *, everything: bool) -> None:
        """Write every buffered row as one record batch (``everything`` is always the case)."""
        if self.n_rows == 0:
            return
        arrays = [
            pa.array(np.concatenate([chunk[name] for chunk in self.chunks]))
            for name in self.schema.names
        ]
        self.writes.write(self.file, [pa.Table.from_arrays(arrays, schema=self.schema)])
        self.chunks, self.n_rows = [], 0


@dataclass
class _SparseBatch:
    """Non-zero activations of one batch over the covered feature range, sorted by feature.

    ``feature`` is local to the covered range; ``batch_index`` indexes the batch's contexts.
    """

    feature: np.ndarray  # (nnz,) int32 (int64 past 2**31 elements)
    batch_index: np.ndarray  # (nnz,) int32 (int64 past 2**31 elements)
    position: np.ndarray  # (nnz,) int32
    activation: np.ndarray  # (nnz,) float32
    excluded: np.ndarray  # (nnz,) bool


class ActivationCacheWriter:
    """Write the sparse activation cache of one (model, layer), per feature shard.

    Use as a context manager: leaving the block normally calls :meth:`close` (the artifacts
    appear, each by an atomic rename); leaving it with an exception calls :meth:`abort` (only
    temporary ``.*.partial`` files ever existed, and they are removed).

    ``shards``: disjoint feature shards to write; ``out_paths[shard]`` maps each of
    :data:`ARTIFACTS` to its path. ``activations[..., j]`` of a batch is feature
    ``feature_offset + j``: pass the full width with ``feature_offset=0`` or a slice starting at
    its first feature. ``exclude_positions``: positions excluded in every context (BOS by
    default; ``frozenset()`` for a model without BOS). ``bucket_features``: consecutive features
    per bucket; every row group of the activations and maxima files holds one bucket.
    ``max_buffered_rows``: rows held in memory over all shards and both sparse artifacts
    together (about 17 bytes each), plus one batch, plus the rows of one flush being written.
    ``row_group_rows``: the largest row group. ``background_writes``: encode and write the row
    groups on one background thread (the same bytes, in the same order), so that the next batches
    are processed meanwhile; False writes inline. ``statistics``: one of :data:`STATISTICS_KINDS`
    (``deferred``: only ``activations`` and ``tokens`` per shard, for
    :func:`~circuit_insights.data.cache_merge.merge_shard`). ``sparse_format``: how the sparse
    artifacts are written, one of :data:`SPARSE_FORMATS` (``arrow`` for a corpus chunk's files).
    """

    def __init__(
        self,
        shards: Sequence[Shard],
        out_paths: Mapping[Shard, Mapping[str, str | os.PathLike[str]]],
        *,
        exclude_positions: Iterable[int] = frozenset({0}),
        feature_offset: int = 0,
        histogram: LogHistogramSpec | None = None,
        bucket_features: int = 32,
        max_buffered_rows: int = 8_000_000,
        row_group_rows: int = 1_000_000,
        background_writes: bool = True,
        statistics: str = "final",
        sparse_format: str = "parquet",
    ) -> None:
        self.shards = sorted(shards)
        if not self.shards:
            raise InputError("ActivationCacheWriter: no shards given")
        for left, right in zip(self.shards, self.shards[1:], strict=False):
            if right.start < left.stop:
                raise InputError(f"shards {left.name} and {right.name} overlap")
        if statistics not in STATISTICS_KINDS:
            raise InputError(f"statistics must be one of {STATISTICS_KINDS}, got {statistics!r}")
        artifacts = ARTIFACTS if statistics == "final" else CHUNK_ARTIFACTS
        for shard in self.shards:
            missing = set(artifacts) - set(out_paths.get(shard, {}))
            if missing:
                raise InputError(f"out_paths[{shard.name}] lacks {sorted(missing)}")
        self.exclude_positions = frozenset(int(p) for p in exclude_positions)
        if any(p < 0 for p in self.exclude_positions):
            raise InputError(
                f"exclude_positions must be >= 0, got {sorted(self.exclude_positions)}"
            )
        if feature_offset < 0 or feature_offset > self.shards[0].start:
            raise InputError(
                f"feature_offset {feature_offset} must lie in [0, {self.shards[0].start}] "
                f"(the first shard is {self.shards[0].name})"
            )
        if bucket_features <= 0 or max_buffered_rows <= 0 or row_group_rows <= 0:
            raise InputError(
                "bucket_features, max_buffered_rows and row_group_rows must be positive, got "
                f"{bucket_features}, {max_buffered_rows}, {row_group_rows}"
            )
        if sparse_format not in SPARSE_FORMATS:
            raise InputError(
                f"sparse_format must be one of {SPARSE_FORMATS}, got {sparse_format!r}"
            )
        self.feature_offset = feature_offset
        self.start = self.shards[0].start  # first covered feature
        self.stop = self.shards[-1].stop  # one past the last covered feature
        # Streaming statistics over the covered range [start, stop), non-excluded positions;
        # none when deferred (only the tokens are counted).
        self.histogram = histogram if histogram is not None else LogHistogramSpec()
        self.statistics = (
            FeatureStatistics(self.start, self.stop, self.histogram)
            if statistics == "final"
            else None
        )
        self.deferred_tokens = 0
        self.last_context = -1
        self.closed = False

        record = "feature_stats" if statistics == "final" else "tokens"
        sparse_artifacts = [name for name in SPARSE_LAYOUT if name in artifacts]
        self.buffers: dict[tuple[Shard, str], _FeatureBucketBuffer | _StreamBuffer] = {}
        self.sparse_files: list[_SparseFile] = []
        self.temporary_stats: dict[Shard, Path] = {}
        rows_per_buffer = max(1, max_buffered_rows // (len(sparse_artifacts) * len(self.shards)))
        self.exit_stack = contextlib.ExitStack()
        self.writes = _BackgroundWrites(background_writes)
        try:
            for shard in self.shards:
                for artifact in sparse_artifacts:
                    schema = SPARSE_LAYOUT[artifact][0]
                    temporary = self.exit_stack.enter_context(
                        atomic_path(out_paths[shard][artifact])
                    )
                    file = _SparseFile(temporary, artifact, sparse_format, row_group_rows)
                    self.sparse_files.append(file)
                    self.buffers[shard, artifact] = (
                        _FeatureBucketBuffer(
                            file, self.writes, schema, shard, bucket_features, rows_per_buffer
                        )
                        if sparse_format == "parquet"
                        else _StreamBuffer(file, self.writes, schema, rows_per_buffer)
                    )
                self.temporary_stats[shard] = self.exit_stack.enter_context(
                    atomic_path(out_paths[shard][record])
                )
        except BaseException as error:
            self._discard(error)
            raise

    # --- public API ------------------------------------------------------------------------

    @property
    def buffered_rows(self) -> int:
        """Rows waiting in memory, over all shards and artifacts."""
        return sum(buffer.n_rows for buffer in self.buffers.values())

    def add_batch(
        self,
        context_ids: torch.Tensor | Sequence[int],
        activations: torch.Tensor,
        excluded: torch.Tensor | None = None,
    ) -> None:
        """Add whole contexts.

        ``context_ids``: (batch,) ints, strictly increasing and above every earlier id.
        ``activations``: (batch, pos, n_columns), column j being feature ``feature_offset + j``,
        on any device and float dtype. ``excluded``: optional (batch, pos) bool, True at
        positions to exclude (in addition to ``exclude_positions``).
        """
        if self.closed:
            raise InputError("ActivationCacheWriter.add_batch called after close")
        contexts = self._check_contexts(context_ids)
        if activations.dim() != 3 or activations.shape[0] != len(contexts):
            raise InputError(
                f"activations must be (batch={len(contexts)}, pos, n_features), "
                f"got {tuple(activations.shape)}"
            )
        n_positions = activations.shape[1]
        first, last = self.start - self.feature_offset, self.stop - self.feature_offset
        if activations.shape[2] < last:
            raise InputError(
                f"activations have {activations.shape[2]} feature columns from feature "
                f"{self.feature_offset}; shard {self.shards[-1].name} needs {last}"
            )
        excluded_mask = self._excluded_mask(excluded, len(contexts), n_positions, activations)
        sparse = _sparse_by_feature(activations[..., first:last], excluded_mask)
        _check_values(sparse.activation)
        n_tokens = int((~excluded_mask).sum().item())
        global_context = contexts.astype(np.int32)
        start = np.int32(self.start)
        activation_rows = {
            "feature": sparse.feature + start if start else sparse.feature,
            "context": global_context[sparse.batch_index],
            "position": sparse.position,
            "activation": sparse.activation,
            "excluded": sparse.excluded,
        }
        if self.statistics is None:  # deferred: the merge derives maxima and statistics
            self.last_context = int(contexts[-1])
            self.deferred_tokens += n_tokens
            self._buffer("activations", activation_rows)
            return

        if sparse.excluded.any():
            counted = ~sparse.excluded
            feature = sparse.feature[counted]
            batch_index = sparse.batch_index[counted]
            position = sparse.position[counted]
            value = sparse.activation[counted]
            excluded_feature = sparse.feature[sparse.excluded]
        else:  # nothing excluded: the counted rows are all rows, no copies
            feature, batch_index = sparse.feature, sparse.batch_index
            position, value = sparse.position, sparse.activation
            excluded_feature = sparse.feature[:0]
        maxima_index, max_value, max_position = context_maxima(
            feature, batch_index, position, value, n_positions
        )

        # Everything below mutates state; nothing below raises on bad input.
        self.last_context = int(contexts[-1])
        maxima_feature = feature[maxima_index]  # (n_maxima,) sorted
        self.statistics.add(
            n_tokens=n_tokens,
            feature=feature,
            value=value,
            excluded_feature=excluded_feature,
            maxima_feature=maxima_feature,
            max_value=max_value,
        )
        maxima_rows = {
            "feature": maxima_feature + start if start else maxima_feature,
            "context": global_context[batch_index[maxima_index]],
            "max_activation": max_value,
            "max_position": max_position,
        }
        self._buffer("activations", activation_rows)
        self._buffer("maxima", maxima_rows)

    def close(self) -> None:
        """Write what is buffered and the statistics, then move every artifact into place."""
        if self.closed:
            return
        try:
            for buffer in self.buffers.values():
                buffer.flush(everything=True)
            self.writes.wait()
            self.writes.shutdown()
            for file in self.sparse_files:
                file.close()
            for shard in self.shards:
                if self.statistics is None:
                    table = tokens_table(self.deferred_tokens, self.histogram)
                else:
                    table = pa.Table.from_pandas(
                        self.statistics.frame(shard),
                        schema=FEATURE_STATS_SCHEMA,
                        preserve_index=False,
                    )
                pq.write_table(table, self.temporary_stats[shard])
        except BaseException as error:
            self._discard(error)
            raise
        self.closed = True
        self.exit_stack.close()  # fsync and rename each artifact

    def abort(self) -> None:
        """Drop everything: no artifact appears and the temporary files are removed."""
        if not self.closed:
            self._discard(RuntimeError("ActivationCacheWriter aborted"))

    def __enter__(self) -> ActivationCacheWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
        elif not self.closed:
            self._discard(exc)

    @property
    def n_tokens_total(self) -> int:
        """Non-excluded tokens seen so far."""
        if self.statistics is None:
            return self.deferred_tokens
        return self.statistics.n_tokens_total

    def feature_statistics(self) -> pd.DataFrame:
        """The statistics so far, one row per covered feature (columns of FEATURE_STATS_SCHEMA)."""
        if self.statistics is None:
            raise InputError("a writer with statistics='deferred' computes no statistics")
        return self.statistics.frame()

    # --- internals -------------------------------------------------------------------------

    def _buffer(self, artifact: str, rows: dict[str, np.ndarray]) -> None:
        """Hand ``rows`` (sorted by feature, covering every shard) to each shard's buffer."""
        if len(self.shards) == 1:
            self.buffers[self.shards[0], artifact].add(rows)
            return
        bounds = np.searchsorted(rows["feature"], [[s.start, s.stop] for s in self.shards])
        for shard, (begin, end) in zip(self.shards, bounds, strict=True):
            if end > begin:
                chunk = {name: values[begin:end] for name, values in rows.items()}
                self.buffers[shard, artifact].add(chunk)

    def _discard(self, error: BaseException) -> None:
        self.closed = True
        self.writes.shutdown()
        for file in self.sparse_files:
            with contextlib.suppress(Exception):
                file.close()
        self.buffers.clear()
        # Each atomic_path removes its temporary file when it sees the exception.
        self.exit_stack.__exit__(type(error), error, error.__traceback__)

    def _check_contexts(self, context_ids: torch.Tensor | Sequence[int]) -> np.ndarray:
        if isinstance(context_ids, torch.Tensor):
            contexts = context_ids.detach().to("cpu").numpy().astype(np.int64)
        else:
            contexts = np.asarray(context_ids, dtype=np.int64)
        if contexts.ndim != 1 or len(contexts) == 0:
            raise InputError(
                f"context_ids must be a non-empty (batch,) vector, got {contexts.shape}"
            )
        if contexts[0] <= self.last_context or np.any(np.diff(contexts) <= 0):
            raise InputError(
                "context_ids must increase strictly over the whole stream; got "
                f"{contexts.tolist()[:8]}... after context {self.last_context}"
            )
        if contexts[-1] > _MAX_INT32:
            raise InputError(f"context id {contexts[-1]} does not fit in int32")
        return contexts

    def _excluded_mask(
        self, excluded: torch.Tensor | None, batch: int, n_positions: int, like: torch.Tensor
    ) -> torch.Tensor:
        """(batch, pos) bool on ``like``'s device: the given mask or-ed with exclude_positions."""
        beyond = [p for p in self.exclude_positions if p >= n_positions]
        if beyond:
            raise InputError(f"exclude_positions {beyond} beyond the context length {n_positions}")
        mask = torch.zeros((batch, n_positions), dtype=torch.bool, device=like.device)
        if self.exclude_positions:
            mask[:, sorted(self.exclude_positions)] = True
        if excluded is not None:
            if tuple(excluded.shape) != (batch, n_positions):
                raise InputError(
                    f"excluded must be (batch, pos) = {(batch, n_positions)}, "
                    f"got {tuple(excluded.shape)}"
                )
            mask |= excluded.to(device=like.device, dtype=torch.bool)
        return mask


def _sparse_by_feature(
    activations: torch.Tensor, excluded: torch.Tensor, *, on_device: bool | None = None
) -> _SparseBatch:
    """Non-zero entries of (batch, pos, n_features) ``activations``, sorted by feature.

    Within a feature, entries stay in (batch, position) order (stable sort). Finding the
    non-zeros runs in torch on the tensor's device (``on_device``; the default for CUDA tensors),
    where the non-zeros of the (feature, batch, position) view come out in that order, or in
    numpy (the default for CPU tensors, where ``np.flatnonzero`` and its gathers are faster),
    where numpy's stable sort (a radix sort for 16-bit keys) orders them by feature. Either way
    only the non-zeros are copied to the host.
    """
    if on_device is None:
        on_device = activations.device.type != "cpu"
    if on_device:
        # nonzero of the (feature, batch, position) view lists the entries in that lexicographic
        # order: already the stable sort by feature, done on the device, no sort on the host.
        index = torch.nonzero(activations.permute(2, 0, 1))  # (nnz, 3): feature, batch, position
        values = activations[index[:, 1], index[:, 2], index[:, 0]]  # (nnz,)
        row_excluded = excluded[index[:, 1], index[:, 2]]  # (nnz,)
        index_np = index.to(device="cpu", dtype=torch.int32).numpy().T  # (3, nnz) view
        return _SparseBatch(
            feature=np.ascontiguousarray(index_np[0]),
            batch_index=np.ascontiguousarray(index_np[1]),
            position=np.ascontiguousarray(index_np[2]),
            activation=values.detach().to(device="cpu", dtype=torch.float32).numpy(),
            excluded=row_excluded.to("cpu").numpy(),
        )
    else:
        dense = activations.detach()
        if dense.dtype not in (torch.float32, torch.float64, torch.float16):
            dense = dense.to(torch.float32)  # bfloat16 has no numpy dtype
        dense_np = dense.numpy()
        n_batch, n_positions, n_columns = dense_np.shape
        # ``!= 0`` then a flatnonzero of the bool mask: ~5x faster than flatnonzero of floats
        # (the same entries: NaN counts as non-zero, -0.0 as zero, either way).
        flat_index = np.flatnonzero(dense_np != 0)  # (nnz,) into the (batch, pos, n_columns) array
        if dense_np.size <= _MAX_INT32:  # int32: vectorised division by a scalar, half the bytes
            flat_index = flat_index.astype(np.int32)
        row, feature = _divmod(flat_index, n_columns)  # (nnz,) batch * n_positions + position
        # The values gathered in memory order (a forward sweep of the dense array), then
        # permuted in cache: ~3x faster than gathering them in feature order.
        if dense_np.flags.c_contiguous:
            value_np = dense_np.reshape(-1)[flat_index]
        else:  # a slice of the feature axis: index its (batch * pos, n_columns) view
            value_np = dense_np.reshape(n_batch * n_positions, n_columns)[row, feature]
        key = feature.astype(np.int16) if n_columns <= np.iinfo(np.int16).max else feature
        order = np.argsort(key, kind="stable")  # (nnz,) radix sort for 16-bit keys
        feature, row, value_np = key[order], row[order], value_np[order]
        batch_index, position = _divmod(row, n_positions)
        return _SparseBatch(
            feature=feature.astype(np.int32, copy=False),
            batch_index=batch_index.astype(np.int32, copy=False),
            position=position.astype(np.int32, copy=False),
            activation=value_np.astype(np.float32, copy=False),
            excluded=excluded.numpy().reshape(-1)[row],
        )


def _divmod(index: np.ndarray, divisor: int) -> tuple[np.ndarray, np.ndarray]:
    """``index // divisor`` and ``index % divisor`` of non-negative integers; a shift and a mask
    when ``divisor`` is a power of two (feature widths and context lengths usually are)."""
    if divisor & (divisor - 1) == 0:
        return index >> (divisor.bit_length() - 1), index & (divisor - 1)
    quotient = index // divisor
    return quotient, index - quotient * divisor


def _check_values(values: np.ndarray) -> None:
    if len(values) == 0:
        return
    if not np.all(np.isfinite(values)):
        raise InputError("activations contain NaN or infinite values")
    smallest = float(values.min())
    if smallest < 0:
        raise InputError(
            f"activations must be non-negative (ReLU, JumpReLU or TopK outputs); got {smallest}"
        )


def context_maxima(
    feature: np.ndarray,
    batch_index: np.ndarray,
    position: np.ndarray,
    value: np.ndarray,
    n_positions: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per (feature, context) segment of counted rows sorted by (feature, batch, position);
    ``batch_index`` may be any per-context id (the merge passes the context ids), and
    ``n_positions`` any bound above every position (at most ``2**32``).

    Returns the index of each segment's first row, its maximum value and the position of its
    first maximum (the earliest position on ties). One ``reduceat`` finds both: the bits of a
    non-negative float32 order as int32 do, so the maximum of ``bits << 32 | (n_positions - 1 -
    position)`` is the maximum value at its earliest position.
    """
    if len(feature) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int32)
    is_start = np.empty(len(feature), dtype=bool)
    is_start[0] = True
    np.not_equal(feature[1:], feature[:-1], out=is_start[1:])
    is_start[1:] |= batch_index[1:] != batch_index[:-1]
    starts = np.flatnonzero(is_start)  # (n_segments,)
    key = value.astype(np.float32, copy=False).view(np.int32).astype(np.int64) << 32
    key |= n_positions - 1 - position.astype(np.int64)
    best = np.maximum.reduceat(key, starts)  # (n_segments,)
    max_value = (best >> 32).astype(np.int32).view(np.float32)
    max_position = (n_positions - 1 - (best & 0xFFFFFFFF)).astype(np.int32)
    return starts, max_value, max_position
