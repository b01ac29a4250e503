"""WeightLens: explanations of token-level transcoder features from the weights alone.

For every feature of one (layer, shard), with chunked matrix products over many features at once
(see ``docs/weightlens.md`` for every definition and why):

1. **Input tokens** ``s_in = W_E · g``: ``g`` is the feature's encoder ``f_enc`` as a residual-stream
   direction (``projection``: the pre-MLP norm's gain folded in, LayerNorm centering applied; or the
   paper's literal ``f_enc``). z-scores over the vocabulary; candidates ``z > t_tok``.
2. **Output tokens** ``s_out = w · W_U`` with ``w`` the decoder row as the logits see it; promoted
   ``z > t_tok``, suppressed ``z < -t_tok`` (not validated).
3. **Upstream features** ``c = W_dec^{l'} · g`` for every earlier layer ``l'`` with a transcoder;
   kept when ``z > t_up`` (z within each upstream layer); relative contribution
   ``|c| / (sum |s_in| + sum_{l'} sum |c|)``; the kept features' validated tokens are inherited from
   their already computed results (a DataFrame per upstream layer: no recursion, no recomputation).
4. **Validation**: every candidate token (own and inherited) alone, as ``[BOS, token]`` with the
   model's own BOS (``[token]`` without one), in a few batched forward passes over the shard's
   unique candidate ids; a token is validated when the feature's activation at the last position is
   > 0. Token ids throughout, never re-tokenized strings.
5. **Classification** token-based vs context-dependent, an LLM-free **description**, an LLM-free
   **score** on held-out contexts (AUROC, precision, recall), and the optional **TWERA** ranking of
   upstream connections from co-activation statistics.

Entry point: :func:`run_weightlens`; the output's columns are ``schemas.WEIGHTLENS_SCHEMA``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
from torch import Tensor

from circuit_insights.core.config import from_block
from circuit_insights.core.contexts import HeldOut, TopContexts
from circuit_insights.core.errors import InputError
from circuit_insights.core.io import write_parquet_atomic
from circuit_insights.core.tokens import TokenDisplay
from circuit_insights.data.schemas import WEIGHTLENS_SCHEMA, WEIGHTLENS_TWERA_SCHEMA
from circuit_insights.data.shards import Shard
from circuit_insights.models.adapters import SubjectModel, get_path, norm_gain, normalize
from circuit_insights.transcoders.base import Transcoder

log = logging.getLogger(__name__)

Preset = Literal["paper", "reference"]
ZScope = Literal["full", "top"]
Projection = Literal["folded", "raw", "normalized"]
PRESETS: tuple[str, ...] = get_args(Preset)
Z_SCOPES: tuple[str, ...] = get_args(ZScope)
PROJECTIONS: tuple[str, ...] = get_args(Projection)

#: ``paper`` preset t_tok per model family (the paper: 4 for GPT-2, 4.5 for Gemma-2-2B / Llama-3.2).
PAPER_T_TOK: dict[str, float] = {"gpt2": 4.0, "gemma2": 4.5, "gemma3": 4.5, "llama": 4.5}
DEFAULT_T_TOK = 4.5
INPUT_SOURCE = "input"
"""``candidate_sources`` value of a token found by the feature's own input projection."""


# --- thresholds and options -------------------------------------------------------------------


@dataclass(frozen=True)
class Thresholds:
    """z-score thresholds and how the z-scores are computed."""

    t_tok: float
    """Input-token candidates ``z > t_tok``; promoted ``z > t_tok``; suppressed ``z < -t_tok``."""
    t_up: float
    """Upstream features kept when ``z > t_up`` (z within each upstream layer)."""
    z_scope: ZScope = "full"
    """``full``: mean and std over the whole distribution (vocabulary, or an upstream layer's
    features). ``top``: mean and std of the ``top_tokens`` largest token scores (the ``top_tokens``
    smallest for suppressed tokens) or the ``top_upstream`` largest contributions of each upstream
    layer, and only those can pass (the published WeightLens code)."""
    top_tokens: int = 1000
    top_upstream: int = 100
    preset: str = "custom"
    """Name recorded in the output: ``paper``, ``reference``, ``<preset>+overrides`` or ``custom``."""

    def __post_init__(self) -> None:
        for name in ("t_tok", "t_up"):
            value = getattr(self, name)
            if not math.isfinite(float(value)):
                raise InputError(f"weightlens threshold {name} must be finite, got {value!r}")
        if self.z_scope not in Z_SCOPES:
            raise InputError(f"weightlens z_scope {self.z_scope!r} is not one of {Z_SCOPES}")
        for name in ("top_tokens", "top_upstream"):
            if int(getattr(self, name)) < 2:
                raise InputError(f"weightlens {name} must be >= 2, got {getattr(self, name)}")


def thresholds_for(family: str, preset: str = "paper", **overrides: Any) -> Thresholds:
    """The thresholds of ``preset`` for a model family, with explicit ``overrides``.

    ``paper``: t_tok 4 (GPT-2) or 4.5 (Gemma, Llama and others), t_up 3, z over the full
    distribution. ``reference``: t_tok 5.5, t_up 4, z within the top 1000 tokens / top 100
    upstream features of each layer. ``overrides`` are :class:`Thresholds` fields.
    """
    if preset == "paper":
        base = Thresholds(
            t_tok=PAPER_T_TOK.get(family, DEFAULT_T_TOK), t_up=3.0, z_scope="full", preset="paper"
        )
    elif preset == "reference":
        base = Thresholds(
            t_tok=5.5,
            t_up=4.0,
            z_scope="top",
            top_tokens=1000,
            top_upstream=100,
            preset="reference",
        )
    else:
        raise InputError(f"weightlens preset {preset!r} is not one of {PRESETS}")
    unknown = sorted(set(overrides) - {f for f in Thresholds.__dataclass_fields__ if f != "preset"})
    if unknown:
        raise InputError(f"weightlens threshold override(s) {unknown} are not Thresholds fields")
    if not overrides:
        return base
    return replace(base, **overrides, preset=f"{preset}+overrides")


def resolve_thresholds(model: SubjectModel, thresholds: Thresholds | str | None) -> Thresholds:
    """``None`` -> the ``paper`` preset of the model's family; a preset name -> that preset."""
    if thresholds is None:
        return thresholds_for(model.adapter.family, "paper")
    if isinstance(thresholds, str):
        return thresholds_for(model.adapter.family, thresholds)
    return thresholds


