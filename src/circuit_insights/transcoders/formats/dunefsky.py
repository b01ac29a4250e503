"""Format ``dunefsky``: Dunefsky et al.'s GPT-2 transcoders (pickled ``torch.save`` files), read
without unpickling foreign classes."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from circuit_insights.core.errors import InputError
from circuit_insights.transcoders.base import (
    InputHook,
    OutputHook,
    Transcoder,
    check_shape,
)
from circuit_insights.transcoders.formats.common import (
    _DUNEFSKY_LAYER,
    HookPair,
    _checked_input_hook,
    _checked_output_hook,
    _infer,
    _require_tensors,
    input_hook_from_transformerlens,
    output_hook_from_transformerlens,
)

# --- Dunefsky GPT-2 ------------------------------------------------------------------------------


class PickledObject:
    """Stand-in for an object pickled in a checkpoint whose class is not importable here.

    Unpickling assigns the object's saved attributes; nothing of the original class runs.
    ``_pickled_name`` says which class it stood for.
    """

    _pickled_name = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args = args
        self.__dict__.update(kwargs)

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slots state)
            for part in state:
                if isinstance(part, dict):
                    self.__dict__.update(part)
        elif isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_state"] = state

    def __repr__(self) -> str:
        fields = {key: value for key, value in vars(self).items() if not key.startswith("_")}
        return f"PickledObject[{self._pickled_name}]({fields})"


def _stand_in(qualified_name: str) -> tuple[type, str]:
    module, _, name = qualified_name.rpartition(".")
    cls = type(name or "unknown", (PickledObject,), {"_pickled_name": qualified_name})
    cls.__module__ = module or "builtins"
    return cls, qualified_name


def read_torch_checkpoint(path: str | os.PathLike[str]) -> Any:
    """``torch.load`` a checkpoint on CPU with the weights-only unpickler.

    Classes the weights-only unpickler does not allow (e.g. Dunefsky's pickled
    ``sae_training.config.LanguageModelSAERunnerConfig``) are replaced by :class:`PickledObject`
    stand-ins that only receive the saved attributes: no code from the checkpoint runs.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as first_error:  # noqa: BLE001 - retried with stand-ins below
        if not zipfile.is_zipfile(path):
            raise InputError(
                f"{path}: not loadable with torch.load(weights_only=True) ({first_error})"
            ) from first_error
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        stand_ins: list[Any] = [_stand_in(name) for name in unsafe]
        with torch.serialization.safe_globals(stand_ins):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure here is a bad file
        raise InputError(f"{path}: could not read the checkpoint ({error})") from error


def _namespace_to_dict(obj: Any) -> dict[str, Any]:
    if obj is None:
        return {}
    if isinstance(obj, Mapping):
        return dict(obj)
    return {key: value for key, value in vars(obj).items() if not key.startswith("_")}


def find_dunefsky_file(directory: str | os.PathLike[str], layer: int) -> Path:
    """The Dunefsky checkpoint of ``layer`` in ``directory`` (``*blocks.{layer}.*.pt``)."""
    directory = Path(directory)
    candidates = sorted(
        candidate
        for candidate in directory.glob(f"*blocks.{layer}.*.pt")
        if "log_feature_sparsity" not in candidate.name
    )
    if not candidates:
        raise InputError(f"{directory}: no Dunefsky transcoder file *blocks.{layer}.*.pt")
    if len(candidates) > 1:
        names = ", ".join(candidate.name for candidate in candidates)
        raise InputError(f"{directory}: several transcoder files for layer {layer}: {names}")
    return candidates[0]


