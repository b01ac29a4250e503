"""CircuitLens clustering: contribution sets, rho filter, Jaccard distances, density clustering."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import adjusted_rand_score

from circuit_insights.circuitlens.cluster_shard import (
    COVERAGE_COLUMNS,
    cluster_coverage,
    cluster_shard,
    write_clusters,
)
from circuit_insights.circuitlens.clustering import (
    FIRST_POSITION,
    ClusteringConfig,
    cluster_feature,
    contribution_occurrences,
    contribution_sets,
    jaccard_distances,
    membership_matrix,
    relabel_by_size,
    rho_filter,
    top_occurrences,
)
from circuit_insights.core.errors import InputError
from circuit_insights.data.schemas import (
    ATTRIBUTION_CONTRIBUTIONS_SCHEMA,
    ATTRIBUTION_TOTALS_SCHEMA,
    CLUSTER_ASSIGNMENTS_SCHEMA,
    CLUSTERS_SCHEMA,
)

TARGET = 40  # target position of every synthetic sample


def group_core(group: int, size: int = 6) -> list[tuple]:
    """The distinct contributors of one planted mechanism: heads and upstream features."""
    heads = [("head", group, h, -(h + 1)) for h in range(size // 2)]
    features = [("feature", group, 100 + f) for f in range(size - size // 2)]
    return heads + features


def planted_sets(
    seed: int, sizes: tuple[int, ...] = (40, 30, 20), n_noise: int = 10, accidents: bool = True
) -> tuple[dict[int, frozenset], dict[int, int]]:
    """Groups with distinct cores of 6 contributors (each member misses at most one of them, so
    members are within Jaccard distance 1/3), plus (``accidents``) two contributors of its own
    per sample (removed by the rho filter), and noise samples made of 3 contributors of their
    own (disjoint from every other sample)."""
    rng = np.random.default_rng(seed)
    sets: dict[int, frozenset] = {}
    truth: dict[int, int] = {}
    sample = 0
    for group, size in enumerate(sizes):
        core = group_core(group)
        for _ in range(size):
            missing = int(rng.integers(0, len(core) + 1))  # len(core): misses none
            members = {e for i, e in enumerate(core) if i != missing}
            if accidents:
                members |= {("feature", 9, 10 * sample + k) for k in range(2)}
            sets[sample], truth[sample] = frozenset(members), group
            sample += 1
    for _ in range(n_noise):
        sets[sample] = frozenset(("head", 8, sample, -k) for k in range(3))
        truth[sample] = -1
        sample += 1
    return sets, truth


def contributions_frame(
    sets: dict[int, frozenset],
    feature: int = 7,
    layer: int = 3,
    source_token: int = 1000,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Attribution tables (the real schemas) holding exactly ``sets``, plus output rows."""
    rows = []
    for sample, members in sets.items():
        for element in sorted(members):
            base = dict(feature=feature, sample=sample, detail=None, value=1.0, share=0.1)
            if element[0] == "head":
                _, lay, head, delta = element
                rows.append(
                    base
                    | dict(
                        kind="head",
                        partition="mediator",
                        layer=lay,
                        head=head,
                        source_feature=None,
                        position=TARGET + delta,
                        delta=delta,
                        token=source_token + lay,
                    )
                )
            else:
                _, lay, source = element
                rows.append(
                    base
                    | dict(
                        kind="feature",
                        partition="leaf",
                        layer=lay,
                        head=None,
                        source_feature=source,
                        position=TARGET - 1,
                        delta=-1,
                        token=2000,
                    )
                )
        # Leaves that are not clustered on: an embedding and a bias.
        rows.append(
            dict(
                feature=feature,
                sample=sample,
                kind="embedding",
                partition="leaf",
                layer=None,
                head=None,
                source_feature=None,
                position=TARGET,
                delta=0,
                token=55,
                detail=None,
                value=0.5,
                share=0.2,
            )
        )
        rows.append(
            dict(
                feature=feature,
                sample=sample,
                kind="bias",
                partition="leaf",
                layer=layer,
                head=None,
                source_feature=None,
                position=None,
                delta=None,
                token=None,
                detail="b_enc",
                value=-0.1,
                share=0.05,
            )
        )
    nullable = ("layer", "head", "source_feature", "position", "delta", "token")
    contributions = pd.DataFrame(rows)[ATTRIBUTION_CONTRIBUTIONS_SCHEMA.names].astype(
        {name: "Int32" for name in nullable}
    )
    totals = pd.DataFrame(
        {
            "feature": feature,
            "sample": sorted(sets),
            "layer": layer,
            "status": "ok",
            "fires": True,
            "activation": np.linspace(1.0, 2.0, len(sets)),
        }
    )
    return contributions, totals


