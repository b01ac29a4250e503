"""Rule train_transcoder: a transcoder per (model, layer) from its layer's MLP input/output pairs
(rule collect_pairs's file)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from circuit_insights.core.io import write_json_atomic
from circuit_insights.models.loading import load_subject_model
from circuit_insights.pipeline import paths
from circuit_insights.pipeline.locations import model_location
from circuit_insights.transcoders.loading import save_transcoder_files
from circuit_insights.transcoders.pairs import read_pairs_file
from circuit_insights.transcoders.splicing import spliced_loss_report

log = logging.getLogger(__name__)


def run_train_transcoder(
    *,
    model_config: Mapping[str, Any],
    tokens_path: str,
    pairs_dir: str,
    layer: int,
    model_files: Sequence[str] | str,
    weights_path: str,
    report_path: str,
    batch_size: int = 16,
    model_name: str = "",
    clean_loss_path: str | None = None,
) -> dict[str, Any]:
    """Rule train_transcoder: the layer's MLP input -> output pairs (``pairs_dir``: rule
    collect_pairs's folder) -> a transcoder, and its spliced-loss report on the held-out split of
    ``tokens_path``.

    ``clean_loss_path``: rule clean_loss's file (the model's own held-out loss, once per model);
    None computes it here."""
    from circuit_insights.data.corpus import load_contexts
    from circuit_insights.transcoders.training import read_clean_loss, train_transcoder

    settings = model_config["transcoders"]
    model = load_subject_model(model_config, model_location(model_config, model_files), model_name)
    model.check_layer(layer)
    _, eval_tokens = load_contexts(tokens_path, "eval")
    started = time.perf_counter()
    pairs = read_pairs_file(
        paths.mlp_pairs_file(pairs_dir, layer),
        layer=layer,
        input_hook=settings["input_hook"],
        output_hook=settings["output_hook"],
    )
    log.info(
        "read %d training and %d held-out token pairs in %.1f s",
        len(pairs.inputs),
        len(pairs.heldout_inputs),
        time.perf_counter() - started,
    )
    transcoder, report = train_transcoder(
        [(pairs.inputs, pairs.outputs)],
        d_model=model.d_model,
        d_transcoder=settings["n_features"],
        activation=settings["activation"],
        top_k=settings["top_k"],
        l1_coefficient=settings["l1_coefficient"],
        learning_rate=settings["learning_rate"],
        steps=settings["steps"],
        seed=settings["seed"],
        batch_size=settings["batch_tokens"],
        held_out=[(pairs.heldout_inputs, pairs.heldout_outputs)],
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
