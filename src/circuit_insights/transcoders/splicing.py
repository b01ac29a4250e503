"""How well a trained transcoder stands in for the MLP: next-token loss with the transcoder spliced
in, against the clean model and against the MLP zeroed (the spliced-loss report of rule
train_transcoder). The pairs it is trained on: :mod:`circuit_insights.transcoders.pairs`."""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from circuit_insights.core.progress import Progress
from circuit_insights.models.loading import iter_context_batches
from circuit_insights.models.subject import SubjectModel
from circuit_insights.transcoders.base import Transcoder

log = logging.getLogger(__name__)

IGNORED = -100
"""Target of a position that predicts nothing (the last of each context)."""


def mean_next_token_loss(
    model: SubjectModel, tokens: np.ndarray, batch_size: int, progress: Progress | None = None
) -> float:
    """Mean cross-entropy of next-token prediction over ``tokens`` (n, pos), BOS not predicted;
    ``progress`` counts the contexts done."""
    total, count = 0.0, 0
    for batch_ids, ids in iter_context_batches(tokens, np.arange(len(tokens)), batch_size):
        logits = model.logits(ids)  # (batch, pos, vocab)
        # Each position's target is the next token; the last position has none (ignored), so
        # the logits are read in place, not copied without their last position (with Gemma 3's
        # 262k-token vocabulary that copy is ~1 GB per batch of 16 x 64).
        targets = torch.nn.functional.pad(ids[:, 1:], (0, 1), value=IGNORED)  # (batch, pos)
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            targets.reshape(-1).to(logits.device),
            ignore_index=IGNORED,
            reduction="sum",
        )
        total += float(loss)
        count += ids[:, 1:].numel()
        if progress is not None:
            progress.update(len(batch_ids))
    return total / count


def spliced_loss_report(
    model: SubjectModel,
    transcoder: Transcoder,
    layer: int,
    tokens: np.ndarray,
    batch_size: int,
    clean: float | None = None,
) -> dict[str, float]:
    """Next-token loss of the model, with the transcoder spliced in, and with the MLP zeroed.

    ``clean``: the model's own loss over ``tokens`` when already known (rule clean_loss)."""
    passes = 2 if clean is not None else 3
    with Progress(
        f"spliced-loss report layer {layer}", passes * len(tokens), unit="contexts", logger=log
    ) as progress:
        if clean is None:
            clean = mean_next_token_loss(model, tokens, batch_size, progress)
        with model.splice({layer: transcoder}):
            spliced = mean_next_token_loss(model, tokens, batch_size, progress)
        mlp = model.block_part(layer, "mlp")
        handle = mlp.register_forward_hook(lambda _m, _a, output: torch.zeros_like(output))
        try:
            ablated = mean_next_token_loss(model, tokens, batch_size, progress)
        finally:
            handle.remove()
    recovered = (ablated - spliced) / (ablated - clean) if ablated != clean else math.nan
    return {
        "loss_clean": clean,
        "loss_spliced": spliced,
        "loss_increase": spliced - clean,
        "loss_mlp_zero_ablated": ablated,
        "fraction_of_loss_recovered": recovered,
    }