def output_rows(feature: int, sample: int, promoted: int, logit: float) -> list[dict]:
    common = dict(feature=feature, sample=sample, layer=3, head=None, source_feature=None)
    return [
        common
        | dict(
            kind="top_token",
            partition="output_vocab",
            position=TARGET,
            delta=0,
            token=promoted,
            detail="promoted",
            value=2.0,
            share=0.01,
        ),
        common
        | dict(
            kind="top_token",
            partition="output_vocab",
            position=TARGET,
            delta=0,
            token=999,
            detail="suppressed",
            value=-1.0,
            share=0.01,
        ),
        common
        | dict(
            kind="logit",
            partition="output",
            position=TARGET,
            delta=0,
            token=promoted,
            detail=None,
            value=logit,
            share=1.0,
        ),
    ]


# --- contribution sets and the rho filter --------------------------------------------------


def test_contribution_sets_hold_heads_with_delta_and_features():
    sets = {0: frozenset(group_core(0)), 1: frozenset(group_core(1)[:2])}
    contributions, _ = contributions_frame(sets)
    got = contribution_sets(contributions)
    assert got == {(7, 0): sets[0], (7, 1): sets[1]}
    with_tokens = contribution_sets(contributions, kinds=("feature", "head", "token"))
    assert with_tokens[(7, 0)] == sets[0] | {("token", 55, 0)}
    only_heads = contribution_sets(contributions, kinds=("head",))
    assert all(e[0] == "head" for s in only_heads.values() for e in s)


def test_contribution_sets_min_share_and_sign():
    sets = {0: frozenset(group_core(0))}
    contributions, _ = contributions_frame(sets)
    contributions.loc[contributions["kind"] == "head", "share"] = 0.01
    contributions.loc[contributions["kind"] == "feature", "value"] = -1.0
    assert all(e[0] == "feature" for e in contribution_sets(contributions, min_share=0.05)[(7, 0)])
    assert all(e[0] == "head" for e in contribution_sets(contributions, positive_only=True)[(7, 0)])


def test_rho_filter_is_exact():
    # 20 sets: "a" in 1 of them (5%), "b" in 2 (10%), "c" in 3 (15%).
    sets = [frozenset() for _ in range(20)]
    sets[0] = frozenset({"a", "b", "c"})
    sets[1] = frozenset({"b", "c"})
    sets[2] = frozenset({"c"})
    filtered, kept = rho_filter(sets, 0.10)  # need >= 2 of 20
    assert kept == ["b", "c"]
    assert filtered[0] == {"b", "c"} and filtered[2] == {"c"}
    _, kept = rho_filter(sets, 0.05)  # >= 1 of 20: exactly at the boundary, kept
    assert kept == ["a", "b", "c"]
    _, kept = rho_filter(sets, 0.1001)  # just above 2 of 20: only "c" (3) survives
    assert kept == ["c"]
    _, kept = rho_filter(sets, 0.0)
    assert kept == ["a", "b", "c"]
    # min_count: a singleton is dropped whatever rho * N is; the larger requirement wins.
    _, kept = rho_filter(sets, 0.05, min_count=2)
    assert kept == ["b", "c"]
    _, kept = rho_filter(sets, 0.0, min_count=3)
    assert kept == ["c"]
    _, kept = rho_filter(sets, 0.15, min_count=2)  # 3 of 20
    assert kept == ["c"]


