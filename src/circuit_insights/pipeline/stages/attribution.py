"""Rule attribution: CircuitLens contributions of one shard's quantile samples."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from circuit_insights.core.errors import InputError
from circuit_insights.models.loading import load_subject_model
from circuit_insights.pipeline.locations import model_location, transcoder_locations
from circuit_insights.transcoders.loading import (
    load_transcoders,
)

log = logging.getLogger(__name__)


def run_attribution_stage(
    *,
    model_config: Mapping[str, Any],
    attribution_config: Mapping[str, Any],
    model_files: Sequence[str] | str,
    layer: int,
    transcoder_files: Mapping[int, Sequence[str]],
    selection_path: str | None,
    samples_path: str,
    tokens_path: str,
    contributions_path: str,
    totals_path: str,
    model_name: str,
) -> None:
    """Rule attribution: CircuitLens contributions of every quantile sample of one shard."""
    import pandas as pd

    from circuit_insights.circuitlens.attribution import attribute
    from circuit_insights.circuitlens.requests import attribution_requests
    from circuit_insights.core.io import write_parquet_atomic
    from circuit_insights.data.corpus import load_contexts
    from circuit_insights.data.schemas import (
        ATTRIBUTION_CONTRIBUTIONS_SCHEMA,
        ATTRIBUTION_TOTALS_SCHEMA,
    )
    from circuit_insights.data.selection import selected_features

    locations = transcoder_locations(model_config, transcoder_files)
    location = model_location(model_config, model_files)
    model = load_subject_model(model_config, location, model_name, sorted(locations))
    transcoders = load_transcoders(model_config, model, locations, model_name)
    context_ids, tokens = load_contexts(tokens_path, "cache")
    samples = pd.read_parquet(samples_path)
    features = None
    if not attribution_config["all_features"]:
        if selection_path is None:
            raise InputError(
                "attribution of the selected features (config key 'attribution.all_features' "
                "false) needs the feature selection file"
            )
        features = selected_features(selection_path)
    requests = attribution_requests(
        samples,
        tokens,
        context_ids,
        samples_per_feature=attribution_config["samples_per_feature"],
        output_k=attribution_config["output_k"],
        features=features,
    )
    started = time.perf_counter()
    result = attribute(
        model,
        transcoders,
        layer,
        requests,
        batch_size=attribution_config["batch_size"],
        threshold=attribution_config["threshold"],
        keep_top=attribution_config["keep_top"],
        output_k=attribution_config["output_k"],
        top_tokens=attribution_config["top_tokens"],
    )
    seconds = time.perf_counter() - started
    write_parquet_atomic(
        result.contributions_table(), contributions_path, ATTRIBUTION_CONTRIBUTIONS_SCHEMA
    )
    write_parquet_atomic(result.totals_table(), totals_path, ATTRIBUTION_TOTALS_SCHEMA)
    log.info(
        "layer %d: %d (feature, sample) pairs in %.0f s (%.2f pairs/s), %d contributions",
        layer,
        len(requests),
        seconds,
        len(requests) / max(seconds, 1e-9),
        len(result.contributions),
    )