@dataclass(frozen=True)
class WeightLensOptions:
    """Everything besides the thresholds; the defaults are the documented method."""

    projection: Projection = "folded"
    """``folded`` (default): encoders read through the pre-MLP norm's gain (and LayerNorm's
    centering), decoders written through Gemma's post-MLP norm gain and read by the logits through
    the final norm's gain. ``raw``: the paper's literal ``W_E·f_enc``, ``f_dec·W_U``,
    ``W_dec·f_enc``. ``normalized``: ``folded``, with each embedding row first normalized by the
    pre-MLP norm (the pre-activation the token would give if alone in the residual stream)."""
    max_candidate_tokens: int = 256
    """Own input-token candidates kept per feature (highest z first); the count before the cap is
    ``n_candidate_tokens_total``."""
    max_output_tokens: int = 50
    """Promoted and suppressed tokens kept per feature (highest |z| first)."""
    max_upstream_features: int = 64
    """Upstream features kept per feature (highest relative contribution first)."""
    max_inherited_tokens: int | None = 64
    """Inherited candidate tokens (those not already own candidates) kept per feature, ranked by
    their estimated contribution through the upstream feature they come from,
    ``|c| * a`` (``c``: the upstream feature's contribution to this feature's read direction;
    ``a``: its single-token activation on the token, from its ``validated_activations``),
    the largest over the upstream features that offer the token. None: no bound (the
    candidates then grow with depth, as validated tokens accumulate layer after layer)."""
    min_token_share: float = 0.5
    """Token-based when >= 1 validated token and the token at the max position of at least this
    share of the feature's top contexts is a validated token."""
    batch_size: int = 512
    """Single-token sequences per validation forward pass."""
    heldout_positive_fraction: float = 0.0
    """LLM-free held-out score: a position is a positive when the feature's activation there is
    above 0 and at least this fraction of the feature's largest held-out activation (0: any
    firing; 0.5: "strong" firing, the weak tail counting as negatives)."""
    feature_chunk: int | None = None
    """Features per matrix product; None: as many as keep a (vocab, chunk) float32 matrix under
    ``chunk_bytes``."""
    chunk_bytes: int = 256 * 2**20
    description_tokens: int = 8
    """Tokens shown per section of the description (the rest as ``+N more``)."""
    description_upstream: int = 3
    device: str | None = None
    """Where the matrix products run; None: the model's device."""

    def __post_init__(self) -> None:
        if self.projection not in PROJECTIONS:
            raise InputError(
                f"weightlens projection {self.projection!r} is not one of {PROJECTIONS}"
            )
        if not 0.0 <= float(self.min_token_share) <= 1.0:
            raise InputError(
                f"weightlens min_token_share must be in [0, 1], got {self.min_token_share}"
            )
        for name in ("max_candidate_tokens", "max_output_tokens", "max_upstream_features"):
            if int(getattr(self, name)) < 0:
                raise InputError(f"weightlens {name} must be >= 0, got {getattr(self, name)}")
        if self.max_inherited_tokens is not None and int(self.max_inherited_tokens) < 0:
            raise InputError(
                f"weightlens max_inherited_tokens must be >= 0 or None, "
                f"got {self.max_inherited_tokens}"
            )
        if int(self.batch_size) < 1 or int(self.chunk_bytes) < 1:
            raise InputError("weightlens batch_size and chunk_bytes must be positive")
        if self.feature_chunk is not None and int(self.feature_chunk) < 1:
            raise InputError(f"weightlens feature_chunk must be >= 1, got {self.feature_chunk}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> WeightLensOptions:
        """From the workflow config's ``weightlens`` block (:func:`~circuit_insights.core.config.from_block`)."""
        return from_block(cls, values, "weightlens")


# --- z-scores ---------------------------------------------------------------------------------


def zscore_stats(
    values: Tensor, *, dim: int = 0, scope: ZScope = "full", top_k: int = 1000
) -> tuple[Tensor, Tensor]:
    """Mean and std (with Bessel's correction) of ``values`` along ``dim`` (reduced away).

    ``scope="top"``: of the ``top_k`` largest values only (all when fewer).
    """
    if scope == "top":
        values = values.topk(min(int(top_k), values.shape[dim]), dim=dim).values
    n = values.shape[dim]
    if n < 2:
        return values.mean(dim), torch.zeros_like(values.mean(dim))
    # One pass of fast reductions (torch's std is several times slower on CPU); the rows where
    # sum(x^2) - n mean^2 loses precision (variance tiny against the mean) are redone exactly.
    mean = values.sum(dim).double() / n
    squares = torch.linalg.vector_norm(values, 2, dim=dim).double().square()
    variance = ((squares - n * mean.square()) / (n - 1)).clamp_min(0.0)
    unstable = variance <= 1e-4 * squares / n
    std = variance.sqrt()
    if bool(unstable.any()):
        std = torch.where(unstable, values.double().std(dim), std)
    return mean.to(values.dtype), std.to(values.dtype)


def zscores(values: Tensor, *, dim: int = 0, scope: ZScope = "full", top_k: int = 1000) -> Tensor:
    """z-scores along ``dim`` with the statistics of :func:`zscore_stats`; 0 where std is 0."""
    mean, std = zscore_stats(values, dim=dim, scope=scope, top_k=top_k)
    return _standardize(values, mean.unsqueeze(dim), std.unsqueeze(dim))


def _standardize(values: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    defined = std > 0
    z = (values - mean).div_(torch.where(defined, std, torch.ones_like(std)))
    return z if bool(defined.all()) else z.mul_(defined)


@dataclass
class Outliers:
    """Items above a z threshold in each row of a (n_rows, n_items) score matrix, flat.

    ``rows``, ``indices``, ``z``, ``values`` (n_kept,): the kept (row, item) pairs, by row, highest
    z first within a row; ``n_total`` (n_rows,): items above the threshold before the cap;
    ``mean``, ``std`` (n_rows,): the z statistics.
    """

    rows: np.ndarray
    indices: np.ndarray
    z: np.ndarray
    values: np.ndarray
    n_total: np.ndarray
    mean: Tensor
    std: Tensor

    def per_row(self, name: str) -> list[np.ndarray]:
        """One array per row of the flat field ``name`` (``indices``, ``z`` or ``values``)."""
        counts = np.bincount(self.rows, minlength=len(self.n_total))
        return np.split(getattr(self, name), np.cumsum(counts)[:-1])


def select_outliers(
    scores: Tensor, threshold: float, *, scope: ZScope, top_k: int, max_keep: int
) -> Outliers:
    """Items with ``z > threshold`` in each row of ``scores`` (n_rows, n_items).

    ``scope="full"`` standardizes by the row's mean and std; ``scope="top"`` by those of the
    row's ``top_k`` largest scores, and only those items can pass. At most ``max_keep`` items
    per row are kept, highest z first. For ``z < -threshold`` pass ``-scores``. A row with std 0
    has z = 0 everywhere.
    """
    n_items = scores.shape[1]
    if scope == "top":
        top_values, top_indices = scores.topk(min(int(top_k), n_items), dim=1)  # (rows, k)
        mean, std = zscore_stats(top_values, dim=1)
        keep = min(int(max_keep), top_values.shape[1])
        z_all = _standardize(top_values, mean[:, None], std[:, None])  # descending per row
        n_total = (z_all > threshold).sum(1)
        z_kept, indices_kept, values_kept = (
            z_all[:, :keep],
            top_indices[:, :keep],
            top_values[:, :keep],
        )
    else:
        mean, std = zscore_stats(scores, dim=1)
        keep = min(int(max_keep), n_items)
        values_kept, indices_kept = scores.topk(keep, dim=1)  # z is monotone in the score
        z_kept = _standardize(values_kept, mean[:, None], std[:, None])
        n_total = (z_kept > threshold).sum(1)
        capped = (n_total == keep) & (keep < n_items)
        if bool(capped.any()):  # count past the cap only where the cap was reached
            # z > t  <=>  score > mean + t * std (std > 0 there, as some z passed).
            bound = (mean + threshold * std)[capped]
            n_total[capped] = (scores[capped] > bound[:, None]).sum(1)
    mask = (z_kept > threshold).cpu().numpy()
    rows = np.nonzero(mask)[0].astype(np.int64)
    return Outliers(
        rows=rows,
        indices=indices_kept.cpu().numpy()[mask].astype(np.int64),
        z=z_kept.double().cpu().numpy()[mask],
        values=values_kept.double().cpu().numpy()[mask],
        n_total=n_total.cpu().numpy().astype(np.int64),
        mean=mean,
        std=std,
    )


# --- directions in the residual stream -----------------------------------------------------------


def _norm_kind(model: SubjectModel) -> str:
    return model.adapter.norm_kind


def read_directions(
    model: SubjectModel,
    transcoder: Transcoder,
    layer: int,
    features: np.ndarray,
    projection: Projection,
) -> Tensor:
    """Encoder columns of ``features`` as residual-stream read directions. (d_model, n)

    ``raw``: ``f_enc``. Otherwise, up to the norm's positive per-position scale, the
    pre-activation is ``r · g`` with ``g = P (gain ⊙ f_enc)``: ``gain`` is the pre-MLP norm's
    affine weight when the transcoder reads ``mlp_in`` (1 for ``mlp_in_unaffine``), ``P`` removes
    the mean for LayerNorm (identity for RMSNorm); ``resid_mid`` transcoders read ``r`` directly.
    Constant terms (``b_enc``, ``b_dec_in``, the norm's bias) shift every token alike and do not
    change z-scores.
    """
    index = torch.tensor(np.asarray(features), dtype=torch.long, device=transcoder.W_enc.device)
    directions = transcoder.W_enc.detach()[:, index].float()  # (d_model, n)
    if projection == "raw" or transcoder.input_hook == "resid_mid":
        return directions
    norm = model.block_part(layer, "pre_mlp_norm")
    if transcoder.input_hook == "mlp_in":
        gain = norm_gain(norm, model.adapter.norm_kind).to(directions.device)
        directions = gain[:, None] * directions
    if _norm_kind(model) == "layernorm":
        directions = directions - directions.mean(0, keepdim=True)
    return directions


def write_directions(
    model: SubjectModel,
    transcoder: Transcoder,
    layer: int,
    features: np.ndarray | None,
    projection: Projection,
) -> Tensor:
    """Decoder rows of ``features`` (all when None) as written into the residual stream. (n, d_model)

    ``raw``: ``f_dec``. Otherwise, for a transcoder writing ``mlp_out`` in a model with a post-MLP
    norm (Gemma-2/3), the norm's gain is applied (its per-position scale is dropped).
    """
    weights = transcoder.W_dec.detach()
    if features is not None:
        weights = weights[
            torch.tensor(np.asarray(features), dtype=torch.long, device=weights.device)
        ]
    directions = weights.float()  # (n, d_model)
    if projection == "raw":
        return directions
    if transcoder.output_hook == "mlp_out" and model.adapter.post_mlp_norm is not None:
        post = model.block_part(layer, "post_mlp_norm")
        if _norm_kind(model) == "layernorm":
            directions = directions - directions.mean(1, keepdim=True)
        directions = directions * norm_gain(post, model.adapter.norm_kind).to(directions.device)
    return directions


def fold_write_side(
    model: SubjectModel,
    transcoder: Transcoder,
    layer: int,
    reads: Tensor,
    projection: Projection,
) -> Tensor:
    """``h`` with ``W_dec · h == write_directions(...) · reads``, so W_dec is never copied. (d, n)

    ``write_directions`` is ``P(f_dec) ⊙ gain`` at most, and ``(gain ⊙ P f) · g = f · P(gain ⊙ g)``.
    """
    if projection == "raw" or not (
        transcoder.output_hook == "mlp_out" and model.adapter.post_mlp_norm is not None
    ):
        return reads
    post = model.block_part(layer, "post_mlp_norm")
    reads = norm_gain(post, model.adapter.norm_kind).to(reads.device)[:, None] * reads
    if _norm_kind(model) == "layernorm":
        reads = reads - reads.mean(0, keepdim=True)
    return reads


def logit_directions(model: SubjectModel, directions: Tensor, projection: Projection) -> Tensor:
    """Residual directions (n, d_model) as the unembedding reads them: through the final norm."""
    if projection == "raw":
        return directions
    final = get_path(model.hf_model, model.adapter.final_norm)
    if _norm_kind(model) == "layernorm":
        directions = directions - directions.mean(1, keepdim=True)
    return directions * norm_gain(final, model.adapter.norm_kind).to(directions.device)  # type: ignore[arg-type]


def token_rows(
    model: SubjectModel, transcoder: Transcoder, layer: int, projection: Projection
) -> Tensor:
    """Embedding rows scored against read directions. (vocab, d_model)

    ``W_E`` as the residual stream sees it (Gemma's ``sqrt(d_model)`` scale applied; GPT-2's
    position embeddings not added); for ``normalized`` each row is passed through the pre-MLP
    norm's normalization (no affine weight: that is in the read direction).
    """
    rows = model.embedding_matrix()
    if projection == "normalized" and transcoder.input_hook != "resid_mid":
        norm = model.block_part(layer, "pre_mlp_norm")
        rows = normalize(norm, model.adapter.norm_kind, rows)
    return rows


# --- descriptions -------------------------------------------------------------------------------


def _quote(text: str) -> str:
    return '"' + text.replace('"', '\\"') + '"'


def _token_list(strings: Sequence[str], limit: int) -> str:
    shown = ", ".join(_quote(s) for s in strings[:limit])
    more = len(strings) - limit
    return f"{shown}, +{more} more" if more > 0 else shown


def describe(
    validated: Sequence[str],
    promoted: Sequence[str] = (),
    suppressed: Sequence[str] = (),
    upstream: Sequence[tuple[int, int, Sequence[str]]] = (),
    *,
    limit: int = 8,
    upstream_limit: int = 3,
) -> str:
    """The LLM-free description of one feature.

    ``tokens: "a", "b" | promotes: ... | suppresses: ... | via upstream L3#12 ("Paris")``; the
    ``tokens`` section is always present (``none`` without validated tokens), the others only
    when non-empty. ``upstream``: (layer, feature, tokens inherited and validated here).
    """
    parts = [f"tokens: {_token_list(validated, limit) if validated else 'none'}"]
    if promoted:
        parts.append(f"promotes: {_token_list(promoted, limit)}")
    if suppressed:
        parts.append(f"suppresses: {_token_list(suppressed, limit)}")
    shown = [
        f"L{layer}#{feature} ({_token_list(tokens, limit)})"
        for layer, feature, tokens in upstream[:upstream_limit]
    ]
    if shown:
        more = len(upstream) - upstream_limit
        parts.append("via upstream " + ", ".join(shown) + (f", +{more} more" if more > 0 else ""))
    return " | ".join(parts)


# --- validation -----------------------------------------------------------------------------------


def single_token_inputs(model: SubjectModel, token_ids: np.ndarray) -> Tensor:
    """``[BOS, token]`` per token with the model's own BOS, ``[token]`` without one. (n, 1 or 2)"""
    tokens = torch.as_tensor(np.asarray(token_ids, dtype=np.int64))[:, None]  # (n, 1)
    bos = model.bos_token_id
    if bos is None:
        return tokens
    return torch.cat([torch.full_like(tokens, int(bos)), tokens], dim=1)


def single_token_pair_activations(
    model: SubjectModel,
    transcoder: Transcoder,
    layer: int,
    token_ids: np.ndarray,
    pair_tokens: np.ndarray,
    pair_features: np.ndarray,
    *,
    batch_size: int = 512,
) -> np.ndarray:
    """Activation of feature ``pair_features[i]`` on token ``token_ids[pair_tokens[i]]`` alone.

    ``token_ids`` (n_tokens,) are run once each: forward passes of at most ``batch_size``
    single-token sequences (:func:`single_token_inputs`) stop after ``layer``; the transcoder
    encodes its input hook at the last position (``encode_slice`` over the pairs' feature range,
    so JumpReLU thresholds and TopK ranking apply exactly). Only the requested (token, feature)
    pairs are kept, so memory does not grow with tokens x features. Returns (n_pairs,) float64.
    """
    token_ids = np.asarray(token_ids, dtype=np.int64)
    pair_tokens = np.asarray(pair_tokens, dtype=np.int64)
    pair_features = np.asarray(pair_features, dtype=np.int64)
    out = np.zeros(len(pair_tokens))
    if len(pair_tokens) == 0:
        return out
    lo, hi = int(pair_features.min()), int(pair_features.max()) + 1
    order = np.argsort(pair_tokens, kind="stable")
    sorted_tokens = pair_tokens[order]
    hook = transcoder.input_hook
    for start in range(0, len(token_ids), batch_size):
        stop = min(start + batch_size, len(token_ids))
        input_ids = single_token_inputs(model, token_ids[start:stop])  # (b, 1 or 2)
        x = model.hook_values(input_ids, {layer: [hook]})[(layer, hook)][:, -1]  # (b, d_model)
        with torch.inference_mode():
            activations = transcoder.encode_slice(x, lo, hi).float().cpu()  # (b, hi - lo)
        first, last = np.searchsorted(sorted_tokens, [start, stop])
        pairs = order[first:last]
        rows = torch.as_tensor(pair_tokens[pairs] - start, dtype=torch.long)
        columns = torch.as_tensor(pair_features[pairs] - lo, dtype=torch.long)
        out[pairs] = activations[rows, columns].double().numpy()
    return out


def single_token_activations(
    model: SubjectModel,
    transcoder: Transcoder,
    layer: int,
    token_ids: np.ndarray,
    features: np.ndarray,
    *,
    batch_size: int = 512,
) -> Tensor:
    """Activation of each feature on each token alone, at the last position. (n_tokens, n_features)

    Dense convenience form of :func:`single_token_pair_activations`.
    """
    token_ids = np.asarray(token_ids, dtype=np.int64)
    features = np.asarray(features, dtype=np.int64)
    grid_tokens, grid_features = np.meshgrid(
        np.arange(len(token_ids)), np.arange(len(features)), indexing="ij"
    )
    values = single_token_pair_activations(
        model,
        transcoder,
        layer,
        token_ids,
        grid_tokens.ravel(),
        features[grid_features.ravel()],
        batch_size=batch_size,
    )
    return torch.as_tensor(values, dtype=torch.float32).reshape(len(token_ids), len(features))


# --- classification and scores --------------------------------------------------------------------


def _pair_keys(features: np.ndarray, tokens: np.ndarray, vocab: int) -> np.ndarray:
    return np.asarray(features, dtype=np.int64) * int(vocab) + np.asarray(tokens, dtype=np.int64)


def _position_column(table: pd.DataFrame, what: str) -> str:
    for name in ("position", "target_position", "max_position"):
        if name in table.columns:
            return name
    raise InputError(f"{what} needs a position, target_position or max_position column")


def classify_features(
    features: np.ndarray,
    validated: pd.DataFrame,
    top_contexts: TopContexts | None,
    *,
    vocab_size: int,
    min_token_share: float,
) -> pd.DataFrame:
    """Token-based vs context-dependent, with the rule's inputs. One row per feature, in order.

    ``validated``: (feature, token_id) pairs of validated tokens. Rule: token-based when the
    feature has >= 1 validated token and, over its top contexts, the share whose max-position
    token is validated is >= ``min_token_share``. Without top contexts (None), or for a feature
    with none, the rule is ">= 1 validated token", recorded in ``classification_basis``
    (``validated_tokens_only`` / ``no_top_contexts``; ``top_contexts`` when the share was used).
    """
    features = np.asarray(features, dtype=np.int64)
    n_validated = (
        validated.groupby("feature").size().reindex(features, fill_value=0).to_numpy(np.int64)
    )
    has_tokens = n_validated > 0
    n_top = np.zeros(len(features), dtype=np.int64)
    n_explained = np.zeros(len(features), dtype=np.int64)
    if top_contexts is None:
        basis = np.full(len(features), "validated_tokens_only", dtype=object)
        share = np.full(len(features), np.nan)
        token_based = has_tokens
    else:
        table = top_contexts.table
        if "kind" in table.columns:
            table = table[table["kind"] == "top"]
        for column in ("feature", "context"):
            if column not in table.columns:
                raise InputError(f"top contexts need a {column!r} column")
        position_column = _position_column(table, "top contexts")
        table = table[table["feature"].isin(features)]
        max_tokens = top_contexts.corpus.token_at(
            table["context"].to_numpy(), table[position_column].to_numpy(), "top contexts"
        )
        row_feature = table["feature"].to_numpy(np.int64)
        explained = np.isin(
            _pair_keys(row_feature, max_tokens, vocab_size),
            _pair_keys(
                validated["feature"].to_numpy(), validated["token_id"].to_numpy(), vocab_size
            ),
        )
        local = pd.Index(features).get_indexer(row_feature)  # row -> index in features
        n_top = np.bincount(local, minlength=len(features)).astype(np.int64)
        n_explained = np.bincount(local, weights=explained, minlength=len(features)).astype(
            np.int64
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(n_top > 0, n_explained / np.maximum(n_top, 1), np.nan)
        basis = np.where(n_top > 0, "top_contexts", "no_top_contexts").astype(object)
        token_based = np.where(
            n_top > 0, has_tokens & (np.nan_to_num(share) >= min_token_share), has_tokens
        )
    return pd.DataFrame(
        {
            "feature": features,
            "is_token_based": token_based.astype(bool),
            "classification": np.where(token_based, "token_based", "context_dependent"),
            "classification_basis": basis,
            "n_top_contexts": n_top,
            "n_top_contexts_explained": n_explained,
            "top_context_share": share,
            "min_token_share": float(min_token_share),
        }
    )


def score_heldout(
    features: np.ndarray,
    validated: pd.DataFrame,
    heldout: HeldOut | None,
    *,
    vocab_size: int,
    bos_token_id: int | None,
    positive_fraction: float = 0.0,
) -> pd.DataFrame:
    """LLM-free score of the validated tokens as a token-level predictor of firing.

    Over every scored held-out (context, position), label = the feature fires (activation > 0,
    and at least ``positive_fraction`` times the feature's largest activation at a scored
    held-out position; 0 = any firing);
    prediction = the position's token is one of the feature's validated tokens; score = the
    single-token activation of that token (0 for other tokens). ``auroc`` of the score (ties
    count one half), ``precision`` = fires among predicted, ``recall`` = predicted among firing.
    ``validated``: columns feature, token_id, activation. Undefined values are NaN with the
    reasons in ``score_reason`` ("; "-joined; empty when all are defined).
    """
    features = np.asarray(features, dtype=np.int64)
    n = len(features)
    result = pd.DataFrame(
        {
            "feature": features,
            "auroc": np.full(n, np.nan),
            "precision": np.full(n, np.nan),
            "recall": np.full(n, np.nan),
            "n_positive": np.zeros(n, dtype=np.int64),
            "n_predicted": np.zeros(n, dtype=np.int64),
            "n_true_positive": np.zeros(n, dtype=np.int64),
            "n_scored_positions": np.zeros(n, dtype=np.int64),
            "score_reason": np.full(n, "", dtype=object),
        }
    )
    if heldout is None:
        result["score_reason"] = "no held-out data"
        return result
    corpus = heldout.corpus
    tokens = corpus.tokens  # (n_contexts, context_length)
    length = corpus.context_length
    scored = np.ones(tokens.shape, dtype=bool)
    exclude_ids = (
        heldout.exclude_token_ids
        if heldout.exclude_token_ids is not None
        else (() if bos_token_id is None else (int(bos_token_id),))
    )
    if exclude_ids:
        scored &= ~np.isin(tokens, np.asarray(exclude_ids, dtype=np.int64))
    table = heldout.activations
    for column in ("context", "position", "feature", "activation"):
        if column not in table.columns:
            raise InputError(f"held-out activations need a {column!r} column")
    rows = corpus.rows(table["context"].to_numpy(), "held-out activations")
    positions = table["position"].to_numpy(np.int64)
    if len(positions) and (positions.min() < 0 or positions.max() >= length):
        raise InputError(f"held-out activations: positions outside [0, {length})")
    if "excluded" in table.columns:
        flagged = table["excluded"].to_numpy(bool)
        scored[rows[flagged], positions[flagged]] = False
    if not 0.0 <= positive_fraction <= 1.0:
        raise InputError(
            f"weightlens.heldout_positive_fraction must be in [0, 1], got {positive_fraction}"
        )
    n_scored = int(scored.sum())
    flat = rows * length + positions
    activation = table["activation"].to_numpy(np.float64)
    positive = (
        table["feature"].isin(features).to_numpy() & (activation > 0) & scored.reshape(-1)[flat]
    )
    if positive_fraction > 0:
        feature_of = table["feature"].to_numpy(np.int64)
        largest = pd.Series(activation[positive]).groupby(feature_of[positive]).max()
        floor = np.full(len(activation), np.inf)
        floor[positive] = positive_fraction * largest.reindex(feature_of[positive]).to_numpy()
        positive &= activation >= floor
    positives = pd.DataFrame(
        {"feature": table["feature"].to_numpy(np.int64)[positive], "flat": flat[positive]}
    ).drop_duplicates()
    # Predicted positions: every scored position holding a validated token of the feature.
    flat_tokens = tokens.reshape(-1)
    scored_flat = np.flatnonzero(scored.reshape(-1))
    pairs = validated[validated["feature"].isin(features)]
    positions_of = pd.DataFrame({"token_id": flat_tokens[scored_flat], "flat": scored_flat})
    positions_of = positions_of[positions_of["token_id"].isin(pairs["token_id"].unique())]
    predicted = pairs[["feature", "token_id", "activation"]].merge(positions_of, on="token_id")
    predicted = predicted.merge(
        positives.assign(is_positive=True), on=["feature", "flat"], how="left"
    )
    predicted["is_positive"] = predicted["is_positive"].fillna(False).astype(bool)
    index = pd.Index(features)
    n_pos = positives.groupby("feature").size().reindex(index, fill_value=0).to_numpy(np.int64)
    n_pred = predicted.groupby("feature").size().reindex(index, fill_value=0).to_numpy(np.int64)
    # Mann-Whitney U: the non-predicted positions tie at score 0, below every predicted one.
    predicted["rank"] = predicted.groupby("feature")["activation"].rank(method="average")
    true_positive = predicted[predicted["is_positive"]]
    n_tp = true_positive.groupby("feature").size().reindex(index, fill_value=0).to_numpy(np.int64)
    rank_sum_tp = (
        true_positive.groupby("feature")["rank"].sum().reindex(index, fill_value=0.0).to_numpy()
    )
    n_zero = n_scored - n_pred
    positive_rank_sum = (n_pos - n_tp) * (n_zero + 1) / 2.0 + rank_sum_tp + n_tp * n_zero
    n_neg = n_scored - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        u = positive_rank_sum - n_pos * (n_pos + 1) / 2.0
        auroc = np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)
        precision = np.where(n_pred > 0, n_tp / np.maximum(n_pred, 1), np.nan)
        recall = np.where(n_pos > 0, n_tp / np.maximum(n_pos, 1), np.nan)
    n_validated = pairs.groupby("feature").size().reindex(index, fill_value=0).to_numpy(np.int64)
    reasons = []
    for has_tokens, pos, neg, pred in zip(n_validated > 0, n_pos, n_neg, n_pred, strict=True):
        why = []
        if not has_tokens:
            why.append("no validated tokens")
        if pos == 0:
            why.append("feature never fires at scored held-out positions")
        if neg == 0:
            why.append("feature fires at every scored held-out position")
        if pred == 0 and has_tokens:
            why.append("no validated token occurs at scored held-out positions")
        reasons.append("; ".join(why))
    result["n_positive"] = n_pos
    result["n_predicted"] = n_pred
    result["n_true_positive"] = n_tp
    result["n_scored_positions"] = n_scored
    result["auroc"] = np.where(n_validated > 0, auroc, np.nan)
    result["precision"] = np.where(n_validated > 0, precision, np.nan)
    result["recall"] = np.where(n_validated > 0, recall, np.nan)
    result["score_reason"] = reasons
    return result


# --- the run --------------------------------------------------------------------------------------


def _feature_ids(features: Shard | range | Sequence[int], layer: int, width: int) -> np.ndarray:
    if isinstance(features, Shard):
        ids = np.arange(features.start, features.stop, dtype=np.int64)
    else:
        ids = np.asarray(list(features), dtype=np.int64)
    if len(ids) == 0:
        raise InputError(f"layer {layer}: no features to explain")
    if len(np.unique(ids)) != len(ids):
        raise InputError(f"layer {layer}: feature ids are not unique")
    if ids.min() < 0 or ids.max() >= width:
        raise InputError(
            f"layer {layer}: features [{ids.min()}, {ids.max() + 1}) exceed the transcoder width "
            f"d_transcoder={width}"
        )
    return ids


def check_transcoders(model: SubjectModel, transcoders: Mapping[int, Transcoder]) -> None:
    """Every transcoder matches the model: layer in range and equal to its key, d_model."""
    for key, transcoder in transcoders.items():
        model.check_layer(key, "transcoder layer")
        if transcoder.d_model != model.d_model:
            raise InputError(
                f"layer {key}: transcoder d_model={transcoder.d_model} does not match the model's "
                f"d_model={model.d_model}"
            )
        if transcoder.layer != key:
            raise InputError(
                f"layer {key}: the transcoder given for layer {key} says layer={transcoder.layer}"
            )


def _inherited_lookup(
    upstream_results: Mapping[int, pd.DataFrame], upstream_layer: int
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """feature -> (validated token ids (n,), their activations (n,)), from one upstream layer's
    WeightLens results. Without a ``validated_activations`` column every activation is 1."""
    frame = upstream_results[upstream_layer]
    for column in ("feature", "validated_token_ids"):
        if column not in frame.columns:
            raise InputError(
                f"upstream results of layer {upstream_layer} lack the column {column!r}"
            )
    if "layer" in frame.columns and len(frame) and (frame["layer"] != upstream_layer).any():
        raise InputError(f"upstream results given for layer {upstream_layer} hold other layers")
    activations = (
        frame["validated_activations"]
        if "validated_activations" in frame.columns
        else [None] * len(frame)
    )
    lookup: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for feature, tokens, acts in zip(
        frame["feature"], frame["validated_token_ids"], activations, strict=True
    ):
        ids = np.asarray(tokens if tokens is not None else [], dtype=np.int64)
        values = np.ones(len(ids)) if acts is None else np.asarray(acts, dtype=np.float64)
        if len(values) != len(ids):
            raise InputError(
                f"upstream results of layer {upstream_layer}, feature {int(feature)}: "
                f"{len(ids)} validated_token_ids but {len(values)} validated_activations"
            )
        lookup[int(feature)] = (ids, values)
    return lookup


def inherited_candidates(
    own: np.ndarray,
    offers: Sequence[tuple[str, float, np.ndarray, np.ndarray]],
    max_tokens: int | None,
) -> tuple[list[int], dict[int, list[str]]]:
    """Step 3b for one feature: its candidates, own ones first, then the kept inherited ones.

    ``own`` (n_own,): the feature's own candidate ids. ``offers``: per kept upstream feature,
    ``(source label, contribution c, validated token ids (n,), their activations (n,))``.
    An inherited token's score is ``|c| * a`` (the largest over the upstream features offering
    it); the ``max_tokens`` highest-scoring tokens that are not own candidates are kept (ties:
    the earlier upstream feature, then the earlier token; None: all), in that order. Returns the
    candidate ids and each candidate's sources (``input`` and the labels of every upstream
    feature offering it).
    """
    sources: dict[int, list[str]] = {int(t): [INPUT_SOURCE] for t in own}
    best: dict[int, tuple[float, int]] = {}  # token -> (score, first-seen rank)
    for label, contribution, tokens, activations in offers:
        for token, activation in zip(tokens.tolist(), activations.tolist(), strict=True):
            sources.setdefault(token, []).append(label)
            if sources[token][0] == INPUT_SOURCE:
                continue
            score = abs(float(contribution)) * float(activation)
            if token not in best:
                best[token] = (score, len(best))
            elif score > best[token][0]:
                best[token] = (score, best[token][1])
    ranked = sorted(best, key=lambda t: (-best[t][0], best[t][1]))
    if max_tokens is not None:
        ranked = ranked[: int(max_tokens)]
    order = [int(t) for t in own] + ranked
    return order, {t: sources[t] for t in order}


UPSTREAM_FIELDS = ("layer", "feature", "contribution", "z", "relative_contribution")


@dataclass
class FeatureWeights:
    """Steps 1-3 for the features of a shard (before validation); lists follow the features.

    ``upstream[k]``: arrays ``layer``, ``feature``, ``contribution``, ``z``,
    ``relative_contribution`` of feature ``k``'s kept upstream features, by relative contribution.
    """

    candidates: list[np.ndarray] = field(default_factory=list)
    candidate_z: list[np.ndarray] = field(default_factory=list)
    n_candidates: list[int] = field(default_factory=list)
    input_mean: list[float] = field(default_factory=list)
    input_std: list[float] = field(default_factory=list)
    input_abs: list[float] = field(default_factory=list)
    promoted: list[np.ndarray] = field(default_factory=list)
    promoted_z: list[np.ndarray] = field(default_factory=list)
    n_promoted: list[int] = field(default_factory=list)
    suppressed: list[np.ndarray] = field(default_factory=list)
    suppressed_z: list[np.ndarray] = field(default_factory=list)
    n_suppressed: list[int] = field(default_factory=list)
    upstream: list[dict[str, np.ndarray]] = field(default_factory=list)
    n_upstream: list[int] = field(default_factory=list)
    total_abs: list[float] = field(default_factory=list)


def _auto_chunk(options: WeightLensOptions, vocab: int, n_features: int) -> int:
    if options.feature_chunk is not None:
        return int(options.feature_chunk)
    return int(max(1, min(n_features, options.chunk_bytes // (4 * max(vocab, 1)))))


def _rank_upstream(
    kept: list[tuple[int, Outliers]], totals: np.ndarray, max_keep: int
) -> list[dict[str, np.ndarray]]:
    """Merge the kept upstream features of every layer, per feature of the chunk: relative
    contribution ``|c| / totals``, highest first (ties: lower layer, lower feature), capped."""
    n_rows = len(totals)
    rows = np.concatenate([o.rows for _, o in kept] + [np.zeros(0, np.int64)])
    columns = {
        "layer": np.concatenate(
            [np.full(len(o.rows), up, np.int64) for up, o in kept] + [np.zeros(0, np.int64)]
        ),
        "feature": np.concatenate([o.indices for _, o in kept] + [np.zeros(0, np.int64)]),
        "contribution": np.concatenate([o.values for _, o in kept] + [np.zeros(0)]),
        "z": np.concatenate([o.z for _, o in kept] + [np.zeros(0)]),
    }
    denominator = np.where(totals > 0, totals, 1.0)
    columns["relative_contribution"] = np.abs(columns["contribution"]) / denominator[rows]
    order = np.lexsort(
        (columns["feature"], columns["layer"], -columns["relative_contribution"], rows)
    )
    rows = rows[order]
    counts = np.bincount(rows, minlength=n_rows)
    rank = np.arange(len(rows)) - (np.cumsum(counts) - counts)[rows]
    keep = order[rank < max_keep]
    kept_counts = np.bincount(rows[rank < max_keep], minlength=n_rows)
    split = {
        name: np.split(values[keep], np.cumsum(kept_counts)[:-1])
        for name, values in columns.items()
    }
    return [{name: split[name][k] for name in UPSTREAM_FIELDS} for k in range(n_rows)]


def analyze_weights(
    model: SubjectModel,
    transcoders: Mapping[int, Transcoder],
    layer: int,
    features: np.ndarray,
    thresholds: Thresholds,
    options: WeightLensOptions,
) -> FeatureWeights:
    """Steps 1-3 (input tokens, output tokens, upstream connections), chunk by chunk of features.

    Per chunk of C features: three (C, vocab) and one (C, F') product per upstream layer; the
    score matrices are laid out features x items so every reduction runs along contiguous memory.
    """
    device = torch.device(options.device) if options.device else model.device
    transcoder = transcoders[layer]
    projection = options.projection
    rows = token_rows(model, transcoder, layer, projection).to(device)  # (vocab, d_model)
    linear_rows = (
        model.embedding_matrix().to(device) if projection == "normalized" else None
    )  # (vocab, d_model): relative contributions stay in residual-stream units
    unembedding = model.unembedding_matrix().to(device)  # (d_model, vocab)
    upstream_layers = sorted(key for key in transcoders if key < layer)
    # Decoders as stored (moved once when the device differs); the write-side fold goes into the
    # read direction instead (fold_write_side), so no (F', d_model) copy is made per layer.
    upstream_decoders = {up: transcoders[up].W_dec.detach().to(device) for up in upstream_layers}
    vocab = rows.shape[0]
    chunk = _auto_chunk(options, vocab, len(features))
    out = FeatureWeights()
    t_tok, scope = thresholds.t_tok, thresholds.z_scope
    with torch.inference_mode():
        for start in range(0, len(features), chunk):
            ids = features[start : start + chunk]
            reads = read_directions(model, transcoder, layer, ids, projection).to(device)  # (d, C)
            scores = reads.T @ rows.T  # (C, vocab)
            own = select_outliers(
                scores,
                t_tok,
                scope=scope,
                top_k=thresholds.top_tokens,
                max_keep=options.max_candidate_tokens,
            )
            linear = scores if linear_rows is None else reads.T @ linear_rows.T  # (C, vocab)
            input_abs = torch.linalg.vector_norm(linear, 1, dim=1).double()  # (C,): sum |s|
            del scores, linear
            writes = write_directions(model, transcoder, layer, ids, projection).to(device)
            logits = logit_directions(model, writes, projection) @ unembedding  # (C, vocab)
            promoted = select_outliers(
                logits,
                t_tok,
                scope=scope,
                top_k=thresholds.top_tokens,
                max_keep=options.max_output_tokens,
            )
            suppressed = select_outliers(
                logits.neg_(),
                t_tok,
                scope=scope,
                top_k=thresholds.top_tokens,
                max_keep=options.max_output_tokens,
            )
            del logits
            total_abs = input_abs.clone()
            kept_upstream: list[tuple[int, Outliers]] = []
            n_upstream = np.zeros(len(ids), dtype=np.int64)
            for up in upstream_layers:
                decoder = upstream_decoders[up]  # (F', d_model)
                folded = fold_write_side(model, transcoders[up], up, reads, projection)
                contributions = (folded.T.to(decoder.dtype) @ decoder.T).float()  # (C, F')
                total_abs += torch.linalg.vector_norm(contributions, 1, dim=1).double()
                kept = select_outliers(
                    contributions,
                    thresholds.t_up,
                    scope=scope,
                    top_k=thresholds.top_upstream,
                    max_keep=options.max_upstream_features,
                )
                n_upstream += kept.n_total
                kept_upstream.append((up, kept))
                del contributions
            totals = total_abs.cpu().numpy()
            out.upstream += _rank_upstream(kept_upstream, totals, options.max_upstream_features)
            out.candidates += own.per_row("indices")
            out.candidate_z += own.per_row("z")
            out.n_candidates += own.n_total.tolist()
            out.input_mean += own.mean.double().cpu().tolist()
            out.input_std += own.std.double().cpu().tolist()
            out.input_abs += input_abs.cpu().tolist()
            out.promoted += promoted.per_row("indices")
            out.promoted_z += promoted.per_row("z")
            out.n_promoted += promoted.n_total.tolist()
            out.suppressed += suppressed.per_row("indices")
            out.suppressed_z += [-z for z in suppressed.per_row("z")]
            out.n_suppressed += suppressed.n_total.tolist()
            out.n_upstream += n_upstream.tolist()
            out.total_abs += totals.tolist()
    return out


def _token_z(
    model: SubjectModel,
    transcoder: Transcoder,
    layer: int,
    features: np.ndarray,
    tokens: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    options: WeightLensOptions,
) -> np.ndarray:
    """z of (feature, token) pairs in the feature's input-token distribution. (n_pairs,)"""
    if len(tokens) == 0:
        return np.zeros(0)
    device = torch.device(options.device) if options.device else model.device
    rows = token_rows(model, transcoder, layer, options.projection)
    scores = np.zeros(len(tokens))
    step = 4096
    with torch.inference_mode():
        for start in range(0, len(tokens), step):
            f = features[start : start + step]
            t = torch.as_tensor(tokens[start : start + step], dtype=torch.long)
            reads = read_directions(model, transcoder, layer, f, options.projection).to(device)
            scores[start : start + step] = (
                (rows[t].to(device) * reads.T).sum(-1).double().cpu().numpy()
            )
    safe = np.where(std > 0, std, 1.0)
    return np.where(std > 0, (scores - mean) / safe, 0.0)


def run_weightlens(
    model: SubjectModel,
    transcoders: Mapping[int, Transcoder],
    layer: int,
    features: Shard | range | Sequence[int],
    upstream_results: Mapping[int, pd.DataFrame] | None = None,
    thresholds: Thresholds | str | None = None,
    *,
    top_contexts: TopContexts | None = None,
    heldout: HeldOut | None = None,
    options: WeightLensOptions | None = None,
    batch_size: int | None = None,
    tokenizer: object | None = None,
) -> pd.DataFrame:
    """WeightLens for ``features`` of ``layer``: one row per feature, columns ``WEIGHTLENS_SCHEMA``.

    Args:
        model: the subject model.
        transcoders: layer -> transcoder; must hold ``layer``. Every earlier layer present is an
            upstream layer: its connections are computed and its results are needed.
        layer: the features' layer.
        features: a shard, a range, or feature ids.
        upstream_results: layer -> that layer's WeightLens results (all of its shards
            concatenated; at least ``feature`` and ``validated_token_ids``), for every earlier
            layer in ``transcoders``.
        thresholds: :class:`Thresholds`, a preset name, or None for the ``paper`` preset of the
            model's family.
        top_contexts: top contexts per feature for the token-based rule (None: validated tokens
            alone decide, recorded in ``classification_basis``).
        heldout: held-out activations and tokens for the LLM-free score (None: the score columns
            are missing with reason ``no held-out data``).
        options: :class:`WeightLensOptions`; ``batch_size`` overrides its field.
        tokenizer: for display strings; None: the model's tokenizer (``<id>`` when it has none).
    """
    options = options or WeightLensOptions()
    if batch_size is not None:
        options = replace(options, batch_size=int(batch_size))
    layer = model.check_layer(layer)
    if layer not in transcoders:
        raise InputError(f"layer {layer}: no transcoder given for the layer to explain")
    check_transcoders(model, transcoders)
    transcoder = transcoders[layer]
    feature_ids = _feature_ids(features, layer, transcoder.d_transcoder)
    thresholds = resolve_thresholds(model, thresholds)
    upstream_results = upstream_results or {}
    upstream_layers = sorted(key for key in transcoders if key < layer)
    missing = [up for up in upstream_layers if up not in upstream_results]
    if missing:
        raise InputError(
            f"layer {layer}: upstream layer(s) {missing} have a transcoder but no WeightLens "
            "results; explain layers in order and pass their results, or leave their transcoders out"
        )
    lookups = {up: _inherited_lookup(upstream_results, up) for up in upstream_layers}
    display = TokenDisplay(tokenizer if tokenizer is not None else model.tokenizer)

    weights = analyze_weights(model, transcoders, layer, feature_ids, thresholds, options)

    # Step 3b: inheritance; candidates = own (highest z first), then inherited ones not already own.
    candidate_ids: list[np.ndarray] = []
    candidate_sources: list[list[str]] = []
    inherited_per_upstream: list[list[np.ndarray]] = []
    has_result: list[list[bool]] = []
    empty = (np.zeros(0, dtype=np.int64), np.zeros(0))
    n_inherited_offered = 0
    for k in range(len(feature_ids)):
        upstream_k = weights.upstream[k]
        offers = []
        inherited_lists = []
        found_flags = []
        for up, up_feature, contribution in zip(
            upstream_k["layer"], upstream_k["feature"], upstream_k["contribution"], strict=True
        ):
            found = lookups[int(up)].get(int(up_feature))
            found_flags.append(found is not None)
            tokens, activations = found if found is not None else empty
            inherited_lists.append(tokens)
            offers.append(
                (f"L{int(up)}#{int(up_feature)}", float(contribution), tokens, activations)
            )
            n_inherited_offered += len(tokens)
        kept_ids, sources = inherited_candidates(
            weights.candidates[k], offers, options.max_inherited_tokens
        )
        candidate_ids.append(np.asarray(kept_ids, dtype=np.int64))
        candidate_sources.append([",".join(sources[t]) for t in kept_ids])
        inherited_per_upstream.append(inherited_lists)
        has_result.append(found_flags)

    # z of every candidate (inherited ones too) in the feature's own input-token distribution.
    counts = np.array([len(c) for c in candidate_ids], dtype=np.int64)
    pair_local = np.repeat(np.arange(len(feature_ids)), counts)
    pair_tokens = np.concatenate(candidate_ids) if len(candidate_ids) else np.zeros(0, np.int64)
    pair_z = _token_z(
        model,
        transcoder,
        layer,
        feature_ids[pair_local],
        pair_tokens,
        np.asarray(weights.input_mean)[pair_local],
        np.asarray(weights.input_std)[pair_local],
        options,
    )
    if len(pair_tokens) and (pair_tokens.min() < 0 or pair_tokens.max() >= model.vocab_size):
        raise InputError(
            f"layer {layer}: inherited token ids outside the vocabulary [0, {model.vocab_size}); "
            "were the upstream results made with another model?"
        )
    # Step 4: validation, one batched pass over the shard's unique candidate ids.
    unique_tokens, token_index = np.unique(pair_tokens, return_inverse=True)
    pair_activation = single_token_pair_activations(
        model,
        transcoder,
        layer,
        unique_tokens,
        token_index,
        feature_ids[pair_local],
        batch_size=options.batch_size,
    )  # (n_pairs,)
    log.info(
        "layer %d: %d features, %d candidate pairs over %d unique tokens validated in %d passes "
        "(%d inherited tokens offered, max_inherited_tokens %s)",
        layer,
        len(feature_ids),
        len(pair_tokens),
        len(unique_tokens),
        math.ceil(len(unique_tokens) / options.batch_size),
        n_inherited_offered,
        options.max_inherited_tokens,
    )
    boundaries = np.cumsum(counts)[:-1]
    z_per = np.split(pair_z, boundaries)
    act_per = np.split(pair_activation, boundaries)

    validated_pairs = pd.DataFrame(
        {
            "feature": feature_ids[pair_local],
            "token_id": pair_tokens,
            "activation": pair_activation,
        }
    )
    validated_pairs = validated_pairs[validated_pairs["activation"] > 0]
    classes = classify_features(
        feature_ids,
        validated_pairs,
        top_contexts,
        vocab_size=model.vocab_size,
        min_token_share=options.min_token_share,
    )
    scores = score_heldout(
        feature_ids,
        validated_pairs,
        heldout,
        vocab_size=model.vocab_size,
        bos_token_id=model.bos_token_id,
        positive_fraction=options.heldout_positive_fraction,
    )

    records = []
    for k, feature in enumerate(feature_ids.tolist()):
        cand = candidate_ids[k]
        acts = act_per[k]
        ok = acts > 0
        by_activation = np.argsort(-acts[ok], kind="stable")
        validated_ids = cand[ok][by_activation]
        validated_acts = acts[ok][by_activation]
        validated_sources = [candidate_sources[k][i] for i in np.flatnonzero(ok)[by_activation]]
        validated_set = set(validated_ids.tolist())
        upstream = weights.upstream[k]
        inherited = [[int(t) for t in tokens] for tokens in inherited_per_upstream[k]]
        upstream_for_description = [
            (int(up), int(f), display.many([t for t in tokens if t in validated_set]))
            for up, f, tokens in zip(upstream["layer"], upstream["feature"], inherited, strict=True)
            if any(t in validated_set for t in tokens)
        ]
        promoted_strings = display.many(weights.promoted[k])
        suppressed_strings = display.many(weights.suppressed[k])
        validated_strings = display.many(validated_ids)
        records.append(
            {
                "layer": layer,
                "feature": feature,
                "preset": thresholds.preset,
                "projection": options.projection,
                "z_scope": thresholds.z_scope,
                "t_tok": float(thresholds.t_tok),
                "t_up": float(thresholds.t_up),
                "input_score_mean": weights.input_mean[k],
                "input_score_std": weights.input_std[k],
                "n_candidate_tokens_total": int(weights.n_candidates[k]),
                "candidate_token_ids": cand.tolist(),
                "candidate_tokens": display.many(cand),
                "candidate_z": z_per[k].tolist(),
                "candidate_sources": candidate_sources[k],
                "candidate_activations": acts.tolist(),
                "validated_token_ids": validated_ids.tolist(),
                "validated_tokens": validated_strings,
                "validated_activations": validated_acts.tolist(),
                "validated_sources": validated_sources,
                "n_promoted_total": int(weights.n_promoted[k]),
                "promoted_token_ids": weights.promoted[k].tolist(),
                "promoted_tokens": promoted_strings,
                "promoted_z": weights.promoted_z[k].tolist(),
                "n_suppressed_total": int(weights.n_suppressed[k]),
                "suppressed_token_ids": weights.suppressed[k].tolist(),
                "suppressed_tokens": suppressed_strings,
                "suppressed_z": weights.suppressed_z[k].tolist(),
                "n_upstream_total": int(weights.n_upstream[k]),
                "upstream_layers": upstream["layer"].astype(int).tolist(),
                "upstream_features": upstream["feature"].astype(int).tolist(),
                "upstream_contributions": upstream["contribution"].tolist(),
                "upstream_z": upstream["z"].tolist(),
                "upstream_relative_contributions": upstream["relative_contribution"].tolist(),
                "upstream_has_result": has_result[k],
                "upstream_inherited_token_ids": inherited,
                "input_abs_contribution": weights.input_abs[k],
                "total_abs_contribution": weights.total_abs[k],
                "description": describe(
                    validated_strings,
                    promoted_strings,
                    suppressed_strings,
                    upstream_for_description,
                    limit=options.description_tokens,
                    upstream_limit=options.description_upstream,
                ),
            }
        )
    frame = pd.DataFrame.from_records(records)
    frame = frame.merge(classes, on="feature", how="left").merge(scores, on="feature", how="left")
    return frame[WEIGHTLENS_SCHEMA.names]


def write_weightlens(frame: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write :func:`run_weightlens` output atomically with ``WEIGHTLENS_SCHEMA``."""
    write_parquet_atomic(frame[WEIGHTLENS_SCHEMA.names], path, schema=WEIGHTLENS_SCHEMA)


def read_weightlens(paths: Sequence[str | os.PathLike[str]]) -> pd.DataFrame:
    """The WeightLens results of one layer from its shard files, sorted by feature.

    This is what :func:`run_weightlens` takes as ``upstream_results[layer]``; a missing file or
    one without the schema's columns is an :class:`InputError` naming it.
    """
    frames = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"WeightLens results file {path} does not exist")
        names = pq.read_schema(path).names
        missing = [name for name in WEIGHTLENS_SCHEMA.names if name not in names]
        if missing:
            raise InputError(f"WeightLens results file {path} lacks columns {missing[:5]}")
        frames.append(pd.read_parquet(path))
    if not frames:
        return pd.DataFrame({name: [] for name in WEIGHTLENS_SCHEMA.names})
    frame = pd.concat(frames, ignore_index=True)
    if frame["feature"].duplicated().any():
        raise InputError(f"WeightLens results files {list(map(str, paths))} repeat features")
    return frame.sort_values("feature", ignore_index=True)


def gather_weightlens(
    paths: Sequence[str | os.PathLike[str]], output: str | os.PathLike[str]
) -> int:
    """Write the WeightLens results of one layer's shard files as one table; returns its rows.

    Later layers read this table (their upstream layers' tokens and classes) instead of every
    shard file: one DAG edge per earlier layer instead of one per shard pair.
    """
    frame = read_weightlens(paths)
    write_weightlens(frame, output)
    return len(frame)


# --- TWERA ------------------------------------------------------------------------------------------


def twera(
    model: SubjectModel,
    source: tuple[int, Transcoder, pd.DataFrame],
    target: tuple[int, Transcoder, pd.DataFrame],
    *,
    target_features: Sequence[int] | np.ndarray | None = None,
    projection: Projection = "folded",
    top_k: int | None = 20,
) -> pd.DataFrame:
    """TWERA(s -> t) = (E[a_s a_t] / E[a_t]) · (W_dec^s · W_enc^t), from co-activations.

    ``source`` / ``target``: (layer, transcoder, sparse activations with columns ``context``,
    ``position``, ``feature``, ``activation`` and optional ``excluded``) over the same contexts;
    the source layer must come before the target layer. Expectations are over all (context,
    position) pairs, so the ratio is ``sum a_s a_t / sum a_t`` (the count cancels); excluded rows
    are dropped. The virtual weight ``W_dec^s · W_enc^t`` uses the same residual-stream directions
    as the upstream connections (``projection``). Only pairs that co-activate somewhere are
    listed; per target feature the ``top_k`` sources by |TWERA| (all when None).
    Columns: ``WEIGHTLENS_TWERA_SCHEMA``.
    """
    from scipy import sparse

    source_layer, source_tc, source_acts = source
    target_layer, target_tc, target_acts = target
    if source_layer >= target_layer:
        raise InputError(
            f"TWERA: source layer {source_layer} must come before target layer {target_layer}"
        )
    check_transcoders(model, {source_layer: source_tc, target_layer: target_tc})

    def clean(table: pd.DataFrame, what: str) -> pd.DataFrame:
        for column in ("context", "position", "feature", "activation"):
            if column not in table.columns:
                raise InputError(f"TWERA: {what} activations need a {column!r} column")
        if "excluded" in table.columns:
            table = table[~table["excluded"].to_numpy(bool)]
        return table[table["activation"].to_numpy() != 0]

    source_acts = clean(source_acts, f"layer {source_layer}")
    target_acts = clean(target_acts, f"layer {target_layer}")
    if target_features is not None:
        target_acts = target_acts[target_acts["feature"].isin(np.asarray(target_features))]
    keys = np.concatenate(
        [
            source_acts["context"].to_numpy(np.int64) << 32
            | source_acts["position"].to_numpy(np.int64),
            target_acts["context"].to_numpy(np.int64) << 32
            | target_acts["position"].to_numpy(np.int64),
        ]
    )
    _, key_index = np.unique(keys, return_inverse=True)
    n_keys = int(key_index.max()) + 1 if len(key_index) else 0
    n_source = len(source_acts)
    source_matrix = sparse.csr_matrix(
        (
            source_acts["activation"].to_numpy(np.float64),
            (key_index[:n_source], source_acts["feature"].to_numpy(np.int64)),
        ),
        shape=(n_keys, source_tc.d_transcoder),
    )
    target_matrix = sparse.csr_matrix(
        (
            target_acts["activation"].to_numpy(np.float64),
            (key_index[n_source:], target_acts["feature"].to_numpy(np.int64)),
        ),
        shape=(n_keys, target_tc.d_transcoder),
    )
    both = (source_matrix.T @ target_matrix).tocoo()  # (F_s, F_t): sum a_s a_t
    counts = (
        (source_matrix != 0).astype(np.int64).T @ (target_matrix != 0).astype(np.int64)
    ).tocsr()
    target_sum = np.asarray(target_matrix.sum(0)).ravel()  # (F_t,): sum a_t
    pairs = pd.DataFrame(
        {
            "source_feature": both.row.astype(np.int64),
            "target_feature": both.col.astype(np.int64),
            "coactivation": both.data / target_sum[both.col],
        }
    )
    pairs = pairs[pairs["coactivation"] != 0]
    pairs["n_coactive"] = np.asarray(
        counts[pairs["source_feature"].to_numpy(), pairs["target_feature"].to_numpy()]
    ).ravel()
    virtual = np.zeros(len(pairs))
    step = 65536
    with torch.inference_mode():
        for start in range(0, len(pairs), step):
            part = pairs.iloc[start : start + step]
            writes = write_directions(
                model, source_tc, source_layer, part["source_feature"].to_numpy(), projection
            )  # (n, d)
            reads = read_directions(
                model, target_tc, target_layer, part["target_feature"].to_numpy(), projection
            )  # (d, n)
            virtual[start : start + step] = (
                (writes * reads.T.to(writes.device)).sum(-1).double().cpu().numpy()
            )
    pairs["virtual_weight"] = virtual
    pairs["twera"] = pairs["coactivation"] * pairs["virtual_weight"]
    pairs["abs"] = pairs["twera"].abs()
    pairs = pairs.sort_values(
        ["target_feature", "abs", "source_feature"], ascending=[True, False, True], kind="stable"
    )
    pairs["rank"] = pairs.groupby("target_feature").cumcount()
    if top_k is not None:
        pairs = pairs[pairs["rank"] < int(top_k)]
    pairs["source_layer"] = source_layer
    pairs["target_layer"] = target_layer
    return pairs[WEIGHTLENS_TWERA_SCHEMA.names].reset_index(drop=True)


def twera_upstream(
    model: SubjectModel,
    transcoders: Mapping[int, Transcoder],
    layer: int,
    activations: Mapping[int, pd.DataFrame],
    *,
    target_features: Sequence[int] | np.ndarray | None = None,
    projection: Projection = "folded",
    top_k: int | None = 20,
) -> pd.DataFrame:
    """TWERA of every earlier layer's features onto ``layer``'s, ranked over all earlier layers.

    ``activations``: layer -> sparse activations (as :func:`twera` reads them) of ``layer`` and
    of each earlier layer to rank, over the same contexts. Per target feature the ``top_k``
    sources by |TWERA| across the earlier layers together (``rank`` from 0; ties: lower layer,
    lower feature); the global top k is a subset of the per-layer top k, so each layer is
    ranked with ``top_k`` first. No earlier layer: an empty table. Columns:
    ``WEIGHTLENS_TWERA_SCHEMA``.
    """
    if layer not in activations:
        raise InputError(f"TWERA: no activations of the target layer {layer}")
    parts = [
        twera(
            model,
            (up, transcoders[up], activations[up]),
            (layer, transcoders[layer], activations[layer]),
            target_features=target_features,
            projection=projection,
            top_k=top_k,
        )
        for up in sorted(activations)
        if up < layer
    ]
    parts = [part for part in parts if len(part)]
    if not parts:
        return WEIGHTLENS_TWERA_SCHEMA.empty_table().to_pandas()
    pairs = pd.concat(parts, ignore_index=True)
    pairs["abs"] = pairs["twera"].abs()
    pairs = pairs.sort_values(
        ["target_feature", "abs", "source_layer", "source_feature"],
        ascending=[True, False, True, True],
        kind="stable",
    )
    pairs["rank"] = pairs.groupby("target_feature").cumcount()
    if top_k is not None:
        pairs = pairs[pairs["rank"] < int(top_k)]
    return pairs[WEIGHTLENS_TWERA_SCHEMA.names].reset_index(drop=True)


def write_twera(frame: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write a TWERA table (``WEIGHTLENS_TWERA_SCHEMA``) atomically."""
    write_parquet_atomic(frame, path, WEIGHTLENS_TWERA_SCHEMA)
