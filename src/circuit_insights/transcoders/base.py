"""One transcoder abstraction for every published format and for the ones we train.

A transcoder at layer ``l`` reads the MLP input ``x`` and predicts the MLP output::

    x_c = x - b_dec_in            (only when ``center_input``; Dunefsky's GPT-2 transcoders)
    pre = x_c @ W_enc + b_enc     # (..., d_transcoder): the feature pre-activations
    a   = act(pre)                # ReLU, JumpReLU (per-feature threshold) or TopK
    y   = a @ W_dec + b_dec_out (+ x @ W_skip for skip transcoders)

State (float32 unless moved with ``.to``):

- ``W_enc``     (d_model, d_transcoder); column ``i`` is feature ``i``'s encoder direction
- ``b_enc``     (d_transcoder,)
- ``W_dec``     (d_transcoder, d_model); row ``i`` is feature ``i``'s decoder direction
- ``b_dec_out`` (d_model,) output bias
- ``b_dec_in``  (d_model,) input-centering bias; present only when ``center_input``, else ``None``
- ``threshold`` (d_transcoder,) JumpReLU thresholds; present only for ``jumprelu``, else ``None``
- ``W_skip``    (d_model, d_model) linear skip, ``y += x @ W_skip`` with the *uncentered* ``x``;
  present only when ``skip``, else ``None``

JumpReLU comes in the two forms publishers use, chosen by ``jumprelu_form`` (they differ only
where a threshold is negative, for pre-activations between the threshold and 0):

- ``"pre"``:  ``pre * (pre > threshold)`` (circuit-tracer's ``JumpReLU``; negative activations
  possible);
- ``"relu"``: ``relu(pre) * (pre > threshold)`` (sae-lens' ``JumpReLUSAE`` / ``JumpReLUTranscoder``
  and Google's Gemma Scope tutorials; never negative).

Hooks name where ``x`` is read and ``y`` is written, in model-independent words (see
``docs/transcoders.md``): ``mlp_in`` (output of the pre-MLP norm, affine weights included: what
the MLP module receives), ``mlp_in_unaffine`` (the pre-MLP norm's normalisation without its affine
weight/bias), ``resid_mid`` (the residual stream before that norm), ``mlp_out`` (the MLP module's
output) and ``mlp_out_post_norm`` (after Gemma-2/3's post-feedforward RMSNorm: what is added to the
residual stream).

The native on-disk format is a directory with ``transcoder.safetensors`` (the tensors above under
their names) and ``config.json`` (every constructor argument plus ``format_version``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from circuit_insights.core.errors import InputError
from circuit_insights.core.io import atomic_path

Activation = Literal["relu", "jumprelu", "topk"]
InputHook = Literal["mlp_in", "mlp_in_unaffine", "resid_mid"]
OutputHook = Literal["mlp_out", "mlp_out_post_norm"]
JumpReLUForm = Literal["pre", "relu"]

ACTIVATIONS: tuple[str, ...] = get_args(Activation)
INPUT_HOOKS: tuple[str, ...] = get_args(InputHook)
OUTPUT_HOOKS: tuple[str, ...] = get_args(OutputHook)
JUMPRELU_FORMS: tuple[str, ...] = get_args(JumpReLUForm)

NATIVE_FORMAT_VERSION = 1
"""Version of the native ``config.json`` + ``transcoder.safetensors`` layout."""
NATIVE_WEIGHTS_FILENAME = "transcoder.safetensors"
NATIVE_CONFIG_FILENAME = "config.json"

_CONFIG_KEYS = (
    "d_model",
    "d_transcoder",
    "activation",
    "top_k",
    "center_input",
    "skip",
    "layer",
    "input_hook",
    "output_hook",
)
_OPTIONAL_CONFIG_DEFAULTS: dict[str, Any] = {"jumprelu_form": "pre"}
"""Native ``config.json`` keys added after format version 1 was fixed, with the value that files
written before them meant."""


class Transcoder(nn.Module):
    """A single-layer transcoder: sparse features that read the MLP input and write the MLP output.

    Args:
        d_model: residual width of the model.
        d_transcoder: number of features.
        activation: ``relu``; ``jumprelu`` (a per-feature threshold, see ``jumprelu_form``);
            ``topk`` (ReLU, then keep the ``top_k`` largest activations per row).
        top_k: features kept per row; required for (and only for) ``topk``.
        center_input: subtract ``b_dec_in`` from ``x`` before encoding.
        skip: add the linear skip ``x @ W_skip`` to the output.
        layer: the model layer the transcoder belongs to.
        input_hook: where ``x`` is read (see the module docstring).
        output_hook: where ``y`` is written (see the module docstring).
        jumprelu_form: ``"pre"`` (``pre * (pre > threshold)``, circuit-tracer) or ``"relu"``
            (``relu(pre) * (pre > threshold)``, sae-lens and Gemma Scope); only read for
            ``jumprelu``.

    Fresh parameters are initialised with random unit-norm decoder rows and ``W_enc = W_dec.T``
    (zeros elsewhere), from the global torch generator; loaders overwrite them.
    """

    W_enc: nn.Parameter
    b_enc: nn.Parameter
    W_dec: nn.Parameter
    b_dec_out: nn.Parameter
    b_dec_in: nn.Parameter | None
    threshold: nn.Parameter | None
    W_skip: nn.Parameter | None

    def __init__(
        self,
        d_model: int,
        d_transcoder: int,
        *,
        activation: Activation = "relu",
        top_k: int | None = None,
        center_input: bool = False,
        skip: bool = False,
        layer: int = 0,
        input_hook: InputHook = "mlp_in",
        output_hook: OutputHook = "mlp_out",
        jumprelu_form: JumpReLUForm = "pre",
    ) -> None:
        super().__init__()
        _validate_config(
            d_model=d_model,
            d_transcoder=d_transcoder,
            activation=activation,
            top_k=top_k,
            layer=layer,
            input_hook=input_hook,
            output_hook=output_hook,
            jumprelu_form=jumprelu_form,
        )
        self.activation: Activation = activation
        self.top_k = top_k
        self.center_input = bool(center_input)
        self.skip = bool(skip)
        self.layer = int(layer)
        self.input_hook: InputHook = input_hook
        self.output_hook: OutputHook = output_hook
        self.jumprelu_form: JumpReLUForm = jumprelu_form

        W_dec = torch.randn(d_transcoder, d_model)
        W_dec /= W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.W_enc = nn.Parameter(W_dec.T.contiguous())
        self.b_enc = nn.Parameter(torch.zeros(d_transcoder))
        self.W_dec = nn.Parameter(W_dec)
        self.b_dec_out = nn.Parameter(torch.zeros(d_model))
        if center_input:
            self.b_dec_in = nn.Parameter(torch.zeros(d_model))
        else:
            self.register_parameter("b_dec_in", None)
        if activation == "jumprelu":
            self.threshold = nn.Parameter(torch.zeros(d_transcoder))
        else:
            self.register_parameter("threshold", None)
        if skip:
            self.W_skip = nn.Parameter(torch.zeros(d_model, d_model))
        else:
            self.register_parameter("W_skip", None)

    # --- shape and config ---------------------------------------------------------------------

    @property
    def d_model(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_transcoder(self) -> int:
        return int(self.W_enc.shape[1])

    @property
    def n_features(self) -> int:
        """Same as ``d_transcoder``."""
        return self.d_transcoder

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    def config(self) -> dict[str, Any]:
        """Every constructor argument, JSON-serialisable."""
        return {
            "d_model": self.d_model,
            "d_transcoder": self.d_transcoder,
            "activation": self.activation,
            "top_k": self.top_k,
            "center_input": self.center_input,
            "skip": self.skip,
            "layer": self.layer,
            "input_hook": self.input_hook,
            "output_hook": self.output_hook,
            "jumprelu_form": self.jumprelu_form,
        }

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value!r}" for key, value in self.config().items())

    # --- the computation ----------------------------------------------------------------------

    def _input(self, x: Tensor) -> Tensor:
        """``x`` in the parameters' dtype and device, checked against ``d_model``."""
        if x.shape[-1] != self.d_model:
            raise InputError(
                f"transcoder input has last dimension {x.shape[-1]}, expected d_model={self.d_model}"
            )
        return x.to(device=self.W_enc.device, dtype=self.W_enc.dtype)

    def _centered(self, x: Tensor) -> Tensor:
        if self.b_dec_in is not None:
            return x - self.b_dec_in
        return x

    def pre_activation(self, x: Tensor) -> Tensor:
        """Feature pre-activations ``x_c @ W_enc + b_enc``: (..., d_model) -> (..., d_transcoder)."""
        x_c = self._centered(self._input(x))  # (..., d_model)
        return x_c @ self.W_enc + self.b_enc

    def activate(self, pre: Tensor) -> Tensor:
        """Apply the activation to pre-activations of *all* features: (..., d_transcoder)."""
        if pre.shape[-1] != self.d_transcoder:
            raise InputError(
                f"pre-activations have last dimension {pre.shape[-1]}, "
                f"expected d_transcoder={self.d_transcoder}"
            )
        return self._activate(pre, self.threshold)

    def _activate(self, pre: Tensor, threshold: Tensor | None) -> Tensor:
        if self.activation == "relu":
            return F.relu(pre)
        if self.activation == "jumprelu":
            assert threshold is not None
            gated = F.relu(pre) if self.jumprelu_form == "relu" else pre
            return gated * (pre > threshold)
        assert self.top_k is not None
        positive = F.relu(pre)
        k = min(self.top_k, pre.shape[-1])
        values, indices = positive.topk(k, dim=-1)  # (..., k)
        return torch.zeros_like(positive).scatter(-1, indices, values)

    def encode(self, x: Tensor) -> Tensor:
        """Feature activations: (..., d_model) -> (..., d_transcoder)."""
        return self.activate(self.pre_activation(x))

    def encode_slice(self, x: Tensor, start: int, stop: int) -> Tensor:
        """Activations of features ``[start, stop)`` only: (..., d_model) -> (..., stop - start).

        For ``relu`` and ``jumprelu`` only the needed encoder columns are multiplied, and the result
        equals ``encode(x)[..., start:stop]`` exactly. For ``topk`` a feature's activation depends
        on the ranking over *all* features, so the full pre-activations are computed and sliced:
        no saving, but the same exact answer.
        """
        if not (0 <= start < stop <= self.d_transcoder):
            raise InputError(
                f"feature slice [{start}, {stop}) is not inside [0, {self.d_transcoder})"
            )
        if self.activation == "topk":
            return self.encode(x)[..., start:stop]
        x_c = self._centered(self._input(x))  # (..., d_model)
        pre = x_c @ self.W_enc[:, start:stop] + self.b_enc[start:stop]  # (..., stop - start)
        threshold = None if self.threshold is None else self.threshold[start:stop]
        return self._activate(pre, threshold)

    def decode(self, activations: Tensor, x: Tensor | None = None) -> Tensor:
        """Output ``a @ W_dec + b_dec_out (+ x @ W_skip)``: (..., d_transcoder) -> (..., d_model).

        ``x`` is the (uncentered) transcoder input, required for skip transcoders and ignored
        otherwise.
        """
        if activations.shape[-1] != self.d_transcoder:
            raise InputError(
                f"activations have last dimension {activations.shape[-1]}, "
                f"expected d_transcoder={self.d_transcoder}"
            )
        a = activations.to(device=self.W_dec.device, dtype=self.W_dec.dtype)
        y = a @ self.W_dec + self.b_dec_out  # (..., d_model)
        if self.W_skip is not None:
            if x is None:
                raise InputError("decode of a skip transcoder needs the input x for x @ W_skip")
            y = y + self._input(x) @ self.W_skip
        return y

    def forward(self, x: Tensor) -> Tensor:
        """Predicted MLP output: (..., d_model) -> (..., d_model)."""
        return self.decode(self.encode(x), x if self.skip else None)

    def error(self, x: Tensor, y_true: Tensor) -> Tensor:
        """Reconstruction error ``y_true - forward(x)``: (..., d_model)."""
        y_hat = self.forward(x)
        return y_true.to(device=y_hat.device, dtype=y_hat.dtype) - y_hat

    # --- construction from tensors, native save / load ----------------------------------------

    @classmethod
    def from_tensors(
        cls,
        tensors: Mapping[str, Tensor],
        *,
        source: str,
        d_model: int | None = None,
        activation: Activation = "relu",
        top_k: int | None = None,
        center_input: bool = False,
        skip: bool = False,
        layer: int = 0,
        input_hook: InputHook = "mlp_in",
        output_hook: OutputHook = "mlp_out",
        jumprelu_form: JumpReLUForm = "pre",
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Transcoder:
        """Build a transcoder from tensors already in this class's orientation.

        ``tensors`` holds ``W_enc`` (d_model, d_transcoder), ``b_enc``, ``W_dec`` (d_transcoder,
        d_model), ``b_dec_out`` and, as the config requires, ``b_dec_in``, ``threshold``, ``W_skip``
        (extra keys are ignored). Every shape is checked; a missing tensor, a wrong number of
        dimensions or a dimension that disagrees with ``d_model`` (inferred from ``W_enc`` when not
        given) raises :class:`InputError` naming ``source`` (the file) and the dimension at fault.
        """
        required = ["W_enc", "b_enc", "W_dec", "b_dec_out"]
        if center_input:
            required.append("b_dec_in")
        if activation == "jumprelu":
            required.append("threshold")
        if skip:
            required.append("W_skip")
        for key in required:
            if key not in tensors:
                raise InputError(f"{source}: missing tensor {key!r}")
        W_enc = tensors["W_enc"]
        _check_ndim(source, "W_enc", W_enc, 2)
        if d_model is None:
            d_model = int(W_enc.shape[0])
        d_transcoder = int(W_enc.shape[1])
        expected: dict[str, tuple[tuple[int, str], ...]] = {
            "W_enc": ((d_model, "d_model"), (d_transcoder, "d_transcoder")),
            "b_enc": ((d_transcoder, "d_transcoder"),),
            "W_dec": ((d_transcoder, "d_transcoder"), (d_model, "d_model")),
            "b_dec_out": ((d_model, "d_model"),),
            "b_dec_in": ((d_model, "d_model"),),
            "threshold": ((d_transcoder, "d_transcoder"),),
            "W_skip": ((d_model, "d_model"), (d_model, "d_model")),
        }
        for key in required:
            check_shape(source, key, tensors[key], expected[key])
        with torch.device("meta"):
            transcoder = cls(
                d_model,
                d_transcoder,
                activation=activation,
                top_k=top_k,
                center_input=center_input,
                skip=skip,
                layer=layer,
                input_hook=input_hook,
                output_hook=output_hook,
                jumprelu_form=jumprelu_form,
            )
        state = {
            key: tensors[key].detach().to(device=device or "cpu", dtype=dtype).contiguous()
            for key in required
        }
        transcoder.load_state_dict(state, strict=True, assign=True)
        return transcoder

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``transcoder.safetensors`` and ``config.json`` into ``directory``, atomically each."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {
            name: param.detach().to("cpu").contiguous() for name, param in self.named_parameters()
        }
        with atomic_path(directory / NATIVE_WEIGHTS_FILENAME) as tmp:
            save_file(tensors, str(tmp))
        config = {"format_version": NATIVE_FORMAT_VERSION, **self.config()}
        with atomic_path(directory / NATIVE_CONFIG_FILENAME) as tmp:
            tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        return directory

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Transcoder:
        """Read a transcoder written by :meth:`save`."""
        directory = Path(directory)
        config_path = directory / NATIVE_CONFIG_FILENAME
        weights_path = directory / NATIVE_WEIGHTS_FILENAME
        for path in (config_path, weights_path):
            if not path.is_file():
                raise InputError(f"{path}: file not found")
        try:
            config = json.loads(config_path.read_text())
        except json.JSONDecodeError as error:
            raise InputError(f"{config_path}: not valid JSON ({error})") from error
        if not isinstance(config, dict):
            raise InputError(f"{config_path}: expected a JSON object")
        version = config.get("format_version")
        if version != NATIVE_FORMAT_VERSION:
            raise InputError(
                f"{config_path}: format_version {version!r} is not the supported "
                f"{NATIVE_FORMAT_VERSION}"
            )
        missing = [key for key in _CONFIG_KEYS if key not in config]
        if missing:
            raise InputError(f"{config_path}: missing config key(s) {', '.join(missing)}")
        config = {**_OPTIONAL_CONFIG_DEFAULTS, **config}
        tensors = read_safetensors(weights_path)
        transcoder = cls.from_tensors(
            tensors,
            source=str(weights_path),
            d_model=int(config["d_model"]),
            activation=config["activation"],
            top_k=config["top_k"],
            center_input=bool(config["center_input"]),
            skip=bool(config["skip"]),
            layer=int(config["layer"]),
            input_hook=config["input_hook"],
            output_hook=config["output_hook"],
            jumprelu_form=config["jumprelu_form"],
            dtype=dtype,
            device=device,
        )
        if transcoder.d_transcoder != int(config["d_transcoder"]):
            raise InputError(
                f"{weights_path}: d_transcoder mismatch: tensor 'W_enc' dimension 1 is "
                f"{transcoder.d_transcoder}, config.json says {config['d_transcoder']}"
            )
        return transcoder


