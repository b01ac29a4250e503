"""Rule clean_loss: a model's own next-token loss on the held-out split, once per model."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from circuit_insights.core.io import write_json_atomic
from circuit_insights.models.loading import load_subject_model
from circuit_insights.pipeline.locations import model_location
from circuit_insights.transcoders.splicing import mean_next_token_loss

log = logging.getLogger(__name__)


def run_clean_loss(
    *,
    model_config: Mapping[str, Any],
    tokens_path: str,
    model_files: Sequence[str] | str,
    out_path: str,
    batch_size: int = 16,
    model_name: str = "",
) -> float:
    """Rule clean_loss: the model's next-token loss on the held-out split, written with the model
    name and a hash of the tokens (``transcoders.training.clean_loss_record``) so that rule
    train_transcoder can check it reads the loss of its own model and tokens."""
    from circuit_insights.data.corpus import load_contexts
    from circuit_insights.transcoders.training import clean_loss_record

    model = load_subject_model(model_config, model_location(model_config, model_files), model_name)
    _, eval_tokens = load_contexts(tokens_path, "eval")
    loss = mean_next_token_loss(model, eval_tokens, batch_size)
    write_json_atomic(clean_loss_record(loss, model_name, eval_tokens), out_path)
    log.info("clean next-token loss of %s on %d contexts: %.4f", model_name, len(eval_tokens), loss)
    return loss