def load_dunefsky(
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
    """Load a Dunefsky GPT-2 transcoder ``.pt`` (a file, or a directory holding the layer's file).

    Conventions (``sae_training/sparse_autoencoder.py``): ``x_c = x - b_dec``,
    ``a = relu(x_c @ W_enc + b_enc)``, ``y = a @ W_dec + b_dec_out``. The pickled ``cfg`` is read
    without its class; where present it supplies the hooks (``hook_point``, ``out_hook_point``),
    and its ``d_in`` and ``hook_point_layer`` are checked.
    """
    file = Path(path)
    if file.is_dir():
        file = find_dunefsky_file(file, layer)
    source = str(file)
    match = _DUNEFSKY_LAYER.search(file.name)
    if match is not None and int(match.group(1)) != layer:
        raise InputError(f"{source}: file is for layer {match.group(1)}, not layer {layer}")
    checkpoint = read_torch_checkpoint(file)
    if not isinstance(checkpoint, Mapping):
        raise InputError(f"{source}: expected a dict with 'state_dict', got {type(checkpoint)}")
    if "state_dict" in checkpoint:
        state = checkpoint["state_dict"]
        cfg = _namespace_to_dict(checkpoint.get("cfg"))
    else:
        state, cfg = checkpoint, {}
    if not isinstance(state, Mapping):
        raise InputError(f"{source}: 'state_dict' is not a dict of tensors")

    cfg_layer = cfg.get("hook_point_layer")
    if isinstance(cfg_layer, int) and cfg_layer != layer:
        raise InputError(f"{source}: cfg.hook_point_layer is {cfg_layer}, not layer {layer}")
    cfg_d_in = cfg.get("d_in")
    if d_model is None and isinstance(cfg_d_in, int):
        d_model = cfg_d_in
    elif isinstance(cfg_d_in, int) and cfg_d_in != d_model:
        raise InputError(f"{source}: d_model mismatch: cfg.d_in is {cfg_d_in}, expected {d_model}")
    if cfg.get("is_transcoder") is False:
        raise InputError(f"{source}: cfg.is_transcoder is False (an SAE, not a transcoder)")

    model_name = cfg.get("model_name") if isinstance(cfg.get("model_name"), str) else None
    if input_hook is None:
        hook_point = cfg.get("hook_point")
        input_hook = (
            input_hook_from_transformerlens(hook_point, source=f"{source} cfg.hook_point")
            if isinstance(hook_point, str)
            else "mlp_in_unaffine"
        )
    if output_hook is None:
        out_hook_point = cfg.get("out_hook_point")
        output_hook = (
            output_hook_from_transformerlens(
                out_hook_point, model_name=model_name, source=f"{source} cfg.out_hook_point"
            )
            if isinstance(out_hook_point, str)
            else "mlp_out"
        )

    tensors = _require_tensors(state, ["W_enc", "b_enc", "W_dec", "b_dec", "b_dec_out"], source)
    d_model = _infer(d_model, tensors["W_enc"], 0, "W_enc", source, ndim=2)
    d_transcoder = _infer(None, tensors["W_enc"], 1, "W_enc", source, ndim=2)
    check_shape(source, "W_enc", tensors["W_enc"], ((d_model, "d_model"), (d_transcoder, "d_sae")))
    check_shape(source, "b_enc", tensors["b_enc"], ((d_transcoder, "d_sae"),))
    check_shape(source, "W_dec", tensors["W_dec"], ((d_transcoder, "d_sae"), (d_model, "d_model")))
    check_shape(source, "b_dec", tensors["b_dec"], ((d_model, "d_model"),))
    check_shape(source, "b_dec_out", tensors["b_dec_out"], ((d_model, "d_model"),))
    return Transcoder.from_tensors(
        {
            "W_enc": tensors["W_enc"],
            "b_enc": tensors["b_enc"],
            "W_dec": tensors["W_dec"],
            "b_dec_in": tensors["b_dec"],
            "b_dec_out": tensors["b_dec_out"],
        },
        source=source,
        d_model=d_model,
        activation="relu",
        center_input=True,
        layer=layer,
        input_hook=_checked_input_hook(input_hook),
        output_hook=_checked_output_hook(output_hook),
        dtype=dtype,
        device=device,
    )
