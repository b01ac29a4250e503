"""The seeded feature draw: made once per shard, written down, read by the later stages."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest

from circuit_insights.core.errors import InputError
from circuit_insights.data.schemas import FEATURE_SELECTION_SCHEMA
from circuit_insights.data.selection import select_features, selected_features, write_selection
from circuit_insights.data.shards import Shard

SHARD = Shard(100, 140)


def _samples(counts: dict[int, int]) -> pd.DataFrame:
    """A samples table with ``counts[f]`` quantile samples of feature f, plus top rows."""
    rows = [
        {"feature": f, "kind": kind, "rank": r}
        for f, n in counts.items()
        for kind, k in (("quantile", n), ("top", 3))
        for r in range(k)
    ]
    return pd.DataFrame(rows)


COUNTS = {100 + i: (i % 7) for i in range(40)}


def test_only_features_with_enough_quantile_samples_are_eligible():
    selection = select_features(
        _samples(COUNTS), SHARD, features_per_shard=None, min_samples=4, seed=0
    )
    assert list(selection["feature"]) == sorted(f for f, n in COUNTS.items() if n >= 4)
    assert selection["selected"].all()  # null: every eligible feature
    assert dict(zip(selection["feature"], selection["n_quantile_samples"], strict=True)) == {
        f: n for f, n in COUNTS.items() if n >= 4
    }


def test_the_draw_is_seeded_sized_and_depends_on_the_seed():
    def draw(seed: int) -> list[int]:
        frame = select_features(
            _samples(COUNTS), SHARD, features_per_shard=5, min_samples=1, seed=seed
        )
        return sorted(frame.loc[frame["selected"], "feature"])

    first = draw(0)
    assert len(first) == 5 and first == draw(0)
    assert all(COUNTS[f] >= 1 for f in first)
    assert any(draw(seed) != first for seed in range(1, 6))


def test_selection_round_trips_through_its_file(tmp_path):
    selection = select_features(
        _samples(COUNTS), SHARD, features_per_shard=3, min_samples=2, seed=1
    )
    path = str(tmp_path / "features" / "f000100-000140.parquet")
    write_selection(selection, path)
    assert pq.read_schema(path).remove_metadata() == FEATURE_SELECTION_SCHEMA
    assert selected_features(path) == sorted(selection.loc[selection["selected"], "feature"])


def test_samples_outside_the_shard_are_an_error():
    with pytest.raises(InputError, match="f000100-000140"):
        select_features(_samples({5: 3}), SHARD, features_per_shard=None, min_samples=1, seed=0)
