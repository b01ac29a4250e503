"""Subject models: loading any Hugging Face causal LM and the one place that knows architectures.

:class:`ArchitectureAdapter` says where each part of a transformer block lives for a model family
(GPT-2, Gemma-2, Gemma-3, Llama); no other module contains architecture-specific names.
:class:`SubjectModel` wraps the Hugging Face model, its tokenizer, its adapter and an nnsight
view of it, and reads the transcoder hook points (``mlp_in``, ``mlp_in_unaffine``, ``resid_mid``,
``mlp_out``, ``mlp_out_post_norm``) of any layers in one forward pass.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from circuit_insights.errors import InputError

if TYPE_CHECKING:
    from circuit_insights.transcoders.base import Transcoder

log = logging.getLogger(__name__)

Family = Literal["gpt2", "gemma2", "gemma3", "llama"]
NormKind = Literal["layernorm", "rmsnorm", "gemma_rmsnorm"]
InputHook = Literal["mlp_in", "mlp_in_unaffine", "resid_mid"]
OutputHook = Literal["mlp_out", "mlp_out_post_norm"]
INPUT_HOOKS: tuple[str, ...] = ("mlp_in", "mlp_in_unaffine", "resid_mid")
OUTPUT_HOOKS: tuple[str, ...] = ("mlp_out", "mlp_out_post_norm")


@dataclass(frozen=True)
class ArchitectureAdapter:
    """Where the parts of a decoder-only transformer live, as attribute paths.

    Paths of the top-level parts are relative to the causal-LM module; paths of block parts are
    relative to one block (``layers[i]``).
    """

    family: Family
    layers: str
    embed: str
    position_embed: str | None
    final_norm: str
    unembed: str
    attention: str
    pre_attention_norm: str
    post_attention_norm: str | None
    pre_mlp_norm: str
    mlp: str
    post_mlp_norm: str | None
    attention_out_proj: str
    norm_kind: NormKind
    embed_scaled: bool
    """Whether the residual stream starts at ``embedding * sqrt(d_model)`` (Gemma)."""
    uses_bos: bool
    """Whether contexts start with the model's BOS token by default."""


_GPT2 = ArchitectureAdapter(
    family="gpt2",
    layers="transformer.h",
    embed="transformer.wte",
    position_embed="transformer.wpe",
    final_norm="transformer.ln_f",
    unembed="lm_head",
    attention="attn",
    pre_attention_norm="ln_1",
    post_attention_norm=None,
    pre_mlp_norm="ln_2",
    mlp="mlp",
    post_mlp_norm=None,
    attention_out_proj="attn.c_proj",
    norm_kind="layernorm",
    embed_scaled=False,
    uses_bos=False,
)
_GEMMA2 = ArchitectureAdapter(
    family="gemma2",
    layers="model.layers",
    embed="model.embed_tokens",
    position_embed=None,
    final_norm="model.norm",
    unembed="lm_head",
    attention="self_attn",
    pre_attention_norm="input_layernorm",
    post_attention_norm="post_attention_layernorm",
    pre_mlp_norm="pre_feedforward_layernorm",
    mlp="mlp",
    post_mlp_norm="post_feedforward_layernorm",
    attention_out_proj="self_attn.o_proj",
    norm_kind="gemma_rmsnorm",
    embed_scaled=True,
    uses_bos=True,
)
_GEMMA3 = ArchitectureAdapter(**{**_GEMMA2.__dict__, "family": "gemma3"})
_LLAMA = ArchitectureAdapter(
    family="llama",
    layers="model.layers",
    embed="model.embed_tokens",
    position_embed=None,
    final_norm="model.norm",
    unembed="lm_head",
    attention="self_attn",
    pre_attention_norm="input_layernorm",
    post_attention_norm=None,
    pre_mlp_norm="post_attention_layernorm",
    mlp="mlp",
    post_mlp_norm=None,
    attention_out_proj="self_attn.o_proj",
    norm_kind="rmsnorm",
    embed_scaled=False,
    uses_bos=True,
)

#: Hugging Face ``config.model_type`` -> adapter. Mistral and Qwen2 share Llama's layout.
ADAPTERS: dict[str, ArchitectureAdapter] = {
    "gpt2": _GPT2,
    "gemma2": _GEMMA2,
    "gemma3": _GEMMA3,
    "gemma3_text": _GEMMA3,
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
}


def adapter_for(model_type: str) -> ArchitectureAdapter:
    """The adapter of a Hugging Face ``model_type``; :class:`InputError` for unknown ones."""
    try:
        return ADAPTERS[model_type]
    except KeyError:
        known = ", ".join(sorted(ADAPTERS))
        raise InputError(
            f"model architecture {model_type!r} is not supported (known: {known})"
        ) from None


