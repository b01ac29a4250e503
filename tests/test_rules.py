"""Executable explanations (circuit_insights.explain.executable): derivation, application,
synthetic contexts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from circuit_insights.circuitlens.clustering import FIRST_POSITION
from circuit_insights.core.errors import InputError
from circuit_insights.explain.executable.config import RuleConfig
from circuit_insights.explain.executable.evidence import ClusterEvidence
from circuit_insights.explain.executable.rule import Clause, Condition, Rule
from circuit_insights.explain.executable.synthetic import synthetic_contexts
from circuit_insights.explain.inputs import derive_rules
from circuit_insights.explain.variants import (
    EXECUTABLE_VARIANTS,
    cl_rule,
    maxact_rule,
    union,
    weightlens_rule,
)

BOS, A, B, C = 1, 5, 7, 9


def assert_every_clause_can_hold(rule: Rule) -> None:
    """Every clause holds on some token sequence: per offset, the token sets of its conditions
    intersect, and a sequence built from those intersections makes the clause hold."""
    for clause in rule.clauses:
        allowed: dict[int, set[int]] = {}
        for condition in clause.conditions:
            tokens = set(condition.token_ids)
            allowed[condition.offset] = allowed.get(condition.offset, tokens) & tokens
        dead = {o: s for o, s in allowed.items() if not s}
        assert not dead, f"{clause.label} can never hold: empty at offsets {sorted(dead)}"
        low, high = min(min(allowed), 0), max(max(allowed), 0)
        filler = 1 + max(t for c in clause.conditions for t in c.token_ids)
        witness = np.full((1, high - low + 1), filler, dtype=np.int64)
        for offset, tokens in allowed.items():
            witness[0, offset - low] = min(tokens)
        assert clause.holds(witness)[0, -low], f"{clause.label} fails on its witness"
        assert clause.satisfiable


def planted_contexts(n: int = 60, length: int = 12, seed: int = 0) -> np.ndarray:
    """(n, length) random tokens in [10, 40), BOS first; 'A _ B' planted in the first third."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(10, 40, size=(n, length))
    tokens[:, 0] = BOS
    for row in range(n // 3):
        tokens[row, 6], tokens[row, 8] = A, B
    return tokens


def test_condition_offsets_shift_within_the_context():
    tokens = np.array([[BOS, A, 20, B, A, B]])
    rule = Rule(3, 0, "cl_rule", (Clause((Condition(0, (B,)), Condition(-2, (A,)))),))
    assert rule.holds(tokens).tolist() == [[False, False, False, True, False, False]]
    # Offsets past the start never hold, and a later condition works too.
    after = Rule(3, 0, "x", (Clause((Condition(2, (B,)),)),))
    assert after.holds(tokens).tolist() == [[False, True, False, True, False, False]]


def test_rule_strength_is_the_weight_of_the_token_and_zero_elsewhere():
    rule = weightlens_rule(
        2, 4, {"validated_token_ids": [B, C], "validated_activations": [0.5, 2.0]}
    )
    tokens = np.array([[BOS, B, C, 20]])
    assert rule.strength(tokens).tolist() == [[0.0, 0.5, 2.0, 0.0]]
    assert rule.holds(tokens).tolist() == [[False, True, True, False]]


def test_json_round_trip_keeps_the_rule():
    rule = union(
        weightlens_rule(1, 2, {"validated_token_ids": [B], "validated_activations": [1.0]}),
        Rule(1, 2, "cl_rule", (Clause((Condition(0, (B,)), Condition(-2, (A, C), "head L0.H1"))),)),
    )
    again = Rule.from_json(rule.to_json())
    assert again == rule
    tokens = planted_contexts()
    assert (again.holds(tokens) == rule.holds(tokens)).all()
    with pytest.raises(InputError):
        Rule.from_json("{}")


def test_maxact_rule_frequency_filter():
    # 10 top contexts: B 6 times, C 3 times, 20 once; min share 0.3 -> at least 3 contexts.
    rule = maxact_rule(0, 1, [B] * 6 + [C] * 3 + [20], RuleConfig(maxact_min_share=0.3))
    assert rule.clauses[0].conditions[0].token_ids == (B, C)
    assert maxact_rule(0, 1, []).missing == "no top contexts"
    strict = maxact_rule(0, 1, [B, C, 20], RuleConfig(maxact_min_share=0.9))
    assert strict.is_missing and "3 of 3" in strict.missing


def clusters_frame(feature: int, example_samples: list[int]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "layer": 3,
                "feature": feature,
                "cluster": 0,
                "is_noise": False,
                "status": "clustered",
                "n_samples": 5,
                "share": 0.5,
                "defining_kinds": ["head", "feature", "head"],
                "defining_layers": [1, 2, 0],
                "defining_indices": [2, 11, 0],
                "defining_deltas": [-2, None, -1],
                "defining_frequency": [0.9, 0.8, 0.2],
                "example_samples": example_samples,
            },
            {
                "layer": 3,
                "feature": feature,
                "cluster": -1,
                "is_noise": True,
                "status": "clustered",
                "n_samples": 5,
                "share": 0.5,
                "defining_kinds": [],
                "defining_layers": [],
                "defining_indices": [],
                "defining_deltas": [],
                "defining_frequency": [],
                "example_samples": [],
            },
        ]
    )


