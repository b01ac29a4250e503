"""Deterministic feature shards: half-open ranges ``[start, stop)`` named by their range."""

from __future__ import annotations

import re
from dataclasses import dataclass

from circuit_insights.core.errors import InputError

_SHARD_PATTERN = re.compile(r"^f(\d{6})-(\d{6})$")


@dataclass(frozen=True, order=True)
class Shard:
    """A contiguous range of transcoder features ``[start, stop)``."""

    start: int
    stop: int

    @property
    def name(self) -> str:
        """The shard's file stem, e.g. ``f000000-000512``."""
        return f"f{self.start:06d}-{self.stop:06d}"

    @property
    def size(self) -> int:
        return self.stop - self.start

    def __contains__(self, feature: object) -> bool:
        return isinstance(feature, int) and self.start <= feature < self.stop


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
    return Shard(start, stop)
