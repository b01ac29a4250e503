"""Step 4: each candidate token alone through the model, and the feature's activation on it."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from circuit_insights.models.subject import SubjectModel
from circuit_insights.transcoders.base import Transcoder


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
    *,
    pair_tokens: np.ndarray,
    pair_features: np.ndarray,
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
        pair_tokens=grid_tokens.ravel(),
        pair_features=features[grid_features.ravel()],
        batch_size=batch_size,
    )
    return torch.as_tensor(values, dtype=torch.float32).reshape(len(token_ids), len(features))
