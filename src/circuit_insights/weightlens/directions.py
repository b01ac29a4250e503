"""Transcoder weights as residual-stream directions, under a WeightLens ``projection``.

``raw`` is the paper's literal formula (the weights as stored); ``folded`` folds the model's
norms in (:meth:`~circuit_insights.models.subject.SubjectModel.read_directions` and its
siblings: the pre-MLP norm's gain and LayerNorm centering on the read side, Gemma's post-MLP norm
gain on the write side, the final norm's gain before the unembedding); ``normalized`` is
``folded`` with each embedding row first normalized by the pre-MLP norm.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from circuit_insights.models.subject import SubjectModel
from circuit_insights.transcoders.base import Transcoder
from circuit_insights.weightlens.config import Projection


def read_directions(
    model: SubjectModel,
    transcoder: Transcoder,
    layer: int,
    features: np.ndarray,
    projection: Projection,
) -> Tensor:
    """Encoder columns of ``features`` as residual-stream read directions. (d_model, n)

    ``raw``: ``f_enc``. Otherwise, up to the norm's positive per-position scale, the
    pre-activation is ``r · g`` with ``g = P (gain ⊙ f_enc)``
    (:meth:`~circuit_insights.models.subject.SubjectModel.read_directions`). Constant terms
    (``b_enc``, ``b_dec_in``, the norm's bias) shift every token alike and do not change z-scores.
    """
    return model.read_directions(layer, transcoder, features, fold=projection != "raw")


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
    return model.write_directions(layer, transcoder, features, fold=projection != "raw")


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
    if projection == "raw":
        return reads
    return model.fold_write_norm(layer, transcoder, reads)


def logit_directions(model: SubjectModel, directions: Tensor, projection: Projection) -> Tensor:
    """Residual directions (n, d_model) as the unembedding reads them: through the final norm."""
    if projection == "raw":
        return directions
    return model.logit_directions(directions)


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
        rows = model.normalize_mlp_input(layer, rows)
    return rows
