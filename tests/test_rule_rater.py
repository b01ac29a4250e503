"""The rule rater: FADE's metrics with a rule in place of the LLM (planted mechanisms)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from circuit_insights.core.contexts import ContextTokens, HeldOut
from circuit_insights.evaluation import rule_rater
from circuit_insights.evaluation.fade.presets import fade_preset
from circuit_insights.evaluation.metrics import select_rating_samples
from circuit_insights.evaluation.rule_rater import (
    RuleRaterConfig,
    evaluate_rule,
    rule_heldout_auroc,
    rule_ratings,
    score_rules,
)
from circuit_insights.explain.executable.rule import Clause, Condition, Rule
from circuit_insights.explain.variants import maxact_rule, weightlens_rule
from circuit_insights.weightlens.heldout import score_heldout

BOS, A, B, C = 1, 5, 7, 9
FEATURE = 3


def corpus(n: int = 400, length: int = 16, seed: int = 0) -> ContextTokens:
    """Random contexts (tokens 10..59, BOS first) with B in half of them, 'A _ B' in a quarter."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(10, 60, size=(n, length))
    tokens[:, 0] = BOS
    for row in range(n):
        if row % 2 == 0:
            position = int(rng.integers(3, length))
            tokens[row, position] = B
            if row % 4 == 0:
                tokens[row, position - 2] = A
    return ContextTokens(np.arange(n) + 1000, tokens)


def planted_activation(tokens: np.ndarray, mechanism: str, seed: int = 0) -> np.ndarray:
    """(n, L) activations of a planted feature: ``token`` fires on B; ``pattern`` on B only when
    A is two positions earlier. Values 1..2 (seeded), 0 elsewhere."""
    rng = np.random.default_rng(seed)
    fires = tokens == B
    if mechanism == "pattern":
        earlier = np.zeros_like(fires)
        earlier[:, 2:] = tokens[:, :-2] == A
        fires &= earlier
    return np.where(fires, 1.0 + rng.random(tokens.shape), 0.0)


def sparse_table(activation: np.ndarray, context_ids: np.ndarray) -> pd.DataFrame:
    rows, positions = np.nonzero(activation)
    return pd.DataFrame(
        {
            "feature": FEATURE,
            "context": context_ids[rows],
            "position": positions,
            "activation": activation[rows, positions],
        }
    )


def activations_of(mechanism: str):
    """The planted feature's sample activation (max over positions after BOS) of sequences."""

    def run(sequences):
        out = []
        for ids in sequences:
            row = np.asarray([ids])
            values = planted_activation(row, mechanism, seed=len(ids))[0, 1:]
            out.append(values.max() if len(values) else np.nan)
        return np.asarray(out)

    return run


def rules_for_feature():
    wl = weightlens_rule(0, FEATURE, {"validated_token_ids": [B], "validated_activations": [1.0]})
    pattern = Rule(
        0,
        FEATURE,
        "cl_rule",
        (Clause((Condition(0, (B,)), Condition(-2, (A,), "head L0.H1")), "cluster 0"),),
    )
    return wl, pattern


PRESET = fade_preset("paper", n_rated=200, top_selection="distinct")  # exactly n_rated rated


def test_pattern_feature_cl_rule_beats_the_token_rule():
    data = corpus()
    activation = planted_activation(data.tokens, "pattern")
    table = sparse_table(activation, data.context_ids)
    wl, pattern = rules_for_feature()
    rows = {
        rule.variant: evaluate_rule(
            rule,
            table,
            data,
            activations_of("pattern"),
            bos_token_id=BOS,
            preset=PRESET,
            seed=4,
        )
        for rule in (wl, pattern)
    }
    cl, token = rows["cl_rule"], rows["weightlens_rule"]
    assert cl["rater"] == token["rater"] == "rule"
    assert cl["responsiveness"] > 0.95 and cl["purity"] > 0.95
    assert token["responsiveness"] < cl["responsiveness"] - 0.2
    assert token["purity"] < cl["purity"]
    # Synthetic 'A _ B' contexts all fire; synthetic 'B' contexts mostly do not.
    # (a quarter of the natural samples fire as strongly, so Clarity stays below 1).
    assert cl["clarity"] > 0.6 and cl["clarity"] > token["clarity"] + 0.3
    assert cl["n_synthetic_texts"] == 16 and cl["n_rated"] == 200
    assert cl["llm_calls"] == 0 and math.isnan(cl["faithfulness"])
    assert cl["faithfulness_reason"] == "not_rule_rated"


