"""TWERA: upstream connections ranked by co-activation times virtual weight."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from circuit_insights.core.errors import InputError
from circuit_insights.core.io import write_parquet_atomic
from circuit_insights.data.schemas import WEIGHTLENS_TWERA_SCHEMA
from circuit_insights.models.subject import SubjectModel
from circuit_insights.transcoders.base import Transcoder
from circuit_insights.weightlens.config import Projection
from circuit_insights.weightlens.directions import read_directions, write_directions
from circuit_insights.weightlens.inputs import check_transcoders


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
