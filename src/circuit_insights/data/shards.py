"""Deterministic feature shards: half-open ranges ``[start, stop)`` named by their range.

A shard is named ``f{start:06d}-{stop:06d}``: six digits for every width below 1,000,000 (the
names of every existing run), more where a bound reaches a million (``f999936-1000448`` in a
1,048,576-feature transcoder). :data:`SHARD_NAME_REGEX` matches both; the workflow's ``{shard}``
wildcard uses it. :data:`MAX_SHARDS_PER_LAYER` bounds the shards of one layer (checked at start).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from circuit_insights.core.errors import InputError

SHARD_NAME_REGEX = r"f\d{6}\d*-\d{6}\d*"
"""A shard's file stem: ``f``, the first feature and the end, each at least six digits (spelled
without ``{6,}``, which Snakemake's wildcard syntax does not take)."""

_SHARD_PATTERN = re.compile(r"^f(\d{6}\d*)-(\d{6}\d*)$")
""":data:`SHARD_NAME_REGEX` with the two bounds as groups."""

MAX_SHARDS_PER_LAYER = 20_000
"""Most shards one layer may have (``ceil(n_features / cache.shard_size)``), refused at start
above it. Every stage after the cache runs one job per shard and layer, and Snakemake holds every
job of the run in memory while it builds the DAG: at 20,000 shards a layer already makes some
200,000 jobs (a 1,048,576-feature transcoder in the default shards of 512 makes 2,048)."""


@dataclass(frozen=True, order=True)
class Shard:
    """A contiguous range of transcoder features ``[start, stop)``."""

    start: int
    stop: int

    @property
    def name(self) -> str:
        """The shard's file stem, e.g. ``f000000-000512`` (``f999936-1000448`` past a million)."""
        return f"f{self.start:06d}-{self.stop:06d}"

    @property
    def size(self) -> int:
        return self.stop - self.start

    def __contains__(self, feature: object) -> bool:
        return isinstance(feature, int) and self.start <= feature < self.stop


def shard_count(n_features: int, shard_size: int) -> int:
    """Shards of ``n_features`` features in shards of ``shard_size``: ``ceil(n / size)``."""
    return -(-n_features // shard_size)


def make_shards(n_features: int, shard_size: int) -> list[Shard]:
    """Split ``n_features`` features into consecutive shards of at most ``shard_size``."""
    if n_features <= 0:
        raise InputError(f"n_features must be positive, got {n_features}")
    if shard_size <= 0:
        raise InputError(f"shard_size must be positive, got {shard_size}")
    return [
        Shard(start, min(start + shard_size, n_features))
        for start in range(0, n_features, shard_size)
    ]


def parse_shard(name: str) -> Shard:
    """Inverse of :attr:`Shard.name`."""
    match = _SHARD_PATTERN.match(name)
    if match is None:
        raise InputError(f"shard name {name!r} is not of the form f000000-000512")
    start, stop = int(match.group(1)), int(match.group(2))
    if stop <= start:
        raise InputError(f"shard {name!r} is empty")
    shard = Shard(start, stop)
    if shard.name != name:
        raise InputError(f"shard name {name!r} is not canonical (expected {shard.name!r})")
    return shard
