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
missing files, missing keys and wrong numbers of dimensions do the same. Nothing is downloaded.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
import yaml
from torch import Tensor

from circuit_insights.core.errors import InputError
from circuit_insights.transcoders.base import (
    INPUT_HOOKS,
    OUTPUT_HOOKS,
    Activation,
    InputHook,
    JumpReLUForm,
    OutputHook,
    Transcoder,
    check_shape,
    read_safetensors,
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
    loaders = {
        "native": load_native,
        "dunefsky": load_dunefsky,
        "gemmascope": load_gemmascope,
        "circuit_tracer": load_circuit_tracer,
    }
    if fmt not in loaders:
        raise InputError(f"transcoder format {fmt!r} is not one of {', '.join(FORMATS)}")
    if fmt == "circuit_tracer":
        return load_circuit_tracer(
            path,
            layer=layer,
            d_model=d_model,
            input_hook=input_hook,
            output_hook=output_hook,
            dtype=dtype,
            device=device,
            fallback_hooks=fallback_hooks,
        )
    return loaders[fmt](
        path,
        layer=layer,
        d_model=d_model,
        input_hook=input_hook,
        output_hook=output_hook,
        dtype=dtype,
        device=device,
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


# --- circuit-tracer sets (mntss, mwhanna, Gemma Scope 2) -----------------------------------------


@dataclass(frozen=True)
class CircuitTracerConfig:
    """The fields of a circuit-tracer ``config.yaml`` that loading needs."""

    path: Path
    """The ``config.yaml`` itself."""
    feature_input_hook: str
    """TransformerLens name of the hook the features read, e.g. ``hook_resid_mid``."""
    feature_output_hook: str
    """TransformerLens name of the hook the features write, e.g. ``hook_mlp_out``."""
    model_name: str | None = None
    """The model the transcoders were trained on, e.g. ``meta-llama/Llama-3.2-1B``."""
    model_kind: str | None = None
    """``transcoder_set`` (per-layer transcoders) where given; cross-layer sets are not read."""
    scan: str | list[str] | None = None
    """Identifier of the feature visualisations."""
    transcoders: dict[int, str] = field(default_factory=dict)
    """Layer -> file reference as written (local path or ``hf://`` URI); empty when the repository
    holds ``layer_{l}.safetensors`` files instead."""


def read_circuit_tracer_config(path: str | os.PathLike[str]) -> CircuitTracerConfig:
    """Parse ``config.yaml`` (``path`` is the file or its directory).

    ``transcoders`` is either a list of references indexed by layer (the hosted repositories) or a
    list of ``{id, layer, filepath}`` mappings (circuit-tracer's packaged configs).
    """
    file = Path(path)
    if file.is_dir():
        file = file / CIRCUIT_TRACER_CONFIG_FILENAME
    if not file.is_file():
        raise InputError(f"{file}: file not found")
    try:
        raw = yaml.safe_load(file.read_text())
    except yaml.YAMLError as error:
        raise InputError(f"{file}: not valid YAML ({error})") from error
    if not isinstance(raw, Mapping):
        raise InputError(f"{file}: expected a YAML mapping")
    for key in ("feature_input_hook", "feature_output_hook"):
        if not isinstance(raw.get(key), str):
            raise InputError(f"{file}: config key {key!r} is missing or not a string")
    model_kind = raw.get("model_kind")
    if model_kind is not None and model_kind != "transcoder_set":
        raise InputError(
            f"{file}: config key 'model_kind' is {model_kind!r}; only per-layer "
            "'transcoder_set' repositories are supported"
        )
    transcoders: dict[int, str] = {}
    entries = raw.get("transcoders") or []
    if not isinstance(entries, list):
        raise InputError(f"{file}: config key 'transcoders' is not a list")
    for index, entry in enumerate(entries):
        if isinstance(entry, str):
            transcoders[index] = entry
        elif isinstance(entry, Mapping) and "layer" in entry and "filepath" in entry:
            transcoders[int(entry["layer"])] = str(entry["filepath"])
        else:
            raise InputError(
                f"{file}: config key 'transcoders[{index}]' is neither a path nor a "
                "mapping with 'layer' and 'filepath'"
            )
    model_name = raw.get("model_name")
    return CircuitTracerConfig(
        path=file,
        feature_input_hook=raw["feature_input_hook"],
        feature_output_hook=raw["feature_output_hook"],
        model_name=model_name if isinstance(model_name, str) else None,
        model_kind=model_kind,
        scan=raw.get("scan"),
        transcoders=transcoders,
    )


def _resolve_reference(directory: Path, reference: str, config: Path, layer: int) -> Path:
    """A config's file reference as a local path under ``directory`` (never downloaded)."""
    if reference.startswith("hf://"):
        repo_path = reference[len("hf://") :].split("?", 1)[0]
        parts = repo_path.split("/")
        inside_repo = "/".join(parts[2:])
        candidates = [directory / inside_repo] if inside_repo else []
        suffix = Path(inside_repo).suffix or ".safetensors"
        candidates.append(directory / f"layer_{layer}{suffix}")
    else:
        local = Path(reference)
        candidates = [local if local.is_absolute() else directory / local]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = ", ".join(str(candidate) for candidate in candidates)
    raise InputError(
        f"{config}: transcoders entry for layer {layer} ({reference}) is not a local file "
        f"(looked for {tried}); files are never downloaded here"
    )


def circuit_tracer_layer_file(
    directory: str | os.PathLike[str], config: CircuitTracerConfig | None, layer: int
) -> Path:
    """The file holding ``layer``'s transcoder in a circuit-tracer repository directory."""
    directory = Path(directory)
    if config is not None and config.transcoders:
        if layer not in config.transcoders:
            raise InputError(
                f"{config.path}: config key 'transcoders' has no entry for layer {layer}"
            )
        return _resolve_reference(directory, config.transcoders[layer], config.path, layer)
    file = directory / f"layer_{layer}.safetensors"
    if not file.is_file():
        raise InputError(f"{file}: file not found")
    return file


def load_circuit_tracer(
    path: str | os.PathLike[str],
    *,
    layer: int,
    d_model: int | None = None,
    input_hook: InputHook | None = None,
    output_hook: OutputHook | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    fallback_hooks: HookPair | None = None,
) -> Transcoder:
    """Load one layer of a circuit-tracer transcoder set.

    ``path`` is the repository directory (with ``config.yaml``, whose hooks are used) or one layer
    file. The file is read by its keys: circuit-tracer's (``W_enc`` (d_transcoder, d_model),
    ``W_dec`` in either orientation (see :func:`_features_first_decoder`), ``W_skip`` applied
    transposed, ``activation_function.threshold`` or ``threshold`` making it JumpReLU in
    circuit-tracer's form ``pre * (pre > threshold)``, else ReLU), Gemma Scope 2's (``w_enc``
    (d_model, d_sae), ``affine_skip_connection`` applied untransposed, JumpReLU in Google's form
    ``relu(pre) * (pre > threshold)``), or a GemmaScope ``.npz``. Hooks: the arguments, else the
    config, else ``fallback_hooks``; a Gemma Scope 2 file without any of them reads ``mlp_in``
    and writes ``mlp_out_post_norm``.
    """
    root = Path(path)
    config: CircuitTracerConfig | None = None
    if root.is_dir():
        config = read_circuit_tracer_config(root)
        file = circuit_tracer_layer_file(root, config, layer)
    else:
        file = root
        sibling = root.parent / CIRCUIT_TRACER_CONFIG_FILENAME
        if sibling.is_file():
            config = read_circuit_tracer_config(sibling)
    source = str(file)
    _check_layer_in_path(file, layer)

    if config is None and fallback_hooks is not None:
        input_hook = input_hook or fallback_hooks[0]
        output_hook = output_hook or fallback_hooks[1]
    if config is not None:
        hook_source = f"{config.path} feature_input_hook"
        input_hook = input_hook or input_hook_from_transformerlens(
            config.feature_input_hook, source=hook_source
        )
        output_hook = output_hook or output_hook_from_transformerlens(
            config.feature_output_hook,
            model_name=config.model_name,
            source=f"{config.path} feature_output_hook",
        )

    if file.suffix == ".npz":
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

    state = read_safetensors(file)
    if "w_enc" in state:  # Gemma Scope 2 JumpReLUSAE layout
        renamed = {key: value for key, value in state.items() if key not in ("w_enc", "w_dec")}
        renamed["W_enc"] = state["w_enc"]
        if "w_dec" in state:
            renamed["W_dec"] = state["w_dec"]
        tensors = _require_tensors(
            renamed, ["W_enc", "W_dec", "b_enc", "b_dec", "threshold"], source
        )
        skip_key = "affine_skip_connection" if "affine_skip_connection" in state else None
        if skip_key is not None:
            tensors[skip_key] = state[skip_key]
        return _jumprelu_from_gemmascope_layout(
            tensors,
            source=source,
            skip_key=skip_key,
            layer=layer,
            d_model=d_model,
            input_hook=_checked_input_hook(input_hook or "mlp_in"),
            output_hook=_checked_output_hook(output_hook or "mlp_out_post_norm"),
            dtype=dtype,
            device=device,
        )

    if input_hook is None or output_hook is None:
        raise InputError(
            f"{source}: no {CIRCUIT_TRACER_CONFIG_FILENAME} beside it and no registry entry "
            "for its path; pass input_hook and output_hook"
        )
    if "log_thresholds" in state:
        raise InputError(
            f"{source}: tensor 'log_thresholds' is not supported (as in circuit-tracer)"
        )
    tensors = _require_tensors(state, ["W_enc", "W_dec", "b_enc", "b_dec"], source)
    d_model = _infer(d_model, tensors["b_dec"], 0, "b_dec", source, ndim=1)
    d_transcoder = _infer(None, tensors["b_enc"], 0, "b_enc", source, ndim=1)
    check_shape(source, "b_dec", tensors["b_dec"], ((d_model, "d_model"),))
    check_shape(source, "b_enc", tensors["b_enc"], ((d_transcoder, "d_transcoder"),))
    shape = ((d_transcoder, "d_transcoder"), (d_model, "d_model"))
    check_shape(source, "W_enc", tensors["W_enc"], shape)
    mapped = {
        "W_enc": tensors["W_enc"].T,
        "b_enc": tensors["b_enc"],
        "W_dec": _features_first_decoder(tensors["W_dec"], d_transcoder, d_model, source),
        "b_dec_out": tensors["b_dec"],
    }
    activation: Activation = "relu"
    for threshold_key in ("activation_function.threshold", "threshold"):
        if threshold_key in state:
            threshold = state[threshold_key]
            if threshold.ndim == 0:  # a scalar threshold shared by every feature
                threshold = threshold.expand(d_transcoder)
            check_shape(source, threshold_key, threshold, ((d_transcoder, "d_transcoder"),))
            mapped["threshold"] = threshold
            activation = "jumprelu"
            break
    skip = "W_skip" in state
    if skip:
        check_shape(source, "W_skip", state["W_skip"], ((d_model, "d_model"),) * 2)
        mapped["W_skip"] = state["W_skip"].T  # circuit-tracer computes x @ W_skip.T
    return Transcoder.from_tensors(
        mapped,
        source=source,
        d_model=d_model,
        activation=activation,
        jumprelu_form=CIRCUIT_TRACER_JUMPRELU,
        skip=skip,
        layer=layer,
        input_hook=_checked_input_hook(input_hook),
        output_hook=_checked_output_hook(output_hook),
        dtype=dtype,
        device=device,
    )


def _features_first_decoder(W_dec: Tensor, d_transcoder: int, d_model: int, source: str) -> Tensor:
    """A circuit-tracer ``W_dec`` as (d_transcoder, d_model), whichever way the file stores it.

    circuit-tracer's ``SingleLayerTranscoder`` computes ``acts @ W_dec`` with ``W_dec``
    (d_transcoder, d_model). Its loader up to the release whose Llama config pins
    ``mntss/skip-transcoder-Llama-3.2-1B-131k-nobos@new-training`` transposed the file's tensor
    (``load_relu_transcoder``: ``W_dec.T``), so those files hold (d_model, d_transcoder); later
    releases read newer repositories' (d_transcoder, d_model) as is. Both are accepted; a square
    tensor (d_transcoder == d_model) cannot be told apart and is refused.
    """
    if W_dec.ndim != 2:
        raise InputError(
            f"{source}: tensor 'W_dec' has {W_dec.ndim} dimension(s) "
            f"(shape {tuple(W_dec.shape)}), expected 2"
        )
    shape = tuple(int(size) for size in W_dec.shape)
    if d_transcoder == d_model and shape == (d_model, d_model):
        raise InputError(
            f"{source}: tensor 'W_dec' is square ({d_model} x {d_model}): cannot tell "
            "(d_transcoder, d_model) from the transposed (d_model, d_transcoder) layout"
        )
    if shape == (d_transcoder, d_model):
        return W_dec
    if shape == (d_model, d_transcoder):
        return W_dec.T
    raise InputError(
        f"{source}: tensor 'W_dec' has shape {shape}, expected (d_transcoder={d_transcoder}, "
        f"d_model={d_model}) or its transpose (d_model, d_transcoder)"
    )


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
