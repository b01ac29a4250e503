"""CircuitLens attribution: what drives a feature's pre-activation, and what the feature drives.

For each request (a context, a target position ``t``, a feature ``i`` of the transcoder at layer
``L``) the model is linearized around the context (attention patterns, norm denominators and
transcoder gates frozen; see :mod:`circuit_insights.circuitlens.frozen`) and the feature's
pre-activation ``x_c[t] . f_enc + b_enc[i]`` is decomposed with one backward pass per batch:

- leaves (``partition = "leaf"``; they sum exactly to the pre-activation): ``embedding`` (token +
  position embedding at position p), ``feature`` (upstream transcoder feature (l', i', p):
  ``a * (f_dec . grad)``), ``error`` (transcoder error at (l', p)), ``mlp_error`` (the whole MLP
  output of a layer without transcoder at (l', p)), ``bias`` (constants per layer and part,
  summed over positions: attention value/output biases through the frozen pattern, norm biases,
  ``b_dec_out``, the target's input centering ``b_dec_in`` and ``b_enc``);
- mediators (``partition = "mediator"``): ``head`` (l', h, source s): the total effect of head h's
  value vector at s, ``sum_t' A[t', s] (v_s W_O^h) . d pre / d attn_out[t']``;
- output side (``partition = "output"`` / ``"output_vocab"``): ``logit``, the feature's effect
  ``a[t] * (f_dec . J . W_U[:, y])`` on the logit of the actual next token y at t (and at t + j for
  j < ``output_k``), and ``top_token``, the most promoted / suppressed tokens at t.

Only significant contributors are kept (share of the partition's absolute total >= ``threshold``,
plus the ``keep_top`` largest); the totals frame holds the exact sums needed to check completeness.
Definitions, conventions and choices: ``docs/attribution.md``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from torch import Tensor

from circuit_insights.circuitlens.contributions import (
    KINDS,
    LEAF_KINDS,
    PARTITION_OF_KIND,
    ContributionGroup,
    contribution_frame,
    select_significant,
)
from circuit_insights.circuitlens.frozen import FrozenReplacement
from circuit_insights.circuitlens.frozen_capture import (
    AttentionRecord,
    FrozenState,
    capture_frozen_state,
)
from circuit_insights.core.errors import InputError
from circuit_insights.data.schemas import (
    ATTRIBUTION_CONTRIBUTIONS_SCHEMA,
    ATTRIBUTION_TOTALS_SCHEMA,
)
from circuit_insights.models.subject import SubjectModel
from circuit_insights.transcoders.base import Transcoder

log = logging.getLogger(__name__)

__all__ = [
    "KINDS",
    "LEAF_KINDS",
    "PARTITIONS",
    "PARTITION_OF_KIND",
    "STATUS_OK",
    "STATUS_SKIPPED_BOS",
    "AttributionRequest",
    "AttributionResult",
    "attribute",
]

PARTITIONS: tuple[str, ...] = ("leaf", "mediator", "output", "output_vocab")
STATUS_OK = "ok"
STATUS_SKIPPED_BOS = "skipped_bos"
#: Elements of one gathered chunk when scoring upstream features (bounds memory).
_FEATURE_CHUNK_ELEMENTS = 1 << 24
#: Score upstream features with one dense matmul when it computes at most this many times more
#: (position, feature) products than there are active entries; else gather entry by entry.
_DENSE_FACTOR = 64


@dataclass(frozen=True)
class AttributionRequest:
    """One (context, target position, feature) to attribute.

    ``context_tokens``: token ids, BOS first where the model uses one; tokens after
    ``target_position`` are only read by the output side (the actual next tokens);
    ``sample_id``: the caller's id of the sample (unique per feature).
    """

    context_tokens: Sequence[int]
    target_position: int
    feature: int
    sample_id: int = 0


@dataclass
class AttributionResult:
    """Contributions (:data:`~circuit_insights.data.schemas.ATTRIBUTION_CONTRIBUTIONS_SCHEMA`) and
    per-request totals (:data:`~circuit_insights.data.schemas.ATTRIBUTION_TOTALS_SCHEMA`)."""

    contributions: pd.DataFrame
    totals: pd.DataFrame

    def contributions_table(self) -> pa.Table:
        return pa.Table.from_pandas(
            self.contributions, schema=ATTRIBUTION_CONTRIBUTIONS_SCHEMA, preserve_index=False
        )

    def totals_table(self) -> pa.Table:
        return pa.Table.from_pandas(
            self.totals, schema=ATTRIBUTION_TOTALS_SCHEMA, preserve_index=False
        )


@dataclass
class _Prepared:
    index: int
    feature: int
    sample: int
    target: int
    context_length: int
    tokens: tuple[int, ...]  # what the forward pass reads
    next_tokens: tuple[int, ...]  # y_j for the output positions t + j
    status: str = STATUS_OK


# --- validation -------------------------------------------------------------------------------------


def _check_settings(
    model: SubjectModel,
    transcoders: Mapping[int, Transcoder],
    layer: int,
    *,
    batch_size: int,
    threshold: float,
    keep_top: int,
    output_k: int,
    top_tokens: int,
) -> Transcoder:
    model.check_layer(layer, "attribution layer")
    if layer not in transcoders:
        raise InputError(
            f"no transcoder for attribution layer {layer} (have {sorted(transcoders)})"
        )
    for tc_layer, transcoder in transcoders.items():
        model.check_layer(tc_layer, "transcoder layer")
        if transcoder.d_model != model.d_model:
            raise InputError(
                f"transcoder of layer {tc_layer} has d_model={transcoder.d_model}, "
                f"model {model.name!r} has {model.d_model}"
            )
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not 0.0 <= float(threshold) <= 1.0:
        raise InputError(f"threshold must be in [0, 1], got {threshold!r}")
    if keep_top < 0:
        raise InputError(f"keep_top must be >= 0, got {keep_top!r}")
    if output_k < 0:
        raise InputError(f"output_k must be >= 0, got {output_k!r}")
    if top_tokens < 0:
        raise InputError(f"top_tokens must be >= 0, got {top_tokens!r}")
    return transcoders[layer]


def _prepare(
    index: int,
    request: AttributionRequest,
    model: SubjectModel,
    transcoder: Transcoder,
    output_k: int,
) -> _Prepared:
    where = f"request {index} (feature {request.feature}, sample {request.sample_id})"
    tokens = [int(token) for token in request.context_tokens]
    target = request.target_position
    if not isinstance(target, (int, np.integer)) or isinstance(target, bool):
        raise InputError(f"{where}: target_position must be an integer, got {target!r}")
    target = int(target)
    if not tokens:
        raise InputError(f"{where}: context_tokens is empty")
    if not 0 <= target < len(tokens):
        raise InputError(
            f"{where}: target_position {target} is out of range for a context of "
            f"{len(tokens)} tokens (the context is shorter than needed)"
        )
    bad = [token for token in tokens if not 0 <= token < model.vocab_size]
    if bad:
        raise InputError(
            f"{where}: token id {bad[0]} is outside the vocabulary [0, {model.vocab_size})"
        )
    if not 0 <= int(request.feature) < transcoder.d_transcoder:
        raise InputError(
            f"{where}: feature {request.feature} is out of range [0, {transcoder.d_transcoder})"
        )
    k = min(output_k, len(tokens) - 1 - target)
    n_forward = target + max(k, 1)
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions is not None and n_forward > int(max_positions):
        raise InputError(
            f"{where}: needs {n_forward} positions, model {model.name!r} has "
            f"max_position_embeddings={max_positions}"
        )
    prepared = _Prepared(
        index=index,
        feature=int(request.feature),
        sample=int(request.sample_id),
        target=target,
        context_length=len(tokens),
        tokens=tuple(tokens[:n_forward]),
        next_tokens=tuple(tokens[target + 1 : target + 1 + k]),
    )
    bos = model.bos_token_id
    if bos is not None and (target == 0 or tokens[target] == bos):
        prepared.status = STATUS_SKIPPED_BOS
    return prepared


# --- the public entry point ----------------------------------------------------------------------------


def attribute(
    model: SubjectModel,
    transcoders: Mapping[int, Transcoder],
    layer: int,
    requests: Sequence[AttributionRequest],
    *,
    batch_size: int = 16,
    threshold: float = 0.02,
    keep_top: int = 3,
    output_k: int = 1,
    top_tokens: int = 10,
) -> AttributionResult:
    """Attribute the pre-activations of transcoder features at ``layer`` (see the module docstring).

    Args:
        model: the subject model.
        transcoders: layer -> transcoder; must hold ``layer``. Transcoders of earlier layers make
            their features leaves (their errors too); earlier layers without one contribute their
            whole MLP output as an ``mlp_error`` leaf. Transcoders of later layers let the output
            side flow through their features (frozen gates); without one a later MLP is frozen.
        requests: what to attribute; (feature, sample_id) pairs must be unique.
        batch_size: (context, feature) rows per forward/backward pass (bounds memory).
        threshold: keep a leaf / head whose |value| is at least this share of its partition's
            absolute total; the ``keep_top`` largest are always kept. 0 keeps everything.
        output_k: number of following positions whose actual-next-token logit is attributed
            (0: none).
        top_tokens: number of most promoted and of most suppressed tokens at t (0: none).

    Raises:
        InputError: a bad setting or request (named); targets on BOS are skipped, not errors.
    """
    transcoder = _check_settings(
        model,
        transcoders,
        layer,
        batch_size=batch_size,
        threshold=threshold,
        keep_top=keep_top,
        output_k=output_k,
        top_tokens=top_tokens,
    )
    prepared = [
        _prepare(index, request, model, transcoder, output_k)
        for index, request in enumerate(requests)
    ]
    seen: dict[tuple[int, int], int] = {}
    for item in prepared:
        key = (item.feature, item.sample)
        if key in seen:
            raise InputError(
                f"requests {seen[key]} and {item.index} have the same feature {item.feature} "
                f"and sample_id {item.sample}"
            )
        seen[key] = item.index
    todo = sorted(
        (item for item in prepared if item.status == STATUS_OK),
        key=lambda item: (len(item.tokens), item.tokens, item.index),
    )
    frames: list[pd.DataFrame] = []
    totals: list[dict[str, object]] = []
    started = last_report = time.perf_counter()
    for start in range(0, len(todo), batch_size):
        if time.perf_counter() - last_report > 30:
            last_report = time.perf_counter()
            rate = start / (last_report - started)
            log.info(
                "attribution layer %d: %d / %d (feature, sample) pairs, %.1f pairs/s, "
                "about %.0f s left",
                layer,
                start,
                len(todo),
                rate,
                (len(todo) - start) / max(rate, 1e-9),
            )
        frame, batch_totals = _attribute_batch(
            model,
            transcoders,
            layer,
            todo[start : start + batch_size],
            threshold=threshold,
            keep_top=keep_top,
            output_k=output_k,
            top_tokens=top_tokens,
        )
        frames.append(frame)
        totals.extend(batch_totals)
    totals.extend(_skipped_totals(item, layer) for item in prepared if item.status != STATUS_OK)
    contributions = pd.concat(frames, ignore_index=True) if frames else _empty_contributions()
    contributions = contributions.sort_values("request", kind="stable").drop(columns="request")
    totals_frame = pd.DataFrame(totals, columns=["request", *ATTRIBUTION_TOTALS_SCHEMA.names])
    totals_frame = totals_frame.sort_values("request").drop(columns="request")
    return AttributionResult(
        contributions=contributions.reset_index(drop=True),
        totals=_typed_totals(totals_frame.reset_index(drop=True)),
    )


# --- one batch --------------------------------------------------------------------------------------------


def _batch_state(
    model: SubjectModel,
    transcoders: Mapping[int, Transcoder],
    layer: int,
    rows: Sequence[_Prepared],
    complete: bool,
) -> FrozenState:
    """Capture the unique contexts of ``rows`` (right-padded) and expand to one row per request."""
    unique: dict[tuple[int, ...], int] = {}
    context_of_row = [unique.setdefault(item.tokens, len(unique)) for item in rows]
    n_pos = max(len(tokens) for tokens in unique)
    input_ids = torch.zeros(len(unique), n_pos, dtype=torch.long)
    for tokens, context in unique.items():
        input_ids[context, : len(tokens)] = torch.tensor(tokens)
    state = capture_frozen_state(
        model, transcoders, input_ids, target_layer=layer, complete=complete
    )
    if context_of_row != list(range(len(unique))):
        state = state.select(torch.tensor(context_of_row, device=model.device))
    return state


def _attribute_batch(
    model: SubjectModel,
    transcoders: Mapping[int, Transcoder],
    layer: int,
    rows: Sequence[_Prepared],
    *,
    threshold: float,
    keep_top: int,
    output_k: int,
    top_tokens: int,
) -> tuple[pd.DataFrame, list[dict[str, object]]]:
    device = model.device
    need_output = output_k > 0 or top_tokens > 0
    state = _batch_state(model, transcoders, layer, rows, need_output)
    frozen = FrozenReplacement(model, transcoders, state, layer)
    transcoder = transcoders[layer]
    batch = len(rows)
    positions = torch.tensor([item.target for item in rows], device=device)
    features = torch.tensor([item.feature for item in rows], device=device)
    row_index = torch.arange(batch, device=device)

    # The plain forward pass's pre-activation and activation (all features: TopK needs them).
    target_capture = state.layers[layer].transcoder
    assert target_capture is not None
    with torch.no_grad():
        x_t = target_capture.x[row_index, positions]  # (batch, d_model)
        pre_all = transcoder.pre_activation(x_t)  # (batch, d_transcoder)
        act_all = transcoder.activate(pre_all)
        pre_plain = pre_all[row_index, features.to(pre_all.device)].to(device, torch.float64)
        activation = act_all[row_index, features.to(act_all.device)].to(device, frozen.dtype)

    # One backward pass for every row: d (sum of pre-activations) / d (leaves, head probes).
    leaves = frozen.default_leaves(requires_grad=True)
    record = AttentionRecord(layers=frozenset(range(layer + 1)))
    with torch.enable_grad():
        frozen_pre = frozen.pre_activation(leaves, features, positions, record=record)
        named: list[tuple[tuple[object, ...], Tensor]] = []
        if leaves.embedding is not None:
            named.append((("embedding",), leaves.embedding))
        named += [(("write", key), value) for key, value in leaves.writes.items() if key < layer]
        named += [(("error", key), value) for key, value in leaves.errors.items() if key < layer]
        named += [
            (("bias", *key), value) for key, value in leaves.biases.items() if key[0] <= layer
        ]
        named += [(("probe", key), record.probes[key]) for key in sorted(record.probes)]
        grads = torch.autograd.grad(
            frozen_pre.sum(), [tensor for _, tensor in named], allow_unused=True
        )
    gradient = {
        key: grad.detach() for (key, _), grad in zip(named, grads, strict=True) if grad is not None
    }

    input_ids = state.input_ids
    n_pos = input_ids.shape[1]
    causal = torch.arange(n_pos, device=device)[None, :] <= positions[:, None]  # p <= t
    mask_rows, mask_positions = causal.nonzero(as_tuple=True)
    mask_tokens = input_ids[mask_rows, mask_positions]
    groups: list[ContributionGroup] = []

    def positional(kind: str, values: Tensor, layer_of: int | None) -> ContributionGroup:
        return ContributionGroup(
            kind,
            mask_rows,
            values[mask_rows, mask_positions],
            layer=layer_of,
            position=mask_positions,
            token=mask_tokens,
        )

    if ("embedding",) in gradient:
        groups.append(positional("embedding", gradient[("embedding",)], None))
    for upstream in range(layer):
        if ("error", upstream) in gradient:
            kind = "error" if upstream in transcoders else "mlp_error"
            groups.append(positional(kind, gradient[("error", upstream)], upstream))
        if ("write", upstream) in gradient:
            groups.append(
                _feature_group(frozen, upstream, gradient[("write", upstream)], positions)
            )
    for key, grad in gradient.items():
        if key[0] == "bias":
            _, bias_layer, part = key
            groups.append(
                ContributionGroup(
                    "bias", row_index, grad.sum(dim=1), layer=int(str(bias_layer)), detail=str(part)
                )
            )
    for head_layer in range(layer + 1):
        if ("probe", head_layer) not in gradient:
            continue
        pattern = state.layers[head_layer].pattern  # (batch, n_heads, pos, pos)
        spread = pattern.transpose(-1, -2) @ gradient[("probe", head_layer)]  # (b, h, src, hd)
        effect = (spread * record.values[head_layer]).sum(-1)  # (batch, n_heads, src)
        n_heads = effect.shape[1]
        rows_h = mask_rows.repeat_interleave(n_heads)
        sources = mask_positions.repeat_interleave(n_heads)
        heads = torch.arange(n_heads, device=device).repeat(len(mask_rows))
        groups.append(
            ContributionGroup(
                "head",
                rows_h,
                effect[rows_h, heads, sources],
                layer=head_layer,
                head=heads,
                position=sources,
                token=mask_tokens.repeat_interleave(n_heads),
            )
        )
    if need_output:
        groups += _output_groups(
            frozen, rows, features, positions, activation, output_k=output_k, top_tokens=top_tokens
        )

    selection, stats = select_significant(groups, batch, threshold=threshold, keep_top=keep_top)
    frame = contribution_frame(selection)
    local = frame.pop("row").to_numpy()
    targets = np.array([item.target for item in rows], dtype=np.int64)
    frame["request"] = np.array([item.index for item in rows], dtype=np.int64)[local]
    frame["feature"] = np.array([item.feature for item in rows], dtype=np.int32)[local]
    frame["sample"] = np.array([item.sample for item in rows], dtype=np.int64)[local]
    position = frame["position"]
    delta = position.fillna(0).to_numpy(dtype=np.int64) - targets[local]
    frame["delta"] = pd.arrays.IntegerArray(delta.astype(np.int32), mask=position.isna().to_numpy())
    frame = frame[["request", *ATTRIBUTION_CONTRIBUTIONS_SCHEMA.names]]

    frozen_pre_np = frozen_pre.detach().double().cpu().numpy()
    pre_np = pre_plain.cpu().numpy()
    act_np = activation.double().cpu().numpy()
    totals = []
    for local, item in enumerate(rows):
        totals.append(
            {
                "request": item.index,
                "feature": item.feature,
                "sample": item.sample,
                "layer": layer,
                "target_position": item.target,
                "target_token": item.tokens[item.target],
                "context_length": item.context_length,
                "status": STATUS_OK,
                "fires": bool(act_np[local] != 0.0),
                "pre_activation": float(pre_np[local]),
                "activation": float(act_np[local]),
                "frozen_pre_activation": float(frozen_pre_np[local]),
                **{name: values[local] for name, values in stats.items()},
                "n_output_positions": len(item.next_tokens),
            }
        )
    return frame, totals


def _feature_group(
    frozen: FrozenReplacement, layer: int, write_gradient: Tensor, positions: Tensor
) -> ContributionGroup:
    """Upstream feature contributions ``a * (f_dec . grad)`` of layer ``layer`` at p <= t.

    write_gradient: (batch, pos, d_model) d pre / d (the layer's decoder write).
    """
    capture = frozen.state.layers[layer].transcoder
    assert capture is not None
    active, values = capture.active, capture.values
    keep = active[:, 1] <= positions[active[:, 0]]
    active, values = active[keep], values[keep]
    W_dec = frozen.transcoder_weight(layer, "W_dec")
    assert W_dec is not None
    batch, n_pos, d_model = write_gradient.shape
    flat_gradient = write_gradient.reshape(batch * n_pos, d_model)
    flat_position = active[:, 0] * n_pos + active[:, 1]
    union, column = torch.unique(active[:, 2], return_inverse=True)
    if len(values) == 0:
        scores = values
    elif batch * n_pos * len(union) <= _DENSE_FACTOR * len(values):
        # Dense-ish: one matmul against the decoder rows in use, then pick the entries.
        dense = flat_gradient @ W_dec.index_select(0, union).T  # (batch * pos, n_union)
        scores = values * dense[flat_position, column]
    else:
        chunk = max(1, _FEATURE_CHUNK_ELEMENTS // d_model)
        parts = []
        for start in range(0, len(values), chunk):
            stop = start + chunk
            grad = flat_gradient.index_select(0, flat_position[start:stop])  # (chunk, d_model)
            decoder = W_dec.index_select(0, active[start:stop, 2])  # (chunk, d_model)
            parts.append(values[start:stop] * (grad * decoder).sum(-1))
        scores = torch.cat(parts)
    return ContributionGroup(
        "feature",
        active[:, 0],
        scores,
        layer=layer,
        source_feature=active[:, 2],
        position=active[:, 1],
        token=frozen.state.input_ids[active[:, 0], active[:, 1]],
    )


def _output_groups(
    frozen: FrozenReplacement,
    rows: Sequence[_Prepared],
    features: Tensor,
    positions: Tensor,
    activation: Tensor,
    *,
    output_k: int,
    top_tokens: int,
) -> list[ContributionGroup]:
    """Logit effects at t + j (j < k) on the actual next tokens, and the top tokens at t."""
    layer = frozen.target_layer
    device = frozen.device
    W_dec = frozen.transcoder_weight(layer, "W_dec")
    assert W_dec is not None
    groups = []
    with torch.no_grad():
        write = activation[:, None] * W_dec[features]  # (batch, d_model)
        direction = frozen.output_direction(write, positions)  # (batch, pos, d_model)
        # Exact zeros for features that do not fire (the replay's bias cancellation is not exact).
        direction = direction * (activation != 0).to(direction.dtype)[:, None, None]
        W_U = frozen.unembedding()  # (d_model, vocab)
        entries = [
            (local, item.target + j, token)
            for local, item in enumerate(rows)
            for j, token in enumerate(item.next_tokens[:output_k])
        ]
        if entries:
            row_t, position_t, token_t = torch.tensor(entries, device=device).T
            values = (direction[row_t, position_t] * W_U.T[token_t]).sum(-1)
            groups.append(
                ContributionGroup(
                    "logit", row_t, values, layer=layer, position=position_t, token=token_t
                )
            )
        if top_tokens > 0:
            batch = len(rows)
            vocab_effect = direction[torch.arange(batch, device=device), positions] @ W_U
            total = vocab_effect.abs().sum(-1, keepdim=True).clamp_min(1e-30)  # (batch, 1)
            n = min(top_tokens, vocab_effect.shape[1])
            for detail, sign in (("promoted", 1.0), ("suppressed", -1.0)):
                top_values, top_ids = (sign * vocab_effect).topk(n, dim=-1)  # (batch, n)
                keep = (top_values > 0).reshape(-1)
                top_rows = torch.arange(batch, device=device).repeat_interleave(n)[keep]
                groups.append(
                    ContributionGroup(
                        "top_token",
                        top_rows,
                        (sign * top_values).reshape(-1)[keep],
                        layer=layer,
                        position=positions[top_rows],
                        token=top_ids.reshape(-1)[keep],
                        detail=detail,
                        share=(top_values / total).reshape(-1)[keep],
                    )
                )
    return groups


# --- frames -------------------------------------------------------------------------------------------------


def _skipped_totals(item: _Prepared, layer: int) -> dict[str, object]:
    nan = math.nan
    return {
        "request": item.index,
        "feature": item.feature,
        "sample": item.sample,
        "layer": layer,
        "target_position": item.target,
        "target_token": item.tokens[item.target],
        "context_length": item.context_length,
        "status": item.status,
        "fires": False,
        "pre_activation": nan,
        "activation": nan,
        "frozen_pre_activation": nan,
        "leaf_sum": nan,
        "leaf_abs_sum": nan,
        "n_leaves": 0,
        "n_leaves_kept": 0,
        "kept_leaf_sum": nan,
        "n_leaves_dropped": 0,
        "dropped_leaf_sum": nan,
        "head_sum": nan,
        "head_abs_sum": nan,
        "n_heads": 0,
        "n_heads_kept": 0,
        "kept_head_sum": nan,
        "n_heads_dropped": 0,
        "dropped_head_sum": nan,
        "n_output_positions": 0,
    }


def _empty_contributions() -> pd.DataFrame:
    frame = ATTRIBUTION_CONTRIBUTIONS_SCHEMA.empty_table().to_pandas()
    frame.insert(0, "request", np.zeros(0, dtype=np.int64))
    return frame


def _typed_totals(frame: pd.DataFrame) -> pd.DataFrame:
    for schema_field in ATTRIBUTION_TOTALS_SCHEMA:
        name = schema_field.name
        if pa.types.is_int32(schema_field.type):
            frame[name] = frame[name].astype(np.int32)
        elif pa.types.is_int64(schema_field.type):
            frame[name] = frame[name].astype(np.int64)
        elif pa.types.is_floating(schema_field.type):
            frame[name] = frame[name].astype(np.float64)
        elif pa.types.is_boolean(schema_field.type):
            frame[name] = frame[name].astype(bool)
    return frame
