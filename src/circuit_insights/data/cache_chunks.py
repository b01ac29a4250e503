"""Corpus chunks of the cache: half-open ranges of context ids ``[start, stop)`` named by their range.

Rule cache runs one job per (model, chunk): the chunk's contexts of both splits, once through the
model, every configured layer cached. A chunk is named ``c{start:06d}-{stop:06d}`` (more digits
from a million contexts on); :data:`CHUNK_NAME_REGEX` matches the names and is the workflow's
``{chunk}`` wildcard. The chunks of a corpus are known before it is tokenised, from
``corpus.max_contexts`` and ``cache.chunk_contexts``: a corpus that holds fewer contexts leaves
its last chunks short or empty, and an empty chunk writes empty caches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from circuit_insights.core.errors import InputError

CHUNK_NAME_REGEX = r"c\d{6}\d*-\d{6}\d*"
"""A chunk's name: ``c``, its first context id and its end, each at least six digits."""

_CHUNK_PATTERN = re.compile(r"^c(\d{6}\d*)-(\d{6}\d*)$")


@dataclass(frozen=True, order=True)
class ContextChunk:
    """The contexts with ids in ``[start, stop)``, of both splits."""

    start: int
    stop: int

    @property
    def name(self) -> str:
        """The chunk's name, e.g. ``c000000-016384``."""
        return f"c{self.start:06d}-{self.stop:06d}"

    def select(self, context_ids: np.ndarray) -> np.ndarray:
        """Bool mask (n,) of the ``context_ids`` inside the chunk."""
        return (context_ids >= self.start) & (context_ids < self.stop)


def make_chunks(n_contexts: int, chunk_contexts: int) -> list[ContextChunk]:
    """Consecutive chunks of at most ``chunk_contexts`` of the context ids ``0..n_contexts-1``."""
    if n_contexts <= 0:
        raise InputError(f"n_contexts must be positive, got {n_contexts}")
    if chunk_contexts <= 0:
        raise InputError(f"cache.chunk_contexts must be positive, got {chunk_contexts}")
    return [
        ContextChunk(start, min(start + chunk_contexts, n_contexts))
        for start in range(0, n_contexts, chunk_contexts)
    ]


def parse_chunk(name: str) -> ContextChunk:
    """Inverse of :attr:`ContextChunk.name`."""
    match = _CHUNK_PATTERN.match(name)
    if match is None:
        raise InputError(f"chunk name {name!r} is not of the form c000000-016384")
    chunk = ContextChunk(int(match.group(1)), int(match.group(2)))
    if chunk.stop <= chunk.start:
        raise InputError(f"chunk {name!r} is empty")
    if chunk.name != name:
        raise InputError(f"chunk name {name!r} is not canonical (expected {chunk.name!r})")
    return chunk
