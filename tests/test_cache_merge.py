"""The chunked one-forward cache equals the per-layer single-pass cache, value for value.

Chunks of a corpus are cached with one forward pass for all layers (``cache_layers``, only the
non-zeros and the chunk's tokens: ``statistics="deferred"``) and merged per (layer, shard)
(``merge_shard``, which derives the maxima and statistics); the result must equal what one
writer per layer over the whole corpus writes: the non-zeros, the maxima, every statistic (the
mean included: the sums are exact) and the quantile samples drawn from the maxima.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from circuit_insights.core.errors import InputError
from circuit_insights.data.cache import ARTIFACTS, CHUNK_ARTIFACTS, ActivationCacheWriter
from circuit_insights.data.cache_chunks import ContextChunk, make_chunks, parse_chunk
from circuit_insights.data.cache_merge import merge_shard
from circuit_insights.data.cache_readers import read_feature_activations, read_maxima
from circuit_insights.data.cache_split import cache_layers, cache_split
from circuit_insights.data.cache_stats import (
    SUM_GROUPS,
    LogHistogramSpec,
    exact_sums,
    read_tokens_table,
    sum_cells,
    tokens_table,
)
from circuit_insights.data.sampling import SamplingConfig, sample_shard
from circuit_insights.data.shards import Shard, make_shards
from circuit_insights.models.tiny import FAMILIES, tiny_subject_model
from circuit_insights.transcoders.base import Transcoder
from tests.test_cache import output_paths, reference_cache, sparse_activations


def chunk_paths_of(
    folder: Path, shards: list[Shard], sparse_format: str = "arrow"
) -> dict[Shard, dict[str, Path]]:
    """Each shard's files of a chunk's writer (CHUNK_ARTIFACTS): ``.arrow`` non-zeros for the
    ``arrow`` format, the token record in parquet."""
    suffix = {"activations": f".{sparse_format}", "tokens": ".parquet"}
    return {
        shard: {kind: folder / kind / f"{shard.name}{suffix[kind]}" for kind in CHUNK_ARTIFACTS}
        for shard in shards
    }


def assert_same_cache(got: dict[str, Path], expected: dict[str, Path], shard: Shard) -> None:
    """Equal non-zeros, maxima, statistics (exactly) and quantile samples of one shard."""
    activations = read_feature_activations(got["activations"])
    pd.testing.assert_frame_equal(activations, read_feature_activations(expected["activations"]))
    maxima = read_maxima(got["maxima"])
    pd.testing.assert_frame_equal(maxima, read_maxima(expected["maxima"]))
    pd.testing.assert_frame_equal(
        pd.read_parquet(got["feature_stats"]),
        pd.read_parquet(expected["feature_stats"]),
        check_exact=True,
    )
    config = SamplingConfig(n_samples=6, top_k=3, n_negatives=3, n_bins=4)
    contexts = np.arange(200)
    pd.testing.assert_frame_equal(
        sample_shard(maxima, contexts, shard, config, context_length=16),
        sample_shard(read_maxima(expected["maxima"]), contexts, shard, config, context_length=16),
    )


def calibrated_transcoder(
    model, layer: int, n_features: int, tokens: torch.Tensor, hook: str
) -> Transcoder:
    """A random ReLU transcoder whose features fire on ~15% of the layer's inputs."""
    torch.manual_seed(layer)
    transcoder = Transcoder(model.d_model, n_features, layer=layer, input_hook=hook)
    x = model.hook_values(tokens, {layer: [hook]})[(layer, hook)].reshape(-1, model.d_model)
    with torch.no_grad():
        pre = transcoder.pre_activation(x)  # (tokens, n_features)
        transcoder.b_enc.copy_(-torch.quantile(pre, 0.85, dim=0))
    return transcoder


@pytest.mark.parametrize("family", FAMILIES)
def test_chunked_one_forward_cache_equals_the_per_layer_cache(tmp_path: Path, family: str):
    """Two splits interleaved over 23 contexts; layers 1 and 3 (two input hooks); chunks of 9
    context ids (the last one empty of data), in the Arrow chunk files rule cache writes,
    against one pass per layer and split."""
    model = tiny_subject_model(family, n_layers=4)
    rng = np.random.default_rng(0)
    n_contexts, n_positions, n_features = 23, 12, 40
    tokens = rng.integers(3, 90, (n_contexts, n_positions)).astype(np.int32)
    if model.bos_token_id is not None:
        tokens[:, 0] = model.bos_token_id
    context_ids = np.arange(n_contexts, dtype=np.int32)
    splits = {"cache": rng.random(n_contexts) < 0.7}
    splits["eval"] = ~splits["cache"]
    hooks = {1: "mlp_in", 3: "mlp_in_unaffine"}
    transcoders = {
        layer: calibrated_transcoder(
            model, layer, n_features, torch.from_numpy(tokens[:8].astype(np.int64)), hook
        )
        for layer, hook in hooks.items()
    }
    shards = make_shards(n_features, 16)  # 16, 16, 8 features
    chunks = make_chunks(36, 9)  # [0, 9), [9, 18), [18, 27), [27, 36): the last one empty
    for split, members in splits.items():
        ids, split_tokens = context_ids[members], tokens[members]
        reference = {
            layer: output_paths(tmp_path / split / f"single{layer}", shards) for layer in hooks
        }
        for layer, transcoder in transcoders.items():
            cache_split(
                model, transcoder, layer, ids, split_tokens, shards, reference[layer],
                batch_size=4, exclude_bos=True,
            )  # fmt: skip
        chunk_paths = {
            chunk: {
                layer: chunk_paths_of(tmp_path / split / chunk.name / f"layer{layer}", shards)
                for layer in hooks
            }
            for chunk in chunks
        }
        for chunk in chunks:
            inside = chunk.select(ids)
            cache_layers(
                model, transcoders, ids[inside], split_tokens[inside], chunk_paths[chunk],
                batch_size=4, exclude_bos=True, statistics="deferred", sparse_format="arrow",
            )  # fmt: skip
        for layer, shard in itertools.product(hooks, shards):
            merged = {
                artifact: tmp_path / split / "merged" / f"layer{layer}" / f"{artifact}_{shard.name}"
                for artifact in ARTIFACTS
            }
            merge_shard([chunk_paths[chunk][layer][shard] for chunk in chunks], merged, shard)
            assert_same_cache(merged, reference[layer][shard], shard)
            assert len(read_feature_activations(merged["activations"])) > 0


