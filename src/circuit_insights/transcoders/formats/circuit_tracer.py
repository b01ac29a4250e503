"""Format ``circuit_tracer``: circuit-tracer transcoder sets (mntss, mwhanna) and Gemma Scope 2
``params.safetensors`` files, with the set's ``config.yaml``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from torch import Tensor

from circuit_insights.core.errors import InputError
from circuit_insights.transcoders.base import (
    Activation,
    InputHook,
    OutputHook,
    Transcoder,
    check_shape,
    read_safetensors,
)
from circuit_insights.transcoders.formats.common import (
    CIRCUIT_TRACER_CONFIG_FILENAME,
    CIRCUIT_TRACER_JUMPRELU,
    HookPair,
    _check_layer_in_path,
    _checked_input_hook,
    _checked_output_hook,
    _infer,
    _require_tensors,
    input_hook_from_transformerlens,
    output_hook_from_transformerlens,
)
from circuit_insights.transcoders.formats.gemmascope import (
    _gemmascope_tensors,
    _jumprelu_from_gemmascope_layout,
    read_npz,
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
