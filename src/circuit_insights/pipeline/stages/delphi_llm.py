"""Rule delphi_llm: detection, fuzzing and simulation of the compared features' descriptions,
rated by the LLM (rater = llm; docs/delphi_scores.md)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from circuit_insights.llm.backends import llm_backend
from circuit_insights.pipeline.locations import llm_location
from circuit_insights.pipeline.stages.delphi_rules import tokenizer_of

log = logging.getLogger(__name__)


def run_delphi_llm_stage(
    *,
    model_config: Mapping[str, Any],
    scores_config: Mapping[str, Any],
    evaluate_config: Mapping[str, Any],
    llm_config: Mapping[str, Any],
    model_files: Sequence[str] | str,
    llm_model_files: Sequence[str] | str,
    layer: int,
    selection_path: str,
    explanations_path: str,
    heldout_path: str,
    tokens_path: str,
    out_path: str,
    llm_files: tuple[str, str],
) -> None:
    """Rule delphi_llm: the three scores of the compared features' descriptions, rated by the
    LLM (``rater = "llm"``).

    Variants: ``scores.variants`` (null: ``evaluate.variants``); features: the selection's
    features that have a description of every one of them, at most ``scores.features_per_shard``
    (null: ``evaluate.features_per_shard``), the lowest ids first, as FADE chooses them.
    """
    import pandas as pd

    from circuit_insights.core.tokens import TokenDisplay
    from circuit_insights.data.corpus import load_contexts
    from circuit_insights.data.selection import selected_features
    from circuit_insights.evaluation.delphi import score_shard, write_delphi_scores
    from circuit_insights.evaluation.delphi.config import context_bos, scores_settings
    from circuit_insights.explain.run import features_with_every_variant, final_descriptions

    chosen, config = scores_settings(scores_config)
    variants = chosen.get("variants") or evaluate_config["variants"]
    limit = chosen.get("features_per_shard") or evaluate_config["features_per_shard"]
    final = final_descriptions(pd.read_parquet(explanations_path))
    final = final[final["feature"].isin(selected_features(selection_path))]
    compared = features_with_every_variant(final, variants, limit)
    descriptions = final[final["variant"].isin(list(variants)) & final["feature"].isin(compared)]
    order = {variant: i for i, variant in enumerate(variants)}
    descriptions = (
        descriptions.assign(_v=descriptions["variant"].map(order))
        .sort_values(["feature", "_v"], kind="mergesort")
        .drop(columns="_v")
        .reset_index(drop=True)
    )
    tokenizer = tokenizer_of(model_config, model_files)
    context_ids, tokens = load_contexts(tokens_path, "eval")
    backend = llm_backend(llm_config, llm_location(llm_config, llm_model_files), *llm_files)
    started = time.perf_counter()
    frame = score_shard(
        layer=layer,
        heldout_activations=pd.read_parquet(heldout_path),
        heldout_tokens=(context_ids, tokens),
        config=config,
        seed=int(evaluate_config["seed"]),
        bos_token_id=context_bos(tokens, tokenizer.bos_token_id),
        descriptions=descriptions,
        backend=backend,
        display=TokenDisplay(tokenizer),
    )
    backend.raise_if_failed(
        what=f"delphi scores layer {layer}", max_failed_share=llm_config["max_failed_share"]
    )
    write_delphi_scores(frame, out_path)
    log.info(
        "layer %d: %d descriptions of %d features (%s) rated by the LLM in %.0f s",
        layer,
        len(descriptions),
        len(compared),
        ", ".join(config.scorers),
        time.perf_counter() - started,
    )
