"""Rule weightlens: WeightLens token explanations of one shard."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from circuit_insights.models.loading import load_subject_model
from circuit_insights.pipeline.locations import model_location, transcoder_locations
from circuit_insights.transcoders.loading import (
    load_transcoders,
)

log = logging.getLogger(__name__)


def run_weightlens_stage(
    *,
    model_config: Mapping[str, Any],
    weightlens_config: Mapping[str, Any],
    model_files: Sequence[str] | str,
    layer: int,
    shard_name: str,
    transcoder_files: Mapping[int, Sequence[str] | str],
    upstream_files: Mapping[int, Sequence[str]],
    samples_path: str,
    heldout_path: str,
    tokens_path: str,
    out_path: str,
    model_name: str,
) -> None:
    """Rule weightlens: token explanations of one shard from weights, validated single-token.

    Upstream layers' results are read from their parquet files (never recomputed);
    ``upstream_files`` may name every configured layer: those at or after ``layer`` are ignored.
    """
    import pandas as pd

    from circuit_insights.core.contexts import ContextTokens, HeldOut, TopContexts
    from circuit_insights.data.corpus import load_contexts
    from circuit_insights.data.shards import parse_shard
    from circuit_insights.weightlens.config import WeightLensOptions, thresholds_for
    from circuit_insights.weightlens.io import read_weightlens, write_weightlens
    from circuit_insights.weightlens.run import run_weightlens

    locations = transcoder_locations(model_config, transcoder_files)
    location = model_location(model_config, model_files)
    model = load_subject_model(model_config, location, model_name, sorted(locations))
    transcoders = load_transcoders(model_config, model, locations, model_name)
    settings = model_config["weightlens"]
    overrides = {k: settings[k] for k in ("t_tok", "t_up") if settings[k] is not None}
    thresholds = thresholds_for(model.adapter.family, settings["preset"], **overrides)
    upstream = {
        up: read_weightlens(list(files))
        for up, files in sorted(upstream_files.items())
        if up < layer
    }
    cache_corpus = ContextTokens(*load_contexts(tokens_path, "cache"))
    eval_corpus = ContextTokens(*load_contexts(tokens_path, "eval"))
    samples = pd.read_parquet(samples_path)
    frame = run_weightlens(
        model,
        transcoders,
        layer,
        parse_shard(shard_name),
        upstream,
        thresholds,
        top_contexts=TopContexts(samples[samples["kind"] == "top"], cache_corpus),
        heldout=HeldOut(pd.read_parquet(heldout_path), eval_corpus),
        options=WeightLensOptions.from_mapping(weightlens_config),
    )
    write_weightlens(frame, out_path)
    token_based = int((frame["classification"] == "token_based").sum()) if len(frame) else 0
    log.info(
        "layer %d shard %s: %d features, %d token-based", layer, shard_name, len(frame), token_based
    )
