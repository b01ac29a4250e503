"""The subject-model side of FADE: the feature's activations on texts and contexts, and greedy
continuations with the feature steered.

- :func:`text_activations`: sample activations of a feature on token sequences (the synthetic
  texts of Clarity), :func:`natural_sample_activations`: the same from the sparse activation
  table of the held-out contexts.
- :func:`steered_continuations`: greedy continuations of natural prompts with the feature set to
  ``factor × reference activation`` at every position (:func:`steering`, through
  :meth:`SubjectModel.splice` with the transcoder's error term kept), for Faithfulness.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from circuit_insights.core.errors import InputError
from circuit_insights.evaluation import metrics
from circuit_insights.evaluation.fade.presets import Baseline
from circuit_insights.models.subject import SubjectModel
from circuit_insights.transcoders.base import Transcoder

__all__ = [
    "decode_tokens",
    "encode_text",
    "greedy_continuations",
    "natural_sample_activations",
    "steered_continuations",
    "steering",
    "text_activations",
]


def _tokenizer(model: SubjectModel) -> Any:
    if model.tokenizer is None:
        raise InputError(f"model {model.name!r} has no tokenizer: FADE needs one for its texts")
    return model.tokenizer


def decode_tokens(model: SubjectModel, token_ids: Sequence[int]) -> str:
    """Text of token ids without special tokens (``<id>`` pieces when there is no tokenizer)."""
    ids = [int(t) for t in token_ids]
    bos = model.bos_token_id
    if bos is not None and ids and ids[0] == bos:
        ids = ids[1:]
    if model.tokenizer is None:
        return "".join(f"<{t}>" for t in ids)
    return str(model.tokenizer.decode(ids, skip_special_tokens=True))  # type: ignore[attr-defined]


def encode_text(model: SubjectModel, text: str, max_tokens: int) -> list[int]:
    """Token ids of ``text`` for the subject model: BOS (where used) + at most ``max_tokens``."""
    ids = _tokenizer(model).encode(text, add_special_tokens=False)
    return model.with_bos([int(t) for t in ids[:max_tokens]])


def text_activations(
    model: SubjectModel,
    transcoder: Transcoder,
    feature: int,
    token_lists: Sequence[Sequence[int]],
    *,
    batch_size: int = 16,
) -> np.ndarray:
    """Sample activations of ``feature`` on token sequences (each starting with BOS if used).

    Sequences are right-padded and batched; the activation of a sequence is the signed value at
    the position of largest |activation| over its own tokens, BOS excluded (as in the cache). A
    sequence with no token besides BOS gets NaN. (n,) float64.
    """
    layer = model.check_layer(transcoder.layer, "transcoder layer")
    if not 0 <= feature < transcoder.d_transcoder:
        raise InputError(f"feature {feature} is outside [0, {transcoder.d_transcoder})")
    skip = 1 if model.bos_token_id is not None else 0
    out = np.full(len(token_lists), np.nan)
    for start in range(0, len(token_lists), batch_size):
        chunk = [list(ids) for ids in token_lists[start : start + batch_size]]
        width = max((len(ids) for ids in chunk), default=0)
        if width <= skip:
            continue
        input_ids = torch.zeros((len(chunk), width), dtype=torch.long)  # (batch, pos)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, ids in enumerate(chunk):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[row, : len(ids)] = 1
        x = model.hook_values(input_ids, {layer: [transcoder.input_hook]}, attention_mask=mask)[
            (layer, transcoder.input_hook)
        ]  # (batch, pos, d_model)
        with torch.no_grad():
            acts = transcoder.encode_slice(x, feature, feature + 1)[..., 0]  # (batch, pos)
        valid = mask.bool().clone()
        valid[:, :skip] = False
        values = metrics.sample_activations(acts.float().cpu().numpy(), valid.numpy())
        has_tokens = valid.any(dim=1).numpy()
        out[start : start + len(chunk)] = np.where(has_tokens, values, np.nan)
    return out


def natural_sample_activations(
    activations: pd.DataFrame, feature: int, context_ids: np.ndarray | Sequence[int]
) -> np.ndarray:
    """Sample activations of ``feature`` on the given contexts, from a sparse activation table.

    ``activations``: rows with columns ``feature``, ``context``, ``position``, ``activation``
    (optional ``excluded``: excluded rows, e.g. BOS, do not count). A context without rows has
    activation 0; a context with a NaN activation (at a position that counts) has activation
    NaN, never 0, so the metrics that use it are NaN with reason ``non_finite_activations``.
    (len(context_ids),) float64 in the order of ``context_ids``.
    """
    contexts = np.asarray(context_ids, dtype=np.int64)
    out = np.zeros(len(contexts))
    if len(activations) == 0 or len(contexts) == 0:
        return out
    rows = activations[activations["feature"].to_numpy() == feature]
    if "excluded" in rows.columns:
        rows = rows[~rows["excluded"].to_numpy(bool)]
    if len(rows) == 0:
        return out
    values = rows["activation"].to_numpy(np.float64)
    row_context = rows["context"].to_numpy(np.int64)
    # by context, then NaN first, then largest |value| first: a NaN row wins its context
    order = np.lexsort((-np.abs(values), ~np.isnan(values), row_context))
    first = order[np.r_[True, row_context[order][1:] != row_context[order][:-1]]]
    best = pd.Series(values[first], index=row_context[first])
    return best.reindex(contexts, fill_value=0.0).to_numpy(np.float64)


@torch.no_grad()
def greedy_continuations(
    model: SubjectModel,
    prompts: Tensor,
    n_tokens: int,
    *,
    batch_size: int = 16,
    kv_cache: bool = True,
) -> Tensor:
    """Greedy continuations of equal-length ``prompts`` (P, L): (P, n_tokens) token ids.

    Exactly ``n_tokens`` tokens, no stopping at EOS. ``kv_cache`` (the default): the prompt
    once, then one position per step with the model's KV cache
    (:meth:`SubjectModel.next_token_logits`); else the whole growing sequence at every step.
    Both run under whatever :meth:`SubjectModel.splice` is active (steering applies at every
    position either way) and give the same logits up to rounding.
    """
    out = []
    for start in range(0, len(prompts), batch_size):
        ids = prompts[start : start + batch_size].to(model.device, torch.long)  # (b, L)
        new: list[Tensor] = []
        cache: object | None = None
        step_ids = ids
        for _ in range(n_tokens):
            if kv_cache:
                logits, cache = model.next_token_logits(step_ids, cache)  # (b, vocab)
            else:
                logits = model.logits(ids, logits_to_keep=1)[:, -1]  # (b, vocab)
            next_token = logits.argmax(dim=-1, keepdim=True)  # (b, 1)
            new.append(next_token)
            ids = torch.cat([ids, next_token], dim=1)
            step_ids = next_token
        out.append(torch.cat(new, dim=1).cpu() if new else ids[:, :0].cpu())
    return torch.cat(out) if out else torch.zeros((0, n_tokens), dtype=torch.long)


@contextlib.contextmanager
def steering(
    model: SubjectModel, transcoder: Transcoder, feature: int, value: float | None
) -> Iterator[None]:
    """Set ``feature`` to ``value`` at every position (None: leave the model as it is).

    The transcoder is spliced with its error term kept, so only the feature's decoder
    contribution changes: the residual stream moves by ``(value − a) · W_dec[feature]``.
    """
    if value is None:
        yield
        return
    device = transcoder.W_dec.device
    override = {
        transcoder.layer: (
            torch.tensor([feature], dtype=torch.long, device=device),
            torch.tensor([float(value)], dtype=transcoder.W_dec.dtype, device=device),
        )
    }
    with model.splice({transcoder.layer: transcoder}, keep_error=True, feature_override=override):
        yield


def steered_continuations(
    model: SubjectModel,
    transcoder: Transcoder,
    *,
    feature: int,
    prompts: Tensor,
    factors: Sequence[float],
    reference_activation: float,
    n_tokens: int = 30,
    baseline: Baseline = "ablate",
    batch_size: int = 16,
) -> dict[float, Tensor]:
    """Greedy continuations (P, n_tokens) of ``prompts`` (P, L) under each steering factor.

    Factor ``f`` sets the feature to ``f × reference_activation`` at every position; with
    ``baseline="unsteered"`` factor 0 runs the unmodified model instead of ablating the feature.
    """
    model.check_layer(transcoder.layer, "transcoder layer")
    continuations = {}
    for factor in factors:
        value: float | None = float(factor) * float(reference_activation)
        if float(factor) == 0.0 and baseline == "unsteered":
            value = None
        with steering(model, transcoder, feature, value):
            continuations[float(factor)] = greedy_continuations(
                model, prompts, n_tokens, batch_size=batch_size
            )
    return continuations
