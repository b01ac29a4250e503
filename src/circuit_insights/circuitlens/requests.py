"""Attribution requests from a shard's quantile samples."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def attribution_requests(
    samples: Any,
    tokens: np.ndarray,
    context_ids: np.ndarray,
    *,
    samples_per_feature: int | None,
    output_k: int,
    features: Sequence[int] | None = None,
) -> list[Any]:
    """Requests for the quantile samples of a shard: each context cut ``output_k`` tokens after
    its target (the target's own pre-activation sees nothing after it; the output side needs the
    following tokens). ``sample_id`` is the sample's draw rank."""
    from circuit_insights.circuitlens.attribution import AttributionRequest

    quantile = samples[samples["kind"] == "quantile"].sort_values(["feature", "rank"])
    if features is not None:
        quantile = quantile[quantile["feature"].isin(list(features))]
    if samples_per_feature is not None:
        quantile = quantile[quantile["rank"] < samples_per_feature]
    row_of = {int(context): row for row, context in enumerate(context_ids)}
    requests = []
    for sample in quantile.itertuples():
        context = tokens[row_of[int(sample.context)]]
        stop = min(int(sample.target_position) + output_k + 1, len(context))
        requests.append(
            AttributionRequest(
                context_tokens=[int(token) for token in context[:stop]],
                target_position=int(sample.target_position),
                feature=int(sample.feature),
                sample_id=int(sample.rank),
            )
        )
    return requests
