"""Subject models: loading any Hugging Face causal LM and the one place that knows architectures.

:class:`~circuit_insights.models.architectures.ArchitectureAdapter` says where each part of a
transformer block lives for a model family (GPT-2, Gemma-2, Gemma-3, Llama).
:class:`SubjectModel` wraps the Hugging Face model, its tokenizer, its adapter and an nnsight
view of it. Through nnsight traces it reads the transcoder hook points (``mlp_in``,
``mlp_in_unaffine``, ``resid_mid``, ``mlp_out``, ``mlp_out_post_norm``) of any layers in one forward
pass that stops after the deepest one, and splices transcoders in place of MLPs (FADE's steering)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from circuit_insights.core.errors import InputError
from circuit_insights.models.architectures import (
    INPUT_HOOKS,
    OUTPUT_HOOKS,
    adapter_for,
    get_path,
    norm_gain,
    normalize,
)

if TYPE_CHECKING:
    from nnsight import Envoy

    from circuit_insights.transcoders.base import Transcoder


# --- the subject model


@dataclass(frozen=True)
class _Splice:
    """A transcoder in place of one layer's MLP (see :meth:`SubjectModel.splice`)."""

    transcoder: Transcoder
    keep_error: bool
    override: tuple[Tensor, Tensor] | None


