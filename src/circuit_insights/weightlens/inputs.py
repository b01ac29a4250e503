"""Checks of a run's inputs: the features to explain, the transcoders against the model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from circuit_insights.core.errors import InputError
from circuit_insights.data.shards import Shard
from circuit_insights.models.subject import SubjectModel
from circuit_insights.transcoders.base import Transcoder


def feature_ids_of(features: Shard | range | Sequence[int], layer: int, width: int) -> np.ndarray:
    """The ids (n,) int64 of a shard, a range or a list of features of ``layer``; unique and
    within the transcoder's ``width``, else :class:`InputError` naming the layer."""
    if isinstance(features, Shard):
        ids = np.arange(features.start, features.stop, dtype=np.int64)
    else:
        ids = np.asarray(list(features), dtype=np.int64)
    if len(ids) == 0:
        raise InputError(f"layer {layer}: no features to explain")
    if len(np.unique(ids)) != len(ids):
        raise InputError(f"layer {layer}: feature ids are not unique")
    if ids.min() < 0 or ids.max() >= width:
        raise InputError(
            f"layer {layer}: features [{ids.min()}, {ids.max() + 1}) exceed the transcoder width "
            f"d_transcoder={width}"
        )
    return ids


def check_transcoders(model: SubjectModel, transcoders: Mapping[int, Transcoder]) -> None:
    """Every transcoder matches the model: layer in range and equal to its key, d_model."""
    for key, transcoder in transcoders.items():
        model.check_layer(key, "transcoder layer")
        if transcoder.d_model != model.d_model:
            raise InputError(
                f"layer {key}: transcoder d_model={transcoder.d_model} does not match the model's "
                f"d_model={model.d_model}"
            )
        if transcoder.layer != key:
            raise InputError(
                f"layer {key}: the transcoder given for layer {key} says layer={transcoder.layer}"
            )
