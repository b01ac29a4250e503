"""WeightLens results on disk: a shard's file, one layer's shards read and gathered."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from circuit_insights.core.errors import InputError
from circuit_insights.core.io import write_parquet_atomic
from circuit_insights.data.schemas import WEIGHTLENS_SCHEMA


def write_weightlens(frame: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write :func:`~circuit_insights.weightlens.run.run_weightlens` output atomically with
    ``WEIGHTLENS_SCHEMA``."""
    write_parquet_atomic(frame[WEIGHTLENS_SCHEMA.names], path, schema=WEIGHTLENS_SCHEMA)


def read_weightlens(paths: Sequence[str | os.PathLike[str]]) -> pd.DataFrame:
    """The WeightLens results of one layer from its shard files, sorted by feature.

    This is what :func:`~circuit_insights.weightlens.run.run_weightlens` takes as
    ``upstream_results[layer]``; a missing file or one without the schema's columns is an
    :class:`InputError` naming it.
    """
    frames = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"WeightLens results file {path} does not exist")
        names = pq.read_schema(path).names
        missing = [name for name in WEIGHTLENS_SCHEMA.names if name not in names]
        if missing:
            raise InputError(f"WeightLens results file {path} lacks columns {missing[:5]}")
        frames.append(pd.read_parquet(path))
    if not frames:
        return pd.DataFrame({name: [] for name in WEIGHTLENS_SCHEMA.names})
    frame = pd.concat(frames, ignore_index=True)
    if frame["feature"].duplicated().any():
        raise InputError(f"WeightLens results files {list(map(str, paths))} repeat features")
    return frame.sort_values("feature", ignore_index=True)


def gather_weightlens(
    paths: Sequence[str | os.PathLike[str]], output: str | os.PathLike[str]
) -> int:
    """Write the WeightLens results of one layer's shard files as one table; returns its rows.

    Later layers read this table (their upstream layers' tokens and classes) instead of every
    shard file: one DAG edge per earlier layer instead of one per shard pair.
    """
    frame = read_weightlens(paths)
    write_weightlens(frame, output)
    return len(frame)
