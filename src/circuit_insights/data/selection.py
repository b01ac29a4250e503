"""The choice of the features of a shard that get attributed, explained and evaluated: the
features the user named (``models.<m>.features``, the feature nodes of ``models.<m>.graph``) and a
seeded draw.

Made once per shard (rule select_features) and written to a parquet file that the attribution,
explain and evaluate jobs read, so that the choice is made in one place and a change of a
setting that only those later stages read (a prompt key, say) does not redo the draw.
"""

from __future__ import annotations

from collections.abc import Iterable

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


#: ``reason`` of a selection row: named by the user, in the seeded draw, or eligible only.
NAMED, DRAWN, ELIGIBLE = "named", "drawn", "eligible"


def select_features(
    samples: pd.DataFrame,
    shard: Shard,
    *,
    features_per_shard: int | None,
    min_samples: int,
    seed: int,
    named: Iterable[int] = (),
) -> pd.DataFrame:
    """The eligible features of ``shard`` (at least ``min_samples`` quantile samples), the
    ``named`` ones, and which of them are selected.

    The draw: all eligible features when ``features_per_shard`` is None or not smaller than
    their number, none when it is 0, else a draw without replacement seeded by
    ``(seed, shard.start)`` (the same draw whatever is named). The named features (each inside
    the shard) are selected whatever their samples, also one that never fires.

    Returns rows of ``FEATURE_SELECTION_SCHEMA``, sorted by feature; ``reason`` is ``named``,
    ``drawn`` or ``eligible``.
    """
    counts = quantile_sample_counts(samples)
    outside = [f for f in counts if not shard.start <= f < shard.stop]
    if outside:
        raise InputError(f"samples of shard {shard.name} hold features outside it: {outside[:5]}")
    named_set = {int(f) for f in named}
    stray = sorted(f for f in named_set if not shard.start <= f < shard.stop)
    if stray:
        raise InputError(f"named features {stray[:5]} are outside shard {shard.name}")
    eligible = sorted(f for f, n in counts.items() if n >= min_samples)
    if features_per_shard is None or len(eligible) <= features_per_shard:
        drawn = set(eligible)
    else:
        rng = np.random.default_rng([seed, shard.start])
        drawn = {int(f) for f in rng.choice(eligible, features_per_shard, replace=False)}
    rows = sorted(set(eligible) | named_set)
    reasons = [NAMED if f in named_set else DRAWN if f in drawn else ELIGIBLE for f in rows]
    return pd.DataFrame(
        {
            "feature": pd.Series(rows, dtype="int32"),
            "n_quantile_samples": pd.Series([counts.get(f, 0) for f in rows], dtype="int32"),
            "selected": pd.Series([r != ELIGIBLE for r in reasons], dtype="bool"),
            "reason": pd.Series(reasons, dtype=object),
        }
    )


def write_selection(selection: pd.DataFrame, path: str) -> None:
    """Write a feature selection atomically (``FEATURE_SELECTION_SCHEMA``)."""
    write_parquet_atomic(selection, path, FEATURE_SELECTION_SCHEMA)


def selected_features(path: str) -> list[int]:
    """The selected features (named and drawn, ascending) of a selection file written by
    :func:`write_selection`."""
    table = pd.read_parquet(path)
    missing = {"feature", "selected"} - set(table.columns)
    if missing:
        raise InputError(f"feature selection {path} lacks columns {sorted(missing)}")
    return sorted(int(f) for f in table.loc[table["selected"], "feature"])


def named_features(path: str) -> list[int]:
    """The named features (ascending) of a selection file; [] for a file without ``reason``
    (written before features could be named)."""
    table = pd.read_parquet(path)
    if "reason" not in table.columns:
        return []
    return sorted(int(f) for f in table.loc[table["reason"] == NAMED, "feature"])
