"""The streaming loop of rule cache: contexts of one corpus split through the model once, every
requested layer's transcoder input read on the way (the forward stops after the deepest), each
layer encoded by its transcoder into its own :class:`ActivationCacheWriter`."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from circuit_insights.core.errors import InputError
from circuit_insights.data.cache import ActivationCacheWriter
from circuit_insights.data.shards import Shard

if TYPE_CHECKING:
    from circuit_insights.models.subject import SubjectModel
    from circuit_insights.transcoders.base import Transcoder
log = logging.getLogger(__name__)


CACHE_SPLITS = {"cache": "", "eval": "heldout_"}
"""Corpus split -> prefix of its artifact kinds (activations, maxima, feature_stats)."""

MAX_BUFFERED_ROWS = 8_000_000
"""Rows the writers of one loop hold in memory together (about 17 bytes each), split evenly
over the layers."""

ShardPaths = Mapping[Shard, Mapping[str, "str | os.PathLike[str]"]]
"""Per shard, each of :data:`ARTIFACTS` -> its file."""


def cache_layers(
    model: SubjectModel,
    transcoders: Mapping[int, Transcoder],
    context_ids: np.ndarray,
    tokens: np.ndarray,
    out_paths: Mapping[int, ShardPaths],
    *,
    batch_size: int,
    exclude_bos: bool,
    statistics: str = "final",
    sparse_format: str = "parquet",
    label: str = "cache",
) -> dict[str, float]:
    """Stream ``tokens`` through the model once and cache every layer of ``transcoders``.

    ``context_ids``: (n,) increasing global ids of the (n, context_length) ``tokens`` (n may be
    0: every file is still written, empty). ``out_paths[layer][shard]``: the files of each
    layer's shards (shards must lie inside the layer's transcoder). Each batch is one forward
    pass that reads every layer's transcoder input and stops after the deepest layer; each layer
    is encoded over its shards' feature range only. ``statistics``: ``final`` or ``deferred``;
    ``sparse_format``: ``parquet`` or ``arrow`` (:class:`ActivationCacheWriter`). Returns tokens
    and seconds.
    """
    from circuit_insights.models.loading import iter_context_batches

    if set(out_paths) != set(transcoders) or not transcoders:
        raise InputError(
            f"layers of out_paths {sorted(out_paths)} and of transcoders {sorted(transcoders)} "
            "must be the same, and not none"
        )
    layers = sorted(transcoders)
    for layer in layers:
        model.check_layer(layer)
    excluded = {0} if exclude_bos and model.bos_token_id is not None else set()
    ranges = {
        layer: (min(s.start for s in out_paths[layer]), max(s.stop for s in out_paths[layer]))
        for layer in layers
    }
    requests = {layer: [transcoders[layer].input_hook] for layer in layers}
    # Each (layer, shard) keeps its sparse files (at most two) open while the loop runs.
    allow_open_files(2 * sum(len(out_paths[layer]) for layer in layers) + 64)
    n_tokens, started, last_report = 0, time.perf_counter(), time.perf_counter()
    with contextlib.ExitStack() as stack:
        writers = {
            layer: stack.enter_context(
                ActivationCacheWriter(
                    sorted(out_paths[layer]),
                    out_paths[layer],
                    exclude_positions=frozenset(excluded),
                    feature_offset=ranges[layer][0],
                    max_buffered_rows=max(1, MAX_BUFFERED_ROWS // len(layers)),
                    statistics=statistics,
                    sparse_format=sparse_format,
                )
            )
            for layer in layers
        }
        for batch_ids, ids in iter_context_batches(tokens, context_ids, batch_size):
            values = model.hook_values(ids, requests)  # one forward, stopped after the deepest
            contexts = torch.from_numpy(batch_ids.astype(np.int64))
            for layer in layers:
                x = values.pop((layer, transcoders[layer].input_hook))  # (batch, pos, d_model)
                start, stop = ranges[layer]
                with torch.no_grad():
                    activations = transcoders[layer].encode_slice(x, start, stop)
                writers[layer].add_batch(contexts, activations)  # (batch, pos, stop - start)
            n_tokens += ids.numel()
            if time.perf_counter() - last_report > 30:
                last_report = time.perf_counter()
                rate = n_tokens / (last_report - started)
                log.info(
                    "%s layers %s: %d / %d tokens, %.0f tok/s, about %.0f s left",
                    label,
                    layers,
                    n_tokens,
                    tokens.size,
                    rate,
                    (tokens.size - n_tokens) / rate,
                )
    seconds = time.perf_counter() - started
    log.info(
        "%s layers %s: %d tokens in %.1f s (%.0f tok/s)",
        label,
        layers,
        n_tokens,
        seconds,
        n_tokens / seconds if seconds > 0 else 0.0,
    )
    return {"tokens": n_tokens, "seconds": seconds}


def allow_open_files(needed: int) -> None:
    """Raise this process's soft limit of open files to ``needed`` where it is lower (up to the
    hard limit); an InputError when the hard limit is lower still."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise InputError(
            f"caching every layer at once keeps {needed} files open, above this machine's hard "
            f"limit of {hard} open files (ulimit -Hn): raise it, or cache.shard_size (fewer "
            "shards per layer)"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    log.info("open-file limit raised from %d to %d", soft, needed)


def cache_split(
    model: SubjectModel,
    transcoder: Transcoder,
    layer: int,
    context_ids: np.ndarray,
    tokens: np.ndarray,
    shards: Sequence[Shard],
    out_paths: ShardPaths,
    *,
    batch_size: int,
    exclude_bos: bool,
    label: str = "cache",
) -> dict[str, float]:
    """One layer's cache of ``shards`` over one split's contexts (:func:`cache_layers`)."""
    return cache_layers(
        model,
        {layer: transcoder},
        context_ids,
        tokens,
        {layer: {shard: out_paths[shard] for shard in shards}},
        batch_size=batch_size,
        exclude_bos=exclude_bos,
        label=label,
    )
