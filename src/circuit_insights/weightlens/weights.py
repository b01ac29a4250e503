"""Steps 1-3 from the weights alone: input and output tokens and upstream features, chunked."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from circuit_insights.models.subject import SubjectModel
from circuit_insights.transcoders.base import Transcoder
from circuit_insights.weightlens.config import Thresholds, WeightLensOptions
from circuit_insights.weightlens.directions import (
    fold_write_side,
    logit_directions,
    read_directions,
    token_rows,
    write_directions,
)
from circuit_insights.weightlens.upstream import rank_upstream
from circuit_insights.weightlens.zscores import Outliers, select_outliers


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
            out.upstream += rank_upstream(kept_upstream, totals, options.max_upstream_features)
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


def input_token_z(
    model: SubjectModel,
    transcoder: Transcoder,
    layer: int,
    *,
    features: np.ndarray,
    tokens: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    options: WeightLensOptions,
) -> np.ndarray:
    """z of (feature, token) pairs in the feature's input-token distribution. (n_pairs,)

    ``features``, ``tokens`` (n_pairs,): the pairs; ``mean``, ``std`` (n_pairs,): the z statistics
    of the pair's feature (:attr:`FeatureWeights.input_mean`, ``input_std``); 0 where std is 0.
    """
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