def get_path(root: object, path: str) -> Any:
    """Follow a dotted attribute path (``model.layers``) from ``root``."""
    node = root
    for part in path.split("."):
        node = getattr(node, part)
    return node


def normalize(norm: nn.Module, kind: NormKind, x: Tensor) -> Tensor:
    """A norm's normalization without its affine weight and bias. x: (..., d_model)."""
    eps = float(getattr(norm, "eps", getattr(norm, "variance_epsilon", 1e-6)))
    x = x.float()
    if kind == "layernorm":
        centered = x - x.mean(-1, keepdim=True)
        return centered / torch.sqrt(centered.pow(2).mean(-1, keepdim=True) + eps)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def norm_scale(norm: nn.Module, kind: NormKind, x: Tensor) -> Tensor:
    """The per-position denominator of a norm (what attribution freezes). x: (..., d_model) -> (..., 1)."""
    eps = float(getattr(norm, "eps", getattr(norm, "variance_epsilon", 1e-6)))
    x = x.float()
    if kind == "layernorm":
        x = x - x.mean(-1, keepdim=True)
    return torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def norm_gain(norm: nn.Module, kind: NormKind) -> Tensor:
    """The effective elementwise weight of a norm (Gemma's RMSNorm multiplies by 1 + weight). (d_model,)"""
    weight: Tensor = norm.weight.detach().float()  # type: ignore[operator]
    return 1.0 + weight if kind == "gemma_rmsnorm" else weight


