"""The streaming loop of rule cache: one split of the corpus (cache or held-out) through the model
and the layer's transcoder, batch by batch, into an :class:`ActivationCacheWriter`."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from circuit_insights.data.cache import ARTIFACTS, ActivationCacheWriter
from circuit_insights.data.shards import Shard

if TYPE_CHECKING:
    from circuit_insights.models.subject import SubjectModel
    from circuit_insights.transcoders.base import Transcoder
log = logging.getLogger(__name__)


# --- the streaming loop of rule cache -----------------------------------------------------------

CACHE_SPLITS = {"cache": "", "eval": "heldout_"}
"""Corpus split -> prefix of its artifact kinds (activations, maxima, feature_stats)."""


def cache_paths_from_outputs(
    outputs: Mapping[str, Sequence[str]], prefix: str
) -> dict[Shard, dict[str, str]]:
    """Per-shard cache paths of one split from a job's named outputs (kind -> file list)."""
    from circuit_insights.data.shards import parse_shard

    by_shard: dict[Shard, dict[str, str]] = {}
    for artifact in ARTIFACTS:
        for path in outputs[prefix + artifact]:
            by_shard.setdefault(parse_shard(Path(path).stem), {})[artifact] = str(path)
    return by_shard


def cache_split(
    model: SubjectModel,
    transcoder: Transcoder,
    layer: int,
    context_ids: np.ndarray,
    tokens: np.ndarray,
    shards: Sequence[Shard],
    out_paths: Mapping[Shard, Mapping[str, str]],
    *,
    batch_size: int,
    exclude_bos: bool,
    label: str = "cache",
) -> dict[str, float]:
    """Stream one split's contexts through the model and the transcoder into the sparse cache."""
    from circuit_insights.models.loading import iter_context_batches

    excluded = {0} if exclude_bos and model.bos_token_id is not None else set()
    start, stop = min(s.start for s in shards), max(s.stop for s in shards)
    n_tokens, started, last_report = 0, time.perf_counter(), time.perf_counter()
    with ActivationCacheWriter(
        shards, out_paths, exclude_positions=frozenset(excluded), feature_offset=start
    ) as writer:
        for batch_ids, ids in iter_context_batches(tokens, context_ids, batch_size):
            x = model.hook_values(ids, {layer: [transcoder.input_hook]})[
                (layer, transcoder.input_hook)
            ]  # (batch, pos, d_model)
            with torch.no_grad():
                activations = transcoder.encode_slice(x, start, stop)  # (batch, pos, stop - start)
            writer.add_batch(torch.from_numpy(batch_ids.astype(np.int64)), activations)
            n_tokens += ids.numel()
            if time.perf_counter() - last_report > 30:
                last_report = time.perf_counter()
                rate = n_tokens / (last_report - started)
                remaining = (tokens.size - n_tokens) / rate
                log.info(
                    "%s layer %d: %d / %d tokens, %.0f tok/s, about %.0f s left",
                    label,
                    layer,
                    n_tokens,
                    tokens.size,
                    rate,
                    remaining,
                )
    seconds = time.perf_counter() - started
    log.info(
        "%s layer %d: %d tokens in %.1f s (%.0f tok/s)",
        label,
        layer,
        n_tokens,
        seconds,
        n_tokens / seconds,
    )
    return {"tokens": n_tokens, "seconds": seconds}
