"""The frozen-linearized replacement model that CircuitLens attribution differentiates.

One implementation for every model family: it runs on the Hugging Face modules through the
:class:`~circuit_insights.models.architectures.ArchitectureAdapter` and never names an architecture.

**Capture** (:func:`capture_frozen_state`) runs the real model once (eager attention, no grad)
and records, per layer, what the linearization freezes: the attention patterns (post-softmax, per
head; softcapping, sliding windows, rotary embeddings and Gemma-3's q/k norms only act through
them), the denominators of every norm (LayerNorm / RMSNorm), the true MLP outputs and, for layers
with a transcoder, its input, its sparse feature activations (which give the gates), the
features' decoder write ``sum_i a_i f_dec_i`` and the error ``true MLP output - transcoder
output`` at the transcoder's output hook.

The replay that uses what is captured here is :mod:`circuit_insights.circuitlens.frozen`."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor, nn

from circuit_insights.models.architectures import get_path, norm_scale, normalize
from circuit_insights.models.subject import SubjectModel
from circuit_insights.transcoders.base import Transcoder

FROZEN_ATTENTION = "circuit_insights_frozen"
"""Name under which the frozen-pattern attention function is registered in transformers."""

NORM_PARTS: tuple[str, ...] = (
    "pre_attention_norm",
    "post_attention_norm",
    "pre_mlp_norm",
    "post_mlp_norm",
)
#: Element budget of one dense activation chunk during capture (bounds memory for wide transcoders).
_ENCODE_CHUNK_ELEMENTS = 1 << 25


# --- the frozen-pattern attention function ------------------------------------------------------


@dataclass
class AttentionRecord:
    """Collects what head attribution needs from a replay: per layer, a zero probe added to the
    per-head attention output ``z`` (its gradient is d output / d z) and the value vectors.

    ``probes[layer]`` and ``values[layer]``: (batch, n_heads, pos, head_dim); values are repeated
    over the query heads of a key/value group (GQA) and detached.
    """

    layers: frozenset[int]
    probes: dict[int, Tensor] = field(default_factory=dict)
    values: dict[int, Tensor] = field(default_factory=dict)


@dataclass
class _AttentionCall:
    pattern: Tensor  # (batch, n_heads, pos, pos)
    value_mask: Tensor | None  # (batch, n_heads, pos) multiplier on each source position
    record: AttentionRecord | None
    layer: int


_ACTIVE = threading.local()
_REGISTER_LOCK = threading.Lock()
_REGISTERED = False


def _frozen_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """``z = frozen_pattern @ value`` per head; query, key and mask are ignored.

    value: (batch, n_kv_heads, pos, head_dim) -> returns (batch, pos, n_heads, head_dim).
    """
    call: _AttentionCall = _ACTIVE.call
    pattern = call.pattern
    n_rep = pattern.shape[1] // value.shape[1]
    v = value.to(pattern.dtype)
    if n_rep > 1:
        v = v.repeat_interleave(n_rep, dim=1)  # (batch, n_heads, pos, head_dim)
    record = call.record
    if record is not None and call.layer in record.layers:
        record.values[call.layer] = v.detach()
    if call.value_mask is not None:
        v = v * call.value_mask[..., None].to(v.dtype)
    z = pattern @ v  # (batch, n_heads, pos, head_dim)
    if record is not None and call.layer in record.layers:
        probe = torch.zeros_like(z, requires_grad=True)
        record.probes[call.layer] = probe
        z = z + probe
    return z.transpose(1, 2).to(value.dtype).contiguous(), None


def _ensure_registered() -> None:
    global _REGISTERED
    with _REGISTER_LOCK:
        if not _REGISTERED:
            from transformers import AttentionInterface

            AttentionInterface.register(FROZEN_ATTENTION, _frozen_attention)
            _REGISTERED = True


def _attention_configs(model: SubjectModel) -> list[object]:
    configs: dict[int, object] = {id(model.hf_model.config): model.hf_model.config}
    for block in model.blocks:
        config = getattr(get_path(block, model.adapter.attention), "config", None)
        if config is not None:
            configs[id(config)] = config
    return list(configs.values())


@contextlib.contextmanager
def attention_implementation(model: SubjectModel, name: str) -> Iterator[None]:
    """Temporarily dispatch every attention module of ``model`` to implementation ``name``."""
    configs = _attention_configs(model)
    previous = [getattr(config, "_attn_implementation", None) for config in configs]
    try:
        for config in configs:
            config._attn_implementation = name  # type: ignore[attr-defined]
        yield
    finally:
        for config, value in zip(configs, previous, strict=True):
            config._attn_implementation = value  # type: ignore[attr-defined]


# --- captured state ----------------------------------------------------------------------------------


@dataclass
class TranscoderCapture:
    """What capture records for one layer with a transcoder.

    ``active``: (n, 3) long rows ``(row, position, feature)`` of every non-zero activation, sorted;
    ``values``: (n,) those activations; ``write``: (batch, pos, d_model) ``sum_i a_i f_dec_i``;
    ``error``: (batch, pos, d_model) true output - transcoder output at the output hook (None when
    the MLP output was not captured); ``x``: (batch, pos, d_model) the transcoder input from the
    plain forward pass.
    """

    active: Tensor
    values: Tensor
    write: Tensor | None
    error: Tensor | None
    x: Tensor


@dataclass
class LayerCapture:
    """What capture records for one layer (all tensors with a leading batch dimension).

    ``pattern``: (batch, n_heads, pos, pos) attention probabilities; ``attention_args`` /
    ``attention_kwargs``: the attention module's call without its hidden states (replayed);
    ``attention_constant``: (batch, pos, d_model) the attention output for a zero input under the
    frozen pattern (value and output biases), None when the module has no biases; ``scales``: norm part -> (batch, pos, 1) frozen
    denominator; ``mlp_residual``: (batch, pos, d_model) what the MLP adds to the residual stream
    (after a post-MLP norm), None when not captured.
    """

    pattern: Tensor
    attention_args: tuple[Any, ...]
    attention_kwargs: dict[str, Any]
    attention_constant: Tensor | None
    scales: dict[str, Tensor]
    mlp_residual: Tensor | None
    transcoder: TranscoderCapture | None


@dataclass
class FrozenState:
    """Everything the replay freezes, for a batch of right-padded contexts.

    ``input_ids``: (batch, pos); ``embeddings``: (batch, pos, d_model) the residual stream entering
    layer 0; ``layers``: captured layers 0..len-1 (the last one only up to its pre-MLP norm when
    ``complete`` is False); ``final_scale``: (batch, pos, 1) denominator of the final norm (None when
    not captured).
    """

    input_ids: Tensor
    embeddings: Tensor
    layers: list[LayerCapture]
    final_scale: Tensor | None
    complete: bool

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0])

    def select(self, rows: Tensor) -> FrozenState:
        """The state of rows ``rows`` (long, (n,)), e.g. one row per (context, feature) pair."""
        n_source = self.batch_size
        cache: dict[int, Tensor] = {}

        def pick(obj: Any) -> Any:
            if isinstance(obj, Tensor):
                if obj.ndim >= 2 and obj.shape[0] == n_source:
                    key = id(obj)
                    if key not in cache:
                        cache[key] = obj.index_select(0, rows.to(obj.device))
                    return cache[key]
                return obj
            if isinstance(obj, tuple):
                return tuple(pick(item) for item in obj)
            if isinstance(obj, list):
                return [pick(item) for item in obj]
            if isinstance(obj, dict):
                return {key: pick(value) for key, value in obj.items()}
            return obj

        layers = []
        for layer in self.layers:
            transcoder = layer.transcoder
            if transcoder is not None:
                active, values = _select_sparse(transcoder.active, transcoder.values, rows)
                transcoder = TranscoderCapture(
                    active=active,
                    values=values,
                    write=pick(transcoder.write),
                    error=pick(transcoder.error),
                    x=pick(transcoder.x),
                )
            layers.append(
                replace(
                    layer,
                    **{
                        f.name: pick(getattr(layer, f.name))
                        for f in fields(layer)
                        if f.name != "transcoder"
                    },
                    transcoder=transcoder,
                )
            )
        return FrozenState(
            input_ids=pick(self.input_ids),
            embeddings=pick(self.embeddings),
            layers=layers,
            final_scale=pick(self.final_scale),
            complete=self.complete,
        )


def _select_sparse(active: Tensor, values: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    """Re-index sparse ``(row, position, feature)`` entries (sorted by row) for ``rows``."""
    rows = rows.to(active.device)
    n_source = int(rows.max()) + 1 if len(rows) else 0
    counts = torch.bincount(active[:, 0], minlength=n_source)[:n_source]  # entries per row
    starts = torch.cumsum(counts, 0) - counts
    selected = counts[rows]  # (n_rows,)
    new_row = torch.repeat_interleave(torch.arange(len(rows), device=active.device), selected)
    first = torch.repeat_interleave(torch.cumsum(selected, 0) - selected, selected)
    source = torch.repeat_interleave(starts[rows], selected) + (
        torch.arange(len(new_row), device=active.device) - first
    )
    entries = active[source].clone()
    entries[:, 0] = new_row
    return entries, values[source]


class _StopCapture(Exception):
    """Raised by a hook to end the capture forward pass after the last needed layer."""


def compute_dtype(model: SubjectModel) -> torch.dtype:
    """float64 for float64 models (finite-difference checks), else float32."""
    return torch.float64 if model.embedding_module.weight.dtype == torch.float64 else torch.float32


def _hidden_position(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    if args:
        return "args"
    if "hidden_states" in kwargs:
        return "kwargs"
    raise RuntimeError("cannot find the hidden states in the attention module's call")


def capture_frozen_state(
    model: SubjectModel,
    transcoders: Mapping[int, Transcoder],
    input_ids: Tensor,
    *,
    target_layer: int,
    complete: bool,
) -> FrozenState:
    """Run ``input_ids`` (batch, pos; right-padded, causal) once and record what is frozen.

    With ``complete`` every layer and the final norm are captured (needed for the output side);
    otherwise the pass stops at the input of ``target_layer``'s pre-MLP norm.
    """
    adapter = model.adapter
    device = model.device
    dtype = compute_dtype(model)
    n_layers = model.n_layers if complete else target_layer + 1
    stop_layer = None if complete else target_layer
    seen: dict[tuple[int, str], Any] = {}
    handles = []

    def keep_input(key: tuple[int, str]):
        def hook(_module, args):
            seen[key] = args[0]

        return hook

    def keep_output(key: tuple[int, str], stop: bool = False):
        def hook(_module, _args, output):
            seen[key] = output[0] if isinstance(output, tuple) else output
            if stop:
                raise _StopCapture

        return hook

    try:
        for layer in range(n_layers):
            block = model.blocks[layer]
            handles.append(
                get_path(block, adapter.pre_attention_norm).register_forward_pre_hook(
                    keep_input((layer, "resid_pre"))
                )
            )
            attention = get_path(block, adapter.attention)

            def keep_call(_module, args, kwargs, _layer=layer):
                where = _hidden_position(args, kwargs)
                if where == "args":
                    seen[(_layer, "call")] = (("hidden",) + tuple(args[1:]), dict(kwargs))
                else:
                    seen[(_layer, "call")] = (tuple(args), {**kwargs, "hidden_states": "hidden"})

            def keep_pattern(_module, _args, output, _layer=layer):
                seen[(_layer, "pattern")] = output[1]

            handles.append(attention.register_forward_pre_hook(keep_call, with_kwargs=True))
            handles.append(attention.register_forward_hook(keep_pattern))
            if adapter.post_attention_norm is not None:
                handles.append(
                    get_path(block, adapter.post_attention_norm).register_forward_pre_hook(
                        keep_input((layer, "attention_out"))
                    )
                )
            pre_mlp = get_path(block, adapter.pre_mlp_norm)
            handles.append(pre_mlp.register_forward_pre_hook(keep_input((layer, "resid_mid"))))
            handles.append(
                pre_mlp.register_forward_hook(
                    keep_output((layer, "mlp_in"), stop=layer == stop_layer)
                )
            )
            handles.append(
                get_path(block, adapter.mlp).register_forward_hook(keep_output((layer, "mlp_out")))
            )
            if adapter.post_mlp_norm is not None:
                handles.append(
                    get_path(block, adapter.post_mlp_norm).register_forward_hook(
                        keep_output((layer, "mlp_out_post_norm"))
                    )
                )
        if complete:
            handles.append(
                get_path(model.hf_model, adapter.final_norm).register_forward_pre_hook(
                    keep_input((-1, "final"))
                )
            )
        # The decoder without its LM head: the logits are not needed.
        decoder = getattr(model.hf_model, "base_model", model.hf_model)
        with torch.no_grad(), attention_implementation(model, "eager"):
            try:
                decoder(input_ids=input_ids.to(device), use_cache=False)
            except _StopCapture:
                pass
    finally:
        for handle in handles:
            handle.remove()

    layers: list[LayerCapture] = []
    for layer in range(n_layers):
        block = model.blocks[layer]
        captured_mlp = layer != stop_layer
        scales: dict[str, Tensor] = {}
        sources = {
            "pre_attention_norm": (layer, "resid_pre"),
            "post_attention_norm": (layer, "attention_out"),
            "pre_mlp_norm": (layer, "resid_mid"),
            "post_mlp_norm": (layer, "mlp_out"),
        }
        for part, key in sources.items():
            path = getattr(adapter, part)
            if path is None or key not in seen:
                continue
            scales[part] = norm_scale(get_path(block, path), adapter.norm_kind, seen[key]).to(dtype)
        args, kwargs = seen[(layer, "call")]
        pattern = seen[(layer, "pattern")]
        if pattern is None:
            raise RuntimeError(f"layer {layer}: the attention module returned no pattern")
        pattern = pattern.to(dtype)
        constant = None
        if _has_bias(get_path(block, adapter.attention)):
            zeros = torch.zeros_like(seen[(layer, "resid_pre")])
            with torch.no_grad():
                constant = replay_attention(model, layer, zeros, args, kwargs, pattern, None, None)
        mlp_residual = None
        if captured_mlp:
            if adapter.post_mlp_norm is not None:
                mlp_residual = seen[(layer, "mlp_out_post_norm")].to(dtype)
            else:
                mlp_residual = seen[(layer, "mlp_out")].to(dtype)
        transcoder_capture = None
        transcoder = transcoders.get(layer)
        if transcoder is not None:
            transcoder_capture = _capture_transcoder(
                model, transcoder, layer, seen, captured_mlp, dtype
            )
        layers.append(
            LayerCapture(
                pattern=pattern,
                attention_args=args,
                attention_kwargs=kwargs,
                attention_constant=constant,
                scales=scales,
                mlp_residual=mlp_residual,
                transcoder=transcoder_capture,
            )
        )
    final_scale = None
    if complete:
        final_norm = get_path(model.hf_model, adapter.final_norm)
        final_scale = norm_scale(final_norm, adapter.norm_kind, seen[(-1, "final")]).to(dtype)
    return FrozenState(
        input_ids=input_ids.to(device),
        embeddings=seen[(0, "resid_pre")].to(dtype),
        layers=layers,
        final_scale=final_scale,
        complete=complete,
    )


def _has_bias(module: nn.Module) -> bool:
    """Whether a module has bias parameters (PyTorch's naming); without, its map is linear."""
    return any(name.split(".")[-1] == "bias" for name, _ in module.named_parameters())


def _plain_transcoder_input(
    model: SubjectModel, transcoder: Transcoder, layer: int, seen: Mapping[tuple[int, str], Any]
) -> Tensor:
    """The transcoder input as the plain forward pass gives it. (batch, pos, d_model)"""
    resid_mid = seen[(layer, "resid_mid")]
    if transcoder.input_hook == "resid_mid":
        return resid_mid
    if transcoder.input_hook == "mlp_in_unaffine":
        norm = model.block_part(layer, "pre_mlp_norm")
        return normalize(norm, model.adapter.norm_kind, resid_mid)
    return seen[(layer, "mlp_in")]


def _capture_transcoder(
    model: SubjectModel,
    transcoder: Transcoder,
    layer: int,
    seen: Mapping[tuple[int, str], Any],
    captured_mlp: bool,
    dtype: torch.dtype,
) -> TranscoderCapture:
    device = model.device
    x = _plain_transcoder_input(model, transcoder, layer, seen).to(dtype)  # (batch, pos, d_model)
    batch, n_pos, d_model = x.shape
    flat = x.reshape(-1, d_model)
    W_dec = transcoder.W_dec.detach().to(device=device, dtype=dtype)
    chunk = max(1, _ENCODE_CHUNK_ELEMENTS // max(1, transcoder.d_transcoder))
    actives, values, writes = [], [], []
    with torch.no_grad():
        for start in range(0, flat.shape[0], chunk):
            acts = transcoder.encode(flat[start : start + chunk]).to(device=device, dtype=dtype)
            index = acts.nonzero()  # (n, 2): flat position, feature
            actives.append(torch.stack([index[:, 0] + start, index[:, 1]], dim=1))
            values.append(acts[index[:, 0], index[:, 1]])
            if captured_mlp:
                writes.append(acts @ W_dec)  # (chunk, d_model)
    index = torch.cat(actives)
    active = torch.stack([index[:, 0] // n_pos, index[:, 0] % n_pos, index[:, 1]], dim=1)
    write = error = None
    if captured_mlp:
        write = torch.cat(writes).reshape(batch, n_pos, d_model)
        output = write + transcoder.b_dec_out.detach().to(device=device, dtype=dtype)
        if transcoder.W_skip is not None:
            output = output + x @ transcoder.W_skip.detach().to(device=device, dtype=dtype)
        hook = "mlp_out"
        if transcoder.output_hook == "mlp_out_post_norm" and model.adapter.post_mlp_norm:
            hook = "mlp_out_post_norm"
        error = seen[(layer, hook)].to(dtype) - output
    return TranscoderCapture(active=active, values=torch.cat(values), write=write, error=error, x=x)


def replay_attention(
    model: SubjectModel,
    layer: int,
    hidden: Tensor,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    pattern: Tensor,
    value_mask: Tensor | None,
    record: AttentionRecord | None,
) -> Tensor:
    """Call layer ``layer``'s attention module on ``hidden`` with the frozen ``pattern``.

    hidden: (batch, pos, d_model) -> (batch, pos, d_model) in the compute dtype.
    """
    _ensure_registered()
    module = get_path(model.blocks[layer], model.adapter.attention)
    hidden = hidden.to(model.embedding_module.weight.dtype)
    if args and isinstance(args[0], str):
        call_args, call_kwargs = (hidden, *args[1:]), dict(kwargs)
    else:
        call_args, call_kwargs = tuple(args), {**kwargs, "hidden_states": hidden}
    previous = getattr(_ACTIVE, "call", None)
    _ACTIVE.call = _AttentionCall(pattern, value_mask, record, layer)
    try:
        with attention_implementation(model, FROZEN_ATTENTION):
            output = module(*call_args, **call_kwargs)
    finally:
        _ACTIVE.call = previous
    output = output[0] if isinstance(output, tuple) else output
    return output.to(pattern.dtype)
