"""Readers of the sparse activation cache: one feature's activations or maxima (only the row
groups of its bucket), and dense (context, position) arrays for tests and small shards."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from circuit_insights.core.errors import InputError
from circuit_insights.data.schemas import ACTIVATIONS_SCHEMA, MAXIMA_SCHEMA
from circuit_insights.data.shards import Shard

if TYPE_CHECKING:
    pass
log = logging.getLogger(__name__)


# --- readers -----------------------------------------------------------------------------------


def _read_by_feature(
    path: str | os.PathLike[str], schema: pa.Schema, features: Iterable[int] | None
) -> pd.DataFrame:
    """Rows of ``features`` (all when None), reading only row groups that may hold them."""
    parquet = pq.ParquetFile(path)
    if features is None:
        table = parquet.read()
    else:
        wanted = np.unique(np.fromiter(features, dtype=np.int64))
        feature_column = parquet.schema_arrow.get_field_index("feature")
        groups = []
        for group in range(parquet.metadata.num_row_groups):
            stats = parquet.metadata.row_group(group).column(feature_column).statistics
            if stats is None or not stats.has_min_max:
                groups.append(group)
                continue
            first = np.searchsorted(wanted, stats.min, side="left")
            if first < len(wanted) and wanted[first] <= stats.max:
                groups.append(group)
        table = parquet.read_row_groups(groups) if groups else schema.empty_table()
        table = table.filter(pc.is_in(table["feature"], pa.array(wanted, pa.int32())))
    frame = table.cast(schema).to_pandas()
    # Row groups of one bucket are in stream order: a stable sort by feature gives
    # (feature, context, position) order.
    return frame.sort_values("feature", kind="stable", ignore_index=True)


def read_feature_activations(
    path: str | os.PathLike[str], features: Iterable[int] | None = None
) -> pd.DataFrame:
    """Non-zero activations of ``features`` (all when None) from an ``activations`` file.

    Columns of ``ACTIVATIONS_SCHEMA``, sorted by (feature, context, position); reads only the
    row groups of the requested features' buckets.
    """
    return _read_by_feature(path, ACTIVATIONS_SCHEMA, features)


def read_maxima(
    path: str | os.PathLike[str], features: Iterable[int] | None = None
) -> pd.DataFrame:
    """Per (feature, context) maxima of ``features`` (all when None), sorted by (feature, context)."""
    return _read_by_feature(path, MAXIMA_SCHEMA, features)


def dense_from_sparse(
    activations: pd.DataFrame, context_ids: Sequence[int], n_positions: int, shard: Shard
) -> torch.Tensor:
    """Rebuild dense (len(context_ids), n_positions, shard.size) float32 activations.

    ``activations``: rows of an ``activations`` file (excluded positions included). Rows of
    other contexts are ignored; a feature outside ``shard`` or a position beyond
    ``n_positions`` is an error.
    """
    contexts = np.asarray(context_ids, dtype=np.int64)
    dense = torch.zeros((len(contexts), n_positions, shard.size), dtype=torch.float32)
    if len(activations) == 0 or len(contexts) == 0:
        return dense
    feature = activations["feature"].to_numpy(np.int64)
    position = activations["position"].to_numpy(np.int64)
    if feature.min() < shard.start or feature.max() >= shard.stop:
        raise InputError(f"activations hold features outside shard {shard.name}")
    if position.min() < 0 or position.max() >= n_positions:
        raise InputError(f"activations hold positions outside [0, {n_positions})")
    order = np.argsort(contexts, kind="stable")
    sorted_contexts = contexts[order]
    row_context = activations["context"].to_numpy(np.int64)
    slot = np.minimum(np.searchsorted(sorted_contexts, row_context), len(contexts) - 1)
    known = sorted_contexts[slot] == row_context
    context_index = torch.from_numpy(order[slot[known]])
    dense[
        context_index,
        torch.from_numpy(position[known]),
        torch.from_numpy(feature[known] - shard.start),
    ] = torch.from_numpy(activations["activation"].to_numpy(np.float32)[known])
    return dense
