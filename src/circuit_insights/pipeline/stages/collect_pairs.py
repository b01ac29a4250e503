"""Rule collect_pairs: the MLP input/output pairs of every trained layer of a model, in one
forward pass per batch to the deepest layer."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from circuit_insights.core.errors import InputError
from circuit_insights.models.loading import load_subject_model
from circuit_insights.pipeline import paths
from circuit_insights.pipeline.locations import model_location
from circuit_insights.transcoders.pairs import layer_pairs, mlp_pairs, write_pairs_file

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


def run_collect_pairs(
    *,
    model_config: Mapping[str, Any],
    tokens_path: str,
    layers: Sequence[int],
    model_files: Sequence[str] | str,
    out_dir: str,
    batch_size: int = 16,
    model_name: str = "",
) -> dict[int, dict[str, int]]:
    """Rule collect_pairs: (transcoder input, MLP output) pairs at every non-BOS position of the
    first ``train_contexts`` contexts of the caching split (training) and of the held-out split,
    for every one of ``layers``, each layer's written to ``paths.mlp_pairs_file(out_dir, layer)``.
    Returns per layer the number of training and held-out pairs."""
    from circuit_insights.data.corpus import load_contexts

    settings = model_config["transcoders"]
    input_hook, output_hook = settings["input_hook"], settings["output_hook"]
    model = load_subject_model(
        model_config, model_location(model_config, model_files), model_name, layers
    )
    _, cache_tokens = load_contexts(tokens_path, "cache")
    _, eval_tokens = load_contexts(tokens_path, "eval")
    train_tokens = training_contexts(
        cache_tokens, settings["train_contexts"], model_name=model_name, tokens_path=tokens_path
    )
    started = time.perf_counter()
    train = mlp_pairs(
        model, train_tokens, layers, input_hook, output_hook, batch_size, label="training pairs"
    )
    heldout = mlp_pairs(
        model, eval_tokens, layers, input_hook, output_hook, batch_size, label="held-out pairs"
    )
    counts = {}
    for layer in sorted(train):
        pairs = layer_pairs(train, heldout, layer, input_hook, output_hook)
        write_pairs_file(pairs, paths.mlp_pairs_file(out_dir, layer))
        counts[layer] = {"train": len(pairs.inputs), "heldout": len(pairs.heldout_inputs)}
    log.info(
        "collected the MLP pairs of layers %s (%d training and %d held-out token pairs each) "
        "in one forward per batch, %.0f s",
        sorted(train),
        len(train[min(train)][0]),
        len(heldout[min(heldout)][0]),
        time.perf_counter() - started,
    )
    return counts
