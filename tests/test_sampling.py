"""Properties of the context samplers: weights, draws without replacement, seeds, shards."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from circuit_insights.core.errors import InputError
from circuit_insights.data.cache import ARTIFACTS, ActivationCacheWriter
from circuit_insights.data.cache_readers import read_maxima
from circuit_insights.data.sampling import (
    SamplingConfig,
    bin_weights,
    negative_contexts,
    quantile_bins,
    quantile_sample,
    sample_shard,
    successive_sampling_order,
    top_k_contexts,
    write_shard_samples,
)
from circuit_insights.data.schemas import SAMPLES_SCHEMA
from circuit_insights.data.shards import Shard

CONTEXT_LENGTH = 32


def feature_maxima(n_contexts: int, seed: int = 0, n_all: int | None = None) -> pd.DataFrame:
    """Maxima of one feature: a heavy-tailed activation in ``n_contexts`` random contexts."""
    rng = np.random.default_rng(seed)
    n_all = n_all or 4 * n_contexts
    contexts = np.sort(rng.choice(n_all, size=n_contexts, replace=False))
    return pd.DataFrame(
        {
            "context": contexts,
            "max_activation": rng.lognormal(0, 1, size=n_contexts).astype(np.float32),
            "max_position": rng.integers(1, CONTEXT_LENGTH, size=n_contexts),
        }
    )


def shard_maxima(features: range, n_all: int, seed: int = 0) -> pd.DataFrame:
    """Maxima of several features; feature 2 never fires, feature 1 fires in 5 contexts."""
    parts = []
    for feature in features:
        if feature == 2:
            continue
        n_firing = 5 if feature == 1 else 40 + 13 * feature
        frame = feature_maxima(n_firing, seed=seed + feature, n_all=n_all)
        parts.append(frame.assign(feature=feature))
    return pd.concat(parts, ignore_index=True)[
        ["feature", "context", "max_activation", "max_position"]
    ]


def test_width_bins_and_weights():
    values = np.array([0.0, 0.1, 0.2, 0.3, 9.0, 10.0])
    bins = quantile_bins(values, 10)
    assert bins.tolist() == [0, 0, 0, 0, 9, 9]
    weights = bin_weights(bins, alpha=0.9)
    assert np.allclose(weights, [4**-0.9] * 4 + [2**-0.9] * 2)
    assert quantile_bins(np.full(5, 3.0), 20).tolist() == [0] * 5
    count_sizes = np.bincount(quantile_bins(np.arange(103.0)[::-1], 20, "count"), minlength=20)
    assert count_sizes.sum() == 103 and count_sizes.max() - count_sizes.min() <= 1
    assert quantile_bins(np.arange(103.0)[::-1], 20, "count")[0] == 19  # the strongest


def test_bins_with_more_contexts_get_proportionally_less_weight_per_context():
    maxima = feature_maxima(2000, seed=4)
    sample = quantile_sample(maxima, n_bins=20, alpha=0.9, n_samples=2000, seed=1)
    size = sample.groupby("bin")["context"].count()
    per_bin = sample.groupby("bin")["weight"].first()
    assert size.min() < size.max() / 10  # the heavy tail makes bins very uneven
    # w_b / w_c = (n_c / n_b) ** alpha for every pair of bins
    for b in size.index:
        for c in size.index:
            assert per_bin[b] / per_bin[c] == pytest.approx((size[c] / size[b]) ** 0.9)


@pytest.mark.parametrize("alpha", [0.9, 0.0, 1.0])
def test_first_draw_follows_the_bin_weights(alpha: float):
    """Over many seeds, the first draw picks context i with probability w_i / sum(w)."""
    activation = np.r_[np.full(24, 1.0), np.full(6, 5.0), [10.0, 10.0]]  # bins of 24, 6, 2
    maxima = pd.DataFrame(
        {
            "context": np.arange(len(activation)) * 7,
            "max_activation": activation,
            "max_position": np.ones(len(activation), int),
        }
    )
    weights = bin_weights(quantile_bins(activation, 3), alpha)
    expected_per_bin = np.array([weights[:24].sum(), weights[24:30].sum(), weights[30:].sum()])
    expected_per_bin /= weights.sum()
    n_trials = 3000
    first_bins = np.array(
        [
            quantile_sample(maxima, n_bins=3, alpha=alpha, n_samples=1, seed=s)["bin"].item()
            for s in range(n_trials)
        ]
    )
    observed = np.bincount(first_bins, minlength=3) / n_trials
    sigma = np.sqrt(expected_per_bin * (1 - expected_per_bin) / n_trials)
    assert np.all(np.abs(observed - expected_per_bin) < 4 * sigma + 1e-9)


def test_successive_sampling_has_the_sequential_law():
    """P(i first, then j) = w_i / W * w_j / (W - w_i), the law of draw-by-draw sampling."""
    weights = np.array([1.0, 2.0, 5.0])
    rng = np.random.default_rng(0)
    n_trials = 20000
    pairs = np.array([successive_sampling_order(weights, rng)[:2] for _ in range(n_trials)])
    total = weights.sum()
    for i in range(3):
        for j in range(3):
            if i == j:
                continue
            expected = weights[i] / total * weights[j] / (total - weights[i])
            observed = np.mean((pairs[:, 0] == i) & (pairs[:, 1] == j))
            sigma = np.sqrt(expected * (1 - expected) / n_trials)
            assert abs(observed - expected) < 4 * sigma


def test_quantile_sample_draws_without_replacement_from_firing_contexts():
    maxima = feature_maxima(500, seed=2)
    sample = quantile_sample(maxima, n_samples=100, seed=7)
    assert len(sample) == 100
    assert sample["context"].is_unique
    assert sample["rank"].tolist() == list(range(100))
    joined = sample.merge(maxima, on="context", validate="one_to_one")
    assert (joined["target_position"] == joined["max_position"]).all()
    assert (joined["activation"] == joined["max_activation"]).all()


def test_fewer_firing_contexts_than_asked_takes_them_all():
    maxima = feature_maxima(7, seed=3)
    sample = quantile_sample(maxima, n_samples=100, seed=0)
    assert sorted(sample["context"]) == sorted(maxima["context"])


def test_quantile_sample_is_deterministic_by_seed_and_ignores_row_order():
    maxima = feature_maxima(300, seed=5)
    first = quantile_sample(maxima, seed=11)
    again = quantile_sample(maxima.sample(frac=1.0, random_state=0), seed=11)
    other = quantile_sample(maxima, seed=12)
    assert first.equals(again)
    assert not first["context"].equals(other["context"])


def test_top_k_is_the_k_highest_with_ties_by_context():
    maxima = pd.DataFrame(
        {
            "context": [5, 3, 9, 1, 7],
            "max_activation": [2.0, 4.0, 4.0, 1.0, 3.0],
            "max_position": [1, 2, 3, 4, 5],
        }
    )
    top = top_k_contexts(maxima, 3)
    assert top["context"].tolist() == [3, 9, 7]
    assert top["target_position"].tolist() == [2, 3, 5]
    assert top["rank"].tolist() == [0, 1, 2]
    assert len(top_k_contexts(maxima, 50)) == 5


def test_negatives_never_fire_and_are_uniform():
    all_contexts = np.arange(0, 60, 2)  # 30 contexts
    firing = all_contexts[[0, 1, 5, 6, 7, 20, 29]]
    non_firing = np.setdiff1d(all_contexts, firing)
    counts = pd.Series(0, index=non_firing)
    for seed in range(2000):
        drawn = negative_contexts(all_contexts, firing, 4, seed)
        assert len(drawn) == 4 and len(set(drawn)) == 4
        assert set(drawn) <= set(non_firing)
        counts[drawn] += 1
    expected = 2000 * 4 / len(non_firing)
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected))
    assert sorted(negative_contexts(all_contexts, firing, 100, 0)) == non_firing.tolist()
    assert len(negative_contexts(all_contexts, all_contexts, 5, 0)) == 0


def test_negatives_refuse_firing_contexts_outside_the_corpus():
    with pytest.raises(InputError, match="missing"):
        negative_contexts(np.arange(10), [3, 11], 2, 0)


def test_sample_shard_table():
    features = range(0, 6)
    maxima = shard_maxima(features, n_all=400)
    config = SamplingConfig(n_samples=30, top_k=4, n_negatives=6, seed=3)
    samples = sample_shard(
        maxima, np.arange(400), Shard(0, 6), config, context_length=CONTEXT_LENGTH
    )
    assert samples.columns.tolist() == SAMPLES_SCHEMA.names
    assert 2 not in set(samples["feature"])  # never fires: no rows, no crash
    counts = samples.groupby(["feature", "kind"]).size()
    assert counts[(1, "quantile")] == 5 and counts[(1, "top")] == 4
    assert counts[(0, "quantile")] == 30 and counts[(0, "negative")] == 6
    for (feature, kind), rows in samples.groupby(["feature", "kind"]):
        assert rows["context"].is_unique
        assert rows["rank"].tolist() == list(range(len(rows)))
        firing = set(maxima.loc[maxima["feature"] == feature, "context"])
        if kind == "negative":
            assert not set(rows["context"]) & firing
            assert (rows["target_position"] == CONTEXT_LENGTH - 1).all()
            assert (rows["bin"] == -1).all() and rows["weight"].isna().all()
        else:
            assert set(rows["context"]) <= firing


def test_samples_do_not_depend_on_shard_boundaries():
    maxima = shard_maxima(range(0, 10), n_all=600)
    all_contexts = np.arange(600)
    config = SamplingConfig(n_samples=25, top_k=3, n_negatives=5, seed=9)
    whole = sample_shard(maxima, all_contexts, Shard(0, 10), config, context_length=CONTEXT_LENGTH)
    parts = [
        sample_shard(
            maxima[maxima["feature"].between(shard.start, shard.stop - 1)].sample(
                frac=1.0, random_state=shard.start
            ),
            all_contexts[::-1],
            shard,
            config,
            context_length=CONTEXT_LENGTH,
        )
        for shard in (Shard(0, 3), Shard(3, 4), Shard(4, 10))
    ]
    assert whole.equals(pd.concat(parts, ignore_index=True))
    reseeded = sample_shard(
        maxima, all_contexts, Shard(0, 10), replace(config, seed=10), context_length=CONTEXT_LENGTH
    )
    assert len(reseeded) == len(whole) and not whole["context"].equals(reseeded["context"])


def test_a_shard_that_never_fires_gives_an_empty_table(tmp_path: Path):
    empty = (
        SAMPLES_SCHEMA.empty_table()
        .to_pandas()[["feature"]]
        .assign(context=[], max_activation=[], max_position=[])
    )
    samples = sample_shard(
        empty, np.arange(10), Shard(0, 4), SamplingConfig(), context_length=CONTEXT_LENGTH
    )
    assert len(samples) == 0 and samples.columns.tolist() == SAMPLES_SCHEMA.names


def test_bad_config_is_refused():
    with pytest.raises(InputError, match="alpha"):
        SamplingConfig(alpha=-1.0)
    with pytest.raises(InputError, match="n_bins"):
        SamplingConfig(n_bins=0)


def test_from_cache_to_samples_negatives_never_fire(tmp_path: Path):
    """End to end on a small cache: negatives have no activation at a non-excluded position."""
    generator = torch.Generator().manual_seed(0)
    n_contexts, n_features = 40, 12
    activations = torch.rand((n_contexts, CONTEXT_LENGTH, n_features), generator=generator)
    activations = torch.where(activations < 0.01, activations * 50, torch.zeros(()))
    activations[:, 0, :] = 30.0  # BOS fires everywhere; it must not hide the negatives
    shard = Shard(0, n_features)
    paths = {shard: {artifact: tmp_path / f"{artifact}.parquet" for artifact in ARTIFACTS}}
    with ActivationCacheWriter([shard], paths) as writer:
        for begin in range(0, n_contexts, 8):
            writer.add_batch(torch.arange(begin, begin + 8), activations[begin : begin + 8])
    out = tmp_path / "samples.parquet"
    config = SamplingConfig(n_samples=10, top_k=3, n_negatives=5)
    samples = write_shard_samples(
        paths[shard]["maxima"],
        np.arange(n_contexts),
        shard,
        config,
        context_length=CONTEXT_LENGTH,
        out_path=out,
    )
    assert pq.read_schema(out).equals(SAMPLES_SCHEMA)
    assert pd.read_parquet(out).equals(samples)
    fires = (activations[:, 1:, :] > 0).any(dim=1)  # (context, feature), BOS left out
    negatives = samples[samples["kind"] == "negative"]
    assert len(negatives) > 0
    assert not fires.numpy()[negatives["context"], negatives["feature"]].any()
    maxima = read_maxima(paths[shard]["maxima"])
    for row in samples[samples["kind"] == "top"].itertuples():
        best = maxima.loc[maxima["feature"] == row.feature, "max_activation"].max()
        if row.rank == 0:
            assert row.activation == best
        value = activations[row.context, row.target_position, row.feature].item()
        assert value == pytest.approx(row.activation)