def norm_bias(norm: nn.Module) -> Tensor | None:
    """The norm's additive bias (LayerNorm), or None. (d_model,)"""
    bias = getattr(norm, "bias", None)
    return None if bias is None else bias.detach().float()


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the deepest needed value is read."""


class SubjectModel:
    """A causal LM under study, with its tokenizer, architecture adapter and nnsight view."""

    def __init__(
        self,
        hf_model: nn.Module,
        tokenizer: object | None,
        *,
        name: str = "model",
        prepend_bos: bool | None = None,
        bos_token_id: int | None = None,
    ) -> None:
        self.hf_model = hf_model.eval()
        self.tokenizer = tokenizer
        self.name = name
        config: Any = hf_model.config
        self.config = config
        self.adapter = adapter_for(config.model_type)
        self.prepend_bos = self.adapter.uses_bos if prepend_bos is None else prepend_bos
        if bos_token_id is None:
            bos_token_id = getattr(self.config, "bos_token_id", None)
            if bos_token_id is None and tokenizer is not None:
                bos_token_id = getattr(tokenizer, "bos_token_id", None)
        if self.prepend_bos and bos_token_id is None:
            raise InputError(
                f"model {name!r} should start contexts with BOS but has no bos_token_id"
            )
        self._bos_token_id = bos_token_id
        self._nnsight: object | None = None

    # --- loading -------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        name: str | None = None,
        dtype: torch.dtype = torch.float32,
        device: str = "cpu",
        prepend_bos: bool | None = None,
        local_files_only: bool = False,
    ) -> SubjectModel:
        """Load a Hugging Face causal LM by hub id or local folder."""
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        source = str(name_or_path)
        looks_local = source.startswith((".", "/")) or Path(source).exists()
        if looks_local and not Path(source).is_dir():
            raise InputError(f"model folder {source} does not exist")
        try:
            config = AutoConfig.from_pretrained(source, local_files_only=local_files_only)
        except (OSError, ValueError) as exc:
            raise InputError(f"unknown model {source!r}: {exc}") from exc
        adapter_for(config.model_type)  # fail before loading weights
        hf_model: Any = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, local_files_only=local_files_only
        )
        hf_model = hf_model.to(device)
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)
        return cls(hf_model, tokenizer, name=name or Path(source).name, prepend_bos=prepend_bos)

    # --- shapes --------------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def d_model(self) -> int:
        return int(self.embedding_module.weight.shape[1])

    @property
    def vocab_size(self) -> int:
        return int(self.embedding_module.weight.shape[0])

    @property
    def n_heads(self) -> int:
        return int(getattr(self.config, "num_attention_heads", getattr(self.config, "n_head", 0)))

    @property
    def n_kv_heads(self) -> int:
        return int(getattr(self.config, "num_key_value_heads", None) or self.n_heads)

    @property
    def head_dim(self) -> int:
        return int(getattr(self.config, "head_dim", None) or self.d_model // self.n_heads)

    @property
    def bos_token_id(self) -> int | None:
        """The model's own BOS id when contexts start with it, else None (e.g. GPT-2)."""
        return self._bos_token_id if self.prepend_bos else None

    @property
    def device(self) -> torch.device:
        return self.embedding_module.weight.device

    # --- parts ---------------------------------------------------------------------------------
    @property
    def blocks(self) -> nn.ModuleList:
        return get_path(self.hf_model, self.adapter.layers)  # type: ignore[return-value]

    @property
    def embedding_module(self) -> nn.Embedding:
        return get_path(self.hf_model, self.adapter.embed)  # type: ignore[return-value]

    def check_layer(self, layer: int, what: str = "layer") -> int:
        """Return ``layer`` or raise :class:`InputError` naming it when out of range."""
        if not isinstance(layer, int) or not 0 <= layer < self.n_layers:
            raise InputError(
                f"{what} {layer} is out of range: model {self.name!r} has layers 0..{self.n_layers - 1}"
            )
        return layer

    def block_part(self, layer: int, part: str) -> nn.Module:
        """A named part of block ``layer``: one of the adapter's block fields (``mlp``, ...)."""
        path = getattr(self.adapter, part)
        if path is None:
            raise InputError(f"model family {self.adapter.family!r} has no {part}")
        return get_path(self.blocks[self.check_layer(layer)], path)  # type: ignore[return-value]

    def embedding_matrix(self) -> Tensor:
        """W_E as the residual stream sees it (Gemma's sqrt(d_model) scale applied). (vocab, d_model)"""
        weight = self.embedding_module.weight.detach().float()
        if self.adapter.embed_scaled:
            weight = weight * self.embedding_scale()
        return weight

    def embedding_scale(self) -> float:
        """Factor between the embedding table and the residual stream (sqrt(d_model) in Gemma)."""
        if not self.adapter.embed_scaled:
            return 1.0
        scale = getattr(self.embedding_module, "embed_scale", None)
        if scale is not None:
            return float(scale)
        # Gemma-2 scales in the model's forward, rounded to the compute dtype.
        return float(
            torch.tensor(math.sqrt(self.d_model), dtype=self.embedding_module.weight.dtype)
        )

    def unembedding_matrix(self) -> Tensor:
        """W_U. (d_model, vocab)"""
        return get_path(self.hf_model, self.adapter.unembed).weight.detach().float().T  # type: ignore[union-attr]

    @property
    def nnsight(self) -> object:
        """An nnsight view of the Hugging Face model (built once)."""
        if self._nnsight is None:
            from nnsight import NNsight

            self._nnsight = NNsight(self.hf_model)
        return self._nnsight

    # --- tokens ----------------------------------------------------------------------------------
    def with_bos(self, token_ids: Sequence[int]) -> list[int]:
        """Prefix the model's own BOS where the model uses one."""
        bos = self.bos_token_id
        return list(token_ids) if bos is None else [bos, *token_ids]

    # --- reading hook points -----------------------------------------------------------------------
    def hook_values(
        self,
        input_ids: Tensor,
        requests: Mapping[int, Sequence[str]],
        attention_mask: Tensor | None = None,
    ) -> dict[tuple[int, str], Tensor]:
        """Run ``input_ids`` (batch, pos) and return the named hook values of the requested layers.

        ``requests`` maps a layer to hook names from :data:`INPUT_HOOKS` and :data:`OUTPUT_HOOKS`.
        The forward pass stops after the deepest requested layer. Values: (batch, pos, d_model).
        """
        for layer, hooks in requests.items():
            self.check_layer(layer)
            for hook in hooks:
                if hook not in INPUT_HOOKS + OUTPUT_HOOKS:
                    raise InputError(f"unknown hook {hook!r} (known: {INPUT_HOOKS + OUTPUT_HOOKS})")
        saved = self._trace_hooks(input_ids, requests, attention_mask)
        values: dict[tuple[int, str], Tensor] = {}
        for layer, hooks in requests.items():
            for hook in hooks:
                values[(layer, hook)] = self._hook_from_saved(layer, hook, saved)
        return values

    def _trace_hooks(
        self,
        input_ids: Tensor,
        requests: Mapping[int, Sequence[str]],
        attention_mask: Tensor | None,
    ) -> dict[tuple[int, str], Tensor]:
        """Read hook points with PyTorch forward hooks and stop after the deepest layer.

        Plain hooks, not an nnsight trace: nnsight reads a module's output before the module's
        forward hooks run, so it would not see a transcoder spliced in by :meth:`splice`.
        """
        saved: dict[tuple[int, str], Tensor] = {}
        handles = []
        deepest = max(requests)

        def keep(key: tuple[int, str], stop: bool):
            def hook(_module, args, output=None):
                saved[key] = (args[0] if output is None else output).detach()
                if stop:
                    raise _StopForward

            return hook

        for layer in sorted(requests):
            hooks = set(requests[layer])
            last = []
            if hooks & set(INPUT_HOOKS):
                norm = self.block_part(layer, "pre_mlp_norm")
                last.append(("pre", norm, (layer, "resid_mid")))
            if hooks & set(OUTPUT_HOOKS):
                last.append(("post", self.block_part(layer, "mlp"), (layer, "mlp_out")))
            if "mlp_out_post_norm" in hooks and self.adapter.post_mlp_norm:
                post = self.block_part(layer, "post_mlp_norm")
                last.append(("post", post, (layer, "mlp_out_post_norm")))
            for index, (kind, module, key) in enumerate(last):
                stop = layer == deepest and index == len(last) - 1
                if kind == "pre":
                    handles.append(module.register_forward_pre_hook(keep(key, stop)))
                else:
                    handles.append(module.register_forward_hook(keep(key, stop)))
        kwargs: dict[str, Tensor] = {"input_ids": input_ids.to(self.device)}
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask.to(self.device)
        try:
            with torch.no_grad():
                self.hf_model(**kwargs, use_cache=False)
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
        for layer, wanted in requests.items():
            if "mlp_out_post_norm" in wanted and not self.adapter.post_mlp_norm:
                saved[(layer, "mlp_out_post_norm")] = saved[(layer, "mlp_out")]
        return saved

    def _hook_from_saved(
        self, layer: int, hook: str, saved: Mapping[tuple[int, str], Tensor]
    ) -> Tensor:
        if hook in OUTPUT_HOOKS:
            return saved[(layer, hook)].float()
        resid_mid = saved[(layer, "resid_mid")].float()
        if hook == "resid_mid":
            return resid_mid
        norm = self.block_part(layer, "pre_mlp_norm")
        if hook == "mlp_in_unaffine":
            return normalize(norm, self.adapter.norm_kind, resid_mid)
        with torch.no_grad():
            weight: Tensor = norm.weight  # type: ignore[assignment]
            return norm(resid_mid.to(weight.dtype)).float()

    # --- splicing transcoders in place of MLPs -------------------------------------------------------
    @contextlib.contextmanager
    def splice(
        self,
        transcoders: Mapping[int, Transcoder],
        *,
        keep_error: bool = False,
        feature_override: Mapping[int, tuple[Tensor, Tensor]] | None = None,
    ) -> Iterator[None]:
        """Replace the MLP of each layer by its transcoder for forward passes inside the block.

        The transcoder reads its input hook and writes its output hook (``mlp_out``: replaces the
        MLP module's output; ``mlp_out_post_norm``: replaces what Gemma's post-feedforward norm adds
        to the residual). With ``keep_error`` the true MLP's output is kept, and only the features'
        part is swapped: ``true + (tc(x with overrides) - tc(x))``, so that without overrides the
        model is unchanged. ``feature_override`` maps a layer to (feature indices (k,), values (k,)
        or (batch, pos, k)) set as activations at every position.
        """
        handles = []
        adapter = self.adapter
        try:
            for layer, transcoder in transcoders.items():
                self.check_layer(layer)
                if transcoder.output_hook == "mlp_out_post_norm" and adapter.post_mlp_norm:
                    target = self.block_part(layer, "post_mlp_norm")
                else:
                    target = self.block_part(layer, "mlp")
                norm = self.block_part(layer, "pre_mlp_norm")
                captured: dict[str, Tensor] = {}

                def capture(_module, args, _captured=captured):
                    _captured["resid_mid"] = args[0]

                def replace(
                    _module,
                    _args,
                    output,
                    _captured=captured,
                    _layer=layer,
                    _tc=transcoder,
                    _norm=norm,
                ):
                    x = self._transcoder_input(_tc, _norm, _captured["resid_mid"])
                    activations = _tc.encode(x)
                    override = (feature_override or {}).get(_layer)
                    if override is None and keep_error:
                        return output
                    if override is not None:
                        features, values = override
                        steered = activations.clone()
                        steered[..., features] = values.to(steered.dtype)
                        new = _tc.decode(steered, x)
                        if keep_error:
                            new = output.float() + new - _tc.decode(activations, x)
                    else:
                        new = _tc.decode(activations, x)
                    return new.to(output.dtype)

                handles.append(norm.register_forward_pre_hook(capture))
                handles.append(target.register_forward_hook(replace))
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _transcoder_input(
        self, transcoder: Transcoder, norm: nn.Module, resid_mid: Tensor
    ) -> Tensor:
        hook = transcoder.input_hook
        if hook == "resid_mid":
            return resid_mid.float()
        if hook == "mlp_in_unaffine":
            return normalize(norm, self.adapter.norm_kind, resid_mid)
        return norm(resid_mid).float()

    def logits(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Plain forward pass. (batch, pos) -> (batch, pos, vocab)"""
        with torch.no_grad():
            out = self.hf_model(
                input_ids=input_ids.to(self.device),
                attention_mask=None if attention_mask is None else attention_mask.to(self.device),
            )
        return out.logits.float()
