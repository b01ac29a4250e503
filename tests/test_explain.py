"""Explanation prompts and the explain stage, with a fake LLM backend."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from circuit_insights.core.errors import InputError
from circuit_insights.data.schemas import EXPLANATIONS_SCHEMA
from circuit_insights.explain.config import ExplainConfig
from circuit_insights.explain.facts import (
    ClusterFacts,
    FeatureInputs,
    MarkedContext,
    WeightLensFacts,
)
from circuit_insights.explain.inputs import build_feature_inputs
from circuit_insights.explain.prompts import PROMPT_VERSION, load_template
from circuit_insights.explain.requests import ANSWER_SCHEMA, prompt_hash
from circuit_insights.explain.run import (
    build_requests,
    explain_shard,
    final_descriptions,
    rule_description,
    write_explanations,
)
from circuit_insights.explain.variants import (
    CLUSTER_VARIANTS,
    LLM_VARIANTS,
    RULE_VARIANTS,
    VARIANTS,
)
from circuit_insights.llm.client import ChatRequest, ChatResult, result_from_text

LAYER = 3
BOS = 1


class FakeTokenizer:
    """Token i reads " w{i}" (BOS is "<bos>")."""

    bos_token_id = BOS

    def convert_ids_to_tokens(self, token_id: int) -> str:
        return "<bos>" if token_id == BOS else f"w{token_id}"

    def decode(self, ids, **_: object) -> str:
        return "".join("<bos>" if i == BOS else f" w{i}" for i in ids)


class FakeBackend:
    """Answers with ``answer(request)`` (a text); counts calls and requests."""

    model_name = "fake-llm"

    def __init__(self, answer: Callable[[ChatRequest], str]) -> None:
        self.answer = answer
        self.calls = 0
        self.requests: list[ChatRequest] = []

    def chat_many(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        self.calls += 1
        self.requests.extend(requests)
        return [
            result_from_text(r, self.answer(r), tokens_in=100, tokens_out=10, latency_s=0.5)
            for r in requests
        ]


def user_text(request: ChatRequest) -> str:
    return request.messages[-1][1]


def echo_answer(request: ChatRequest) -> str:
    """A JSON description naming what the prompt was about."""
    user = user_text(request)
    if "Combine them" in user:
        return json.dumps({"description": "merged: " + " / ".join(re.findall(r"\[c\d+\]", user))})
    cluster = re.search(r"cluster \((\d+) of", user)
    tag = f"[c{cluster.group(1)}]" if cluster else "[single]"
    return json.dumps({"description": f"  described {tag}  "})


# --- fixture data ---------------------------------------------------------------------------------


def corpus() -> tuple[np.ndarray, np.ndarray]:
    """10 contexts of 40 tokens: BOS, then 100 * context + position."""
    context_ids = np.arange(10, dtype=np.int32)
    tokens = 100 * context_ids[:, None] + np.arange(40)[None, :] + 1000
    tokens[:, 0] = BOS
    return context_ids, tokens.astype(np.int32)


def weightlens_table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "layer": [LAYER, LAYER, LAYER - 1],
            "feature": [7, 8, 7],
            "validated_tokens": [[" Paris", " Lyon"], [], [" other"]],
            "promoted_tokens": [[" France"], [" x"], []],
            "suppressed_tokens": [[" Germany"], [], []],
            "upstream_layers": [[1], [], []],
            "upstream_features": [[12], [], []],
            "upstream_inherited_token_ids": [[[1005]], [], []],
            "description": [
                'tokens: " Paris", " Lyon" | promotes: " France"',
                'tokens: none | promotes: " x"',
                "other layer",
            ],
        }
    )


def clusters_table() -> pd.DataFrame:
    """Feature 7: two clusters and noise; 8: only noise; 9: one cluster."""

    def row(feature, cluster, n, total, patterns, promoted, examples, noise=False):
        return {
            "layer": LAYER,
            "feature": feature,
            "cluster": cluster,
            "is_noise": noise,
            "n_samples": n,
            "share": n / total,
            "n_feature_samples": total,
            "trigger_patterns": patterns,
            "output_promoted_tokens": promoted,
            "output_suppressed_tokens": [" never"],
            "output_next_tokens": [" next"],
            "output_mean_logit": 0.75,
            "example_samples": examples,
        }

    return pd.DataFrame(
        [
            row(
                7,
                0,
                60,
                100,
                ['token " w1003" at offset -3 via head L2.H1 (in 50 of 60 samples)'],
                [" France"],
                [0, 1],
            ),
            row(
                7,
                1,
                30,
                100,
                [
                    'upstream feature L1#12 (WeightLens tokens: " Rome") active on " w1201"'
                    " at offset -1 (in 20 of 30 samples)"
                ],
                [" Italy"],
                [2],
            ),
            row(7, -1, 10, 100, [], [], [3], noise=True),
            row(8, -1, 12, 12, ["rare pattern"], [" y"], [0], noise=True),
            row(9, 0, 20, 20, ["only pattern"], [" z"], [0]),
        ]
    )


def samples_table() -> pd.DataFrame:
    rows = []
    for feature in (7, 8, 9):
        for rank, (context, target) in enumerate([(4, 10), (5, 39)]):
            rows.append((feature, "top", rank, context, target, 9.0 - rank, -1, np.nan))
        for rank, (context, target) in enumerate([(1, 5), (2, 20), (3, 30), (6, 0)]):
            rows.append((feature, "quantile", rank, context, target, 1.0, 0, 1.0))
    return pd.DataFrame(
        rows,
        columns=[
            "feature",
            "kind",
            "rank",
            "context",
            "target_position",
            "activation",
            "bin",
            "weight",
        ],
    )


@pytest.fixture
def inputs() -> dict[int, FeatureInputs]:
    context_ids, tokens = corpus()
    return build_feature_inputs(
        layer=LAYER,
        weightlens_df=weightlens_table(),
        clusters_df=clusters_table(),
        samples_df=samples_table(),
        context_ids=context_ids,
        tokens=tokens,
        tokenizer=FakeTokenizer(),
        config=ExplainConfig(maxact_before=4, maxact_after=2, cluster_context_tokens=3),
    )


def requests_of(inputs, variant, config=None) -> dict:
    return {key: request for key, request in build_requests(inputs, variant, config)}


# --- inputs and prompts ---------------------------------------------------------------------------


def test_feature_inputs_from_tables(inputs):
    assert sorted(inputs) == [7, 8, 9]
    seven = inputs[7]
    assert seven.weightlens.validated_tokens == (" Paris", " Lyon")
    assert seven.weightlens.upstream == ((1, 12, (" w1005",)),)
    # MaxAct*: context 4 at target 10, 4 tokens before and 2 after, cut marks.
    assert seven.top_contexts[0] == MarkedContext(
        before="... w1406 w1407 w1408 w1409",
        target=" w1410",
        after=" w1411 w1412...",
        activation=9.0,
    )
    # Target at the last position: nothing after it; the BOS is never shown.
    assert seven.top_contexts[1].after == ""
    assert [c.cluster for c in seven.clusters] == [-1, 0, 1]
    zero = next(c for c in seven.clusters if c.cluster == 0)
    # Cluster contexts end at the target (3 tokens, target included); sample 0 is context 1 at 5.
    assert zero.contexts[0] == MarkedContext("... w1103 w1104", " w1105", "", 1.0)
    assert zero.contexts[1].target == " w1220"
    # A context whose start is the first real token gets no "..." and no BOS.
    eight = inputs[8]
    assert eight.clusters[0].contexts[0].before == "... w1103 w1104"
    assert inputs[9].weightlens is None


def test_marked_context_at_the_bos_and_without_bos_dropping():
    context_ids, tokens = corpus()
    samples = samples_table()
    samples = samples[(samples["feature"] == 7)]
    clusters = clusters_table()
    for index in clusters.index[clusters["feature"] == 7]:
        clusters.at[index, "example_samples"] = [3]
    got = build_feature_inputs(
        layer=LAYER,
        features=[7],
        clusters_df=clusters,
        samples_df=samples,
        context_ids=context_ids,
        tokens=tokens,
        tokenizer=FakeTokenizer(),
    )[7]
    # quantile rank 3 is context 6 at position 0 (the BOS itself): shown as the marked target.
    assert got.clusters[1].contexts[0] == MarkedContext("", "<bos>", "", 1.0)
    kept = build_feature_inputs(
        layer=LAYER,
        features=[7],
        samples_df=samples,
        context_ids=context_ids,
        tokens=tokens,
        tokenizer=FakeTokenizer(),
        config=ExplainConfig(drop_bos=False, maxact_before=20),
    )[7]
    assert kept.top_contexts[0].before.startswith("<bos> w1401")


def test_maxact_prompt_marks_the_max_token(inputs):
    requests = requests_of(inputs, "maxact")
    assert [(k.feature, k.cluster, k.step) for k in requests] == [
        (7, -1, "describe"),
        (8, -1, "describe"),
        (9, -1, "describe"),
    ]
    request = next(r for k, r in requests.items() if k.feature == 7)
    user = user_text(request)
    assert "<< w1410>> w1411 w1412... [9]" in user
    assert "<< w1539>> [8]" in user
    assert "Feature 7 of layer 3" in user
    assert request.json_schema == ANSWER_SCHEMA
    assert request.temperature == 0.0
    assert request.messages[0][0] == "system" and '{"description"' in request.messages[0][1]


def test_weightlens_variants(inputs):
    seven = inputs[7]
    assert rule_description(seven, "weightlens") == 'Fires on the tokens " Paris", " Lyon".'
    assert rule_description(seven, "weightlens_out") == (
        'Fires on the tokens " Paris", " Lyon". When active, it promotes " France" as the next '
        'token and suppresses " Germany".'
    )
    assert rule_description(seven, "weightlens_rule") == seven.weightlens.rule_description
    # Feature 8 has no validated token: only its table description exists.
    assert rule_description(inputs[8], "weightlens") is None
    assert rule_description(inputs[8], "weightlens_rule").startswith("tokens: none")
    assert rule_description(inputs[9], "weightlens_rule") is None

    requests = requests_of(inputs, "weightlens_out_llm")
    assert [k.feature for k in requests] == [7]
    user = user_text(next(iter(requests.values())))
    for fact in ('" Paris", " Lyon"', '" France"', '" Germany"', 'L1#12 (" w1005")'):
        assert fact in user
    assert build_requests(inputs, "weightlens") == []


def test_cluster_prompts_carry_patterns_contexts_and_outputs(inputs):
    cl_input = requests_of(inputs, "cl_input")
    cl_full = requests_of(inputs, "cl_full")
    wl_cl_full = requests_of(inputs, "wl_cl_full")
    keys = [(k.feature, k.cluster, k.step) for k in cl_input]
    # Feature 7: both clusters (not its noise); 8: its noise group is the final row; 9: one.
    assert keys == [(7, 0, "describe"), (7, 1, "describe"), (8, -1, "describe"), (9, 0, "describe")]
    assert [k for k in cl_full] == [k._replace(variant="cl_full") for k in cl_input]

    first = user_text(next(r for k, r in cl_input.items() if (k.feature, k.cluster) == (7, 0)))
    assert 'token " w1003" at offset -3 via head L2.H1' in first
    assert "(60 of the feature's 100 samples, 60%)" in first
    assert "... w1103 w1104<< w1105>>" in first
    assert " w1106" not in first  # contexts end at the target
    assert '" France"' not in first  # no output influence in CL-Input

    full = user_text(next(r for k, r in cl_full.items() if (k.feature, k.cluster) == (7, 0)))
    assert 'promotes as the next token: " France"' in full
    assert 'suppresses as the next token: " never"' in full
    assert "mean effect of the feature on their logit: +0.75" in full
    assert 'token " w1003" at offset -3 via head L2.H1' in full

    second = user_text(next(r for k, r in wl_cl_full.items() if (k.feature, k.cluster) == (7, 1)))
    assert '" Paris", " Lyon"' in second and "WeightLens" in second
    assert "upstream feature L1#12" in second and '" Italy"' in second

    noise = user_text(next(r for k, r in cl_input.items() if k.feature == 8))
    assert "no distinct circuit cluster" in noise and "rare pattern" in noise
    nine = user_text(next(r for k, r in wl_cl_full.items() if k.feature == 9))
    assert "no WeightLens results" in nine


def test_every_variant_renders_from_dataclasses():
    """Fixture data built directly (no tables): every variant gives a prompt or a rule text."""
    context = MarkedContext("The capital is", " Paris", " today", 5.0)
    cluster = ClusterFacts(0, 10, 1.0, ("pattern A",), (" France",), (), (), None, (context,), 10)
    feature = FeatureInputs(
        layer=1,
        feature=2,
        weightlens=WeightLensFacts((" Paris",), (" France",), (), (), "tokens: Paris"),
        top_contexts=(context,),
        clusters=(cluster,),
    )
    for variant in VARIANTS:
        if variant in ("maxact_rule", "cl_rule", "wl_cl_rule"):
            # Executable rules come from the corpus tables (tests/test_rules.py); none here.
            assert rule_description(feature, variant) is None
            continue
        if variant in RULE_VARIANTS:
            assert "Paris" in rule_description(feature, variant)
            continue
        requests = build_requests([feature], variant)
        assert len(requests) == 1
        user = user_text(requests[0][1])
        assert "$" not in user and "Feature 2 of layer 1" in user
        assert ("The capital is<< Paris>>" in user) or ('" Paris"' in user)
        if variant in CLUSTER_VARIANTS:
            assert "pattern A" in user
    with pytest.raises(InputError, match="variant"):
        build_requests([feature], "maxact_star")


def test_prompt_hashes_are_stable(inputs):
    first = {k: prompt_hash(r) for k, r in build_requests(inputs, "cl_full")}
    again = {k: prompt_hash(r) for k, r in build_requests(dict(inputs), "cl_full")}
    assert first == again
    assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in first.values())
    assert len(set(first.values())) == len(first)  # different clusters, different prompts
    changed = ExplainConfig(maxact_before=4, maxact_after=2, cluster_context_tokens=3, seed=1)
    other = {k: prompt_hash(r) for k, r in build_requests(inputs, "cl_full", changed)}
    assert set(other.values()).isdisjoint(first.values())
    penalised = ExplainConfig(
        maxact_before=4, maxact_after=2, cluster_context_tokens=3, repetition_penalty=1.2
    )
    requests = [r for _, r in build_requests(inputs, "cl_full", penalised)]
    assert {r.repetition_penalty for r in requests} == {1.2}


def test_cluster_prompts_share_their_evidence_as_a_prefix(inputs):
    """cl_full's prompt starts with cl_input's evidence, wl_cl_full's with cl_full's: a server
    with prefix caching (vLLM) computes the shared part once per cluster, if the shorter variant
    is sent first (the first round sends variant by variant, in LLM_VARIANTS order)."""
    by_variant = {
        variant: {key.cluster: request for key, request in build_requests(inputs, variant)}
        for variant in CLUSTER_VARIANTS
    }
    assert set(by_variant["cl_input"]) == set(by_variant["wl_cl_full"]) != set()
    for cluster, short in by_variant["cl_input"].items():
        full, weights = by_variant["cl_full"][cluster], by_variant["wl_cl_full"][cluster]
        assert short.messages[0] == full.messages[0] == weights.messages[0]  # system message
        for shorter, longer in ((short, full), (full, weights)):
            evidence = shorter.messages[-1][1].rstrip().rsplit("\n\n", 1)[0]  # minus the question
            assert longer.messages[-1][1].startswith(evidence + "\n\n")
            assert len(longer.messages[-1][1]) > len(evidence) + 40
    # Whatever order the config names them in, the shorter prompts go first.
    backend = FakeBackend(echo_answer)
    explain_shard(backend, inputs, ["wl_cl_full", "maxact", "cl_full", "cl_input"])
    sent = [r for r in backend.requests if r in set(by_variant["cl_input"].values())]
    first_full = backend.requests.index(by_variant["cl_full"][min(by_variant["cl_full"])])
    first_weights = backend.requests.index(by_variant["wl_cl_full"][min(by_variant["wl_cl_full"])])
    assert all(backend.requests.index(r) < first_full < first_weights for r in sent)


def test_templates_are_packaged_and_versioned():
    assert PROMPT_VERSION == "explain_v2"
    for name in ("system", "maxact", "weightlens", "weightlens_out", "merge", *LLM_VARIANTS):
        assert load_template(f"explain_{name}_v2").template.strip()
    with pytest.raises(InputError, match="not packaged"):
        load_template("explain_nothing_v2")


# --- running with a fake LLM ----------------------------------------------------------------------


def test_explain_shard_counts_requests_and_merges(inputs, tmp_path):
    backend = FakeBackend(echo_answer)
    frame = explain_shard(backend, inputs, VARIANTS)
    assert list(frame.columns) == EXPLANATIONS_SCHEMA.names
    # First round: maxact 3 + weightlens_out_llm 1 + 3 CL variants x 4 cluster prompts = 16;
    # second round: one merge per CL variant (feature 7 only).
    assert backend.calls == 2
    assert len(backend.requests) == 3 + 1 + 3 * 4 + 3

    final = frame[frame["is_final"]]
    assert len(final) == 3 * len(VARIANTS)  # one final row per (feature, variant)
    assert not final.duplicated(["feature", "variant"]).any()
    got = final.set_index(["feature", "variant"])
    merged = got.loc[(7, "cl_full")]
    assert merged["step"] == "merge" and merged["n_clusters"] == 2
    assert (
        merged["description"] == "merged: [c60] / [c30]"
    )  # both cluster descriptions, largest first
    merge_prompt = user_text(backend.requests[-1])
    assert "(60% of samples) described [c60]" in merge_prompt
    assert "(30% of samples) described [c30]" in merge_prompt

    assert got.loc[(9, "cl_input"), "step"] == "copy"
    assert got.loc[(9, "cl_input"), "description"] == "described [c20]"
    assert got.loc[(9, "cl_input"), "tokens_in"] == 0  # counted on the cluster row
    assert got.loc[(8, "cl_input"), "step"] == "describe"  # the noise group, described once
    assert got.loc[(7, "maxact"), "description"] == "described [single]"
    assert got.loc[(7, "maxact"), "tokens_in"] == 100
    assert got.loc[(7, "weightlens"), "step"] == "rule"
    assert got.loc[(8, "weightlens"), "parse_status"] == "missing_input"
    assert got.loc[(9, "weightlens_out_llm"), "error"] == "no WeightLens result"
    assert (got["prompt_version"] == PROMPT_VERSION).all()
    llm_rows = final[final["step"].isin(["describe", "merge"])]
    assert (llm_rows["llm_model"] == "fake-llm").all() and llm_rows["prompt_hash"].notna().all()

    clusters = frame[~frame["is_final"]]
    assert sorted(
        zip(clusters["feature"], clusters["variant"], clusters["cluster"], strict=True)
    ) == sorted((f, v, c) for v in CLUSTER_VARIANTS for f, c in [(7, 0), (7, 1), (9, 0)])

    descriptions = final_descriptions(frame)
    assert len(descriptions) == 3 * len(VARIANTS)
    write_explanations(frame, tmp_path / "e.parquet")
    assert pq.read_schema(tmp_path / "e.parquet").names == EXPLANATIONS_SCHEMA.names
    assert len(pd.read_parquet(tmp_path / "e.parquet")) == len(frame)


def test_unparseable_and_empty_answers_are_recorded(inputs):
    def answer(request: ChatRequest) -> str:
        user = user_text(request)
        if "cluster (60 of" in user:
            return "I think it is about cities"  # not JSON
        if "cluster (30 of" in user:
            return json.dumps({"description": "   "})
        if "Feature 8" in user:
            return ""
        return json.dumps({"description": "fine"})

    backend = FakeBackend(answer)
    frame = explain_shard(backend, inputs, ["cl_input", "maxact"])
    rows = frame.set_index(["feature", "variant", "cluster"])
    bad = rows.loc[(7, "cl_input", 0)]
    assert bad["parse_status"] == "unparseable" and bad["description"] is None
    assert bad["raw_text"] == "I think it is about cities"
    assert rows.loc[(7, "cl_input", 1), "parse_status"] == "empty"
    # No cluster description of feature 7 parsed: nothing to merge, no merge request sent.
    assert rows.loc[(7, "cl_input", -1), "step"] == "skipped"
    assert rows.loc[(7, "cl_input", -1), "description"] is None
    assert rows.loc[(8, "cl_input", -1), "parse_status"] == "empty"
    assert rows.loc[(9, "cl_input", -1), "description"] == "fine"
    assert backend.calls == 1
    assert rows.loc[(8, "maxact", -1), "parse_status"] == "empty"


def test_one_parsed_cluster_is_copied_not_merged(inputs):
    def answer(request: ChatRequest) -> str:
        if "cluster (30 of" in user_text(request):
            return "{broken"
        return json.dumps({"description": "cities"})

    backend = FakeBackend(answer)
    frame = explain_shard(backend, inputs, ["cl_full"])
    final = frame[frame["is_final"]].set_index("feature")
    assert final.loc[7, "step"] == "copy" and final.loc[7, "description"] == "cities"
    assert "only cluster 0 of 2" in final.loc[7, "error"]
    assert backend.calls == 1


def test_schema_mismatch_is_unparseable(inputs):
    backend = FakeBackend(lambda r: json.dumps({"summary": "x"}))
    frame = explain_shard(backend, {7: inputs[7]}, ["maxact"])
    row = frame.iloc[0]
    assert row["parse_status"] == "unparseable" and row["raw_text"] == '{"summary": "x"}'


def test_without_backend_only_rule_variants(inputs):
    frame = explain_shard(None, inputs, ["weightlens_rule", "weightlens_out"])
    assert len(frame) == 6 and (frame["llm_model"] == "").all()
    assert frame.set_index(["feature", "variant"]).loc[(7, "weightlens_rule"), "description"] == (
        inputs[7].weightlens.rule_description
    )
    with pytest.raises(InputError, match="need an LLM backend"):
        explain_shard(None, inputs, ["cl_full"])
    with pytest.raises(InputError, match="variants"):
        explain_shard(None, inputs, ["neuronpedia"])


def test_max_clusters_limits_the_described_clusters(inputs):
    config = ExplainConfig(max_clusters=1)
    keys = [k for k, _ in build_requests(inputs, "cl_input", config)]
    assert [(k.feature, k.cluster) for k in keys] == [(7, 0), (8, -1), (9, 0)]


def test_config_checks():
    with pytest.raises(InputError, match="explain.n_maxact"):
        ExplainConfig(n_maxact=-1)
    with pytest.raises(InputError, match="explain.colour"):
        ExplainConfig.from_mapping({"colour": 1})


def test_from_clustering_output_through_parquet(tmp_path):
    """clusters written by the clustering stage, read back, explained: the columns agree."""
    from circuit_insights.circuitlens.cluster_shard import cluster_shard, write_clusters
    from tests.test_clustering import contributions_frame, planted_sets

    sets, truth = planted_sets(0)
    contributions, totals = contributions_frame(sets, feature=7, layer=LAYER)
    clusters, assignments = cluster_shard(contributions, totals, None, FakeTokenizer())
    write_clusters(clusters, assignments, tmp_path / "c.parquet", tmp_path / "a.parquet")
    samples = pd.DataFrame(
        {
            "feature": 7,
            "kind": "quantile",
            "rank": sorted(sets),
            "context": [s % 10 for s in sorted(sets)],
            "target_position": 5,
            "activation": 1.0,
            "bin": 0,
            "weight": 1.0,
        }
    )
    context_ids, tokens = corpus()
    inputs = build_feature_inputs(
        layer=LAYER,
        clusters_df=pd.read_parquet(tmp_path / "c.parquet"),
        samples_df=samples,
        context_ids=context_ids,
        tokens=tokens,
        tokenizer=FakeTokenizer(),
    )
    assert [c.cluster for c in inputs[7].clusters] == [-1, 0, 1, 2]
    assert all(len(c.contexts) == 5 for c in inputs[7].clusters)
    backend = FakeBackend(echo_answer)
    frame = explain_shard(backend, inputs, ["cl_input", "weightlens_rule"])
    assert len(backend.requests) == 3 + 1  # three clusters, one merge
    final = frame[frame["is_final"]].set_index("variant")
    assert final.loc["cl_input", "description"] == "merged: [c40] / [c30] / [c20]"
    assert final.loc["weightlens_rule", "parse_status"] == "missing_input"
    first = user_text(backend.requests[0])
    assert 'token " w1000" at offset -1 via head L0.H0' in first


def test_variants_are_compared_on_the_features_they_share():
    from circuit_insights.explain.run import features_with_every_variant

    final = pd.DataFrame(
        {
            "feature": [0, 1, 2, 3, 2, 3, 7],
            "variant": ["weightlens_rule"] * 4 + ["cl_full"] * 2 + ["maxact"],
        }
    )
    assert features_with_every_variant(final, ["weightlens_rule", "cl_full"]) == [2, 3]
    assert features_with_every_variant(final, ["weightlens_rule", "cl_full"], 1) == [2]
    assert features_with_every_variant(final, ["weightlens_rule"], 2) == [0, 1]
    assert features_with_every_variant(final, ["cl_full", "maxact"]) == []


def test_variants_are_compared_only_where_each_has_a_description():
    from circuit_insights.explain.run import features_with_every_variant

    final = pd.DataFrame(
        {
            "feature": [0, 1, 2, 0, 1, 2],
            "variant": ["weightlens_rule"] * 3 + ["cl_full"] * 3,
            "description": ["a", "b", "c", None, " ", "z"],
        }
    )
    # feature 0 has no cl_full description (missing_input), feature 1 a blank one
    assert features_with_every_variant(final, ["weightlens_rule", "cl_full"]) == [2]
    assert features_with_every_variant(final, ["weightlens_rule"]) == [0, 1, 2]


def test_features_left_out_get_one_row_per_variant_saying_why(inputs, tmp_path):
    from circuit_insights.explain.run import unexplained_rows

    reasons = {8: "2 quantile samples, fewer than explain.min_samples=5", 7: "never fires"}
    frame = unexplained_rows(inputs, ["maxact", "cl_full", "maxact"], reasons)
    assert list(zip(frame["feature"], frame["variant"], strict=True)) == [
        (7, "maxact"),
        (7, "cl_full"),
        (8, "maxact"),
        (8, "cl_full"),
    ]
    assert frame["is_final"].all() and (frame["cluster"] == -1).all()
    assert (frame["parse_status"] == "missing_input").all()
    assert frame["description"].isna().all() and (frame["tokens_in"] == 0).all()
    assert frame.set_index(["feature", "variant"]).loc[(8, "cl_full"), "error"] == reasons[8]
    write_explanations(frame, tmp_path / "e.parquet")  # the table's schema holds
    assert len(pq.read_table(tmp_path / "e.parquet")) == 4


class CuttingBackend(FakeBackend):
    """A small explainer that, for feature 7, writes 8s until the request's max_tokens cuts it
    (one token per character) and closes its JSON only when 400 characters fit."""

    def chat_many(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        self.calls += 1
        self.requests.extend(requests)
        results = []
        for r in requests:
            if "Feature 7 " in user_text(r):
                full = '{"description": "feature_4' + "8" * 391 + '"}'
                text = full[: r.max_tokens]
                reason = "length" if len(text) < len(full) else "stop"
            else:
                text, reason = json.dumps({"description": "fine"}), "stop"
            results.append(
                result_from_text(
                    r,
                    text,
                    tokens_in=100,
                    tokens_out=len(text),
                    latency_s=0.5,
                    finish_reason=reason,
                )
            )
        return results


@pytest.mark.parametrize("retry", [0, 200, 600])
def test_an_answer_cut_at_max_tokens_is_asked_once_more_with_more_room(inputs, retry):
    backend = CuttingBackend(echo_answer)
    config = ExplainConfig(max_answer_tokens=200, retry_max_tokens=retry)
    frame = explain_shard(backend, inputs, ["maxact"], config)
    rows = frame.set_index("feature")
    if retry > 200:
        assert backend.calls == 2 and len(backend.requests) == 4  # 3 features, 1 asked again
        assert [r.max_tokens for r in backend.requests] == [200, 200, 200, 600]
        assert backend.requests[3].messages == backend.requests[0].messages
        assert rows.loc[7, "parse_status"] == "ok"
        assert rows.loc[7, "description"] == "feature_4" + "8" * 391
        assert rows.loc[7, "prompt_hash"] == prompt_hash(backend.requests[3])
        assert rows.loc[7, "tokens_out"] == 419
    else:  # no retry, or one with no more room than the first request had
        assert backend.calls == 1 and len(backend.requests) == 3
        assert rows.loc[7, "parse_status"] == "unparseable"
        assert "cut at max_tokens=200" in rows.loc[7, "error"]
    assert (rows.loc[[8, 9], "description"] == "fine").all()
