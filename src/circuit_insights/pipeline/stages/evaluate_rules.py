"""Rule evaluate_rules: every feature's executable explanations scored by the rule rater."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from circuit_insights.models.loading import load_subject_model
from circuit_insights.pipeline.locations import model_location, transcoder_locations
from circuit_insights.transcoders.loading import load_layer_transcoder

log = logging.getLogger(__name__)


def run_evaluate_rules_stage(
    *,
    model_config: Mapping[str, Any],
    rules_config: Mapping[str, Any],
    evaluate_config: Mapping[str, Any],
    model_files: Sequence[str] | str,
    layer: int,
    transcoder_files: Sequence[str] | str,
    explanations_path: str,
    heldout_path: str,
    tokens_path: str,
    out_path: str,
    model_name: str,
) -> None:
    """Rule evaluate_rules: every feature's executable explanations scored by the rule rater."""
    import pandas as pd

    from circuit_insights.data.corpus import load_contexts
    from circuit_insights.evaluation.fade.presets import preset_from_config
    from circuit_insights.evaluation.fade.rows import write_fade_evaluation
    from circuit_insights.evaluation.rule_rater import (
        model_activations,
        rules_from_explanations,
        rules_settings,
        score_rules,
    )

    variants, _, rater = rules_settings(rules_config)
    rules, texts = rules_from_explanations(pd.read_parquet(explanations_path), variants, layer)
    location = model_location(model_config, model_files)
    model = load_subject_model(model_config, location, model_name, [layer])
    transcoder_path = transcoder_locations(model_config, {layer: transcoder_files})[layer]
    transcoder = load_layer_transcoder(model_config, model, layer, transcoder_path, model_name)
    started = time.perf_counter()
    frame = score_rules(
        rules,
        pd.read_parquet(heldout_path),
        load_contexts(tokens_path, "eval"),
        model_activations(model, transcoder),
        bos_token_id=model.bos_token_id,
        preset=preset_from_config(evaluate_config),
        seed=evaluate_config["seed"],
        config=rater,
        descriptions=texts,
    )
    write_fade_evaluation(frame, out_path)
    log.info(
        "layer %d: %d rules of %d features scored by the rule rater in %.0f s",
        layer,
        len(frame),
        len({r.feature for r in rules}),
        time.perf_counter() - started,
    )
