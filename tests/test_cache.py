"""Properties of the sparse activation cache: completeness, maxima, statistics, layout, safety."""

from __future__ import annotations

import itertools
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from circuit_insights.core.errors import InputError
from circuit_insights.data.cache import (
    ARTIFACTS,
    ActivationCacheWriter,
    LogHistogramSpec,
    _sparse_by_feature,
    histogram_quantiles,
)
from circuit_insights.data.cache_readers import (
    dense_from_sparse,
    read_feature_activations,
    read_maxima,
)
from circuit_insights.data.cache_stats import read_tokens_table
from circuit_insights.data.schemas import ACTIVATIONS_SCHEMA, FEATURE_STATS_SCHEMA, MAXIMA_SCHEMA
from circuit_insights.data.shards import Shard, make_shards

N_POS = 16


def sparse_activations(
    n_contexts: int, n_features: int, density: float = 0.08, seed: int = 0, n_pos: int = N_POS
) -> torch.Tensor:
    """(n_contexts, n_pos, n_features) non-negative, mostly zero, JumpReLU-like activations.

    Position 0 (BOS) fires strongly for a few features, as attention sinks do; feature 3 never
    fires; context 1 repeats its maximum of feature 0 at two positions (a tie).
    """
    generator = torch.Generator().manual_seed(seed)
    values = torch.exp(torch.randn((n_contexts, n_pos, n_features), generator=generator))
    fires = torch.rand((n_contexts, n_pos, n_features), generator=generator) < density
    activations = torch.where(fires, values, torch.zeros(()))
    activations[:, 0, : n_features // 4] = 100.0  # BOS sink
    activations[:, :, 3] = 0.0  # a dead feature
    if n_contexts > 1:
        activations[1, :, 0] = 0.0
        activations[1, 5, 0] = activations[1, 9, 0] = 7.5
    return activations


def output_paths(directory: Path, shards: list[Shard]) -> dict[Shard, dict[str, Path]]:
    return {
        shard: {artifact: directory / artifact / f"{shard.name}.parquet" for artifact in ARTIFACTS}
        for shard in shards
    }


def write_cache(
    directory: Path,
    activations: torch.Tensor,
    shards: list[Shard],
    *,
    batch_size: int = 4,
    excluded: torch.Tensor | None = None,
    context_ids: np.ndarray | None = None,
    **kwargs,
) -> dict[Shard, dict[str, Path]]:
    paths = output_paths(directory, shards)
    n_contexts = activations.shape[0]
    if context_ids is None:
        context_ids = np.arange(n_contexts) * 3 + 10  # not 0..n-1 on purpose
    with ActivationCacheWriter(shards, paths, **kwargs) as writer:
        for begin in range(0, n_contexts, batch_size):
            end = min(begin + batch_size, n_contexts)
            writer.add_batch(
                torch.as_tensor(context_ids[begin:end]),
                activations[begin:end],
                None if excluded is None else excluded[begin:end],
            )
    return paths


def expected_excluded(n_contexts: int, extra: torch.Tensor | None) -> torch.Tensor:
    mask = torch.zeros((n_contexts, N_POS), dtype=torch.bool)
    mask[:, 0] = True
    return mask if extra is None else mask | extra


def per_token_mask(n_contexts: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((n_contexts, N_POS), generator=generator) < 0.1


@pytest.fixture
def cache(tmp_path: Path):
    """A cache of 11 contexts x 50 features in 3 uneven shards, with BOS and per-token masks."""
    activations = sparse_activations(11, 50)
    excluded = per_token_mask(11)
    shards = make_shards(50, 20)  # 20, 20, 10 features
    context_ids = np.arange(11) * 3 + 10
    paths = write_cache(
        tmp_path, activations, shards, excluded=excluded, context_ids=context_ids, bucket_features=4
    )
    return activations, expected_excluded(11, excluded), context_ids, shards, paths


def test_sparse_cache_reproduces_the_dense_activations_exactly(cache):
    activations, excluded, context_ids, shards, paths = cache
    for shard in shards:
        rows = read_feature_activations(paths[shard]["activations"])
        rebuilt = dense_from_sparse(rows, context_ids, N_POS, shard)
        assert torch.equal(rebuilt, activations[..., shard.start : shard.stop])
        assert (rows["activation"] != 0).all()  # only non-zeros are stored
        slot = np.searchsorted(context_ids, rows["context"].to_numpy())
        stored_excluded = excluded.numpy()[slot, rows["position"].to_numpy()]
        assert np.array_equal(rows["excluded"].to_numpy(), stored_excluded)


def test_rows_come_back_sorted_by_feature_context_position(cache):
    *_, shards, paths = cache
    rows = read_feature_activations(paths[shards[0]]["activations"])
    keys = rows[["feature", "context", "position"]].to_numpy()
    assert (np.diff(keys[:, 0]) >= 0).all()
    assert len(rows.drop_duplicates(["feature", "context", "position"])) == len(rows)
    assert rows.equals(rows.sort_values(["feature", "context", "position"], ignore_index=True))
    maxima = read_maxima(paths[shards[0]]["maxima"])
    assert maxima.equals(maxima.sort_values(["feature", "context"], ignore_index=True))


def test_reading_some_features_equals_filtering_all(cache):
    *_, shards, paths = cache
    path = paths[shards[1]]["activations"]
    everything = read_feature_activations(path)
    for wanted in ([21], [20, 27, 39], [5, 100], []):
        some = read_feature_activations(path, wanted)
        expected = everything[everything["feature"].isin(wanted)].reset_index(drop=True)
        assert some.equals(expected)


def test_row_groups_each_hold_one_feature_bucket(tmp_path: Path):
    activations = sparse_activations(40, 64, density=0.3)
    shards = [Shard(0, 64)]
    paths = write_cache(tmp_path, activations, shards, bucket_features=8, max_buffered_rows=2000)
    metadata = pq.ParquetFile(paths[shards[0]]["activations"]).metadata
    assert metadata.num_row_groups > 8  # several flushes per bucket
    for group in range(metadata.num_row_groups):
        stats = metadata.row_group(group).column(0).statistics  # the feature column
        assert stats.min // 8 == stats.max // 8


def test_buffered_rows_stay_bounded(tmp_path: Path):
    activations = sparse_activations(60, 64, density=0.3)
    shards = make_shards(64, 32)
    paths = output_paths(tmp_path, shards)
    budget = 1000
    largest_batch = 0
    with ActivationCacheWriter(
        shards, paths, bucket_features=4, max_buffered_rows=budget
    ) as writer:
        for begin in range(0, 60, 2):
            batch = activations[begin : begin + 2]
            largest_batch = max(largest_batch, int((batch != 0).sum()))
            writer.add_batch(torch.arange(begin, begin + 2), batch)
            assert writer.buffered_rows <= budget + largest_batch
    total = sum(len(read_feature_activations(paths[s]["activations"])) for s in shards)
    assert total == int((activations != 0).sum())


def brute_force_maxima(
    activations: torch.Tensor, excluded: torch.Tensor, context_ids: np.ndarray, shard: Shard
) -> pd.DataFrame:
    rows = []
    for c in range(activations.shape[0]):
        for feature in range(shard.start, shard.stop):
            values = activations[c, :, feature].clone()
            values[excluded[c]] = 0
            if (values > 0).any():
                position = int(np.flatnonzero(values.numpy() == values.max().item())[0])
                rows.append((feature, int(context_ids[c]), float(values.max()), position))
    frame = pd.DataFrame(rows, columns=["feature", "context", "max_activation", "max_position"])
    return frame.sort_values(["feature", "context"], ignore_index=True)


def test_maxima_match_brute_force_excluding_bos_and_masked_tokens(cache):
    activations, excluded, context_ids, shards, paths = cache
    for shard in shards:
        maxima = read_maxima(paths[shard]["maxima"])
        expected = brute_force_maxima(activations, excluded, context_ids, shard)
        assert maxima[["feature", "context", "max_position"]].equals(
            expected[["feature", "context", "max_position"]].astype("int32")
        )
        assert np.array_equal(
            maxima["max_activation"].to_numpy(), expected["max_activation"].to_numpy(np.float32)
        )
    tie = read_maxima(paths[shards[0]]["maxima"], [0])
    assert tie.loc[tie["context"] == context_ids[1], "max_position"].item() == 5  # earliest


def test_feature_stats_match_brute_force(cache):
    activations, excluded, _, shards, paths = cache
    spec = LogHistogramSpec()
    for shard in shards:
        stats = pd.read_parquet(paths[shard]["feature_stats"])
        assert stats["feature"].tolist() == list(range(shard.start, shard.stop))
        for row in stats.itertuples():
            values = activations[..., row.feature]
            counted = values[~excluded]
            active = counted[counted > 0].numpy().astype(np.float64)
            assert row.n_tokens_total == int((~excluded).sum())
            assert row.n_active_tokens == len(active)
            assert row.n_active_excluded_tokens == int((values[excluded] > 0).sum())
            firing_contexts = ((values > 0) & ~excluded).any(dim=1)
            assert row.n_active_contexts == int(firing_contexts.sum())
            assert row.frequency == pytest.approx(len(active) / row.n_tokens_total)
            if len(active) == 0:
                assert np.isnan(row.mean_activation) and np.isnan(row.max_activation)
                assert np.isnan(row.quantile_50)
                continue
            assert row.mean_activation == pytest.approx(active.mean(), rel=1e-9)
            assert row.max_activation == np.float32(active.max())
            for column, q in (("quantile_50", 0.5), ("quantile_90", 0.9), ("quantile_99", 0.99)):
                exact = np.quantile(active, q, method="inverted_cdf")
                estimate = getattr(row, column)
                assert abs(estimate - exact) <= spec.relative_error_bound * exact * (1 + 1e-5)
    dead = pd.read_parquet(paths[shards[0]]["feature_stats"]).set_index("feature").loc[3]
    assert dead["n_active_tokens"] == 0 and dead["n_active_contexts"] == 0


@pytest.mark.parametrize("bins_per_decade", [8, 64])
def test_histogram_quantiles_respect_the_stated_bound(bins_per_decade: int):
    spec = LogHistogramSpec(log10_min=-3, log10_max=3, bins_per_decade=bins_per_decade)
    rng = np.random.default_rng(0)
    quantiles = [0.01, 0.25, 0.5, 0.9, 0.99, 1.0]
    errors = []
    for _ in range(50):
        values = np.exp(rng.normal(0, 2, size=rng.integers(1, 400))).clip(1e-3, 999)
        counts = np.bincount(spec.bin_index(values), minlength=spec.n_bins)[None, :]
        estimate = histogram_quantiles(
            counts, quantiles, spec, np.array([values.min()]), np.array([values.max()])
        )[0]
        exact = np.quantile(values, quantiles, method="inverted_cdf")
        errors.append(np.abs(estimate - exact) / exact)
    assert np.max(errors) <= spec.relative_error_bound * (1 + 1e-9)
    assert spec.relative_error_bound == pytest.approx(10 ** (0.5 / bins_per_decade) - 1)


def test_full_width_and_shard_slice_give_identical_files(tmp_path: Path):
    activations = sparse_activations(6, 40)
    shard = Shard(10, 30)
    full = write_cache(tmp_path / "full", activations, [shard])
    sliced = write_cache(
        tmp_path / "slice", activations[..., 10:30].contiguous(), [shard], feature_offset=10
    )
    for artifact in ARTIFACTS:
        assert pd.read_parquet(full[shard][artifact]).equals(
            pd.read_parquet(sliced[shard][artifact])
        )


def test_files_carry_the_declared_schemas(cache):
    *_, shards, paths = cache
    for shard in shards:
        assert pq.read_schema(paths[shard]["activations"]).equals(ACTIVATIONS_SCHEMA)
        assert pq.read_schema(paths[shard]["maxima"]).equals(MAXIMA_SCHEMA)
        assert pq.read_schema(paths[shard]["feature_stats"]).equals(FEATURE_STATS_SCHEMA)


def test_a_shard_that_never_fires_still_gets_complete_files(tmp_path: Path):
    activations = torch.zeros((3, N_POS, 8))
    shards = [Shard(0, 8)]
    paths = write_cache(tmp_path, activations, shards)
    assert len(read_feature_activations(paths[shards[0]]["activations"])) == 0
    assert len(read_maxima(paths[shards[0]]["maxima"])) == 0
    stats = pd.read_parquet(paths[shards[0]]["feature_stats"])
    assert len(stats) == 8 and (stats["n_active_tokens"] == 0).all()
    assert (stats["n_tokens_total"] == 3 * (N_POS - 1)).all()


def test_a_deferred_writer_writes_only_the_non_zeros_and_the_tokens(tmp_path: Path):
    """statistics="deferred" (rule cache): the same non-zeros as the full writer, the count of
    non-excluded tokens, and neither maxima nor statistics (nor their paths needed)."""
    activations = sparse_activations(9, 30)
    excluded = per_token_mask(9)
    shards = make_shards(30, 20)
    full = write_cache(tmp_path / "full", activations, shards, excluded=excluded)
    paths = {
        shard: {
            "activations": tmp_path / "chunk" / f"activations_{shard.name}.parquet",
            "tokens": tmp_path / "chunk" / f"tokens_{shard.name}.parquet",
        }
        for shard in shards
    }
    with ActivationCacheWriter(shards, paths, statistics="deferred") as writer:
        for begin in range(0, 9, 4):
            ids = torch.as_tensor(np.arange(9)[begin : begin + 4] * 3 + 10)
            writer.add_batch(ids, activations[begin : begin + 4], excluded[begin : begin + 4])
        with pytest.raises(InputError, match="deferred"):
            writer.feature_statistics()
    n_tokens = int((~expected_excluded(9, excluded)).sum())
    assert writer.n_tokens_total == n_tokens
    for shard in shards:
        pd.testing.assert_frame_equal(
            read_feature_activations(paths[shard]["activations"]),
            read_feature_activations(full[shard]["activations"]),
        )
        assert read_tokens_table(pq.read_table(paths[shard]["tokens"]), "tokens")[0] == n_tokens
    assert sorted(p.name for p in (tmp_path / "chunk").iterdir()) == sorted(
        path.name for shard_paths in paths.values() for path in shard_paths.values()
    )


def test_no_bos_exclusion_when_asked(tmp_path: Path):
    activations = sparse_activations(4, 12)
    shards = [Shard(0, 12)]
    paths = write_cache(tmp_path, activations, shards, exclude_positions=frozenset())
    rows = read_feature_activations(paths[shards[0]]["activations"])
    assert not rows["excluded"].any()
    maxima = read_maxima(paths[shards[0]]["maxima"])
    assert (maxima.loc[maxima["feature"].isin([1, 2]), "max_activation"] == 100.0).all()


def test_an_exception_leaves_no_file_behind(tmp_path: Path):
    activations = sparse_activations(8, 20)
    shards = make_shards(20, 10)
    paths = output_paths(tmp_path, shards)
    with pytest.raises(RuntimeError, match="model crashed"):
        with ActivationCacheWriter(shards, paths) as writer:
            writer.add_batch(torch.arange(4), activations[:4])
            raise RuntimeError("model crashed")
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_bad_batches_raise_input_errors_and_leave_the_writer_usable(tmp_path: Path):
    activations = sparse_activations(6, 20)
    shards = [Shard(0, 20)]
    paths = output_paths(tmp_path, shards)
    with ActivationCacheWriter(shards, paths) as writer:
        writer.add_batch(torch.arange(2), activations[:2])
        with pytest.raises(InputError, match="increase strictly"):
            writer.add_batch(torch.tensor([1, 2]), activations[2:4])
        negative = activations[2:4].clone()
        negative[0, 3, 5] = -1.0
        with pytest.raises(InputError, match="non-negative"):
            writer.add_batch(torch.tensor([2, 3]), negative)
        with pytest.raises(InputError, match="feature columns"):
            writer.add_batch(torch.tensor([2, 3]), activations[2:4, :, :10])
        with pytest.raises(InputError, match="excluded"):
            writer.add_batch(torch.tensor([2, 3]), activations[2:4], torch.zeros(2, 3).bool())
        writer.add_batch(torch.tensor([2, 3, 4, 5]), activations[2:6])
    rebuilt = dense_from_sparse(
        read_feature_activations(paths[shards[0]]["activations"]), range(6), N_POS, shards[0]
    )
    assert torch.equal(rebuilt, activations)


def test_overlapping_shards_and_missing_paths_are_refused(tmp_path: Path):
    with pytest.raises(InputError, match="overlap"):
        ActivationCacheWriter([Shard(0, 10), Shard(5, 15)], {})
    with pytest.raises(InputError, match="lacks"):
        ActivationCacheWriter([Shard(0, 10)], {Shard(0, 10): {"maxima": tmp_path / "m"}})


def test_device_and_numpy_paths_agree():
    activations = sparse_activations(5, 30)
    excluded = expected_excluded(5, per_token_mask(5))
    on_device = _sparse_by_feature(activations, excluded, on_device=True)
    in_numpy = _sparse_by_feature(activations, excluded, on_device=False)
    for name in ("feature", "batch_index", "position", "activation", "excluded"):
        assert np.array_equal(getattr(on_device, name), getattr(in_numpy, name))


def test_bfloat16_activations_are_cached(tmp_path: Path):
    activations = sparse_activations(4, 12).to(torch.bfloat16)
    shards = [Shard(0, 12)]
    paths = write_cache(tmp_path, activations, shards)
    rows = read_feature_activations(paths[shards[0]]["activations"])
    rebuilt = dense_from_sparse(rows, (np.arange(4) * 3 + 10).tolist(), N_POS, shards[0])
    assert torch.equal(rebuilt, activations.float())


def python_calls_of_one_batch(tmp_path: Path, batch: int, density: float) -> int:
    """Python-level function calls (Python and builtin) made by one ``add_batch``."""
    shards = make_shards(256, 64)
    activations = sparse_activations(batch, 256, density=density, seed=3, n_pos=64)
    calls: Counter[str] = Counter()

    def profile(frame, event, arg):  # noqa: ARG001
        if event in ("call", "c_call"):
            calls[event] += 1

    with ActivationCacheWriter(shards, output_paths(tmp_path, shards)) as writer:
        writer.add_batch(torch.arange(batch), activations)  # warm-up: imports, first flush
        sys.setprofile(profile)
        try:
            writer.add_batch(torch.arange(batch, 2 * batch), activations)
        finally:
            sys.setprofile(None)
    return sum(calls.values())


def test_python_work_per_batch_does_not_grow_with_elements(tmp_path: Path):
    small = python_calls_of_one_batch(tmp_path / "small", batch=1, density=0.01)
    large = python_calls_of_one_batch(tmp_path / "large", batch=8, density=0.3)  # ~240x the nnz
    assert large <= small * 1.05 + 10


def reference_cache(
    dense: np.ndarray,
    excluded: np.ndarray,
    context_ids: np.ndarray,
    shard: Shard,
    spec: LogHistogramSpec,
) -> dict[str, pd.DataFrame]:
    """The three artifacts of ``shard`` from first principles, on the whole dense array.

    ``dense``: (contexts, pos, features) float32; ``excluded``: (contexts, pos) bool. Rows in
    (feature, context, position) order; maxima per (feature, context) over counted positions,
    the earliest position on ties; statistics by counting.
    """
    part = dense[..., shard.start : shard.stop]  # (contexts, pos, shard.size)
    context, position, feature = np.nonzero(part)
    order = np.lexsort((position, context, feature))
    context, position, feature = context[order], position[order], feature[order]
    activations = pd.DataFrame(
        {
            "feature": (feature + shard.start).astype(np.int32),
            "context": context_ids[context].astype(np.int32),
            "position": position.astype(np.int32),
            "activation": part[context, position, feature],
            "excluded": excluded[context, position],
        }
    )
    counted = np.where(excluded[..., None], np.float32(0), part)  # (contexts, pos, shard.size)
    fires = counted > 0
    best = counted.max(axis=1)  # (contexts, shard.size)
    where = np.argmax(counted, axis=1)  # the first position of the maximum
    maxima_feature, maxima_context = np.nonzero((best > 0).T)
    maxima = pd.DataFrame(
        {
            "feature": (maxima_feature + shard.start).astype(np.int32),
            "context": context_ids[maxima_context].astype(np.int32),
            "max_activation": best[maxima_context, maxima_feature],
            "max_position": where[maxima_context, maxima_feature].astype(np.int32),
        }
    )
    n_active = fires.sum(axis=(0, 1))
    values = counted.transpose(2, 0, 1).reshape(shard.size, -1).astype(np.float64)
    counts = np.zeros((shard.size, spec.n_bins), np.int64)
    for column, row in enumerate(values):
        counts[column] = np.bincount(spec.bin_index(row[row > 0]), minlength=spec.n_bins)
    with np.errstate(invalid="ignore"):
        minimum = np.where(n_active > 0, np.where(fires, counted, np.inf).min(axis=(0, 1)), np.nan)
        maximum = np.where(n_active > 0, best.max(axis=0), np.nan)
        mean = values.sum(axis=1) / n_active
    quantiles = histogram_quantiles(counts, [0.5, 0.9, 0.99], spec, minimum, maximum)
    n_tokens = int((~excluded).sum())
    stats = pd.DataFrame(
        {
            "feature": np.arange(shard.start, shard.stop, dtype=np.int32),
            "n_tokens_total": np.full(shard.size, n_tokens, np.int64),
            "n_active_tokens": n_active.astype(np.int64),
            "n_active_excluded_tokens": ((part > 0) & excluded[..., None]).sum(axis=(0, 1)),
            "n_active_contexts": fires.any(axis=1).sum(axis=0).astype(np.int64),
            "frequency": n_active / n_tokens,
            "mean_activation": mean,
            "max_activation": maximum.astype(np.float32),
            "quantile_50": quantiles[:, 0].astype(np.float32),
            "quantile_90": quantiles[:, 1].astype(np.float32),
            "quantile_99": quantiles[:, 2].astype(np.float32),
        }
    )
    return {"activations": activations, "maxima": maxima, "feature_stats": stats}


@pytest.mark.parametrize("background_writes", [True, False])
@pytest.mark.parametrize("max_buffered_rows", [300, 8_000_000])  # many partial flushes / none
def test_streamed_files_equal_a_first_principles_reference(
    tmp_path: Path, max_buffered_rows: int, background_writes: bool
):
    """Random batches of uneven sizes through the writer equal, value by value, the reference
    computed on the whole dense array; each row group holds one bucket, rows sorted within."""
    n_contexts, n_positions, n_features = 37, 24, 96
    activations = sparse_activations(
        n_contexts, n_features, density=0.06, seed=7, n_pos=n_positions
    )
    activations[4, 3:6, 10] = 2.5  # a tie over three positions
    generator = torch.Generator().manual_seed(8)
    extra = torch.rand((n_contexts, n_positions), generator=generator) < 0.1
    excluded = extra.clone()
    excluded[:, 0] = True  # BOS
    context_ids = np.cumsum(np.arange(n_contexts) % 3 + 1) + 5  # increasing, uneven gaps
    shards = make_shards(n_features, 40)  # 40, 40, 16 features
    paths = output_paths(tmp_path, shards)
    bucket_features = 6
    with ActivationCacheWriter(
        shards,
        paths,
        bucket_features=bucket_features,
        max_buffered_rows=max_buffered_rows,
        background_writes=background_writes,
    ) as writer:
        begin = 0
        for size in itertools.cycle([1, 5, 2, 7, 3]):
            end = min(begin + size, n_contexts)
            writer.add_batch(
                torch.as_tensor(context_ids[begin:end]), activations[begin:end], extra[begin:end]
            )
            begin = end
            if begin == n_contexts:
                break
    spec = LogHistogramSpec()
    dense = activations.numpy()
    for shard in shards:
        expected = reference_cache(dense, excluded.numpy(), context_ids, shard, spec)
        rows = pq.read_table(paths[shard]["activations"]).to_pandas()
        pd.testing.assert_frame_equal(
            rows.sort_values("feature", kind="stable", ignore_index=True),
            expected["activations"],
        )
        assert read_feature_activations(paths[shard]["activations"]).equals(expected["activations"])
        pd.testing.assert_frame_equal(read_maxima(paths[shard]["maxima"]), expected["maxima"])
        stats = pd.read_parquet(paths[shard]["feature_stats"])
        exact = [column for column in stats.columns if column != "mean_activation"]
        pd.testing.assert_frame_equal(stats[exact], expected["feature_stats"][exact])
        np.testing.assert_allclose(  # float64 sums in another order: equal to rounding
            stats["mean_activation"], expected["feature_stats"]["mean_activation"], rtol=1e-12
        )
        for artifact in ("activations", "maxima"):
            parquet = pq.ParquetFile(paths[shard][artifact])
            for group in range(parquet.metadata.num_row_groups):
                table = parquet.read_row_group(group).to_pandas()
                bucket = (table["feature"].to_numpy() - shard.start) // bucket_features
                assert bucket.min() == bucket.max()
                keys = ["feature", "context"] + (["position"] if artifact == "activations" else [])
                assert table.equals(table.sort_values(keys, ignore_index=True))
