"""Format ``gemmascope``: GemmaScope (Gemma-2) transcoders, ``params.npz`` per layer and width."""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from circuit_insights.core.errors import InputError
from circuit_insights.transcoders.base import (
    InputHook,
    OutputHook,
    Transcoder,
    check_shape,
)
from circuit_insights.transcoders.formats.common import (
    GEMMASCOPE_PARAMS_FILENAME,
    GOOGLE_JUMPRELU,
    HookPair,
    _check_layer_in_path,
    _checked_input_hook,
    _checked_output_hook,
    _infer,
    _require_tensors,
)

# --- GemmaScope (Gemma-2) ------------------------------------------------------------------------


def find_gemmascope_file(
    directory: str | os.PathLike[str], layer: int, *, width: str = "16k"
) -> Path:
    """``params.npz`` in ``directory``, else the lowest-L0 one under ``layer_{layer}/width_{width}/``.

    The second form is the layout of ``google/gemma-scope-2b-pt-transcoders``
    (``layer_{l}/width_16k/average_l0_{n}/params.npz``).
    """
    directory = Path(directory)
    direct = directory / GEMMASCOPE_PARAMS_FILENAME
    if direct.is_file():
        return direct
    candidates = []
    for candidate in (directory / f"layer_{layer}" / f"width_{width}").glob(
        f"average_l0_*/{GEMMASCOPE_PARAMS_FILENAME}"
    ):
        match = re.fullmatch(r"average_l0_(\d+)", candidate.parent.name)
        if match is not None:
            candidates.append((int(match.group(1)), candidate))
    if not candidates:
        raise InputError(
            f"{directory}: no {GEMMASCOPE_PARAMS_FILENAME} here nor under "
            f"layer_{layer}/width_{width}/average_l0_*/"
        )
    return min(candidates)[1]


def read_npz(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """All arrays of an ``.npz`` (no pickles) as CPU tensors."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: torch.from_numpy(np.array(data[key])) for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise InputError(f"{path}: not a readable .npz file ({error})") from error


def _gemmascope_tensors(arrays: Mapping[str, Tensor], source: str) -> dict[str, Tensor]:
    """Upper-case ``w_enc``/``w_dec`` (some exports) to the GemmaScope names."""
    renamed = dict(arrays)
    for lower, upper in (("w_enc", "W_enc"), ("w_dec", "W_dec")):
        if upper not in renamed and lower in renamed:
            renamed[upper] = renamed.pop(lower)
    return _require_tensors(renamed, ["W_enc", "W_dec", "b_enc", "b_dec", "threshold"], source)


def _jumprelu_from_gemmascope_layout(
    tensors: Mapping[str, Tensor],
    *,
    source: str,
    skip_key: str | None,
    layer: int,
    d_model: int | None,
    input_hook: InputHook,
    output_hook: OutputHook,
    dtype: torch.dtype,
    device: torch.device | str | None,
) -> Transcoder:
    """JumpReLU transcoder from GemmaScope-oriented tensors (``W_enc`` is (d_model, d_sae))."""
    d_model = _infer(d_model, tensors["W_enc"], 0, "W_enc", source, ndim=2)
    d_sae = _infer(None, tensors["W_enc"], 1, "W_enc", source, ndim=2)
    check_shape(source, "W_enc", tensors["W_enc"], ((d_model, "d_model"), (d_sae, "d_sae")))
    check_shape(source, "W_dec", tensors["W_dec"], ((d_sae, "d_sae"), (d_model, "d_model")))
    check_shape(source, "b_enc", tensors["b_enc"], ((d_sae, "d_sae"),))
    check_shape(source, "b_dec", tensors["b_dec"], ((d_model, "d_model"),))
    check_shape(source, "threshold", tensors["threshold"], ((d_sae, "d_sae"),))
    mapped = {
        "W_enc": tensors["W_enc"],
        "b_enc": tensors["b_enc"],
        "W_dec": tensors["W_dec"],
        "b_dec_out": tensors["b_dec"],
        "threshold": tensors["threshold"],
    }
    if skip_key is not None:
        check_shape(source, skip_key, tensors[skip_key], ((d_model, "d_model"),) * 2)
        mapped["W_skip"] = tensors[skip_key]  # applied as x @ affine_skip_connection
    return Transcoder.from_tensors(
        mapped,
        source=source,
        d_model=d_model,
        activation="jumprelu",
        jumprelu_form=GOOGLE_JUMPRELU,
        skip=skip_key is not None,
        layer=layer,
        input_hook=input_hook,
        output_hook=output_hook,
        dtype=dtype,
        device=device,
    )


def load_gemmascope(
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
    """Load a GemmaScope transcoder ``params.npz`` (a file, or a directory: see
    :func:`find_gemmascope_file`).

    JumpReLU in Google's form ``relu(pre) * (pre > threshold)``, ``b_dec`` is the output bias (no input centering); input ``mlp_in_unaffine`` (the
    pre-MLP RMSNorm's normalisation with its gain folded away), output ``mlp_out_post_norm``.
    """
    file = Path(path)
    if file.is_dir():
        file = find_gemmascope_file(file, layer)
    source = str(file)
    _check_layer_in_path(file, layer)
    tensors = _gemmascope_tensors(read_npz(file), source)
    return _jumprelu_from_gemmascope_layout(
        tensors,
        source=source,
        skip_key=None,
        layer=layer,
        d_model=d_model,
        input_hook=_checked_input_hook(input_hook or "mlp_in_unaffine"),
        output_hook=_checked_output_hook(output_hook or "mlp_out_post_norm"),
        dtype=dtype,
        device=device,
    )
