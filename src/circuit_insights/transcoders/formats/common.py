"""What every transcoder format shares: format names, hook names of TransformerLens and
circuit-tracer mapped to ours, JumpReLU forms, and the small checks every loader makes."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import Tensor

from circuit_insights.core.errors import InputError
from circuit_insights.transcoders.base import (
    INPUT_HOOKS,
    OUTPUT_HOOKS,
    InputHook,
    JumpReLUForm,
    OutputHook,
)

Format = Literal["native", "dunefsky", "gemmascope", "circuit_tracer"]
FORMATS: tuple[str, ...] = get_args(Format)

CIRCUIT_TRACER_CONFIG_FILENAME = "config.yaml"
GEMMASCOPE_PARAMS_FILENAME = "params.npz"

# TransformerLens hook names (as circuit-tracer configs and Dunefsky cfgs write them) -> our hooks.
_TL_INPUT_HOOKS: dict[str, InputHook] = {
    "ln2.hook_normalized": "mlp_in_unaffine",
    "mlp.hook_in": "mlp_in",
    "hook_resid_mid": "resid_mid",
    "hook_mlp_in": "resid_mid",  # TransformerLens' hook_mlp_in is the residual *before* ln2
}
_TL_OUTPUT_HOOKS: dict[str, OutputHook] = {
    "mlp.hook_out": "mlp_out",
}
# Gemma-2/3 names (gemma-2-2b, gemma2, gemma-3-1b-pt, gemma3_text), not Gemma-1 ones (gemma-2b,
# gemma-7b): a 2 or 3 that is not itself followed by a size such as "b".
_POST_NORM_MODEL = re.compile(r"gemma-?[23](?![0-9]*(?:\.[0-9]+)?[bm])", re.IGNORECASE)
_LAYER_IN_NAME = re.compile(r"^layer_(\d+)(?:[_.]|$)")
_DUNEFSKY_LAYER = re.compile(r"blocks\.(\d+)\.")

GOOGLE_JUMPRELU: JumpReLUForm = "relu"
"""Gemma Scope (1 and 2), published by Google: ``relu(pre) * (pre > threshold)`` (the Gemma Scope
tutorial's ``JumpReLUSAE.encode``; sae-lens' ``JumpReLUTranscoder.encode``)."""
CIRCUIT_TRACER_JUMPRELU: JumpReLUForm = "pre"
"""circuit-tracer's own files: ``pre * (pre > threshold)`` (``activation_functions.jumprelu``)."""

HookPair = tuple[InputHook, OutputHook]
"""(input hook, output hook)."""


def has_post_mlp_norm(model_name: str | None) -> bool:
    """Whether ``model_name`` is a Gemma-2/3 model, whose MLP output passes a post-feedforward norm."""
    return model_name is not None and _POST_NORM_MODEL.search(model_name) is not None


def input_hook_from_transformerlens(name: str, *, source: str) -> InputHook:
    """Map a TransformerLens input hook name (``blocks.{l}.`` prefix optional) to ours."""
    short = re.sub(r"^blocks\.\d+\.", "", name)
    if short in INPUT_HOOKS:
        return short  # type: ignore[return-value]
    if short not in _TL_INPUT_HOOKS:
        raise InputError(
            f"{source}: input hook {name!r} is not one of "
            f"{', '.join([*_TL_INPUT_HOOKS, *INPUT_HOOKS])}"
        )
    return _TL_INPUT_HOOKS[short]


def output_hook_from_transformerlens(
    name: str, *, model_name: str | None, source: str
) -> OutputHook:
    """Map a TransformerLens output hook name to ours.

    ``hook_mlp_out`` is what the block adds to the residual stream: after the post-feedforward
    RMSNorm in Gemma-2/3 (``mlp_out_post_norm``), the MLP module's output elsewhere (``mlp_out``).
    """
    short = re.sub(r"^blocks\.\d+\.", "", name)
    if short in OUTPUT_HOOKS:
        return short  # type: ignore[return-value]
    if short == "hook_mlp_out":
        return "mlp_out_post_norm" if has_post_mlp_norm(model_name) else "mlp_out"
    if short not in _TL_OUTPUT_HOOKS:
        raise InputError(
            f"{source}: output hook {name!r} is not one of "
            f"{', '.join(['hook_mlp_out', *_TL_OUTPUT_HOOKS, *OUTPUT_HOOKS])}"
        )
    return _TL_OUTPUT_HOOKS[short]


# --- small checks --------------------------------------------------------------------------------


def _require_tensors(state: Mapping[str, Any], keys: list[str], source: str) -> dict[str, Tensor]:
    tensors: dict[str, Tensor] = {}
    for key in keys:
        if key not in state:
            raise InputError(f"{source}: missing tensor {key!r}")
        value = state[key]
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(value)
        if not isinstance(value, Tensor):
            raise InputError(f"{source}: {key!r} is a {type(value).__name__}, not a tensor")
        tensors[key] = value
    return tensors


def _infer(given: int | None, tensor: Tensor, dim: int, key: str, source: str, *, ndim: int) -> int:
    """``given`` when set, else ``tensor.shape[dim]`` (after checking ``tensor.ndim``)."""
    if tensor.ndim != ndim:
        raise InputError(
            f"{source}: tensor {key!r} has {tensor.ndim} dimension(s) "
            f"(shape {tuple(tensor.shape)}), expected {ndim}"
        )
    return int(tensor.shape[dim]) if given is None else int(given)


def _check_layer_in_path(file: Path, layer: int) -> None:
    """Raise if a ``layer_{n}`` component of ``file``'s path names another layer."""
    for part in reversed(file.parts):
        match = _LAYER_IN_NAME.match(part)
        if match is not None:
            if int(match.group(1)) != layer:
                raise InputError(f"{file}: path is for layer {match.group(1)}, not layer {layer}")
            return


def _checked_input_hook(hook: str) -> InputHook:
    if hook not in INPUT_HOOKS:
        raise InputError(f"input_hook {hook!r} is not one of {', '.join(INPUT_HOOKS)}")
    return hook  # type: ignore[return-value]


def _checked_output_hook(hook: str) -> OutputHook:
    if hook not in OUTPUT_HOOKS:
        raise InputError(f"output_hook {hook!r} is not one of {', '.join(OUTPUT_HOOKS)}")
    return hook  # type: ignore[return-value]