# --- helpers shared with the format loaders ------------------------------------------------------


def _validate_config(
    *,
    d_model: int,
    d_transcoder: int,
    activation: str,
    top_k: int | None,
    layer: int,
    input_hook: str,
    output_hook: str,
    jumprelu_form: str = "pre",
) -> None:
    if int(d_model) <= 0 or int(d_transcoder) <= 0:
        raise InputError(
            f"d_model and d_transcoder must be positive, got {d_model} and {d_transcoder}"
        )
    if activation not in ACTIVATIONS:
        raise InputError(f"activation {activation!r} is not one of {', '.join(ACTIVATIONS)}")
    if activation == "topk":
        if top_k is None or not 1 <= int(top_k) <= int(d_transcoder):
            raise InputError(f"top_k must be in [1, {d_transcoder}] for topk, got {top_k!r}")
    elif top_k is not None:
        raise InputError(f"top_k is only meaningful for activation 'topk', got top_k={top_k}")
    if int(layer) < 0:
        raise InputError(f"layer must be >= 0, got {layer}")
    if input_hook not in INPUT_HOOKS:
        raise InputError(f"input_hook {input_hook!r} is not one of {', '.join(INPUT_HOOKS)}")
    if output_hook not in OUTPUT_HOOKS:
        raise InputError(f"output_hook {output_hook!r} is not one of {', '.join(OUTPUT_HOOKS)}")
    if jumprelu_form not in JUMPRELU_FORMS:
        raise InputError(
            f"jumprelu_form {jumprelu_form!r} is not one of {', '.join(JUMPRELU_FORMS)}"
        )


def _check_ndim(source: str, key: str, tensor: Tensor, ndim: int) -> None:
    if tensor.ndim != ndim:
        raise InputError(
            f"{source}: tensor {key!r} has {tensor.ndim} dimension(s) "
            f"(shape {tuple(tensor.shape)}), expected {ndim}"
        )


def check_shape(
    source: str, key: str, tensor: Tensor, expected: tuple[tuple[int, str], ...]
) -> None:
    """Raise :class:`InputError` unless ``tensor`` has the ``(size, name)`` dimensions given.

    The message names ``source``, the tensor key, the dimension index, its name and both sizes.
    """
    _check_ndim(source, key, tensor, len(expected))
    for index, (size, name) in enumerate(expected):
        if int(tensor.shape[index]) != int(size):
            raise InputError(
                f"{source}: {name} mismatch: tensor {key!r} dimension {index} is "
                f"{tensor.shape[index]}, expected {name}={size}"
            )


def read_safetensors(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """All tensors of a safetensors file on CPU; :class:`InputError` if missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise InputError(f"{path}: not a readable safetensors file ({error})") from error
