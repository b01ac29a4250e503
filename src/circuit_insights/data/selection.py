"""The seeded choice of the features of a shard that get attributed, explained and evaluated.

Drawn once per shard (rule select_features) and written to a parquet file that the attribution,
explain and evaluate jobs read, so that the choice is made in one place and a change of a
setting that only those later stages read (a prompt key, say) does not redo the draw.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from circuit_insights.core.errors import InputError
from circuit_insights.core.io import write_parquet_atomic
from circuit_insights.data.schemas import FEATURE_SELECTION_SCHEMA
from circuit_insights.data.shards import Shard


def quantile_sample_counts(samples: pd.DataFrame) -> dict[int, int]:
    """Quantile samples per feature of a samples table (features without any are absent)."""
    quantile = samples[samples["kind"] == "quantile"]
    return {int(f): int(n) for f, n in quantile.groupby("feature").size().items()}


def select_features(
    samples: pd.DataFrame,
    shard: Shard,
    *,
    features_per_shard: int | None,
    min_samples: int,
    seed: int,
) -> pd.DataFrame:
    """The eligible features of ``shard`` (at least ``min_samples`` quantile samples) and which of
    them are drawn: all when ``features_per_shard`` is None or not smaller than their number,
    else a draw without replacement seeded by ``(seed, shard.start)``.

    Returns rows of ``FEATURE_SELECTION_SCHEMA``, sorted by feature.
    """
    counts = quantile_sample_counts(samples)
    outside = [f for f in counts if not shard.start <= f < shard.stop]
    if outside:
        raise InputError(f"samples of shard {shard.name} hold features outside it: {outside[:5]}")
    eligible = sorted(f for f, n in counts.items() if n >= min_samples)
    if features_per_shard is None or len(eligible) <= features_per_shard:
        drawn = set(eligible)
    else:
        rng = np.random.default_rng([seed, shard.start])
        drawn = {int(f) for f in rng.choice(eligible, features_per_shard, replace=False)}
    return pd.DataFrame(
        {
            "feature": pd.Series(eligible, dtype="int32"),
            "n_quantile_samples": pd.Series([counts[f] for f in eligible], dtype="int32"),
            "selected": pd.Series([f in drawn for f in eligible], dtype="bool"),
        }
    )


def write_selection(selection: pd.DataFrame, path: str) -> None:
    """Write a feature selection atomically (``FEATURE_SELECTION_SCHEMA``)."""
    write_parquet_atomic(selection, path, FEATURE_SELECTION_SCHEMA)


def selected_features(path: str) -> list[int]:
    """The drawn features (ascending) of a selection file written by :func:`write_selection`."""
    table = pd.read_parquet(path)
    missing = {"feature", "selected"} - set(table.columns)
    if missing:
        raise InputError(f"feature selection {path} lacks columns {sorted(missing)}")
    return sorted(int(f) for f in table.loc[table["selected"], "feature"])