def test_default_filter_drops_singletons_at_any_sample_count():
    """The embedded default's old setting (20 samples, rho 0.05) kept elements seen once."""
    for n in (10, 20, 40, 100):
        sets = {i: frozenset({("head", 0, 0, -1), ("feature", 1, 1000 + i)}) for i in range(n)}
        result = cluster_feature(sets)
        assert result.elements == [("head", 0, 0, -1)]


# --- Jaccard distances -----------------------------------------------------------------------


def brute_force_jaccard(sets: list[frozenset]) -> np.ndarray:
    n = len(sets)
    out = np.zeros((n, n))
    for i, j in itertools.product(range(n), range(n)):
        union = sets[i] | sets[j]
        out[i, j] = 1 - len(sets[i] & sets[j]) / len(union) if union else 0.0
    return out


def test_jaccard_matches_brute_force():
    rng = np.random.default_rng(1)
    sets = [
        frozenset(rng.choice(30, rng.integers(0, 8), replace=False).tolist()) for _ in range(60)
    ]
    elements = sorted(set().union(*sets))
    distances = jaccard_distances(membership_matrix(sets, elements))
    np.testing.assert_allclose(distances, brute_force_jaccard(sets), atol=1e-12)
    assert np.array_equal(distances, distances.T)
    assert (np.diag(distances) == 0).all()


def test_jaccard_empty_sets():
    sets = [frozenset(), frozenset(), frozenset({1})]
    distances = jaccard_distances(membership_matrix(sets, [1]))
    assert distances[0, 1] == 0.0 and distances[0, 2] == 1.0


# --- clustering --------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["hdbscan", "dbscan"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_recovers_planted_groups_and_noise(method, seed):
    sets, truth = planted_sets(seed)
    result = cluster_feature(sets, ClusteringConfig(method=method))
    expected = np.array([truth[s] for s in result.samples])
    assert result.status == "clustered"
    assert result.n_clusters == 3
    # Every sample lands in its group's cluster, numbered by size (40, 30, 20); the noise
    # samples (their contributors are too rare for the rho filter: empty sets) are -1.
    assert np.array_equal(result.labels, expected)
    assert (result.set_sizes[expected == -1] == 0).all()


