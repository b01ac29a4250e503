"""The one place that knows architectures: :class:`ArchitectureAdapter` says where each part of
a transformer block lives for a model family (GPT-2, Gemma-2, Gemma-3, Llama), one table entry per
family; no other module contains architecture-specific names. Also the norm arithmetic
(LayerNorm, RMSNorm, Gemma's RMSNorm) every reader of a block shares."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from circuit_insights.core.errors import InputError

if TYPE_CHECKING:
    pass


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
