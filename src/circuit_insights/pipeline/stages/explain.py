"""Rule explain: descriptions of one shard's features by every variant."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from circuit_insights.llm.backends import llm_backend
from circuit_insights.models.loading import load_tokenizer_and_bos
from circuit_insights.pipeline.locations import llm_location, model_location

log = logging.getLogger(__name__)


def run_explain_stage(
    *,
    model_config: Mapping[str, Any],
    explain_config: Mapping[str, Any],
    llm_config: Mapping[str, Any],
    model_files: Sequence[str] | str,
    llm_model_files: Sequence[str] | str,
    layer: int,
    shard_name: str,
    selection_path: str,
    weightlens_path: str,
    clusters_path: str,
    samples_path: str,
    tokens_path: str,
    out_path: str,
    llm_files: tuple[str, str],
    rules_config: Mapping[str, Any] | None = None,
) -> None:
    """Rule explain: descriptions of the chosen features of a shard by every variant (the
    executable ``rules.variants`` always included, for every feature)."""
    import pandas as pd

    from circuit_insights.data.corpus import load_contexts
    from circuit_insights.data.selection import quantile_sample_counts, selected_features
    from circuit_insights.evaluation.rule_rater import rules_settings
    from circuit_insights.explain.config import ExplainConfig
    from circuit_insights.explain.inputs import build_feature_inputs
    from circuit_insights.explain.run import explain_shard, unexplained_rows, write_explanations
    from circuit_insights.explain.variants import LLM_VARIANTS, RULE_VARIANTS

    tokenizer, bos = load_tokenizer_and_bos(model_config, model_location(model_config, model_files))
    samples = pd.read_parquet(samples_path)
    features = selected_features(selection_path)
    weightlens_df = pd.read_parquet(weightlens_path)
    rule_variants_wanted, rule_config, _ = rules_settings(rules_config)
    variants = list(dict.fromkeys([*explain_config["variants"], *rule_variants_wanted]))
    rule_variants = [v for v in variants if v in RULE_VARIANTS]
    llm_variants = [v for v in variants if v in LLM_VARIANTS]
    shard_features = sorted(int(f) for f in weightlens_df["feature"])
    rule_features = (
        shard_features
        if (explain_config["rule_variants_for_every_feature"] or rule_variants_wanted)
        and rule_variants
        else features
    )
    # "Every feature" (features_per_shard null): those the LLM is not asked about get rows too.
    every = explain_config["features_per_shard"] is None and llm_variants
    unexplained = sorted(set(shard_features) - set(features)) if every else []
    context_ids, tokens = load_contexts(tokens_path, "cache")
    config = ExplainConfig.from_mapping(
        {
            **explain_config.get("prompt", {}),
            "max_answer_tokens": llm_config["max_tokens"],
            "repetition_penalty": llm_config["repetition_penalty"],
            "retry_max_tokens": llm_config["retry_max_tokens"],
        }
    )
    inputs = build_feature_inputs(
        layer=layer,
        features=sorted(set(features) | set(rule_features) | set(unexplained)),
        weightlens_df=weightlens_df,
        clusters_df=pd.read_parquet(clusters_path),
        samples_df=samples,
        context_ids=context_ids,
        tokens=tokens,
        tokenizer=tokenizer,
        bos_token_id=bos,
        config=config,
        rule_config=rule_config,
    )
    backend = (
        llm_backend(llm_config, llm_location(llm_config, llm_model_files), *llm_files)
        if llm_variants and features
        else None
    )
    started = time.perf_counter()
    frames = [
        explain_shard(None, {f: inputs[f] for f in rule_features}, rule_variants, config),
        explain_shard(backend, {f: inputs[f] for f in features}, llm_variants, config),
    ]
    if unexplained:
        counts = quantile_sample_counts(samples)
        min_samples = explain_config["min_samples"]
        reasons = {
            f: (
                f"{counts[f]} quantile samples, fewer than explain.min_samples={min_samples}"
                if counts.get(f)
                else "the feature never fires on the caching set"
            )
            for f in unexplained
        }
        frames.append(unexplained_rows(inputs, llm_variants, reasons))
    frame = pd.concat([f for f in frames if len(f)] or frames[:1], ignore_index=True)
    order = frame["variant"].map({v: i for i, v in enumerate(variants)})
    frame = frame.iloc[np.lexsort((order.to_numpy(), frame["feature"].to_numpy()))]
    if backend is not None:
        backend.raise_if_failed(
            what=f"explain layer {layer} shard {shard_name}",
            max_failed_share=llm_config["max_failed_share"],
        )
    write_explanations(frame, out_path)
    final = frame[frame["is_final"]]
    log.info(
        "layer %d shard %s: LLM-free variants %s on %d features, LLM variants %s on %d; "
        "%.0f s; parse status %s",
        layer,
        shard_name,
        rule_variants,
        len(rule_features),
        llm_variants,
        len(features),
        time.perf_counter() - started,
        final["parse_status"].value_counts().to_dict() if len(final) else {},
    )
