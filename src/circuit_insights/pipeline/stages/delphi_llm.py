"""Rule delphi_llm: detection, fuzzing and simulation of the compared features' descriptions,
rated by the LLM (rater = llm; docs/delphi_scores.md)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from circuit_insights.llm.backends import llm_backend
from circuit_insights.pipeline.locations import llm_location
from circuit_insights.pipeline.stages.delphi_rules import tokenizer_of

if TYPE_CHECKING:
    import pandas as pd

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
    imported_paths: Sequence[str] = (),
    heldout_path: str,
    tokens_path: str,
    out_path: str,
    llm_files: tuple[str, str],
) -> None:
    """Rule delphi_llm: the three scores of the compared features' descriptions, rated by the
    LLM (``rater = "llm"``).

    Variants: ``scores.variants`` (null: ``evaluate.variants``) and the model's imported
    variants (``imported_paths``); features: :func:`descriptions_to_rate`, as FADE chooses them.
    """
    import pandas as pd

    from circuit_insights.core.tokens import TokenDisplay
    from circuit_insights.data.corpus import load_contexts
    from circuit_insights.evaluation.delphi import score_shard, write_delphi_scores
    from circuit_insights.evaluation.delphi.config import context_bos, scores_settings

    chosen, config = scores_settings(scores_config)
    descriptions = descriptions_to_rate(
        layer=layer,
        explanations_path=explanations_path,
        selection_path=selection_path,
        variants=chosen.get("variants") or evaluate_config["variants"],
        limit=chosen.get("features_per_shard") or evaluate_config["features_per_shard"],
        imported_paths=imported_paths,
    )
    compared = sorted(set(descriptions["feature"]))
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


def descriptions_to_rate(
    *,
    layer: int,
    explanations_path: str,
    selection_path: str,
    variants: Sequence[str],
    limit: int | None,
    imported_paths: Sequence[str] = (),
) -> pd.DataFrame:
    """``layer, feature, variant, description`` rows the LLM rates, by feature then variant.

    The features are FADE's (rule evaluate, :func:`~circuit_insights.explain.run.
    features_to_score`): the selection's named features and up to ``limit`` more that have a
    description of every one of ``variants``. Each imported variant (a file of rule
    import_explanations) adds its description of those features where it has one; a feature it
    does not describe gets no row of it (its import row says why), as in FADE's evaluation.
    """
    import pandas as pd

    from circuit_insights.data.selection import named_features, selected_features
    from circuit_insights.explain.run import features_to_score, final_descriptions

    final = final_descriptions(pd.read_parquet(explanations_path))
    final = final[final["feature"].isin(selected_features(selection_path))]
    compared = features_to_score(final, variants, limit, named=named_features(selection_path))
    parts = [final[final["variant"].isin(list(variants)) & final["feature"].isin(compared)]]
    wanted = [("layer", "=", layer), ("feature", "in", [int(f) for f in compared] or [-1])]
    for path in imported_paths:
        theirs = final_descriptions(pd.read_parquet(path, filters=wanted))
        parts.append(theirs[theirs["description"].notna() & (theirs["description"] != "")])
    order = {variant: i for i, variant in enumerate(variants)}
    rows = pd.concat(parts, ignore_index=True)
    return (
        rows.assign(_v=rows["variant"].map(order).fillna(len(order)))
        .sort_values(["feature", "_v", "variant"], kind="mergesort")
        .drop(columns="_v")
        .reset_index(drop=True)
    )
