"""The frozen-linearized replacement model that CircuitLens attribution differentiates.

**Replay** (:class:`FrozenReplacement`) recomputes the residual stream from leaf tensors with all
of that frozen. Each norm becomes ``center(x) / frozen_scale * gain + m * bias``. Each attention
layer is replayed by calling the Hugging Face attention module itself on the frozen-normalized
input with an attention function (registered in transformers' ``AttentionInterface``) that
returns ``frozen_pattern @ value``: the module's own value and output projections (GPT-2's fused
Conv1D or q/k/v/o Linear, GQA, biases) do the linear OV path, and its q/k work is discarded. The
constant part of that affine map (value and output biases through the pattern) is captured once,
by the same replay on a zero input (modules without bias parameters have none), and given its own
multiplier. An MLP of a layer with a transcoder becomes ``feature write + m * b_dec_out + x @ W_skip
+ m * error`` (the write is a leaf up to the target layer; after it, the features are recomputed
with frozen gates, ``a = gate * (x_c @ W_enc + m * b_enc)``), an MLP without transcoder becomes
``m * true output``.

Every additive constant carries a multiplier ``m`` (1 in :meth:`FrozenReplacement.default_leaves`,
missing = 0), so the replay is a homogeneous linear function of its leaves: Euler's theorem makes
``sum(leaf * d output / d leaf)`` equal the output exactly, which is the completeness of the
attribution. With the default leaves the replay reproduces the real model's forward pass.

What it replays is captured by :mod:`circuit_insights.circuitlens.frozen_capture`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from circuit_insights.circuitlens.frozen_capture import (
    NORM_PARTS,
    AttentionRecord,
    FrozenState,
    replay_attention,
)
from circuit_insights.models.architectures import get_path, norm_bias, norm_gain
from circuit_insights.models.subject import SubjectModel
from circuit_insights.transcoders.base import Transcoder

# --- the replay ---------------------------------------------------------------------------------------


@dataclass
class FrozenLeaves:
    """The leaf tensors of a replay; a missing entry counts as zero.

    ``embedding``: (batch, pos) multiplier of the embedding (token + position) at each position;
    ``writes``: layer -> (batch, pos, d_model) the features' decoder write of a transcoder layer
    up to the target layer (``sum_i a_i f_dec_i``, the captured value by default);
    ``errors``: layer -> (batch, pos) multiplier of the transcoder error, or of the whole MLP
    output for a layer without transcoder; ``biases``: (layer, part) -> (batch, pos) multiplier of
    a constant (parts: ``attention``, the norm parts of :data:`NORM_PARTS`, ``b_dec_out``,
    ``b_dec_in``, ``b_enc``; the final norm's bias is ``(n_layers, "final_norm")``).
    """

    embedding: Tensor | None = None
    writes: dict[int, Tensor] = field(default_factory=dict)
    errors: dict[int, Tensor] = field(default_factory=dict)
    biases: dict[tuple[int, str], Tensor] = field(default_factory=dict)

    def tensors(self) -> list[Tensor]:
        """All leaf tensors, in a fixed order."""
        out = [] if self.embedding is None else [self.embedding]
        out += [self.writes[key] for key in sorted(self.writes)]
        out += [self.errors[key] for key in sorted(self.errors)]
        out += [self.biases[key] for key in sorted(self.biases)]
        return out


class FrozenReplacement:
    """The replacement model linearized around a captured state (see the module docstring).

    Transcoder layers up to ``target_layer`` use their captured features as leaves (``writes``);
    transcoder layers after it recompute their features with frozen gates.
    """

    def __init__(
        self,
        model: SubjectModel,
        transcoders: Mapping[int, Transcoder],
        state: FrozenState,
        target_layer: int,
    ) -> None:
        self.model = model
        self.transcoders = dict(transcoders)
        self.state = state
        self.target_layer = target_layer
        self.dtype = state.embeddings.dtype
        self.device = state.embeddings.device
        self._weights: dict[tuple[int, str], Any] = {}
        self._gates: dict[int, tuple[Tensor, Tensor]] = {}

    # --- parameters --------------------------------------------------------------------------------
    def _norm(self, layer: int, part: str) -> nn.Module | None:
        path = getattr(self.model.adapter, part)
        return None if path is None else get_path(self.model.blocks[layer], path)

    def _vector(self, key: tuple[int, str], make) -> Tensor | None:
        if key not in self._weights:
            value = make()
            self._weights[key] = (
                None if value is None else value.detach().to(device=self.device, dtype=self.dtype)
            )
        return self._weights[key]

    def transcoder_weight(self, layer: int, name: str) -> Tensor | None:
        """A transcoder parameter (``W_enc``, ``b_enc``, ...) in the compute dtype and device."""
        return self._vector((layer, name), lambda: getattr(self.transcoders[layer], name))

    def frozen_norm(
        self, norm: nn.Module, x: Tensor, scale: Tensor, bias_multiplier: Tensor | None
    ) -> Tensor:
        """``center(x) / scale * gain + m * bias`` with the frozen ``scale``. x: (batch, pos, d)"""
        key = (id(norm), "norm")
        if key not in self._weights:
            self._weights[key] = norm_gain(norm, self.model.adapter.norm_kind).to(
                device=self.device, dtype=self.dtype
            )
            bias = norm_bias(norm)
            self._weights[(id(norm), "bias")] = (
                None if bias is None else bias.to(device=self.device, dtype=self.dtype)
            )
        gain = self._weights[key]
        bias = self._weights[(id(norm), "bias")]
        y = self._center(x) / scale * gain
        if bias is not None and bias_multiplier is not None:
            y = y + bias_multiplier[..., None] * bias
        return y

    def _center(self, x: Tensor) -> Tensor:
        if self.model.adapter.norm_kind == "layernorm":
            return x - x.mean(-1, keepdim=True)
        return x

    def has_norm_bias(self, layer: int, part: str) -> bool:
        """Whether norm ``part`` of ``layer`` (``final_norm`` at ``layer == n_layers``) has a bias."""
        if part == "final_norm":
            return (
                norm_bias(get_path(self.model.hf_model, self.model.adapter.final_norm)) is not None
            )
        norm = self._norm(layer, part)
        return norm is not None and norm_bias(norm) is not None

    def gates(self, layer: int) -> tuple[Tensor, Tensor]:
        """Frozen gates of a transcoder layer over the union of its active features.

        Returns (features (n_union,) long, gates (batch, pos, n_union) in the compute dtype).
        """
        if layer not in self._gates:
            capture = self.state.layers[layer].transcoder
            assert capture is not None
            features, column = torch.unique(capture.active[:, 2], return_inverse=True)
            batch, n_pos = self.state.input_ids.shape
            gates = torch.zeros(batch, n_pos, len(features), device=self.device, dtype=self.dtype)
            gates[capture.active[:, 0], capture.active[:, 1], column] = 1.0
            self._gates[layer] = (features, gates)
        return self._gates[layer]

    def _union_weights(self, layer: int) -> tuple[Tensor, Tensor, Tensor]:
        """W_enc (d_model, n_union), b_enc (n_union,), W_dec (n_union, d_model) of the features
        active somewhere in the batch at a gated layer."""
        key = (layer, "union")
        if key not in self._weights:
            features, _ = self.gates(layer)
            self._weights[key] = (  # type: ignore[assignment]
                self.transcoder_weight(layer, "W_enc")[:, features].contiguous(),  # type: ignore[index]
                self.transcoder_weight(layer, "b_enc")[features],  # type: ignore[index]
                self.transcoder_weight(layer, "W_dec")[features].contiguous(),  # type: ignore[index]
            )
        return self._weights[key]  # type: ignore[return-value]

    # --- leaves -------------------------------------------------------------------------------------------
    def default_leaves(self, *, requires_grad: bool = False) -> FrozenLeaves:
        """Leaves that reproduce the captured forward pass (every multiplier 1)."""
        batch, n_pos = self.state.input_ids.shape

        def ones() -> Tensor:
            return torch.ones(
                batch, n_pos, device=self.device, dtype=self.dtype, requires_grad=requires_grad
            )

        leaves = FrozenLeaves(embedding=ones())
        n_layers = self.model.n_layers
        for layer, capture in enumerate(self.state.layers):
            if capture.attention_constant is not None:
                leaves.biases[(layer, "attention")] = ones()
            for part in NORM_PARTS:
                if self.has_norm_bias(layer, part):
                    leaves.biases[(layer, part)] = ones()
            if capture.mlp_residual is not None:
                leaves.errors[layer] = ones()
            transcoder = self.transcoders.get(layer)
            if transcoder is None:
                continue
            if capture.transcoder is not None and capture.transcoder.write is not None:
                if layer <= self.target_layer:
                    write = capture.transcoder.write.detach().clone()
                    leaves.writes[layer] = write.requires_grad_(requires_grad)
                leaves.biases[(layer, "b_dec_out")] = ones()
            if layer >= self.target_layer:
                leaves.biases[(layer, "b_enc")] = ones()
                if transcoder.b_dec_in is not None:
                    leaves.biases[(layer, "b_dec_in")] = ones()
        if self.state.complete and self.has_norm_bias(n_layers, "final_norm"):
            leaves.biases[(n_layers, "final_norm")] = ones()
        return leaves

    # --- the forward pass -----------------------------------------------------------------------------------
    def attention(
        self,
        layer: int,
        resid: Tensor,
        leaves: FrozenLeaves,
        *,
        value_mask: Mapping[int, Tensor] | None = None,
        record: AttentionRecord | None = None,
    ) -> Tensor:
        """What layer ``layer``'s attention adds to the residual stream. (batch, pos, d_model)"""
        capture = self.state.layers[layer]
        biases = leaves.biases
        h = self.frozen_norm(
            self._norm(layer, "pre_attention_norm"),  # type: ignore[arg-type]
            resid,
            capture.scales["pre_attention_norm"],
            biases.get((layer, "pre_attention_norm")),
        )
        mask = None if value_mask is None else value_mask.get(layer)
        out = replay_attention(
            self.model,
            layer,
            h,
            capture.attention_args,
            capture.attention_kwargs,
            capture.pattern,
            mask,
            record,
        )
        constant = capture.attention_constant
        if constant is not None:
            out = out - constant  # the linear part
            multiplier = biases.get((layer, "attention"))
            if multiplier is not None:
                out = out + multiplier[..., None] * constant
        post = self._norm(layer, "post_attention_norm")
        if post is not None:
            out = self.frozen_norm(
                post,
                out,
                capture.scales["post_attention_norm"],
                biases.get((layer, "post_attention_norm")),
            )
        return out

    def transcoder_input(self, layer: int, resid_mid: Tensor, leaves: FrozenLeaves) -> Tensor:
        """The (uncentered) input of layer ``layer``'s transcoder. (batch, pos, d_model)"""
        hook = self.transcoders[layer].input_hook
        scale = self.state.layers[layer].scales["pre_mlp_norm"]
        if hook == "resid_mid":
            return resid_mid
        if hook == "mlp_in_unaffine":
            return self._center(resid_mid) / scale
        return self.frozen_norm(
            self._norm(layer, "pre_mlp_norm"),  # type: ignore[arg-type]
            resid_mid,
            scale,
            leaves.biases.get((layer, "pre_mlp_norm")),
        )

    def encoder_input(self, layer: int, x: Tensor, leaves: FrozenLeaves) -> Tensor:
        """``x_c``: ``x`` minus ``m * b_dec_in`` for input-centering transcoders. (batch, pos, d)"""
        b_dec_in = self.transcoder_weight(layer, "b_dec_in")
        multiplier = leaves.biases.get((layer, "b_dec_in"))
        if b_dec_in is None or multiplier is None:
            return x
        return x - multiplier[..., None] * b_dec_in

    def mlp(
        self, layer: int, resid_mid: Tensor, leaves: FrozenLeaves, *, zero_before: int = 0
    ) -> Tensor | None:
        """What layer ``layer``'s (replaced) MLP adds to the residual stream, or None for zero.

        ``zero_before``: positions before it are known to be zero (a linear pass of a write at a
        later position); gated features skip them.
        """
        capture = self.state.layers[layer]
        error = leaves.errors.get(layer)
        transcoder = self.transcoders.get(layer)
        if transcoder is None:
            if error is None or capture.mlp_residual is None:
                return None
            return error[..., None] * capture.mlp_residual
        assert capture.transcoder is not None
        x = self.transcoder_input(layer, resid_mid, leaves)
        if layer <= self.target_layer:
            out = leaves.writes.get(layer)
            out = torch.zeros_like(resid_mid) if out is None else out
        else:
            _, gates = self.gates(layer)
            W_enc, b_enc_union, W_dec = self._union_weights(layer)
            start = zero_before
            x_c = self.encoder_input(layer, x, leaves)[:, start:]
            pre = x_c @ W_enc  # (batch, pos - start, n_union)
            b_enc = leaves.biases.get((layer, "b_enc"))
            if b_enc is not None:
                pre = pre + b_enc[:, start:, None] * b_enc_union
            out = torch.zeros_like(resid_mid)
            out[:, start:] = (gates[:, start:] * pre) @ W_dec
        b_dec_out = leaves.biases.get((layer, "b_dec_out"))
        if b_dec_out is not None:
            weight = self.transcoder_weight(layer, "b_dec_out")
            assert weight is not None, "b_dec_out has a leaf, so the transcoder has the bias"
            out = out + b_dec_out[..., None] * weight
        W_skip = self.transcoder_weight(layer, "W_skip")
        if W_skip is not None:
            out = out + x @ W_skip
        if error is not None and capture.transcoder.error is not None:
            out = out + error[..., None] * capture.transcoder.error
        post = self._norm(layer, "post_mlp_norm")
        if post is not None and transcoder.output_hook == "mlp_out":
            out = self.frozen_norm(
                post,
                out,
                capture.scales["post_mlp_norm"],
                leaves.biases.get((layer, "post_mlp_norm")),
            )
        return out

    def block(
        self,
        layer: int,
        resid: Tensor,
        leaves: FrozenLeaves,
        *,
        value_mask: Mapping[int, Tensor] | None = None,
        record: AttentionRecord | None = None,
        zero_before: int = 0,
    ) -> Tensor:
        """One frozen block: residual in -> residual out. (batch, pos, d_model)"""
        resid_mid = resid + self.attention(
            layer, resid, leaves, value_mask=value_mask, record=record
        )
        out = self.mlp(layer, resid_mid, leaves, zero_before=zero_before)
        return resid_mid if out is None else resid_mid + out

    def embeddings(self, leaves: FrozenLeaves) -> Tensor:
        """The residual stream entering layer 0. (batch, pos, d_model)"""
        if leaves.embedding is None:
            return torch.zeros_like(self.state.embeddings)
        return leaves.embedding[..., None] * self.state.embeddings

    def residual_mid(
        self,
        layer: int,
        leaves: FrozenLeaves,
        *,
        value_mask: Mapping[int, Tensor] | None = None,
        record: AttentionRecord | None = None,
    ) -> Tensor:
        """The residual stream before layer ``layer``'s pre-MLP norm. (batch, pos, d_model)"""
        resid = self.embeddings(leaves)
        for upstream in range(layer):
            resid = self.block(upstream, resid, leaves, value_mask=value_mask, record=record)
        return resid + self.attention(layer, resid, leaves, value_mask=value_mask, record=record)

    def pre_activation(
        self,
        leaves: FrozenLeaves,
        features: Tensor,
        positions: Tensor,
        *,
        value_mask: Mapping[int, Tensor] | None = None,
        record: AttentionRecord | None = None,
    ) -> Tensor:
        """Frozen pre-activation of feature ``features[b]`` of the target layer at
        ``positions[b]`` for every row b. features, positions: (batch,) long -> (batch,)
        """
        layer = self.target_layer
        resid_mid = self.residual_mid(layer, leaves, value_mask=value_mask, record=record)
        rows = torch.arange(len(positions), device=self.device)
        x = self.encoder_input(layer, self.transcoder_input(layer, resid_mid, leaves), leaves)
        x_t = x[rows, positions]  # (batch, d_model)
        W_enc = self.transcoder_weight(layer, "W_enc")
        pre = (x_t * W_enc.T[features]).sum(-1)  # type: ignore[union-attr]
        b_enc = leaves.biases.get((layer, "b_enc"))
        if b_enc is not None:
            pre = pre + b_enc[rows, positions] * self.transcoder_weight(layer, "b_enc")[features]  # type: ignore[index]
        return pre

    def run_layers(
        self,
        layers: Sequence[int],
        resid: Tensor,
        leaves: FrozenLeaves,
        *,
        value_mask: Mapping[int, Tensor] | None = None,
        zero_before: int = 0,
    ) -> Tensor:
        """Run frozen blocks ``layers`` in order from residual ``resid``. (batch, pos, d_model)"""
        for layer in layers:
            resid = self.block(layer, resid, leaves, value_mask=value_mask, zero_before=zero_before)
        return resid

    def final_normed(self, resid: Tensor, leaves: FrozenLeaves) -> Tensor:
        """The frozen final norm. (batch, pos, d_model)"""
        assert self.state.final_scale is not None, "capture with complete=True"
        norm = get_path(self.model.hf_model, self.model.adapter.final_norm)
        multiplier = leaves.biases.get((self.model.n_layers, "final_norm"))
        return self.frozen_norm(norm, resid, self.state.final_scale, multiplier)  # type: ignore[arg-type]

    def logits(
        self, leaves: FrozenLeaves, *, value_mask: Mapping[int, Tensor] | None = None
    ) -> Tensor:
        """The whole frozen model: unembedding output (before any logit softcapping).

        Returns (batch, pos, vocab).
        """
        resid = self.run_layers(
            range(self.model.n_layers), self.embeddings(leaves), leaves, value_mask=value_mask
        )
        return self.final_normed(resid, leaves) @ self.unembedding()

    def unembedding(self) -> Tensor:
        """W_U in the compute dtype. (d_model, vocab)"""
        return self._vector((-1, "W_U"), self.model.unembedding_matrix)  # type: ignore[return-value]

    def output_direction(self, write: Tensor, positions: Tensor) -> Tensor:
        """Push a write at the target layer's MLP output hook through the frozen model.

        write: (batch, d_model) added at ``positions`` (batch,) by the target transcoder (at its
        output hook) -> (batch, pos, d_model) the change of the final-normed residual stream (linear
        part only: no constants, later errors and constant-MLPs held fixed).
        """
        layer = self.target_layer
        transcoder = self.transcoders[layer]
        rows = torch.arange(len(positions), device=self.device)
        delta = torch.zeros_like(self.state.embeddings)
        delta[rows, positions] = write
        post = self._norm(layer, "post_mlp_norm")
        if post is not None and transcoder.output_hook == "mlp_out":
            scale = self.state.layers[layer].scales["post_mlp_norm"]
            delta = self.frozen_norm(post, delta, scale, None)
        linear = FrozenLeaves()
        resid = self.run_layers(
            range(layer + 1, self.model.n_layers),
            delta,
            linear,
            zero_before=int(positions.min()) if len(positions) else 0,
        )
        return self.final_normed(resid, linear)
