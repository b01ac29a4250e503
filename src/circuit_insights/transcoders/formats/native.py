"""Format ``native``: this project's folder of ``transcoder.safetensors`` + ``config.json``."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from circuit_insights.core.errors import InputError
from circuit_insights.transcoders.base import (
    InputHook,
    OutputHook,
    Transcoder,
)
from circuit_insights.transcoders.formats.common import (
    HookPair,
    _checked_input_hook,
    _checked_output_hook,
)

# --- native --------------------------------------------------------------------------------------


def load_native(
    path: str | os.PathLike[str],
    *,
    layer: int,
    d_model: int | None = None,
    input_hook: InputHook | None = None,
    output_hook: OutputHook | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    fallback_hooks: HookPair | None = None,  # hooks fixed by the format: ignored
) -> Transcoder:
    """Load a directory written by :meth:`Transcoder.save`; its layer must be ``layer``."""
    directory = Path(path)
    transcoder = Transcoder.load(directory, dtype=dtype, device=device)
    source = str(directory / "config.json")
    if transcoder.layer != layer:
        raise InputError(f"{source}: transcoder is for layer {transcoder.layer}, not layer {layer}")
    if d_model is not None and transcoder.d_model != d_model:
        raise InputError(
            f"{source}: d_model mismatch: transcoder has d_model={transcoder.d_model}, "
            f"expected d_model={d_model}"
        )
    if input_hook is not None:
        transcoder.input_hook = _checked_input_hook(input_hook)
    if output_hook is not None:
        transcoder.output_hook = _checked_output_hook(output_hook)
    return transcoder