@pytest.mark.parametrize("method", ["hdbscan", "dbscan"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_isolated_samples_are_noise_by_density(method, seed):
    """With rho 0 the noise samples keep their own contributors: density alone makes them -1."""
    sets, truth = planted_sets(seed, accidents=False)
    result = cluster_feature(sets, ClusteringConfig(method=method, rho=0.0, min_count=1))
    expected = np.array([truth[s] for s in result.samples])
    assert (result.set_sizes > 0).all()
    assert np.array_equal(result.labels, expected)


def test_rho_filter_removes_accidental_elements_before_clustering():
    sets, _ = planted_sets(0)
    result = cluster_feature(sets)
    assert sorted(result.elements) == sorted(group_core(0) + group_core(1) + group_core(2))
    kept_all = cluster_feature(sets, ClusteringConfig(rho=0.0, min_count=1))
    assert len(kept_all.elements) == 3 * 6 + 2 * 90 + 3 * 10


def test_clustering_is_deterministic_and_ignores_input_order():
    sets, _ = planted_sets(3)
    first = cluster_feature(sets)
    again = cluster_feature(sets)
    shuffled = dict(reversed(list(sets.items())))
    third = cluster_feature(shuffled)
    assert np.array_equal(first.labels, again.labels)
    assert np.array_equal(first.samples, third.samples)
    assert np.array_equal(first.labels, third.labels)


def test_relabel_by_size():
    labels = np.array([5, 5, -1, 2, 2, 2, 9, 9])
    assert relabel_by_size(labels).tolist() == [1, 1, -1, 0, 0, 0, 2, 2]


def test_single_mechanism_is_one_cluster():
    sets = {i: frozenset(group_core(0)) for i in range(30)}
    result = cluster_feature(sets)
    assert result.status == "clustered" and (result.labels == 0).all()
    plain = cluster_feature(sets, ClusteringConfig(single_cluster_fallback=False))
    assert plain.status == "all_noise" and (plain.labels == -1).all()


def test_too_few_samples_is_all_noise():
    sets = {i: frozenset(group_core(0)) for i in range(4)}
    result = cluster_feature(sets, ClusteringConfig(min_cluster_size=5))
    assert result.status == "too_few_samples"
    assert (result.labels == -1).all()
    assert cluster_feature({}, ClusteringConfig()).status == "no_contributors"


def test_empty_sets_are_noise():
    sets = {i: frozenset() for i in range(20)}
    result = cluster_feature(sets)
    assert result.status == "no_contributors" and (result.labels == -1).all()
    # Sets left empty by the rho filter (all accidental) are noise too.
    sets = {i: frozenset({("feature", 9, i)}) for i in range(100)}
    assert cluster_feature(sets).status == "no_contributors"
    mixed = {i: frozenset(group_core(0)) for i in range(20)} | {
        20 + i: frozenset() for i in range(5)
    }
    result = cluster_feature(mixed)
    assert result.labels[:20].tolist() == [0] * 20 and result.labels[20:].tolist() == [-1] * 5


def test_config_is_checked():
    with pytest.raises(InputError, match="kinds"):
        ClusteringConfig(kinds=("heads",))
    with pytest.raises(InputError, match="clustering.rho"):
        ClusteringConfig(rho=1.5)
    with pytest.raises(InputError, match="clustering.colour"):
        ClusteringConfig.from_mapping({"colour": 1})
    assert ClusteringConfig.from_mapping({"kinds": ["head"]}).kinds == ("head",)


# --- shards and summaries -----------------------------------------------------------------------


class FakeTokenizer:
    def convert_ids_to_tokens(self, token_id: int) -> str:
        return f"w{token_id}"

    def decode(self, ids, **_: object) -> str:
        return " ".join(f"w{i}" for i in ids)


def shard_tables(seed: int = 0):
    sets, truth = planted_sets(seed)
    contributions, totals = contributions_frame(sets)
    outputs = []
    for sample, group in truth.items():
        promoted = 500 + group if group >= 0 else 600
        outputs += output_rows(7, sample, promoted, 1.0 + group)
    outputs = pd.DataFrame(outputs)[ATTRIBUTION_CONTRIBUTIONS_SCHEMA.names]
    contributions = pd.concat(
        [contributions, outputs.astype(contributions.dtypes)], ignore_index=True
    )
    # One sample skipped by the attribution stage, one that did not fire.
    extra = pd.DataFrame(
        {
            "feature": [7, 7],
            "sample": [1000, 1001],
            "layer": [3, 3],
            "status": ["skipped_bos", "ok"],
            "fires": [False, False],
            "activation": [np.nan, 0.0],
        }
    )
    totals = pd.concat([totals, extra], ignore_index=True)
    weightlens = pd.DataFrame(
        {"layer": [0, 1], "feature": [100, 100], "validated_tokens": [["Paris", "Lyon"], []]}
    )
    return contributions, totals, weightlens, truth


def test_cluster_shard_tables_and_summaries(tmp_path):
    contributions, totals, weightlens, truth = shard_tables()
    clusters, assignments = cluster_shard(contributions, totals, weightlens, FakeTokenizer())
    assert list(clusters.columns) == CLUSTERS_SCHEMA.names
    assert list(assignments.columns) == CLUSTER_ASSIGNMENTS_SCHEMA.names
    assert clusters["cluster"].tolist() == [0, 1, 2, -1]
    assert clusters["n_samples"].tolist() == [40, 30, 20, 10]
    assert clusters["share"].tolist() == pytest.approx([0.4, 0.3, 0.2, 0.1])
    assert (clusters["n_feature_samples"] == 100).all()  # the skipped and not-firing are out

    first = clusters.iloc[0]
    # The defining contributors of cluster 0 are exactly group 0's core.
    assert sorted(first["defining_labels"]) == sorted(
        ["L0.H0@-1", "L0.H1@-2", "L0.H2@-3", "L0#100", "L0#101", "L0#102"]
    )
    assert all(f >= 0.5 for f in first["defining_frequency"])
    assert all(
        lift == pytest.approx(f / (f * 0.4))
        for f, lift in zip(first["defining_frequency"], first["defining_lift"], strict=True)
    )  # present only in this cluster: lift = 1 / share
    patterns = " | ".join(first["trigger_patterns"])
    assert 'token "w1000" at offset -1 via head L0.H0' in patterns
    assert (
        'upstream feature L0#100 (WeightLens tokens: "Paris", "Lyon") active on "w2000"' in patterns
    )
    assert "L1#100 (no validated WeightLens tokens)" in " | ".join(
        clusters.iloc[1]["trigger_patterns"]
    )
    assert first["output_promoted_token_ids"] == [500]
    assert first["output_promoted_tokens"] == ["w500"]
    assert first["output_promoted_counts"] == [40]
    assert first["output_suppressed_tokens"] == ["w999"]
    assert clusters["output_mean_logit"].tolist()[:3] == pytest.approx([1.0, 2.0, 3.0])
    assert len(first["example_samples"]) == 5
    assert set(first["example_samples"]) <= {s for s, g in truth.items() if g == 0}

    noise = clusters.iloc[3]
    assert bool(noise["is_noise"]) and noise["status"] == "clustered"

    by_sample = assignments.set_index("sample")
    assert by_sample.loc[1000, "status"] == "skipped_bos" and by_sample.loc[1000, "cluster"] == -1
    assert by_sample.loc[1001, "status"] == "not_firing"
    for sample, group in truth.items():
        assert by_sample.loc[sample, "cluster"] == group
        assert by_sample.loc[sample, "status"] == ("clustered" if group >= 0 else "empty_set")

    write_clusters(clusters, assignments, tmp_path / "c.parquet", tmp_path / "a.parquet")
    assert pq.read_schema(tmp_path / "c.parquet").names == CLUSTERS_SCHEMA.names
    back = pd.read_parquet(tmp_path / "c.parquet")
    assert list(back["trigger_patterns"].iloc[0]) == list(first["trigger_patterns"])
    assert pq.read_schema(tmp_path / "a.parquet").names == CLUSTER_ASSIGNMENTS_SCHEMA.names


def test_cluster_shard_without_weightlens_or_tokenizer():
    contributions, totals, _, _ = shard_tables(1)
    clusters, _ = cluster_shard(contributions, totals, None, None)
    patterns = " | ".join(clusters.iloc[0]["trigger_patterns"])
    assert "WeightLens" not in patterns
    assert '"<1000>"' in patterns


def test_cluster_shard_including_not_firing_and_dbscan():
    contributions, totals, _, _ = shard_tables(2)
    config = ClusteringConfig(method="dbscan", include_not_firing=True)
    clusters, assignments = cluster_shard(contributions, totals, None, None, config)
    assert (clusters["n_feature_samples"] == 101).all()
    assert assignments.set_index("sample").loc[1001, "status"] == "empty_set"
    assert (clusters["method"] == "dbscan").all()


def test_cluster_shard_small_features():
    """A feature with too few samples, and one whose sets are all empty: all noise, one row."""
    few = {i: frozenset(group_core(0)) for i in range(3)}
    contributions, totals = contributions_frame(few, feature=1)
    empty_contributions, empty_totals = contributions_frame({i: frozenset() for i in range(8)}, 2)
    clusters, assignments = cluster_shard(
        pd.concat([contributions, empty_contributions]), pd.concat([totals, empty_totals]), None
    )
    assert clusters["feature"].tolist() == [1, 2]
    assert clusters["cluster"].tolist() == [-1, -1]
    assert clusters["status"].tolist() == ["too_few_samples", "no_contributors"]
    assert (clusters["n_clusters"] == 0).all()
    assert set(assignments.loc[assignments["feature"] == 2, "status"]) == {"empty_set"}
    assert set(assignments.loc[assignments["feature"] == 1, "status"]) == {"noise"}


def test_cluster_shard_rejects_bad_totals():
    contributions, totals, _, _ = shard_tables()
    with pytest.raises(InputError, match="duplicate"):
        cluster_shard(contributions, pd.concat([totals, totals.iloc[:1]]), None)
    with pytest.raises(InputError, match="lacks column 'fires'"):
        cluster_shard(contributions, totals.drop(columns="fires"), None)


def test_totals_columns_used_exist_in_the_schema():
    assert {"feature", "sample", "layer", "status", "fires", "activation"} <= set(
        ATTRIBUTION_TOTALS_SCHEMA.names
    )


# --- coverage ----------------------------------------------------------------------------------


def test_cluster_coverage_counts_clusters_and_noise_per_layer():
    """Two layers from real cluster_shard tables: counts follow the planted groups."""
    contributions, totals, _, _ = shard_tables()  # one feature: 3 clusters, 10 of 100 noise
    clusters_a, _ = cluster_shard(contributions, totals, None, None)
    one = {i: frozenset(group_core(0)) for i in range(30)}  # one mechanism: one cluster
    few = {i: frozenset(group_core(1)) for i in range(3)}  # too few samples: all noise
    frames = [contributions_frame(one, feature=1, layer=5), contributions_frame(few, 2, layer=5)]
    clusters_b, _ = cluster_shard(
        pd.concat([f[0] for f in frames]), pd.concat([f[1] for f in frames]), None
    )
    coverage = cluster_coverage(pd.concat([clusters_b, clusters_a], ignore_index=True))
    assert list(coverage.columns) == list(COVERAGE_COLUMNS)
    assert coverage["layer"].tolist() == [3, 5]
    first, second = coverage.iloc[0], coverage.iloc[1]
    assert (first["n_features"], first["n_features_clustered"], first["max_clusters"]) == (1, 1, 3)
    assert first["clusters_per_feature"] == 3.0
    assert first["noise_share"] == pytest.approx(10 / 100)
    assert first["share_all_noise"] == 0.0
    assert (second["n_features"], second["n_features_clustered"]) == (2, 1)
    assert second["clusters_per_feature"] == 0.5
    assert second["clusters_per_clustered_feature"] == 1.0
    assert second["n_samples"] == 33
    assert second["noise_share"] == pytest.approx(3 / 33)
    assert second["share_all_noise"] == 0.5


def test_cluster_coverage_empty_and_bad_input():
    empty = cluster_coverage(pd.DataFrame(columns=CLUSTERS_SCHEMA.names))
    assert empty.empty and list(empty.columns) == list(COVERAGE_COLUMNS)
    with pytest.raises(InputError, match="lacks column 'n_samples'"):
        cluster_coverage(pd.DataFrame({"layer": [1], "feature": [1], "cluster": [0]}))


def test_top_occurrences_keeps_each_samples_largest_elements():
    feature_a, head_b, head_c = ("feature", 3, 5), ("head", 1, 0, -1), ("head", 2, 0, 0)
    occurrences = pd.DataFrame(
        {
            "feature": [1, 1, 1, 1, 1, 1],
            "sample": [0, 0, 0, 0, 1, 1],
            "element": pd.Series(
                [feature_a, feature_a, head_b, head_c, head_b, head_c], dtype=object
            ),
            "delta": [-1, -2, -1, 0, -1, 0],
            "token": [1, 1, 1, 1, 1, 1],
            "value": [0.4, -0.4, 0.7, 0.1, 0.1, -0.2],
        }
    )
    top = top_occurrences(occurrences, 1)
    # Sample 0: the feature at two positions (|0.4| + |-0.4| = 0.8) beats the head (0.7); both
    # of its rows stay. Sample 1: the larger magnitude wins, whatever its sign.
    assert top["element"].tolist() == [feature_a, feature_a, head_c]
    assert top["sample"].tolist() == [0, 0, 1]
    assert len(top_occurrences(occurrences, 2)) == 5
    assert top_occurrences(occurrences, None) is occurrences


# --- planted mechanisms at the embedded default's sample count ------------------------------


def mechanism_sets(
    seed: int,
    n: int = 100,
    shares: tuple[float, ...] = (0.4, 0.3, 0.2),
    core: int = 5,
    p_core: float = 0.8,
    n_generic: int = 2,
    p_generic: float = 0.5,
    pool: int = 60,
    per_sample: int = 3,
) -> tuple[dict[int, frozenset], dict[int, int]]:
    """``n`` contribution sets of a feature with ``len(shares)`` planted mechanisms, shaped like
    attribution output rather than like clean groups.

    - a mechanism is a core of ``core`` heads; each member has each of them with probability
      ``p_core`` (a circuit's parts are not all significant in every sample);
    - ``n_generic`` contributors shared by every mechanism (and the noise samples), each present
      with probability ``p_generic`` (say, the feature's own-position head);
    - ``per_sample`` background contributors per sample from a pool of ``pool`` upstream
      features with Zipf popularity: most are rare, a few pass the rho filter;
    - the remaining samples (10% by default) have no mechanism: generic and background only.
    Returns the sets and the planted group of each sample (-1: no mechanism).
    """
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, pool + 1)
    popularity /= popularity.sum()
    sizes = [round(share * n) for share in shares]
    groups = [g for g, size in enumerate(sizes) for _ in range(size)]
    groups += [-1] * (n - len(groups))
    sets, truth = {}, {}
    for sample, group in enumerate(groups):
        members: set[tuple] = set()
        if group >= 0:
            members |= {
                ("head", 2 + group, h, -(h + 1)) for h in range(core) if rng.random() < p_core
            }
        members |= {("head", 0, g, 0) for g in range(n_generic) if rng.random() < p_generic}
        background = rng.choice(pool, per_sample, replace=False, p=popularity)
        members |= {("feature", 1, int(b)) for b in background}
        sets[sample], truth[sample] = frozenset(members), group
    return sets, truth


@pytest.mark.parametrize("seed", range(8))
def test_default_settings_recover_planted_mechanisms_at_the_default_sample_count(seed):
    """N = 100 samples (the embedded default attributes every quantile sample: 100), three
    mechanisms of 40 / 30 / 20 samples and 10 without one: the default settings find exactly
    three clusters, each made of one mechanism's samples, and leave most mechanism-less
    samples as noise."""
    sets, truth = mechanism_sets(seed)
    result = cluster_feature(sets, ClusteringConfig())
    planted = np.array([truth[s] for s in result.samples])
    labels = result.labels
    assert result.n_clusters == 3
    has_mechanism = planted >= 0
    assert adjusted_rand_score(planted[has_mechanism], labels[has_mechanism]) >= 0.6
    clustered = has_mechanism & (labels >= 0)
    assert clustered.sum() >= 0.75 * has_mechanism.sum()
    # Each cluster is one mechanism (>= 90% of its members), and no two share it.
    majority = []
    for cluster in range(3):
        members = planted[labels == cluster]
        values, counts = np.unique(members, return_counts=True)
        assert counts.max() >= 0.9 * len(members)
        majority.append(int(values[np.argmax(counts)]))
    assert sorted(majority) == [0, 1, 2]
    assert (labels[~has_mechanism] == -1).mean() >= 0.5


def test_heads_reading_the_first_position_are_one_element_whatever_the_target():
    """A sink head's offset is -target: without the anchor, one head splits into as many
    elements as there are target positions, each too rare for the filter."""
    sets = {i: frozenset({("head", 1, 0, -(10 + i % 25))}) for i in range(100)}
    contributions, totals = contributions_frame(sets)
    contributions.loc[contributions["kind"] == "head", "position"] = 0  # sources at BOS
    bos = 1001  # contributions_frame's source token of layer-1 heads
    occurrences = contribution_occurrences(
        contributions, anchor_first_position=True, bos_token_id=bos
    )
    assert set(occurrences["element"]) == {("head", 1, 0, FIRST_POSITION)}
    assert sorted(set(occurrences["delta"])) == list(range(-34, -9))  # the true offsets
    assert len(set(contribution_occurrences(contributions)["element"])) == 25
    clusters, _ = cluster_shard(contributions, totals, None, BosTokenizer(bos))
    assert clusters["defining_labels"].iloc[0] == ["L1.H0@first"]
    assert "the first position (BOS" in clusters["trigger_patterns"].iloc[0][0]
    assert clusters["status"].iloc[0] == "clustered"
    unanchored, _ = cluster_shard(
        contributions,
        totals,
        None,
        BosTokenizer(bos),
        ClusteringConfig(anchor_first_position=False),
    )
    assert unanchored["status"].iloc[0] == "no_contributors"  # 4 of 100 each: below rho


def test_position_zero_is_anchored_only_where_it_holds_a_bos():
    """A model whose contexts start without BOS: position 0 holds text like any other position,
    so a head reading it keeps its true offset (and with no BOS token at all, nothing is
    anchored)."""
    sets = {i: frozenset({("head", 1, 0, -(10 + i % 25))}) for i in range(100)}
    contributions, totals = contributions_frame(sets)
    contributions.loc[contributions["kind"] == "head", "position"] = 0
    for bos in (5, None):  # the BOS is another token / the tokenizer has none
        occurrences = contribution_occurrences(
            contributions, anchor_first_position=True, bos_token_id=bos
        )
        assert FIRST_POSITION not in {element[3] for element in occurrences["element"]}
        assert len(set(occurrences["element"])) == 25
        clusters, _ = cluster_shard(contributions, totals, None, BosTokenizer(bos))
        assert clusters["status"].iloc[0] == "no_contributors"
        assert not any("first position" in p for p in clusters["trigger_patterns"].iloc[0])


class BosTokenizer(FakeTokenizer):
    def __init__(self, bos_token_id: int | None) -> None:
        self.bos_token_id = bos_token_id


def filler_tables(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One planted mechanism (head L1.H0 two positions back and upstream feature L0#5, each
    well above the threshold) in 60 samples; half the samples also carry two of four filler
    features that attribution kept only to reach keep_top (share 0.005 < threshold 0.02)."""
    rng = np.random.default_rng(seed)
    sets = {}
    for sample in range(60):
        members = {("head", 1, 0, -2), ("feature", 0, 5)}
        if sample % 2:
            members |= {("feature", 0, 100 + int(f)) for f in rng.choice(4, 2, replace=False)}
        sets[sample] = frozenset(members)
    contributions, totals = contributions_frame(sets)
    fillers = contributions["source_feature"].fillna(-1).to_numpy() >= 100
    contributions.loc[fillers, "share"] = 0.005
    contributions.loc[~fillers & contributions["kind"].isin(["head", "feature"]), "share"] = 0.4
    return contributions, totals


@pytest.mark.parametrize("seed", range(3))
def test_one_mechanism_is_one_cluster_when_keep_top_fillers_stay_out(seed):
    """Samples with and without fillers are at Jaccard distance 0.5: clustered on the fillers
    the one mechanism splits; on the contributors above the threshold it is one cluster."""
    contributions, totals = filler_tables(seed)
    default, _ = cluster_shard(contributions, totals, None, None, attribution_threshold=0.02)
    real = default[default["cluster"] >= 0]
    assert len(real) == 1
    assert sorted(real["defining_labels"].iloc[0]) == sorted(["L1.H0@-2", "L0#5"])
    assert int(real["n_samples"].iloc[0]) == 60
    with_fillers, _ = cluster_shard(
        contributions,
        totals,
        None,
        None,
        ClusteringConfig(fillers=True),
        attribution_threshold=0.02,
    )
    assert (with_fillers["cluster"] >= 0).sum() >= 2
    # The threshold compares float32 shares: a share stored exactly at it is significant.
    at_threshold = contributions.assign(share=np.float32(0.02))
    kept = contribution_occurrences(at_threshold, significant_share=0.02)
    assert len(kept) == len(contribution_occurrences(at_threshold))