@pytest.mark.parametrize("sparse_format", ["parquet", "arrow"])
@pytest.mark.parametrize("max_buffered_rows", [200, 8_000_000])  # many row groups / one per bucket
def test_merged_chunks_equal_one_writer_and_the_first_principles_reference(
    tmp_path: Path, max_buffered_rows: int, sparse_format: str
):
    """Uneven chunks (one of a single context), several buckets per shard and several row groups
    (record batches) per bucket, chunk files in either format: the merge equals one writer over
    everything and the reference on the dense array; each merged row group holds one bucket,
    sorted by (feature, context, position)."""
    n_contexts, n_positions, n_features = 31, 16, 50
    activations = sparse_activations(n_contexts, n_features, density=0.1, seed=3, n_pos=n_positions)
    generator = torch.Generator().manual_seed(4)
    extra = torch.rand((n_contexts, n_positions), generator=generator) < 0.1
    context_ids = np.cumsum(np.arange(n_contexts) % 4 + 1) + 2  # increasing, uneven gaps
    shards = make_shards(n_features, 20)  # 20, 20, 10 features
    kwargs = {"bucket_features": 6, "max_buffered_rows": max_buffered_rows}

    def write(folder: Path, begin: int, end: int, statistics: str, form: str) -> dict:
        paths = (
            output_paths(folder, shards)
            if statistics == "final"
            else chunk_paths_of(folder, shards, form)
        )
        with ActivationCacheWriter(
            shards, paths, statistics=statistics, sparse_format=form, **kwargs
        ) as writer:
            for start in range(begin, end, 3):
                stop = min(start + 3, end)
                writer.add_batch(
                    torch.as_tensor(context_ids[start:stop]),
                    activations[start:stop],
                    extra[start:stop],
                )
        return paths

    single = write(tmp_path / "single", 0, n_contexts, "final", "parquet")
    bounds = [0, 11, 12, 25, n_contexts]
    parts = [
        write(tmp_path / f"chunk{i}", begin, end, "deferred", sparse_format)
        for i, (begin, end) in enumerate(itertools.pairwise(bounds))
    ]
    excluded = extra.numpy().copy()
    excluded[:, 0] = True
    for shard in shards:
        merged = {
            artifact: tmp_path / "merged" / f"{artifact}_{shard.name}" for artifact in ARTIFACTS
        }
        rows = merge_shard([part[shard] for part in parts], merged, shard, bucket_features=6)
        assert_same_cache(merged, single[shard], shard)
        expected = reference_cache(
            activations.numpy(), excluded, context_ids, shard, LogHistogramSpec()
        )
        pd.testing.assert_frame_equal(
            read_feature_activations(merged["activations"]), expected["activations"]
        )
        pd.testing.assert_frame_equal(read_maxima(merged["maxima"]), expected["maxima"])
        stats = pd.read_parquet(merged["feature_stats"])
        exact = [column for column in stats.columns if column != "mean_activation"]
        pd.testing.assert_frame_equal(stats[exact], expected["feature_stats"][exact])
        np.testing.assert_allclose(  # float64 sums in another order: equal to rounding
            stats["mean_activation"], expected["feature_stats"]["mean_activation"], rtol=1e-12
        )
        assert rows["activations"] == len(expected["activations"])
        assert rows["maxima"] == len(expected["maxima"])
        for artifact in ("activations", "maxima"):
            parquet = pq.ParquetFile(merged[artifact])
            for group in range(parquet.metadata.num_row_groups):
                table = parquet.read_row_group(group).to_pandas()
                bucket = (table["feature"].to_numpy() - shard.start) // 6
                assert bucket.min() == bucket.max()
                keys = ["feature", "context"] + (["position"] if artifact == "activations" else [])
                assert table.equals(table.sort_values(keys, ignore_index=True))