def samples_frame(feature: int, contexts: list[int], positions: list[int], kind: str):
    return pd.DataFrame(
        {
            "feature": feature,
            "kind": kind,
            "rank": np.arange(len(contexts)),
            "context": contexts,
            "target_position": positions,
        }
    )


def test_cl_rule_recovers_the_planted_trigger_pattern():
    tokens = planted_contexts()
    context_ids = np.arange(len(tokens)) + 100
    weightlens = pd.DataFrame(
        [
            {
                "layer": 3,
                "feature": 0,
                "validated_token_ids": [B],
                "validated_activations": [1.0],
                "upstream_layers": [2],
                "upstream_features": [11],
                "upstream_inherited_token_ids": [[B, C]],
            }
        ]
    )
    members = list(range(5))
    samples = samples_frame(0, [100 + i for i in members], [8] * 5, "quantile")
    rules = derive_rules(
        layer=3,
        features=[0],
        tokens=tokens,
        context_ids=context_ids,
        weightlens_df=weightlens,
        clusters_df=clusters_frame(0, members),
        samples_df=samples,
    )
    rule = rules[(0, "cl_rule")]
    (clause,) = rule.clauses
    by_source = {c.source: c for c in clause.conditions}
    # The upstream feature is named by its WeightLens tokens {B, C} at the target (no delta
    # stored); at offset 0 they are intersected with the target token: one condition, B.
    merged = by_source["target & feature L2#11"]
    assert merged.token_ids == (B,) and merged.offset == 0
    assert by_source["head L1.H2"].token_ids == (A,) and by_source["head L1.H2"].offset == -2
    # The rare head (frequency 0.2 < 0.5) is left out.
    assert "head L0.H0" not in by_source and len(clause.conditions) == 2
    text = rule.text(lambda t: {A: "A", B: "B"}.get(t, str(t)))
    assert "the token is 'B' (target & feature L2#11) AND 'A' is 2 tokens before (head L1.H2)" in (
        text
    )
    # The rule is exactly "B here and A at -2": the planted positions and nothing else.
    assert rule.holds(tokens)[: len(tokens) // 3, 8].all()
    assert rule.holds(tokens).sum() == len(tokens) // 3
    assert_every_clause_can_hold(rule)
    wl_cl = rules[(0, "wl_cl_rule")]
    assert len(wl_cl.clauses) == 2
    assert (
        wl_cl.holds(tokens) == (rule.holds(tokens) | rules[(0, "weightlens_rule")].holds(tokens))
    ).all()


def test_missing_inputs_give_missing_rules_with_reasons():
    tokens = planted_contexts()
    context_ids = np.arange(len(tokens))
    weightlens = pd.DataFrame(
        [
            {"layer": 0, "feature": 1, "validated_token_ids": [], "validated_activations": []},
        ]
    )
    noise_only = clusters_frame(1, []).iloc[1:].assign(status="all_noise")
    rules = derive_rules(
        layer=0,
        features=[1, 2],
        tokens=tokens,
        context_ids=context_ids,
        weightlens_df=weightlens,
        clusters_df=noise_only.assign(layer=0),
        samples_df=samples_frame(1, [0], [3], "quantile"),
    )
    assert set(rules) == {(f, v) for f in (1, 2) for v in EXECUTABLE_VARIANTS}
    assert rules[(1, "weightlens_rule")].missing == "no validated WeightLens tokens"
    assert rules[(2, "weightlens_rule")].missing == "no WeightLens result"
    assert rules[(1, "maxact_rule")].missing == "no top contexts"
    assert rules[(1, "cl_rule")].missing == "no clusters (clustering status all_noise)"
    assert rules[(2, "cl_rule")].missing == "no clusters (clustering status not clustered)"
    assert "weightlens_rule: no validated" in rules[(1, "wl_cl_rule")].missing
    for rule in rules.values():
        assert rule.is_missing and rule.text() == ""
        assert not rule.holds(tokens).any()
    with pytest.raises(InputError, match="rule variants"):
        derive_rules(layer=0, features=[1], tokens=tokens, context_ids=context_ids, variants=["x"])


def test_synthetic_contexts_make_the_rule_hold_at_their_last_position():
    tokens = planted_contexts(seed=3)
    rule = Rule(
        0,
        0,
        "cl_rule",
        (
            Clause((Condition(0, (B,)), Condition(-2, (A,))), "cluster 0"),
            Clause((Condition(0, (C,)),), "cluster 1"),
        ),
    )
    made = synthetic_contexts(rule, tokens, 40, seed=1, first_position=1)
    assert len(made) == 40
    for i, context in enumerate(made):
        row = np.asarray([context])
        assert context[0] == BOS
        assert rule.holds(row)[0, -1]
        assert rule.clauses[i % 2].holds(row)[0, -1]
    assert synthetic_contexts(Rule(0, 0, "cl_rule"), tokens, 5) == []
    # Deterministic for a seed.
    assert made == synthetic_contexts(rule, tokens, 40, seed=1, first_position=1)


def test_rule_config_rejects_bad_values():
    with pytest.raises(InputError, match="rules.maxact_min_share"):
        RuleConfig(maxact_min_share=2.0)
    with pytest.raises(InputError, match="config key .rules.nope. is not a setting of .rules."):
        RuleConfig.from_mapping({"nope": 1})


def test_explain_writes_rule_rows_with_text_and_json_and_missing_input_rows():
    from circuit_insights.explain.inputs import build_feature_inputs
    from circuit_insights.explain.run import explain_shard

    tokens = planted_contexts()
    context_ids = np.arange(len(tokens)) + 100
    weightlens = pd.DataFrame(
        [
            {
                "layer": 3,
                "feature": f,
                "validated_token_ids": ids,
                "validated_tokens": [f"<{i}>" for i in ids],
                "validated_activations": [1.0] * len(ids),
                "description": "tokens: B" if ids else "no validated tokens",
            }
            for f, ids in ((0, [B]), (1, []))
        ]
    )
    samples = pd.concat(
        [
            samples_frame(0, [100 + i for i in range(5)], [8] * 5, "quantile"),
            samples_frame(0, [100 + i for i in range(5)], [8] * 5, "top"),
        ]
    )
    inputs = build_feature_inputs(
        layer=3,
        features=[0, 1],
        weightlens_df=weightlens,
        clusters_df=clusters_frame(0, list(range(5))),
        samples_df=samples,
        context_ids=context_ids,
        tokens=tokens,
    )
    variants = ["maxact_rule", "weightlens_rule", "cl_rule", "wl_cl_rule"]
    frame = explain_shard(None, inputs, variants)
    final = frame[frame["is_final"]].set_index(["feature", "variant"])
    assert len(final) == 8
    ok = final.loc[0]
    assert (ok["step"] == "rule").all() and (ok["parse_status"] == "ok").all()
    assert "the token is '<7>'" in ok.loc["maxact_rule", "description"]
    assert "is 2 tokens before (head L1.H2)" in ok.loc["cl_rule", "description"]
    assert " OR " in ok.loc["wl_cl_rule", "description"]
    for variant in variants:
        rule = Rule.from_json(ok.loc[variant, "raw_text"])
        assert rule.variant == variant and not rule.is_missing
        assert_every_clause_can_hold(rule)
    missing = final.loc[1]
    assert missing.loc["cl_rule", "step"] == "missing_input"
    assert missing.loc["cl_rule", "error"] == "no clusters (clustering status not clustered)"
    assert missing.loc["maxact_rule", "error"] == "no top contexts"
    # weightlens_rule keeps WeightLens's own text; its rule records why it cannot be applied.
    assert Rule.from_json(missing.loc["weightlens_rule", "raw_text"]).missing == (
        "no validated WeightLens tokens"
    )


def test_synthetic_contexts_stay_inside_the_silent_prefixes():
    tokens = planted_contexts(seed=5)
    rule = Rule(0, 0, "weightlens_rule", (Clause((Condition(0, (B,)),)),))
    short = synthetic_contexts(rule, tokens, 20, silent_length=np.full(len(tokens), 3))
    assert short and all(len(context) <= 3 for context in short)
    assert synthetic_contexts(rule, tokens, 20, silent_length=np.zeros(len(tokens))) == []


def test_bos_never_names_a_cl_rule_condition():
    tokens = planted_contexts()
    tokens[:5, 8], tokens[:5, 6] = B, A
    context_ids = np.arange(len(tokens))
    clusters = clusters_frame(0, list(range(5))).assign(
        defining_deltas=[[-8, None, -1], []], defining_frequency=[[0.9, 0.8, 0.9], []]
    )
    rules = derive_rules(
        layer=3,
        features=[0],
        tokens=tokens,
        context_ids=context_ids,
        clusters_df=clusters,
        samples_df=samples_frame(0, list(range(5)), [8] * 5, "quantile"),
        exclude_token_ids=[BOS],
    )
    rule = rules[(0, "cl_rule")]
    tokens_named = {t for c in rule.clauses for d in c.conditions for t in d.token_ids}
    assert BOS not in tokens_named and B in tokens_named  # the head at -8 reads BOS: left out
    assert any("head L1.H2 at -8 has no common token" in note for note in rule.notes)
    assert_every_clause_can_hold(rule)


def test_cl_rule_names_no_token_for_a_head_reading_position_0():
    """Clustering counts a head that reads the first position (BOS) as one contributor with the
    sentinel offset FIRST_POSITION; the rule keeps the other conditions and names no token there."""
    from circuit_insights.circuitlens.clustering import FIRST_POSITION

    tokens = planted_contexts()
    members = list(range(5))
    clusters = clusters_frame(0, members)
    clusters.at[0, "defining_deltas"] = [-2, None, FIRST_POSITION]
    clusters.at[0, "defining_frequency"] = [0.9, 0.8, 0.95]
    rules = derive_rules(
        layer=3,
        features=[0],
        tokens=tokens,
        context_ids=np.arange(len(tokens)) + 100,
        weightlens_df=pd.DataFrame(
            [
                {
                    "layer": 3,
                    "feature": 0,
                    "validated_token_ids": [B],
                    "validated_activations": [1.0],
                    "upstream_layers": [2],
                    "upstream_features": [11],
                    "upstream_inherited_token_ids": [[B, C]],
                }
            ]
        ),
        clusters_df=clusters,
        samples_df=samples_frame(0, [100 + i for i in members], [8] * 5, "quantile"),
    )
    for rule in rules.values():
        assert_every_clause_can_hold(rule)
    (clause,) = rules[(0, "cl_rule")].clauses
    offsets = {c.offset for c in clause.conditions}
    assert FIRST_POSITION not in offsets and offsets == {0, -2}
    assert "head L1.H2" in {c.source for c in clause.conditions}


def test_an_upstream_feature_whose_tokens_miss_the_target_token_is_left_out():
    """Issue 23's bad case (layer 8 feature 0): the members' target token is 'raf', an upstream
    feature active at the target (no offset stored: 0) has WeightLens tokens ' Taliban',
    'Qaeda', ... disjoint from it. The conjunction "the token is 'raf' AND the token is one of
    ' Taliban', 'Qaeda'" held nowhere; the clause now keeps the target and the head."""
    raf, taliban, qaeda, hezb = 50, 60, 61, 62
    display = {raf: "raf", taliban: " Taliban", qaeda: "Qaeda", A: "A"}
    tokens = planted_contexts()
    members = list(range(5))
    tokens[members, 8], tokens[members, 7] = raf, A
    clusters = clusters_frame(0, members).assign(layer=8)
    clusters.at[0, "defining_kinds"] = ["feature", "head"]
    clusters.at[0, "defining_layers"] = [2, 1]
    clusters.at[0, "defining_indices"] = [0, 2]
    clusters.at[0, "defining_deltas"] = [None, -1]
    clusters.at[0, "defining_frequency"] = [1.0, 0.9]
    weightlens = pd.DataFrame(
        [
            {
                "layer": 8,
                "feature": 0,
                "validated_token_ids": [taliban, qaeda],
                "validated_activations": [1.0, 1.0],
                "upstream_layers": [2],
                "upstream_features": [0],
                "upstream_inherited_token_ids": [[taliban, qaeda, hezb]],
            }
        ]
    )
    rules = derive_rules(
        layer=8,
        features=[0],
        tokens=tokens,
        context_ids=np.arange(len(tokens)),
        weightlens_df=weightlens,
        clusters_df=clusters,
        samples_df=samples_frame(0, members, [8] * 5, "quantile"),
        exclude_token_ids=[BOS],
    )
    rule = rules[(0, "cl_rule")]
    assert_every_clause_can_hold(rule)
    (clause,) = rule.clauses
    assert [(c.offset, c.token_ids, c.source) for c in clause.conditions] == [
        (0, (raf,), "target"),
        (-1, (A,), "head L1.H2"),
    ]
    assert any("feature L2#0 at 0" in n and "shares no token with target" in n for n in rule.notes)
    text = rule.text(lambda t: display.get(t, str(t)))
    assert (
        text == "Fires where cluster 0: the token is 'raf' AND 'A' is 1 token before (head L1.H2)."
    )
    # It holds where the members fire, so it is not rated "holds nowhere".
    assert rule.holds(tokens)[members, 8].all()
    for variant in ("cl_rule", "wl_cl_rule"):
        assert_every_clause_can_hold(rules[(0, variant)])


def test_conditions_at_one_offset_are_intersected_and_a_contradiction_is_dropped():
    """Without a target condition the first upstream feature at offset 0 sets the tokens there;
    a second one narrows them to the shared tokens, a third sharing none is left out."""
    tokens = np.array([[BOS, 20, A, B, C, 21, 22, 23]] * 4)
    evidence = ClusterEvidence(
        cluster=3,
        kinds=("feature", "feature", "feature", "token"),
        layers=(0, 1, 2, None),
        indices=(1, 2, 3, B),
        deltas=(None, None, None, -1),
        frequency=(1.0, 0.9, 0.8, 0.7),
        member_tokens=tokens,
        member_targets=np.array([4, 5, 6, 7]),  # no token common to half of them
    )
    upstream = {(0, 1): [B, C, 30], (1, 2): [C, 30, 31], (2, 3): [A]}
    rule = cl_rule(5, 0, [evidence], upstream, RuleConfig(cl_max_conditions=4))
    assert_every_clause_can_hold(rule)
    (clause,) = rule.clauses
    assert [(c.offset, c.token_ids, c.source) for c in clause.conditions] == [
        (0, (C, 30), "feature L0#1 & feature L1#2"),
        (-1, (B,), "token"),
    ]
    assert any("feature L2#3 at 0" in note for note in rule.notes)
    dead = Clause((Condition(0, (B,)), Condition(0, (C,)), Condition(-2, (A,))))
    assert not dead.satisfiable and dead.tokens_at() == {0: (), -2: (A,)}


def test_synthetic_contexts_skip_a_clause_that_can_hold_nowhere():
    """A rule derived before the intersection (read back from an old explanations table) may
    carry a dead clause; synthetic contexts are written from its other clauses only."""
    tokens = planted_contexts(seed=2)
    live = Clause((Condition(0, (B, C)), Condition(0, (C,)), Condition(-2, (A,))), "cluster 1")
    dead = Clause((Condition(0, (B,)), Condition(0, (C,))), "cluster 0")
    rule = Rule(0, 0, "cl_rule", (dead, live))
    made = synthetic_contexts(rule, tokens, 10, seed=4)
    assert len(made) == 10 and all(live.holds(np.asarray([c]))[0, -1] for c in made)
    assert synthetic_contexts(Rule(0, 0, "cl_rule", (dead,)), tokens, 5) == []


def random_cluster_evidence(rng: np.random.Generator, cluster: int) -> ClusterEvidence:
    """A cluster over a 6-token vocabulary (so that token sets collide and miss each other often):
    random members, targets near both ends, and 0-7 contributors of every kind and offset."""
    n_members, length = int(rng.integers(1, 7)), 10
    member_tokens = rng.integers(1, 7, size=(n_members, length))
    k = int(rng.integers(0, 8))
    kinds = tuple(str(x) for x in rng.choice(["head", "feature", "token", "other"], size=k))
    return ClusterEvidence(
        cluster=cluster,
        kinds=kinds,
        layers=tuple(None if rng.random() < 0.1 else int(rng.integers(0, 3)) for _ in kinds),
        indices=tuple(int(rng.integers(1, 7)) for _ in kinds),
        deltas=tuple(
            [None, 0, 0, -1, -2, 1, FIRST_POSITION][int(rng.integers(0, 7))] for _ in kinds
        ),
        frequency=tuple(float(f) for f in rng.random(k)),
        member_tokens=member_tokens,
        member_targets=rng.integers(0, length, size=n_members),
        exclude_token_ids=(1,) if rng.random() < 0.5 else (),
    )


def test_no_derived_clause_is_unsatisfiable_on_random_cluster_evidence():
    rng = np.random.default_rng(23)
    base = rng.integers(1, 7, size=(6, 24))
    seen = {"rules": 0, "left out": 0, "narrowed": 0}
    for _ in range(600):
        clusters = [random_cluster_evidence(rng, c) for c in range(int(rng.integers(1, 4)))]
        upstream = {
            (layer, index): [int(t) for t in rng.choice(np.arange(1, 7), int(rng.integers(0, 4)))]
            for layer in range(3)
            for index in range(1, 7)
            if rng.random() < 0.8
        }
        config = RuleConfig(
            cl_min_frequency=float(rng.choice([0.0, 0.3, 0.5])),
            cl_min_token_share=float(rng.choice([0.0, 0.3, 0.5, 1.0])),
            cl_max_conditions=int(rng.integers(1, 7)),
        )
        rule = cl_rule(4, 0, clusters, upstream, config)
        assert_every_clause_can_hold(rule)
        for clause in rule.clauses:
            offsets = [c.offset for c in clause.conditions]
            assert len(offsets) == len(set(offsets)) <= config.cl_max_conditions
            assert FIRST_POSITION not in offsets
        made = synthetic_contexts(rule, base, 4, seed=int(rng.integers(0, 99)))
        for i, context in enumerate(made):
            # The clause written in holds at p, which ends the context unless it reads ahead.
            clause = rule.clauses[i % len(rule.clauses)]
            after = max(max(c.offset for c in clause.conditions), 0)
            assert clause.holds(np.asarray([context]))[0, len(context) - 1 - after]
        seen["rules"] += not rule.is_missing
        seen["left out"] += any("shares no token" in n for n in rule.notes)
        seen["narrowed"] += any(" & " in c.source for k in rule.clauses for c in k.conditions)
    # The property was tested where it matters: contradictions and intersections both occurred.
    assert min(seen.values()) >= 30, seen