@dataclass(frozen=True)
class _LayerStep:
    """One layer's reads and writes in an nnsight trace; the envoys are nnsight views of modules."""

    layer: int
    norm: Envoy
    mlp: Envoy
    post_norm: Envoy | None
    read_resid_mid: bool
    read_mlp_in: bool
    read_mlp_out: bool
    read_post_norm: bool
    splice: _Splice | None
    splice_writes_post_norm: bool


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
        self._splices: dict[int, _Splice] = {}

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

        from circuit_insights.models.hub import check_model_folder, hub_config, is_hub_id

        source = str(name_or_path)
        looks_local = source.startswith((".", "/", "~")) or Path(source).exists()
        if looks_local:
            check_model_folder(source)  # names a missing folder or a config.json not JSON
        elif is_hub_id(source):
            hub_config(source, network=not local_files_only)  # "cannot reach the hub" offline
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

    # --- weights as residual-stream directions (WeightLens) -----------------------------------------
    def read_directions(
        self,
        layer: int,
        transcoder: Transcoder,
        features: np.ndarray | Sequence[int] | None = None,
        *,
        fold: bool = True,
    ) -> Tensor:
        """Encoder columns of ``features`` (all when None) as residual-stream read directions.
        (d_model, n)

        ``fold=False``: ``f_enc`` as stored. Otherwise, up to the norm's positive per-position
        scale, the pre-activation is ``r · g`` with ``g = P (gain ⊙ f_enc)``: ``gain`` is the
        pre-MLP norm's affine weight when the transcoder reads ``mlp_in`` (1 for
        ``mlp_in_unaffine``), ``P`` removes the mean for LayerNorm (identity for RMSNorm);
        ``resid_mid`` transcoders read ``r`` directly. Constant terms (``b_enc``, ``b_dec_in``,
        the norm's bias) are left out.
        """
        weights = transcoder.W_enc.detach()
        if features is not None:
            index = torch.tensor(np.asarray(features), dtype=torch.long, device=weights.device)
            weights = weights[:, index]
        directions = weights.float()  # (d_model, n)
        if not fold or transcoder.input_hook == "resid_mid":
            return directions
        norm = self.block_part(layer, "pre_mlp_norm")
        if transcoder.input_hook == "mlp_in":
            gain = norm_gain(norm, self.adapter.norm_kind).to(directions.device)
            directions = gain[:, None] * directions
        if self.adapter.norm_kind == "layernorm":
            directions = directions - directions.mean(0, keepdim=True)
        return directions

    def write_directions(
        self,
        layer: int,
        transcoder: Transcoder,
        features: np.ndarray | Sequence[int] | None = None,
        *,
        fold: bool = True,
    ) -> Tensor:
        """Decoder rows of ``features`` (all when None) as written into the residual stream.
        (n, d_model)

        ``fold=False``: ``f_dec`` as stored. Otherwise, for a transcoder writing ``mlp_out`` in a
        model with a post-MLP norm (Gemma-2/3), the norm's gain is applied (LayerNorm centering
        first; its per-position scale is dropped).
        """
        weights = transcoder.W_dec.detach()
        if features is not None:
            weights = weights[
                torch.tensor(np.asarray(features), dtype=torch.long, device=weights.device)
            ]
        directions = weights.float()  # (n, d_model)
        if not fold or not self._writes_through_post_mlp_norm(transcoder):
            return directions
        post = self.block_part(layer, "post_mlp_norm")
        if self.adapter.norm_kind == "layernorm":
            directions = directions - directions.mean(1, keepdim=True)
        return directions * norm_gain(post, self.adapter.norm_kind).to(directions.device)

    def fold_write_norm(self, layer: int, transcoder: Transcoder, reads: Tensor) -> Tensor:
        """``h`` with ``W_dec · h == write_directions(layer, transcoder) · reads``. (d_model, n)

        ``reads`` (d_model, n): residual-stream directions. The folded write directions are
        ``P(f_dec) ⊙ gain`` at most, and ``(gain ⊙ P f) · g = f · P(gain ⊙ g)``, so the post-MLP
        norm goes into the read side and ``W_dec`` is never copied.
        """
        if not self._writes_through_post_mlp_norm(transcoder):
            return reads
        post = self.block_part(layer, "post_mlp_norm")
        reads = norm_gain(post, self.adapter.norm_kind).to(reads.device)[:, None] * reads
        if self.adapter.norm_kind == "layernorm":
            reads = reads - reads.mean(0, keepdim=True)
        return reads

    def _writes_through_post_mlp_norm(self, transcoder: Transcoder) -> bool:
        """Whether what the transcoder writes passes the block's post-MLP norm (Gemma-2/3)."""
        return transcoder.output_hook == "mlp_out" and self.adapter.post_mlp_norm is not None

    def logit_directions(self, directions: Tensor) -> Tensor:
        """Residual directions (n, d_model) as the unembedding reads them: through the final
        norm's gain (LayerNorm centering first; its per-position scale dropped). (n, d_model)"""
        final: nn.Module = get_path(self.hf_model, self.adapter.final_norm)
        if self.adapter.norm_kind == "layernorm":
            directions = directions - directions.mean(1, keepdim=True)
        return directions * norm_gain(final, self.adapter.norm_kind).to(directions.device)

    def normalize_mlp_input(self, layer: int, x: Tensor) -> Tensor:
        """The pre-MLP norm's normalization of ``x`` (..., d_model), without its affine weight
        and bias: the ``mlp_in_unaffine`` value of residual-stream vectors. float32"""
        return normalize(self.block_part(layer, "pre_mlp_norm"), self.adapter.norm_kind, x)

    @property
    def nnsight(self) -> Any:
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
        The values are read in one nnsight trace that stops after the deepest requested layer,
        with the active :meth:`splice` applied. Values: (batch, pos, d_model) float32.
        """
        self._check_requests(requests)
        saved = self._read_with_nnsight(input_ids, requests, attention_mask)
        return self._requested_values(requests, saved)

    def _check_requests(self, requests: Mapping[int, Sequence[str]]) -> None:
        if not requests:
            raise InputError("no hook values requested: give at least one layer")
        for layer, hooks in requests.items():
            self.check_layer(layer)
            for hook in hooks:
                if hook not in INPUT_HOOKS + OUTPUT_HOOKS:
                    raise InputError(f"unknown hook {hook!r} (known: {INPUT_HOOKS + OUTPUT_HOOKS})")

    def _requested_values(
        self, requests: Mapping[int, Sequence[str]], saved: Mapping[tuple[int, str], Tensor]
    ) -> dict[tuple[int, str], Tensor]:
        values: dict[tuple[int, str], Tensor] = {}
        for layer, hooks in requests.items():
            for hook in hooks:
                values[(layer, hook)] = self._hook_from_saved(layer, hook, saved)
        return values

    def _read_with_nnsight(
        self,
        input_ids: Tensor,
        requests: Mapping[int, Sequence[str]],
        attention_mask: Tensor | None,
    ) -> dict[tuple[int, str], Tensor]:
        """Read module values in one nnsight trace (active splices applied), stopped after the
        deepest requested layer."""
        saved, _, _ = self._trace(input_ids, attention_mask, requests, want_logits=False)
        for layer, hooks in requests.items():
            if "mlp_out_post_norm" in hooks and not self.adapter.post_mlp_norm:
                saved[(layer, "mlp_out_post_norm")] = saved[(layer, "mlp_out")]
        return saved

    def _trace(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        requests: Mapping[int, Sequence[str]],
        *,
        want_logits: bool,
        logits_to_keep: int = 0,
        past_key_values: object | None = None,
        use_cache: bool = False,
    ) -> tuple[dict[tuple[int, str], Tensor], Tensor | None, object | None]:
        """One nnsight trace over ``input_ids`` (batch, pos): the active splices are applied at
        their layers, the requested module values are read, and the run stops after the deepest
        requested layer unless the logits are wanted. Returns (saved values, logits or None,
        the KV cache when ``use_cache``; ``past_key_values`` continues an earlier one).

        Saved names: ``resid_mid`` (the pre-MLP norm's input), ``mlp_in`` (its output),
        ``mlp_out`` (the MLP's output), ``mlp_out_post_norm`` (the post-MLP norm's output, in
        families that have one); each as the model passes it on, splices included.
        """
        deepest = max(requests, default=-1)
        splices = {
            layer: splice
            for layer, splice in self._splices.items()
            if want_logits or layer <= deepest
        }
        steps = [
            self._layer_step(layer, set(requests.get(layer, ())), splices.get(layer))
            for layer in sorted(set(requests) | set(splices))
        ]
        kwargs: dict[str, object] = {"input_ids": input_ids.to(self.device), "use_cache": use_cache}
        if past_key_values is not None:
            kwargs["past_key_values"] = past_key_values
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask.to(self.device)
        if want_logits:
            kwargs["logits_to_keep"] = logits_to_keep
        from nnsight import save as save_value

        saved: dict[tuple[int, str], Tensor] = {}
        output = None
        with torch.no_grad(), self.nnsight.trace(**kwargs) as tracer:
            for step in steps:
                self._run_layer_step(step, saved)
            if want_logits:
                output = save_value(self.nnsight.output)
            else:
                tracer.stop()
        if output is None:
            return saved, None, None
        return saved, output.logits, output.past_key_values if use_cache else None

    def _layer_step(self, layer: int, reads: set[str], splice: _Splice | None) -> _LayerStep:
        """What one layer's part of a trace reads and writes, with the envoys it touches."""
        block = get_path(self.nnsight, self.adapter.layers)[layer]  # type: ignore[index]
        post_path = self.adapter.post_mlp_norm
        input_hook = None if splice is None else splice.transcoder.input_hook
        writes_post = (
            splice is not None
            and splice.transcoder.output_hook == "mlp_out_post_norm"
            and post_path is not None
        )
        read_post = "mlp_out_post_norm" in reads and post_path is not None
        return _LayerStep(
            layer=layer,
            norm=get_path(block, self.adapter.pre_mlp_norm),
            mlp=get_path(block, self.adapter.mlp),
            post_norm=None if post_path is None else get_path(block, post_path),
            read_resid_mid=bool(reads & {"resid_mid", "mlp_in_unaffine"})
            or input_hook in ("resid_mid", "mlp_in_unaffine"),
            read_mlp_in="mlp_in" in reads or input_hook == "mlp_in",
            read_mlp_out="mlp_out" in reads
            or ("mlp_out_post_norm" in reads and post_path is None)
            or (splice is not None and not writes_post),
            read_post_norm=read_post or writes_post,
            splice=splice,
            splice_writes_post_norm=writes_post,
        )

    def _run_layer_step(self, step: _LayerStep, saved: dict[tuple[int, str], Tensor]) -> None:
        """Inside a trace: read one layer's values in execution order and apply its splice."""
        from nnsight import save as save_value

        layer, splice = step.layer, step.splice
        if step.read_resid_mid:
            saved[(layer, "resid_mid")] = save_value(step.norm.input)
        if step.read_mlp_in:
            saved[(layer, "mlp_in")] = save_value(step.norm.output)
        x = None  # the spliced transcoder's input, (batch, pos, d_model) float32
        if splice is not None:
            x = self._hook_from_saved(layer, splice.transcoder.input_hook, saved)
        if step.read_mlp_out:
            output = step.mlp.output
            if splice is not None and not step.splice_writes_post_norm:
                assert x is not None  # read above whenever a splice is active
                new = self._spliced_output(splice, x, output)
                if new is not None:
                    step.mlp.output = new
                    output = new
            saved[(layer, "mlp_out")] = save_value(output)
        if step.read_post_norm:
            assert step.post_norm is not None  # read only where the block has the norm
            output = step.post_norm.output
            if step.splice_writes_post_norm:
                assert splice is not None and x is not None
                new = self._spliced_output(splice, x, output)
                if new is not None:
                    step.post_norm.output = new
                    output = new
            saved[(layer, "mlp_out_post_norm")] = save_value(output)

    def _hook_from_saved(
        self, layer: int, hook: str, saved: Mapping[tuple[int, str], Tensor]
    ) -> Tensor:
        """A hook's value (batch, pos, d_model) float32 from the module values a trace saved."""
        if hook == "mlp_in_unaffine":
            norm = self.block_part(layer, "pre_mlp_norm")
            return normalize(norm, self.adapter.norm_kind, saved[(layer, "resid_mid")])
        return saved[(layer, hook)].float()

    # --- splicing transcoders in place of MLPs -------------------------------------------------------
    @contextlib.contextmanager
    def splice(
        self,
        transcoders: Mapping[int, Transcoder],
        *,
        keep_error: bool = False,
        feature_override: Mapping[int, tuple[Tensor, Tensor]] | None = None,
    ) -> Iterator[None]:
        """Replace the MLP of each layer by its transcoder in the forward passes of
        :meth:`logits` and :meth:`hook_values` inside the block (applied in their nnsight traces;
        a direct call of ``hf_model`` does not see it).

        The transcoder reads its input hook and writes its output hook (``mlp_out``: replaces the
        MLP module's output; ``mlp_out_post_norm``: replaces what Gemma's post-feedforward norm adds
        to the residual). With ``keep_error`` the true MLP's output is kept, and only the features'
        part is swapped: ``true + (tc(x with overrides) - tc(x))``, so that without overrides the
        model is unchanged. ``feature_override`` maps a layer to (feature indices (k,), values (k,)
        or (batch, pos, k)) set as activations at every position.
        """
        overrides = feature_override or {}
        for layer in overrides:
            if layer not in transcoders:
                raise InputError(f"feature_override names layer {layer}, which is not spliced")
        added = []
        try:
            for layer, transcoder in transcoders.items():
                self.check_layer(layer)
                if layer in self._splices:
                    raise InputError(f"layer {layer} is already spliced")
                if transcoder.d_model != self.d_model:
                    raise InputError(
                        f"transcoder for layer {layer} has d_model {transcoder.d_model}, "
                        f"model {self.name!r} has {self.d_model}"
                    )
                self._splices[layer] = _Splice(transcoder, keep_error, overrides.get(layer))
                added.append(layer)
            yield
        finally:
            for layer in added:
                del self._splices[layer]

    def _spliced_output(self, splice: _Splice, x: Tensor, output: Tensor) -> Tensor | None:
        """What a spliced transcoder writes in place of ``output`` (batch, pos, d_model) given its
        input ``x``; None where the output stays as it is (error kept, no override)."""
        if splice.override is None and splice.keep_error:
            return None
        transcoder = splice.transcoder
        activations = transcoder.encode(x)  # (batch, pos, d_transcoder)
        if splice.override is None:
            return transcoder.decode(activations, x).to(output.dtype)
        features, values = splice.override
        steered = activations.clone()
        steered[..., features] = values.to(steered.dtype)
        new = transcoder.decode(steered, x)
        if splice.keep_error:
            new = output.float() + new - transcoder.decode(activations, x)
        return new.to(output.dtype)

    def logits(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, *, logits_to_keep: int = 0
    ) -> Tensor:
        """Forward pass, active splices applied. (batch, pos) -> (batch, pos, vocab) float32;
        ``logits_to_keep`` > 0: only the last that many positions."""
        if self._splices:
            _, logits, _ = self._trace(
                input_ids, attention_mask, {}, want_logits=True, logits_to_keep=logits_to_keep
            )
            assert logits is not None
            return logits.float()
        with torch.no_grad():
            out = self.hf_model(
                input_ids=input_ids.to(self.device),
                attention_mask=None if attention_mask is None else attention_mask.to(self.device),
                use_cache=False,
                logits_to_keep=logits_to_keep,
            )
        return out.logits.float()

    def next_token_logits(
        self, input_ids: Tensor, past_key_values: object | None = None
    ) -> tuple[Tensor, object]:
        """Logits of the next token, (batch, vocab) float32, and the KV cache to continue from.

        ``input_ids`` (batch, new) are the tokens after those ``past_key_values`` holds (all of
        them when it is None); no padding. Active splices apply to the new positions: the keys
        and values of earlier positions were computed under the same splices when they were new.
        """
        if self._splices:
            _, logits, cache = self._trace(
                input_ids,
                None,
                {},
                want_logits=True,
                logits_to_keep=1,
                past_key_values=past_key_values,
                use_cache=True,
            )
            assert logits is not None and cache is not None
            return logits[:, -1].float(), cache
        with torch.no_grad():
            out = self.hf_model(
                input_ids=input_ids.to(self.device),
                past_key_values=past_key_values,
                use_cache=True,
                logits_to_keep=1,
            )
        return out.logits[:, -1].float(), out.past_key_values
