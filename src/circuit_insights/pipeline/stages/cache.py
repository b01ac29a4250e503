"""Rule cache: the sparse activation cache of one corpus chunk, every configured layer, both
splits, every shard; one forward pass per batch (rule merge_cache joins the chunks)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from circuit_insights.data.shards import Shard
from circuit_insights.models.loading import load_subject_model
from circuit_insights.pipeline.locations import model_location, transcoder_locations
from circuit_insights.pipeline.paths import cache_chunk_file
from circuit_insights.transcoders.loading import load_layer_transcoder

log = logging.getLogger(__name__)


def chunk_shard_paths(chunk_dir: str, layer: int, prefix: str, shard: Shard) -> dict[str, str]:
    """A chunk's files of one (layer, split, shard), by writer artifact
    (``data.cache.CHUNK_ARTIFACTS``: the non-zeros and the token record; rule merge_cache
    derives the maxima and statistics). ``prefix``: the split's (``""``, ``heldout_``)."""
    return {
        "activations": cache_chunk_file(chunk_dir, layer, f"{prefix}activations", shard.name),
        "tokens": cache_chunk_file(chunk_dir, layer, f"{prefix}tokens", shard.name),
    }


def run_cache(
    *,
    model_config: Mapping[str, Any],
    cache_config: Mapping[str, Any],
    tokens_path: str,
    chunk_name: str,
    layers: Sequence[int],
    model_files: Sequence[str] | str,
    transcoder_files: Mapping[int, Sequence[str]],
    out_dir: str,
    model_name: str,
) -> None:
    """Rule cache: the contexts of chunk ``chunk_name`` (both splits), once through the model to
    the deepest of ``layers``, every layer encoded by its transcoder into ``out_dir``.

    ``out_dir`` gets, per layer, split and shard, the files of :func:`chunk_shard_paths`.
    """
    from circuit_insights.data.cache_chunks import parse_chunk
    from circuit_insights.data.cache_split import CACHE_SPLITS, cache_layers
    from circuit_insights.data.corpus import load_contexts
    from circuit_insights.data.shards import make_shards

    chunk = parse_chunk(chunk_name)
    shards = make_shards(model_config["transcoders"]["n_features"], cache_config["shard_size"])
    model = load_subject_model(model_config, model_location(model_config, model_files), model_name)
    for layer in layers:
        model.check_layer(layer)
    locations = transcoder_locations(
        model_config, {layer: transcoder_files[layer] for layer in layers}
    )
    transcoders = {
        layer: load_layer_transcoder(model_config, model, layer, locations[layer], model_name)
        for layer in layers
    }
    Path(out_dir).mkdir(parents=True, exist_ok=True)  # an empty chunk still leaves its folder
    for split, prefix in CACHE_SPLITS.items():
        context_ids, tokens = load_contexts(tokens_path, split)
        inside = chunk.select(context_ids)
        log.info(
            "chunk %s, split %s: %d of %d contexts, layers %s",
            chunk.name,
            split,
            int(inside.sum()),
            len(context_ids),
            sorted(layers),
        )
        cache_layers(
            model,
            transcoders,
            context_ids[inside],
            tokens[inside],
            {
                layer: {shard: chunk_shard_paths(out_dir, layer, prefix, shard) for shard in shards}
                for layer in layers
            },
            batch_size=cache_config["batch_size"],
            exclude_bos=cache_config["exclude_bos"],
            statistics="deferred",
            sparse_format="arrow",
            label=f"{split} {chunk.name}",
        )
