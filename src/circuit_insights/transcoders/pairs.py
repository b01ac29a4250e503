"""MLP input/output pairs a transcoder is trained on: collected for every trained layer in one
forward pass per batch (stopped after the deepest layer), and their file per layer (rule
collect_pairs writes them, rule train_transcoder reads its layer's)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from circuit_insights.core.errors import InputError
from circuit_insights.core.io import atomic_path
from circuit_insights.core.progress import Progress
from circuit_insights.models.loading import iter_context_batches
from circuit_insights.models.subject import SubjectModel

log = logging.getLogger(__name__)

PAIRS_TENSORS = ("inputs", "outputs", "heldout_inputs", "heldout_outputs")
"""Tensor names of a pairs file, each (n_tokens, d_model) float32."""


@dataclass(frozen=True)
class LayerPairs:
    """One layer's training and held-out pairs, as a transcoder of that layer reads and writes."""

    layer: int
    input_hook: str
    output_hook: str
    inputs: Tensor
    """(n_train, d_model) float32: the transcoder's input at every non-BOS training position."""
    outputs: Tensor
    """(n_train, d_model) float32: the MLP's output at the same positions."""
    heldout_inputs: Tensor
    """(n_heldout, d_model) float32, from the held-out contexts."""
    heldout_outputs: Tensor
    """(n_heldout, d_model) float32."""


def mlp_pairs(
    model: SubjectModel,
    tokens: np.ndarray,
    layers: Sequence[int],
    input_hook: str,
    output_hook: str,
    batch_size: int,
    *,
    label: str = "pairs",
) -> dict[int, tuple[Tensor, Tensor]]:
    """(transcoder input, MLP output) pairs of every one of ``layers`` at every non-BOS position
    of ``tokens`` (n, pos): per layer two (n_tokens, d_model) float32 tensors on the CPU.

    Each batch is one forward pass that reads every layer's two hooks and stops after the
    deepest, so collecting L layers costs one forward to the deepest, not L forwards."""
    if not layers:
        raise InputError("no layers to collect MLP pairs of")
    wanted = sorted(set(layers))
    skip_first = 1 if model.bos_token_id is not None else 0
    requests = {layer: [input_hook, output_hook] for layer in wanted}
    inputs: dict[int, list[Tensor]] = {layer: [] for layer in wanted}
    outputs: dict[int, list[Tensor]] = {layer: [] for layer in wanted}
    with Progress(f"{label} layers {wanted}", len(tokens), unit="contexts", logger=log) as progress:
        for batch_ids, ids in iter_context_batches(tokens, np.arange(len(tokens)), batch_size):
            values = model.hook_values(ids, requests)  # one forward, stopped after the deepest
            for layer in wanted:
                x = values.pop((layer, input_hook))[:, skip_first:]  # (batch, pos - skip, d_model)
                y = values.pop((layer, output_hook))[:, skip_first:]
                inputs[layer].append(x.reshape(-1, model.d_model).cpu())
                outputs[layer].append(y.reshape(-1, model.d_model).cpu())
            progress.update(len(batch_ids))
    return {
        layer: (_concat(inputs[layer], model.d_model), _concat(outputs[layer], model.d_model))
        for layer in wanted
    }


def _concat(chunks: list[Tensor], d_model: int) -> Tensor:
    """Chunks (n_i, d_model) stacked; an empty (0, d_model) tensor when there are none."""
    return torch.cat(chunks) if chunks else torch.zeros(0, d_model)


def write_pairs_file(pairs: LayerPairs, path: str | os.PathLike[str]) -> None:
    """Write one layer's pairs as safetensors at ``path`` atomically (the layer and the hooks in
    its metadata, so the reader can check it got the pairs it expects)."""
    from safetensors.torch import save_file

    tensors = {name: getattr(pairs, name).float().contiguous() for name in PAIRS_TENSORS}
    metadata = {
        "layer": str(pairs.layer),
        "input_hook": pairs.input_hook,
        "output_hook": pairs.output_hook,
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def read_pairs_file(
    path: str | os.PathLike[str], *, layer: int, input_hook: str, output_hook: str
) -> LayerPairs:
    """One layer's pairs from :func:`write_pairs_file`'s file; an InputError naming the file when
    it is missing, unreadable, or holds another layer's or other hooks' pairs."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            names = set(handle.keys())
            missing = [name for name in PAIRS_TENSORS if name not in names]
            if missing:
                raise InputError(
                    f"{path}: no tensors {missing} (not a pairs file of collect_pairs?)"
                )
            tensors = {name: handle.get_tensor(name) for name in PAIRS_TENSORS}
    except (OSError, SafetensorError) as exc:
        raise InputError(f"{path}: cannot read the MLP pairs ({exc})") from exc
    found = (metadata.get("layer"), metadata.get("input_hook"), metadata.get("output_hook"))
    if found != (str(layer), input_hook, output_hook):
        raise InputError(
            f"{path}: pairs of layer {found[0]} ({found[1]} -> {found[2]}), but layer {layer} "
            f"({input_hook} -> {output_hook}) is trained"
        )
    return LayerPairs(layer=layer, input_hook=input_hook, output_hook=output_hook, **tensors)


def layer_pairs(
    train: Mapping[int, tuple[Tensor, Tensor]],
    heldout: Mapping[int, tuple[Tensor, Tensor]],
    layer: int,
    input_hook: str,
    output_hook: str,
) -> LayerPairs:
    """One layer's :class:`LayerPairs` from :func:`mlp_pairs` of the training and the held-out
    contexts."""
    return LayerPairs(
        layer=layer,
        input_hook=input_hook,
        output_hook=output_hook,
        inputs=train[layer][0],
        outputs=train[layer][1],
        heldout_inputs=heldout[layer][0],
        heldout_outputs=heldout[layer][1],
    )