def test_exact_sums_do_not_depend_on_order_or_grouping():
    rng = np.random.default_rng(5)
    values = np.concatenate(
        [
            np.exp(rng.normal(0, 6, 5000)).astype(np.float32),  # 1e-12 .. 1e12
            np.array([1e-42, 3.4e38, 1.0, 0.0], np.float32),  # a subnormal, the largest, zero
        ]
    )
    group, addend = sum_cells(values)
    assert group.min() >= 0 and group.max() < SUM_GROUPS and addend.max() < 2**31
    np.testing.assert_array_equal(
        np.ldexp(addend.astype(np.float64), 8 * group - 150), values.astype(np.float64)
    )

    def total(order: np.ndarray, cuts: list[int]) -> float:
        cells = np.zeros((1, SUM_GROUPS), np.int64)
        for part in np.split(values[order], cuts):
            g, a = sum_cells(part)
            np.add.at(cells[0], g, a)
        return float(exact_sums(cells)[0])

    first = total(np.arange(len(values)), [100, 2000])
    assert first == total(rng.permutation(len(values)), [7, 8, 4000])
    assert math.isclose(first, math.fsum(values.astype(np.float64).tolist()), rel_tol=1e-15)


def test_token_records_round_trip_and_other_files_are_refused(tmp_path: Path):
    spec = LogHistogramSpec(bins_per_decade=8)
    assert read_tokens_table(tokens_table(1234, spec), "memory") == (1234, spec)
    shards = [Shard(0, 8)]
    final = output_paths(tmp_path / "final", shards)
    with ActivationCacheWriter(shards, final) as writer:
        writer.add_batch(torch.as_tensor([0]), sparse_activations(1, 8))
    with pytest.raises(InputError, match="not a chunk's token record"):
        read_tokens_table(pq.read_table(final[shards[0]]["feature_stats"]), "stats")


@pytest.mark.parametrize("sparse_format", ["parquet", "arrow"])
def test_chunks_out_of_context_order_are_refused(tmp_path: Path, sparse_format: str):
    shards = [Shard(0, 8)]
    activations = sparse_activations(6, 8, density=0.5, seed=1)
    parts = []
    for index, ids in enumerate(([10, 11, 12], [3, 4, 5])):  # the second chunk comes first
        paths = chunk_paths_of(tmp_path / f"chunk{index}", shards, sparse_format)
        with ActivationCacheWriter(
            shards, paths, statistics="deferred", sparse_format=sparse_format
        ) as writer:
            writer.add_batch(torch.as_tensor(ids), activations[3 * index : 3 * index + 3])
        parts.append(paths[shards[0]])
    merged = {artifact: tmp_path / f"{artifact}.parquet" for artifact in ARTIFACTS}
    with pytest.raises(InputError, match="out of context order"):
        merge_shard(parts, merged, shards[0])
    assert not any(path.exists() for path in merged.values())
    final = output_paths(tmp_path / "final", shards)
    with ActivationCacheWriter(shards, final) as writer:
        writer.add_batch(torch.as_tensor([0]), activations[:1])
    with pytest.raises(InputError, match=r"lacks \['tokens'\]"):
        merge_shard([final[shards[0]]], merged, shards[0])
    with pytest.raises(InputError, match="not a chunk's token record"):
        merge_shard([dict(parts[0], tokens=final[shards[0]]["feature_stats"])], merged, shards[0])
    other = chunk_paths_of(tmp_path / "other", shards)[shards[0]]
    with ActivationCacheWriter(
        shards, {shards[0]: other}, statistics="deferred", histogram=LogHistogramSpec(-4, 4)
    ) as writer:
        writer.add_batch(torch.as_tensor([20]), activations[:1])
    with pytest.raises(InputError, match="histogram"):
        merge_shard([parts[1], other], merged, shards[0])
    garbled = dict(parts[0], activations=tmp_path / "garbled.arrow")
    garbled["activations"].write_bytes(b"not a table")
    with pytest.raises(InputError, match="neither parquet nor an Arrow IPC file"):
        merge_shard([garbled], merged, shards[0])


def test_chunk_names_are_context_ranges():
    chunks = make_chunks(2000, 16384)
    assert chunks == [ContextChunk(0, 2000)] and chunks[0].name == "c000000-002000"
    assert [c.name for c in make_chunks(25, 10)] == [
        "c000000-000010",
        "c000010-000020",
        "c000020-000025",
    ]
    assert parse_chunk("c000010-000020") == ContextChunk(10, 20)
    for bad in ("c10-20", "c000020-000010", "f000000-000010"):
        with pytest.raises(InputError):
            parse_chunk(bad)


def test_the_open_file_limit_is_raised_for_many_shards_or_named():
    import resource

    from circuit_insights.data.cache_split import allow_open_files

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft < 256:
        pytest.skip("needs a finite open-file limit of at least 256")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))
        allow_open_files(200)  # e.g. 2 files x 68 (layer, shard) pairs + 64
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (200, hard)
        if hard != resource.RLIM_INFINITY:
            with pytest.raises(InputError, match="cache.shard_size"):
                allow_open_files(hard + 1)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
