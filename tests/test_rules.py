"""Executable explanations (circuit_insights.explain.executable): derivation, application,
synthetic contexts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from circuit_insights.core.errors import InputError
from circuit_insights.explain.executable.config import RuleConfig
from circuit_insights.explain.executable.rule import Clause, Condition, Rule
from circuit_insights.explain.executable.synthetic import synthetic_contexts
from circuit_insights.explain.inputs import derive_rules
from circuit_insights.explain.variants import (
    EXECUTABLE_VARIANTS,
    maxact_rule,
    union,
    weightlens_rule,
)

BOS, A, B, C = 1, 5, 7, 9


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
    assert by_source["target"].token_ids == (B,) and by_source["target"].offset == 0
    assert by_source["head L1.H2"].token_ids == (A,) and by_source["head L1.H2"].offset == -2
    # The upstream feature is named by its WeightLens tokens, at the target (no delta stored).
    assert by_source["feature L2#11"].token_ids == (B, C)
    # The rare head (frequency 0.2 < 0.5) is left out.
    assert "head L0.H0" not in by_source
    text = rule.text(lambda t: {A: "A", B: "B"}.get(t, str(t)))
    assert "the token is 'B' AND 'A' is 2 tokens before (head L1.H2)" in text
    # Without the upstream condition the rule is exactly "B here and A at -2".
    pattern = Rule(3, 0, "cl_rule", (Clause(tuple(c for c in clause.conditions if c.offset)),))
    assert pattern.holds(tokens)[: len(tokens) // 3, 8].all()
    assert not rule.holds(tokens)[len(tokens) // 3 :].any()
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
    (clause,) = rules[(0, "cl_rule")].clauses
    offsets = {c.offset for c in clause.conditions}
    assert FIRST_POSITION not in offsets and offsets == {0, -2}
    assert "head L1.H2" in {c.source for c in clause.conditions}
