"""Rule train_transcoder: a transcoder per (model, layer) from MLP input/output pairs."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from circuit_insights.core.errors import InputError
from circuit_insights.core.io import write_json_atomic
from circuit_insights.models.loading import load_subject_model
from circuit_insights.pipeline.locations import model_location
from circuit_insights.transcoders.loading import (
    save_transcoder_files,
)
from circuit_insights.transcoders.splicing import mlp_pairs, spliced_loss_report

log = logging.getLogger(__name__)


def training_contexts(
    cache_tokens: np.ndarray, wanted: int, *, model_name: str, tokens_path: str
) -> np.ndarray:
    """The first ``wanted`` contexts of the caching split, (wanted, context_length).

    The config check at start bounds ``train_contexts`` by ``corpus.max_contexts``; whether the
    corpus holds that many is known only once it is tokenised, so a shorter caching split stops
    the job here (never a silent cap) naming the key and the tokens file.
    """
    held = len(cache_tokens)
    if held < wanted:
        raise InputError(
            f"config key 'models.{model_name}.transcoders.train_contexts': {wanted} contexts, "
            f"but the corpus's caching split ({tokens_path}) holds {held}: lower it, or give "
            "a larger corpus (corpus.paths / corpus.max_contexts)"
        )
    return cache_tokens[:wanted]


def run_train_transcoder(
    *,
    model_config: Mapping[str, Any],
    tokens_path: str,
    layer: int,
    model_files: Sequence[str] | str,
    weights_path: str,
    report_path: str,
    batch_size: int = 16,
    model_name: str = "",
    clean_loss_path: str | None = None,
) -> dict[str, Any]:
    """Rule train_transcoder: MLP input -> output pairs of the caching set -> a transcoder.

    ``clean_loss_path``: rule clean_loss's file (the model's own held-out loss, once per model);
    None computes it here."""
    from circuit_insights.data.corpus import load_contexts
    from circuit_insights.transcoders.training import read_clean_loss, train_transcoder

    settings = model_config["transcoders"]
    model = load_subject_model(model_config, model_location(model_config, model_files), model_name)
    model.check_layer(layer)
    _, cache_tokens = load_contexts(tokens_path, "cache")
    _, eval_tokens = load_contexts(tokens_path, "eval")
    train_tokens = training_contexts(
        cache_tokens, settings["train_contexts"], model_name=model_name, tokens_path=tokens_path
    )
    started = time.perf_counter()
    x, y = mlp_pairs(
        model, train_tokens, layer, settings["input_hook"], settings["output_hook"], batch_size
    )
    x_eval, y_eval = mlp_pairs(
        model, eval_tokens, layer, settings["input_hook"], settings["output_hook"], batch_size
    )
    log.info(
        "collected %d training and %d held-out token pairs in %.0f s",
        len(x),
        len(x_eval),
        time.perf_counter() - started,
    )
    transcoder, report = train_transcoder(
        [(x, y)],
        d_model=model.d_model,
        d_transcoder=settings["n_features"],
        activation=settings["activation"],
        top_k=settings["top_k"],
        l1_coefficient=settings["l1_coefficient"],
        learning_rate=settings["learning_rate"],
        steps=settings["steps"],
        seed=settings["seed"],
        batch_size=settings["batch_tokens"],
        held_out=[(x_eval, y_eval)],
        layer=layer,
        input_hook=settings["input_hook"],
        output_hook=settings["output_hook"],
    )
    summary = {
        "model": model_name,
        "layer": layer,
        "n_features": settings["n_features"],
        **report.to_dict(),
        **spliced_loss_report(
            model,
            transcoder,
            layer,
            eval_tokens,
            batch_size,
            clean=None
            if clean_loss_path is None
            else read_clean_loss(clean_loss_path, model_name, eval_tokens),
        ),
    }
    save_transcoder_files(transcoder, weights_path)
    write_json_atomic(summary, report_path)
    log.info("transcoder layer %d: %s", layer, summary)
    return summary
