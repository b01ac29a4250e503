"""Rule twera: the data-aware (TWERA) ranking of one shard's upstream connections."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from circuit_insights.models.loading import load_subject_model
from circuit_insights.pipeline.locations import model_location, transcoder_locations
from circuit_insights.transcoders.loading import load_transcoders

log = logging.getLogger(__name__)


def read_activations(paths: Sequence[str]) -> Any:
    """One layer's sparse cache activations from its shard files (``read_feature_activations``);
    a file that cannot be read is an ``InputError`` naming it."""
    import pandas as pd

    from circuit_insights.core.errors import InputError
    from circuit_insights.data.cache_readers import read_feature_activations

    if not paths:
        raise InputError("TWERA: no activation files given")
    frames = []
    for path in paths:
        try:
            frames.append(read_feature_activations(path))
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"cannot read cache activations {path}: {exc}") from exc
    return pd.concat(frames, ignore_index=True)


def run_twera_stage(
    *,
    model_config: Mapping[str, Any],
    twera_config: Mapping[str, Any],
    projection: str,
    model_files: Sequence[str] | str,
    layer: int,
    shard_name: str,
    transcoder_files: Mapping[int, Sequence[str] | str],
    activation_files: Mapping[int, Sequence[str]],
    out_path: str,
    model_name: str,
) -> None:
    """Rule twera: per feature of the shard, the earlier layers' features that co-activate with
    it, by |TWERA| (``weightlens.twera_upstream``). ``activation_files``: layer -> the cache's
    activation shard files: the shard's own file for ``layer``, every shard of each earlier one.
    """
    from circuit_insights.data.shards import parse_shard
    from circuit_insights.weightlens.twera import twera_upstream, write_twera

    locations = transcoder_locations(model_config, transcoder_files)
    location = model_location(model_config, model_files)
    model = load_subject_model(model_config, location, model_name, sorted(locations))
    transcoders = load_transcoders(model_config, model, locations, model_name)
    activations = {up: read_activations(files) for up, files in sorted(activation_files.items())}
    shard = parse_shard(shard_name)
    frame = twera_upstream(
        model,
        transcoders,
        layer,
        activations,
        target_features=range(shard.start, shard.stop),
        projection=projection,  # type: ignore[arg-type]  # validated by the config schema
        top_k=twera_config["top_k"],
    )
    write_twera(frame, out_path)
    log.info(
        "layer %d shard %s: %d source rows for %d features from layers %s",
        layer,
        shard_name,
        len(frame),
        frame["target_feature"].nunique(),
        [up for up in sorted(activations) if up < layer],
    )
