"""Rule evaluate: FADE scores of one variant's descriptions of one shard."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from circuit_insights.llm.backends import llm_backend
from circuit_insights.models.loading import load_subject_model
from circuit_insights.pipeline.locations import (
    llm_location,
    model_location,
    transcoder_locations,
)
from circuit_insights.transcoders.loading import (
    load_layer_transcoder,
)

log = logging.getLogger(__name__)


def run_evaluate_stage(
    *,
    model_config: Mapping[str, Any],
    evaluate_config: Mapping[str, Any],
    llm_config: Mapping[str, Any],
    model_files: Sequence[str] | str,
    llm_model_files: Sequence[str] | str,
    layer: int,
    variant: str,
    transcoder_files: Sequence[str] | str,
    selection_path: str,
    explanations_path: str,
    heldout_path: str,
    tokens_path: str,
    out_path: str,
    llm_files: tuple[str, str],
    model_name: str,
    imported_path: str | None = None,
) -> None:
    """Rule evaluate: FADE scores of one variant's descriptions of one shard.

    The features scored are those ``evaluate.variants`` are compared on (the named ones and up
    to ``evaluate.features_per_shard`` more, :func:`~circuit_insights.explain.run.features_to_score`).
    An imported variant's descriptions come from ``imported_path`` (rule import_explanations),
    on those of the features that have one.

    Steering multiplies FADE's reference (the largest |activation| over the held-out samples
    evaluated), not the cache split's maximum, so the feature statistics are not read.
    """
    import pandas as pd

    from circuit_insights.data.corpus import load_contexts
    from circuit_insights.data.selection import named_features, selected_features
    from circuit_insights.evaluation.fade.presets import preset_from_config
    from circuit_insights.evaluation.fade.rows import write_fade_evaluation
    from circuit_insights.evaluation.fade.run import evaluate_descriptions
    from circuit_insights.explain.run import features_to_score, final_descriptions

    final = final_descriptions(pd.read_parquet(explanations_path))
    final = final[final["feature"].isin(selected_features(selection_path))]
    compared = features_to_score(
        final,
        evaluate_config["variants"],
        evaluate_config["features_per_shard"],
        named=named_features(selection_path),
    )
    if imported_path is not None:
        wanted = [("layer", "=", layer), ("feature", "in", [int(f) for f in compared] or [-1])]
        final = final_descriptions(pd.read_parquet(imported_path, filters=wanted))
        final = final[final["description"].notna()]
    descriptions = final[(final["variant"] == variant) & final["feature"].isin(compared)]
    descriptions = descriptions.sort_values("feature")
    location = model_location(model_config, model_files)
    model = load_subject_model(model_config, location, model_name, [layer])
    transcoder_path = transcoder_locations(model_config, {layer: transcoder_files})[layer]
    transcoder = load_layer_transcoder(model_config, model, layer, transcoder_path, model_name)
    backend = llm_backend(llm_config, llm_location(llm_config, llm_model_files), *llm_files)
    started = time.perf_counter()
    frame = evaluate_descriptions(
        model,
        transcoder,
        descriptions=descriptions,
        heldout_activations=pd.read_parquet(heldout_path),
        heldout_tokens=load_contexts(tokens_path, "eval"),
        backend=backend,
        preset=preset_from_config(evaluate_config),
        seed=evaluate_config["seed"],
    )
    backend.raise_if_failed(
        what=f"evaluate layer {layer} variant {variant}",
        max_failed_share=llm_config["max_failed_share"],
    )
    write_fade_evaluation(frame, out_path)
    log.info(
        "layer %d variant %s: %d features scored in %.0f s",
        layer,
        variant,
        len(frame),
        time.perf_counter() - started,
    )
