"""Rule cache_{model}: the sparse activation cache of one layer, both splits, every shard."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from circuit_insights.models.loading import load_subject_model
from circuit_insights.pipeline.locations import model_location, transcoder_locations
from circuit_insights.transcoders.loading import (
    load_layer_transcoder,
)

log = logging.getLogger(__name__)


def run_cache(
    *,
    model_config: Mapping[str, Any],
    cache_config: Mapping[str, Any],
    tokens_path: str,
    layer: int,
    model_files: Sequence[str] | str,
    transcoder_files: Sequence[str],
    outputs: Mapping[str, Sequence[str]],
    model_name: str,
) -> None:
    """Rule cache: the caching split and the held-out split, every shard of one layer.

    ``outputs`` maps each artifact kind (``activations``, ``heldout_maxima``, ...) to its files.
    """
    from circuit_insights.data.cache_split import (
        CACHE_SPLITS,
        cache_paths_from_outputs,
        cache_split,
    )
    from circuit_insights.data.corpus import load_contexts

    model = load_subject_model(model_config, model_location(model_config, model_files), model_name)
    transcoder_path = transcoder_locations(model_config, {layer: transcoder_files})[layer]
    model.check_layer(layer)
    transcoder = load_layer_transcoder(model_config, model, layer, transcoder_path, model_name)
    for split, prefix in CACHE_SPLITS.items():
        context_ids, tokens = load_contexts(tokens_path, split)
        out_paths = cache_paths_from_outputs(outputs, prefix)
        cache_split(
            model,
            transcoder,
            layer,
            context_ids,
            tokens,
            sorted(out_paths),
            out_paths,
            batch_size=cache_config["batch_size"],
            exclude_bos=cache_config["exclude_bos"],
            label=split,
        )