def test_token_feature_weightlens_and_maxact_rules_score_close_to_one():
    data = corpus(seed=1)
    activation = planted_activation(data.tokens, "token")
    table = sparse_table(activation, data.context_ids)
    wl, _ = rules_for_feature()
    # MaxAct: the token at the max position of the top 20 contexts.
    best = activation.argmax(axis=1)
    top = np.argsort(-activation.max(axis=1), kind="stable")[:20]
    maxact = maxact_rule(0, FEATURE, data.tokens[top, best[top]].tolist())
    assert maxact.clauses[0].conditions[0].token_ids == (B,)
    frame = score_rules(
        [wl, maxact],
        table,
        data,
        lambda feature, sequences: activations_of("token")(sequences),
        bos_token_id=BOS,
        preset=PRESET,
        seed=0,
        config=RuleRaterConfig(n_synthetic=64),
    )
    assert list(frame["variant"]) == ["weightlens_rule", "maxact_rule"]
    assert (frame["rater"] == "rule").all()
    assert (frame["responsiveness"] > 0.95).all() and (frame["purity"] > 0.95).all()
    # Half the natural samples fire: synthetic B contexts sit above the other half.
    assert (frame["clarity"] > 0.4).all()
    # Both variants rated the same samples (the same per-feature seed).
    assert frame["n_rated_2"].nunique() == 1


def test_ratings_hold_anywhere_but_not_on_bos():
    tokens = np.array([[BOS, 20, B], [BOS, 20, 21], [B, 20, 21]])
    wl, _ = rules_for_feature()
    assert rule_ratings(wl, tokens, BOS).tolist() == [2.0, 0.0, 2.0]
    assert rule_ratings(wl, tokens, B).tolist() == [0.0, 0.0, 0.0]


def test_rule_rater_uses_the_llm_rater_sample_choice():
    data = corpus(seed=2)
    activation = planted_activation(data.tokens, "token")
    table = sparse_table(activation, data.context_ids)
    wl, _ = rules_for_feature()
    details: dict = {}
    evaluate_rule(
        wl,
        table,
        data,
        activations_of("token"),
        bos_token_id=BOS,
        preset=PRESET,
        seed=7,
        details=details,
    )
    natural = details["natural_activations"]
    chosen = select_rating_samples(
        natural,
        PRESET.n_rated,
        top_fraction=PRESET.top_fraction,
        percentiles=PRESET.percentiles,
        seed=7,
        top_selection=PRESET.top_selection,
    ).index
    # >= 15 samples rated 2, so FADE's sparse round does not run: one round, FADE's draw.
    assert (details["ratings"] == 2).sum() >= PRESET.sparse_threshold
    assert details["rated_contexts"].tolist() == data.context_ids[chosen].tolist()


@pytest.mark.parametrize("positive_fraction", [0.0, 0.5])
def test_heldout_auroc_matches_weightlens_score(positive_fraction):
    """Two code paths: weightlens.score_heldout and the rule's position-level AUROC."""
    rng = np.random.default_rng(5)
    data = corpus(n=120, seed=5)
    tokens = data.tokens.copy()
    tokens[rng.random(tokens.shape) < 0.1] = C
    tokens[:, 0] = BOS
    data = ContextTokens(data.context_ids, tokens)
    # Fires on B (strongly) and C (weakly), and sometimes elsewhere; an excluded position.
    activation = np.where(tokens == B, 2.0, 0.0) + np.where(tokens == C, 0.7, 0.0)
    activation += np.where(rng.random(tokens.shape) < 0.05, 0.4, 0.0)
    activation[:, 0] = 0.0
    table = sparse_table(activation, data.context_ids)
    table["excluded"] = False
    table.loc[table.index[:3], "excluded"] = True
    validated = pd.DataFrame({"feature": FEATURE, "token_id": [B, C], "activation": [0.3, 1.5]})
    expected = score_heldout(
        np.array([FEATURE]),
        validated,
        HeldOut(table, data),
        vocab_size=64,
        bos_token_id=BOS,
        positive_fraction=positive_fraction,
    )["auroc"].iloc[0]
    rule = weightlens_rule(
        0, FEATURE, {"validated_token_ids": [B, C], "validated_activations": [0.3, 1.5]}
    )
    value, reason = rule_heldout_auroc(
        rule, table, data, bos_token_id=BOS, positive_fraction=positive_fraction
    )
    assert reason is None and 0.5 < value < 1.0
    assert value == pytest.approx(expected, abs=1e-12)


