"""Loaders for the published transcoder formats; each returns a :class:`Transcoder`.

Formats (file layouts and conventions, with sources, in ``docs/transcoders.md``):

- ``native``: this project's directory of ``transcoder.safetensors`` + ``config.json``.
- ``dunefsky``: Dunefsky et al.'s GPT-2 transcoders (``torch.save`` of
  ``{"cfg": LanguageModelSAERunnerConfig, "state_dict": {W_enc, b_enc, W_dec, b_dec, b_dec_out}}``),
  e.g. ``final_sparse_autoencoder_gpt2-small_blocks.{l}.ln2.hook_normalized_24576.pt``. Input
  centering by ``b_dec``, output bias ``b_dec_out``, ReLU, input ``mlp_in_unaffine``.
- ``gemmascope``: GemmaScope transcoders, ``params.npz`` with ``W_enc`` (d_model, d_sae), ``W_dec``,
  ``b_enc``, ``b_dec`` (output bias), ``threshold``; JumpReLU in Google's form
  ``relu(pre) * (pre > threshold)``; input ``mlp_in_unaffine``, output ``mlp_out_post_norm``.
- ``circuit_tracer``: circuit-tracer transcoder sets: a directory with ``config.yaml``
  (``feature_input_hook``, ``feature_output_hook``, optional ``transcoders`` list, ...) and one file
  per layer (``layer_{l}.safetensors`` with ``W_enc`` (d_transcoder, d_model), ``W_dec`` in either
  orientation (the pinned mntss Llama release stores it (d_model, d_transcoder), which older
  circuit-tracer transposed on load; newer repositories store (d_transcoder, d_model)), ``b_enc``,
  ``b_dec``, optional ``W_skip`` applied as ``x @ W_skip.T`` and optional
  ``activation_function.threshold``, JumpReLU in circuit-tracer's form ``pre * (pre > threshold)``),
  or Gemma Scope 2 ``params.safetensors`` files (``w_enc`` (d_model, d_sae), ``w_dec``, ``b_enc``,
  ``b_dec``, ``threshold``, optional ``affine_skip_connection`` applied as
  ``x @ affine_skip_connection``; JumpReLU in Google's form).

Every loader checks each tensor's shape against the expected ``d_model`` (when given) and the sizes
the file itself implies, and raises :class:`InputError` naming the file and the dimension at fault;
missing files, missing keys and wrong numbers of dimensions do the same. Nothing is downloaded."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from circuit_insights.core.errors import InputError
from circuit_insights.transcoders.base import InputHook, OutputHook, Transcoder
from circuit_insights.transcoders.formats.circuit_tracer import load_circuit_tracer
from circuit_insights.transcoders.formats.common import FORMATS, Format, HookPair
from circuit_insights.transcoders.formats.dunefsky import load_dunefsky
from circuit_insights.transcoders.formats.gemmascope import load_gemmascope
from circuit_insights.transcoders.formats.native import load_native

#: The formats, one loader each (one module each in this package). Every loader takes the
#: keywords of :func:`load_transcoder`; formats whose hooks are fixed ignore ``fallback_hooks``.
LOADERS: dict[str, Callable[..., Transcoder]] = {
    "native": load_native,
    "dunefsky": load_dunefsky,
    "gemmascope": load_gemmascope,
    "circuit_tracer": load_circuit_tracer,
}

# --- entry point ---------------------------------------------------------------------------------


def load_transcoder(
    path: str | os.PathLike[str],
    fmt: Format,
    *,
    layer: int,
    d_model: int | None = None,
    input_hook: InputHook | None = None,
    output_hook: OutputHook | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    fallback_hooks: HookPair | None = None,
) -> Transcoder:
    """Load the transcoder of ``layer`` stored at ``path`` in format ``fmt``.

    Args:
        path: a file or directory, as each format's loader describes.
        fmt: ``native``, ``dunefsky``, ``gemmascope`` or ``circuit_tracer``.
        layer: the model layer; checked against what the file says where it says anything.
        d_model: the model's residual width; every tensor is checked against it when given.
        input_hook, output_hook: override the format's (or its config's) hooks.
        dtype, device: where the loaded parameters live (float32 on CPU by default).
        fallback_hooks: (input, output) hooks for a file that names none itself (a circuit-tracer
            layer file without ``config.yaml``, as in the pinned mntss Llama release); the
            registry entry's hooks in the workflow. Ignored when the file or its config names
            hooks, and by formats whose hooks are fixed.
    """
    if fmt not in LOADERS:
        raise InputError(f"transcoder format {fmt!r} is not one of {', '.join(FORMATS)}")
    return LOADERS[fmt](
        path,
        layer=layer,
        d_model=d_model,
        input_hook=input_hook,
        output_hook=output_hook,
        dtype=dtype,
        device=device,
        fallback_hooks=fallback_hooks,
    )