def test_missing_and_degenerate_rules_get_nan_with_reasons():
    data = corpus(seed=3)
    table = sparse_table(planted_activation(data.tokens, "token"), data.context_ids)
    run = activations_of("token")
    missing = Rule(0, FEATURE, "cl_rule", (), "no clusters (clustering status all_noise)")
    row = evaluate_rule(missing, table, data, run, bos_token_id=BOS, preset=PRESET)
    for metric in ("clarity", "responsiveness", "purity", "faithfulness"):
        assert math.isnan(row[metric]) and row[f"{metric}_reason"] == "missing_input"
    nowhere = Rule(0, FEATURE, "maxact_rule", (Clause((Condition(0, (2,)),)),))
    row = evaluate_rule(nowhere, table, data, run, bos_token_id=BOS, preset=PRESET)
    assert (
        math.isnan(row["responsiveness"]) and row["responsiveness_reason"] == "rule_holds_nowhere"
    )
    assert row["purity_reason"] == "rule_holds_nowhere"
    assert math.isfinite(row["clarity"])  # its synthetic contexts are still scored
    everywhere = Rule(0, FEATURE, "maxact_rule", (Clause((Condition(-1, (BOS,)),)),))
    row = evaluate_rule(everywhere, table, data, run, bos_token_id=BOS, preset=PRESET)
    assert row["responsiveness_reason"] == "rule_holds_everywhere"
    for reason in ("missing_input", "rule_holds_nowhere", "rule_holds_everywhere"):
        assert reason in rule_rater.RULE_REASONS


def test_comparison_table_splits_by_classification_and_needs_three_features(tmp_path):
    from circuit_insights.report.rule_comparison import rule_comparison_table
    from circuit_insights.report.summary import write_summary
    from circuit_insights.report.tables import rule_comparison_markdown

    rng = np.random.default_rng(0)
    rows = []
    for feature in range(8):
        for variant in ("maxact_rule", "weightlens_rule", "cl_rule", "wl_cl_rule"):
            value = float(rng.random())
            rows.append(
                {
                    "layer": 2,
                    "feature": feature,
                    "variant": variant,
                    "rater": "rule",
                    "clarity": value,
                    "clarity_reason": None,
                    "responsiveness": np.nan if feature == 0 else value,
                    "responsiveness_reason": "rule_holds_nowhere" if feature == 0 else None,
                    "purity": value,
                    "purity_reason": None,
                }
            )
    # An LLM-rated row is never counted.
    rows.append({**rows[0], "rater": "llm", "clarity": 5.0})
    evaluation = pd.DataFrame(rows)
    # Features 0-5 token-based, 6-7 context-dependent.
    weightlens = pd.DataFrame(
        {"layer": 2, "feature": range(8), "is_token_based": [True] * 6 + [False] * 2}
    )
    table = rule_comparison_table(evaluation, weightlens, model="m", n_boot=200)
    cell = table.set_index(["classification", "metric", "layer", "variant"])
    token = cell.loc[("token_based", "clarity", 2, "cl_rule")]
    values = evaluation[(evaluation["variant"] == "cl_rule") & (evaluation["rater"] == "rule")]
    assert token["n"] == 6
    assert token["mean"] == pytest.approx(values["clarity"].iloc[:6].mean())
    assert token["ci_low"] <= token["mean"] <= token["ci_high"]
    context = cell.loc[("context_dependent", "clarity", 2, "cl_rule")]
    assert context["n"] == 2 and math.isnan(context["ci_low"])  # fewer than 3: no CI
    missing = cell.loc[("token_based", "responsiveness", 2, "maxact_rule")]
    assert missing["n"] == 5 and missing["n_missing"] == 1
    assert missing["missing_reasons"] == "rule_holds_nowhere: 1"
    assert cell.loc[("all", "clarity", 2, "maxact_rule")]["n"] == 8
    text = rule_comparison_markdown(table)
    assert "token-based features" in text and "(n=2, no CI)" in text
    written = write_summary(
        evaluation[evaluation["rater"] == "llm"].assign(
            faithfulness=np.nan, faithfulness_reason="gated"
        ),
        weightlens.assign(auroc=0.5, precision=0.5, score_reason="", validated_token_ids=[[1]] * 8),
        tmp_path,
        model="m",
        n_boot=50,
        rule_evaluation_frames=[evaluation[evaluation["rater"] == "rule"]],
    )
    assert written["plot_rule_comparison"].stat().st_size > 0
    assert "cl_rule" in written["rule_comparison_md"].read_text()
    assert len(pd.read_parquet(written["rule_comparison"])) == len(table)


def test_identical_rules_of_a_feature_run_the_model_once():
    data = corpus(seed=4)
    table = sparse_table(planted_activation(data.tokens, "token"), data.context_ids)
    wl, _ = rules_for_feature()
    same = Rule(wl.layer, wl.feature, "wl_cl_rule", wl.clauses)
    calls = []

    def counted(feature, sequences):
        calls.append(feature)
        return activations_of("token")(sequences)

    frame = score_rules([wl, same], table, data, counted, bos_token_id=BOS, preset=PRESET)
    assert calls == [FEATURE]
    assert frame["clarity"].iloc[0] == frame["clarity"].iloc[1]
