"""delphi's detection and fuzzing scores and OpenAI's simulation score (docs/delphi_scores.md):
the formulas against hand-computed values, the answer parsing, the drawing of examples, a planted
feature rated exactly by rules, and the LLM path with a fake backend."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from circuit_insights.core.contexts import ContextTokens
from circuit_insights.core.errors import InputError
from circuit_insights.evaluation.delphi import (
    DELPHI_SCORES_SCHEMA,
    DelphiScoresConfig,
    score_shard,
    write_delphi_scores,
)
from circuit_insights.evaluation.delphi.classifier import marked_text, parse_predictions
from circuit_insights.evaluation.delphi.config import SCORES
from circuit_insights.evaluation.delphi.examples import activation_matrix, draw_examples
from circuit_insights.evaluation.delphi.metrics import (
    Confusion,
    classification_metrics,
    confusion,
    correlation,
    n_incorrect,
    normalized_activations,
)
from circuit_insights.evaluation.delphi.run import feature_plans
from circuit_insights.evaluation.delphi.scorers import SCORERS
from circuit_insights.evaluation.delphi.simulation import expected_values, parse_simulation
from circuit_insights.explain.executable.rule import Clause, Condition, Rule
from circuit_insights.llm.client import (
    ChatRequest,
    ChatResult,
    compact_prompt_logprobs,
    result_from_text,
)

BOS, A, B = 1, 7, 9
FEATURE = 4
WINDOW = 8


def token_text(token: int) -> str:
    return f" t{int(token)}"


# --- the formulas ------------------------------------------------------------------------------


def test_classification_metrics_hand_computed_with_failed_answers_dropped() -> None:
    truth = np.array([1, 1, 1, 0, 0, 0, 1, 0], dtype=bool)
    predicted = np.array([1, 0, np.nan, 0, 1, 1, 1, np.nan])
    counts = confusion(truth, predicted)
    # valid: (T,1) tp, (T,0) fn, (F,0) tn, (F,1) fp, (F,1) fp, (T,1) tp; two without an answer
    assert counts == Confusion(
        true_positives=2, true_negatives=1, false_positives=2, false_negatives=1, failed=2
    )
    figures = classification_metrics(counts)
    assert figures["accuracy"] == pytest.approx(3 / 6)
    assert figures["precision"] == pytest.approx(2 / 4)
    assert figures["recall"] == pytest.approx(2 / 3)
    assert figures["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))  # 4/7
    assert figures["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 3) / 2)


def test_classification_metrics_follow_delphis_zero_conventions() -> None:
    # No positive prediction: precision 0 and F1 0 (not NaN).
    silent = classification_metrics(confusion(np.array([1, 0, 0], bool), np.zeros(3)))
    assert silent["precision"] == 0.0 and silent["f1"] == 0.0 and silent["recall"] == 0.0
    assert silent["accuracy"] == pytest.approx(2 / 3)
    assert silent["balanced_accuracy"] == pytest.approx(0.5)
    # No negative example: the true-negative rate counts 0, so balanced accuracy = recall / 2.
    only_positive = classification_metrics(confusion(np.ones(4, bool), np.array([1, 1, 1, 0])))
    assert only_positive["balanced_accuracy"] == pytest.approx(0.75 / 2)
    # No answer at all: NaN (delphi would give 0; docs/delphi_scores.md).
    nothing = classification_metrics(confusion(np.ones(2, bool), np.full(2, np.nan)))
    assert all(math.isnan(v) for v in nothing.values())


def test_correlation_normalisation_and_marks_count() -> None:
    assert correlation(np.array([0, 1, 2, 3.0]), np.array([0, 2, 4, 6.0]))[0] == pytest.approx(1.0)
    # (0,0,10,0) and (0,1,1,0): sum dx dy = 5, |dx| = sqrt(75), |dy| = 1, so r = 1/sqrt(3)
    r, reason = correlation(np.array([0, 0, 10, 0.0]), np.array([0, 1, 1, 0.0]))
    assert reason is None and r == pytest.approx(1 / math.sqrt(3))
    value, reason = correlation(np.zeros(4), np.arange(4.0))
    assert math.isnan(value) and reason == "constant_true"
    assert correlation(np.arange(4.0), np.ones(4))[1] == "constant_prediction"
    assert correlation(np.ones(1), np.ones(1))[1] == "too_few_tokens"
    # ceil(10 a / max) in [0, 10]
    assert normalized_activations(np.array([0, 0.05, 1, 2, 3]), 2.0).tolist() == [0, 1, 5, 10, 10]
    # ceil of the mean number of non-zero activations: (2 + 1) / 2 -> 2
    assert n_incorrect([np.array([0, 1.0, 2.0]), np.array([1.0, 0, 0])]) == 2
    assert n_incorrect([]) == 0


# --- answer parsing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("[1,0,1]", [1, 0, 1]),
        ("Here you go: [1, 0, 1] as asked", [1, 0, 1]),
        ("[1, null, 0]", [1, math.nan, 0]),
        ('[2, 0, "0"]', [1, 0, 1]),  # delphi's bool(entry): a non-empty string is True
        ("[1, 0]", [math.nan] * 3),  # wrong length
        ("[True, False, True]", [math.nan] * 3),  # not JSON
        ("[1,\n0,1]", [math.nan] * 3),  # delphi's pattern stays on one line
        ("no list here", [math.nan] * 3),
        ("", [math.nan] * 3),
    ],
)
def test_parse_predictions_as_delphi(answer: str, expected: list[float]) -> None:
    np.testing.assert_array_equal(parse_predictions(answer, 3), np.array(expected, dtype=float))


def test_parse_simulation_as_delphi() -> None:
    good = {"activations": [{"token": "a", "activation": 3}, {"token": "b", "activation": 0}]}
    values, ok = parse_simulation(json.dumps(good), 2)
    assert ok and values.tolist() == [3.0, 0.0]
    odd = {
        "activations": [
            {"token": "a", "activation": 11},  # out of range
            {"token": "b", "activation": "high"},  # not a number
            {"activation": 4},  # no token
            {"token": "d", "activation": "5"},  # a number as text
        ]
    }
    values, ok = parse_simulation(json.dumps(odd), 4)
    assert ok and values.tolist() == [0.0, 0.0, 0.0, 5.0]
    for broken in (
        "```json\n" + json.dumps(good) + "\n```",  # delphi reads the whole answer as JSON
        json.dumps(good["activations"]),  # no object
        json.dumps(good),  # as a 3-token answer: wrong length
        "",
    ):
        values, ok = parse_simulation(broken, 3)
        assert not ok and values.tolist() == [0.0, 0.0, 0.0]


def test_marked_text_groups_runs() -> None:
    marked = np.array([False, True, True, False, True])
    assert marked_text([1, 2, 3, 4, 5], marked, token_text) == " t1<< t2 t3>> t4<< t5>>"
    assert marked_text([1, 2], None, token_text) == " t1 t2"


# --- a planted feature -------------------------------------------------------------------------


def planted(n: int = 120, length: int = 33, seed: int = 0) -> tuple[ContextTokens, pd.DataFrame]:
    """Contexts of BOS + 32 tokens (background 20..59); each window of 8 holds A (the feature
    fires there, 2.0) with probability 0.4 and, independently, B with probability 0.5."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(20, 60, size=(n, length))
    tokens[:, 0] = BOS
    for row in range(n):
        for start in range(0, 32, WINDOW):
            free = [p for p in range(max(start, 1), start + WINDOW)]
            spots = rng.permutation(free)
            if rng.random() < 0.4:
                tokens[row, spots[0]] = A
            if rng.random() < 0.5:
                tokens[row, spots[1]] = B
    rows, positions = np.nonzero(tokens == A)
    activations = pd.DataFrame(
        {
            "feature": FEATURE,
            "context": rows + 1000,  # context ids are not row numbers
            "position": positions,
            "activation": np.float32(2.0),
            "excluded": False,
        }
    )
    bos_rows = pd.DataFrame(  # the cache stores BOS activations flagged excluded
        {
            "feature": FEATURE,
            "context": np.arange(n) + 1000,
            "position": 0,
            "activation": 5.0,
            "excluded": True,
        }
    )
    return ContextTokens(np.arange(n) + 1000, tokens), pd.concat([activations, bos_rows])


def token_rule(token: int) -> Rule:
    return Rule(3, FEATURE, "planted", (Clause((Condition(0, (token,)),)),))


CONFIG = DelphiScoresConfig(
    example_length=WINDOW, n_quantiles=5, n_per_quantile=10, n_non_activating=50
)
JSON_CONFIG = dataclasses.replace(CONFIG, simulation_mode="all_at_once")


def test_planted_feature_exact_scores_right_and_wrong_rule() -> None:
    corpus, activations = planted()
    right, wrong = token_rule(A), Rule(3, FEATURE, "wrong", (Clause((Condition(0, (B,)),)),))
    frame = score_shard(
        layer=3,
        heldout_activations=activations,
        heldout_tokens=corpus,
        config=CONFIG,
        seed=0,
        bos_token_id=BOS,
        rules=[right, wrong],
    )
    assert set(frame["rater"]) == {"rule"}
    assert set(frame.loc[frame["score"] == "simulation", "simulation_mode"]) == {"rule"}
    overall = frame[frame["group"] == "all"].set_index(["variant", "score"])
    for score in ("detection", "fuzzing"):
        row = overall.loc[("planted", score)]
        assert row["n_positive"] == 50 and row["n_negative"] == 50 and row["n_failed"] == 0
        for name in ("accuracy", "precision", "recall", "f1", "balanced_accuracy"):
            assert row[name] == 1.0, (score, name)
        assert abs(overall.loc[("wrong", score), "accuracy"] - 0.5) <= 0.1, score
        assert abs(overall.loc[("wrong", score), "balanced_accuracy"] - 0.5) <= 0.1, score
    assert overall.loc[("planted", "simulation"), "correlation"] == pytest.approx(1.0)
    assert abs(overall.loc[("wrong", "simulation"), "correlation"]) <= 0.15
    # every quantile row of the right rule is perfect too
    quantiles = frame[(frame["variant"] == "planted") & frame["group"].str.startswith("q")]
    assert len(quantiles) == 3 * 5
    np.testing.assert_allclose(quantiles[["accuracy", "correlation"]].max(axis=1), 1.0)


def test_rule_answers_mean_what_the_rater_is_asked() -> None:
    corpus, activations = planted()
    everything = Rule(3, FEATURE, "everywhere", (Clause((Condition(0, tuple(range(100))),)),))
    config = DelphiScoresConfig(
        example_length=WINDOW,
        n_quantiles=5,
        n_per_quantile=10,
        n_non_activating=50,
        fuzz_type="active",
    )
    frame = score_shard(
        layer=3,
        heldout_activations=activations,
        heldout_tokens=corpus,
        config=config,
        seed=0,
        bos_token_id=BOS,
        rules=[everything, token_rule(A)],
    )
    overall = frame[frame["group"] == "all"].set_index(["variant", "score"])
    # A rule that holds at every token says yes to every example: recall 1, precision = the
    # share of positives, balanced accuracy 0.5 (detection, and fuzzing whatever is marked).
    for score in ("detection", "fuzzing"):
        row = overall.loc[("everywhere", score)]
        assert row["recall"] == 1.0 and row["balanced_accuracy"] == 0.5
        assert row["precision"] == pytest.approx(row["n_positive"] / row["n_examples"])
    # fuzz_type "active": the negatives are activating windows with other tokens marked; the
    # right rule holds at none of them.
    fuzzing = overall.loc[("planted", "fuzzing")]
    assert fuzzing["n_negative"] == fuzzing["n_positive"] == 50
    assert fuzzing["accuracy"] == 1.0
    negatives = frame[(frame["variant"] == "planted") & (frame["group"] == "non_activating")]
    assert negatives.set_index("score").loc["fuzzing", "accuracy"] == 1.0


# --- drawing the examples ----------------------------------------------------------------------


def graded(n: int = 60, length: int = 17, seed: int = 1) -> tuple[ContextTokens, pd.DataFrame]:
    """Contexts of BOS + 16 tokens, windows of 8: a feature with graded activations in some
    windows, silent in the others; an excluded (non-BOS) position with a large value."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(20, 60, size=(n, length))
    tokens[:, 0] = BOS
    records = []
    for row in range(n):
        for start in (0, 8):
            if rng.random() < 0.5:
                position = int(rng.integers(max(start, 1), start + 8))
                records.append((row, position, float(rng.uniform(0.1, 5.0)), False))
    records.append((0, 3, 99.0, True))  # flagged excluded: counts nowhere
    table = pd.DataFrame(records, columns=["context", "position", "activation", "excluded"])
    table["feature"] = FEATURE
    return ContextTokens.from_matrix(tokens), table


def test_examples_per_quantile_non_activating_silent_and_seeded() -> None:
    corpus, activations = graded()
    config = DelphiScoresConfig(
        example_length=8, n_quantiles=4, n_per_quantile=3, n_non_activating=10
    )
    dense = activation_matrix(activations, FEATURE, corpus)
    assert dense[0, 3] == 0.0  # the excluded row counts nowhere

    def draw(seed: int):
        return draw_examples(
            feature=FEATURE, dense=dense, corpus=corpus, bos_token_id=BOS, config=config, seed=seed
        )

    examples = draw(0)
    quantiles = [e.quantile for e in examples.activating]
    assert quantiles == sorted(quantiles)
    assert [quantiles.count(q) for q in range(4)] == [3, 3, 3, 3]
    # quantile 0 is the strongest slice: every example there beats every example of quantile 3
    strongest = min(e.max_activation for e in examples.activating if e.quantile == 0)
    weakest = max(e.max_activation for e in examples.activating if e.quantile == 3)
    assert strongest > weakest
    assert len(examples.non_activating) == 10
    for example in examples.all:
        assert BOS not in example.token_ids.tolist()  # BOS never shown
        assert 1 <= len(example.positions) <= 8
        assert np.all(np.diff(example.positions) == 1)  # one contiguous window
        np.testing.assert_array_equal(example.activations, dense[example.row, example.positions])
        np.testing.assert_array_equal(
            example.token_ids, corpus.tokens[example.row, example.positions]
        )
    for example in examples.non_activating:  # truly silent over its whole window
        window = slice(example.positions[0], example.positions[-1] + 1)
        assert example.quantile == -1 and not dense[example.row, window].any()
    for example in examples.activating:
        assert example.max_activation > 0
    keys = [(e.context, int(e.positions[0])) for e in examples.all]
    assert len(set(keys)) == len(keys)  # drawn without replacement
    again = draw(0)
    assert keys == [(e.context, int(e.positions[0])) for e in again.all]
    other = draw(1)
    assert keys != [(e.context, int(e.positions[0])) for e in other.all]


def test_small_pools_follow_delphis_slices() -> None:
    corpus, activations = graded(n=9)
    config = DelphiScoresConfig(
        example_length=8, n_quantiles=4, n_per_quantile=5, n_non_activating=100
    )
    dense = activation_matrix(activations, FEATURE, corpus)
    examples = draw_examples(
        feature=FEATURE, dense=dense, corpus=corpus, bos_token_id=BOS, config=config, seed=0
    )
    n_active = examples.n_activating_windows
    # slices of n // 4 windows, the weakest remainder left out, all of a slice smaller than 5
    assert len(examples.activating) == (n_active // 4) * 4
    assert len(examples.non_activating) == examples.n_non_activating_windows  # all, once each
    with_replacement = draw_examples(
        feature=FEATURE,
        dense=dense,
        corpus=corpus,
        bos_token_id=BOS,
        config=DelphiScoresConfig(
            example_length=8,
            n_quantiles=4,
            n_non_activating=100,
            non_activating_with_replacement=True,
        ),
        seed=0,
    )
    assert with_replacement.non_activating == ()  # delphi: none when fewer than asked


# --- the LLM path ------------------------------------------------------------------------------


class FakeBackend:
    """Answers from a function of the request; records every request."""

    model_name = "fake-llm"

    def __init__(self, answer: Callable[[ChatRequest], str]) -> None:
        self.answer = answer
        self.requests: list[ChatRequest] = []

    def chat_many(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        self.requests.extend(requests)
        return [
            result_from_text(r, self.answer(r), tokens_in=10, tokens_out=5, latency_s=0.0)
            for r in requests
        ]


def oracle(request: ChatRequest) -> str:
    """An LLM that knows the planted feature: A is the latent."""
    prompt = request.messages[-1][1]
    if prompt.startswith("{"):  # simulation: 10 on A, 0 elsewhere
        document = json.loads(prompt)
        values = [10 if e["token"] == token_text(A) else 0 for e in document["activations"]]
        tokens = [e["token"] for e in document["activations"]]
        return json.dumps(
            {
                "activations": [
                    {"token": t, "activation": v} for t, v in zip(tokens, values, strict=True)
                ]
            }
        )
    lines = re.findall(r"^Example \d+: (.*)$", prompt, flags=re.MULTILINE)
    if "<<" in prompt:  # fuzzing: correct when every marked run is A
        answers = [
            int(all(run == token_text(A) for run in re.findall(r"<<(.*?)>>", line)))
            for line in lines
        ]
    else:
        answers = [int(token_text(A) in line) for line in lines]
    return json.dumps(answers)


def descriptions(*texts: str | None) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "feature": FEATURE,
            "variant": [f"v{i}" for i in range(len(texts))],
            "description": list(texts),
        }
    )


def test_llm_rated_scores_on_the_same_examples_as_the_rule() -> None:
    corpus, activations = planted()
    backend = FakeBackend(oracle)
    frame = score_shard(
        layer=3,
        heldout_activations=activations,
        heldout_tokens=corpus,
        config=JSON_CONFIG,
        seed=0,
        bos_token_id=BOS,
        descriptions=descriptions("the token A", None),
        backend=backend,
        rules=[token_rule(A)],
        display=token_text,
    )
    # 100 detection and 100 fuzzing samples in prompts of 5, 100 simulated sequences
    assert len(backend.requests) == 20 + 20 + 100
    first = backend.requests[0].messages
    assert first[0][0] == "system" and [m[0] for m in first[1:7]] == ["user", "assistant"] * 3
    assert "Latent explanation: the token A" in first[-1][1] and "Example 4: " in first[-1][1]
    fuzzing = backend.requests[20].messages  # after the 20 detection prompts
    assert fuzzing[0] != first[0] and "<<" in fuzzing[-1][1] and "<<" not in first[-1][1]
    llm = frame[(frame["rater"] == "llm") & (frame["variant"] == "v0")]
    rule = frame[frame["rater"] == "rule"]
    key = ["score", "group"]
    merged = llm.merge(rule, on=key, suffixes=("_llm", "_rule"))
    assert len(merged) == len(llm) == len(rule) == 2 * 7 + 6
    for count in ("n_examples", "n_positive", "n_negative", "n_tokens"):
        assert (merged[f"{count}_llm"] == merged[f"{count}_rule"]).all(), count
    for name in ("accuracy", "recall", "balanced_accuracy", "correlation"):
        np.testing.assert_allclose(merged[f"{name}_llm"], merged[f"{name}_rule"], equal_nan=True)
    overall = llm[llm["group"] == "all"].set_index("score")
    assert overall.loc["detection", "accuracy"] == 1.0
    assert overall.loc["simulation", "correlation"] == pytest.approx(1.0)
    assert overall.loc["simulation", "simulation_mode"] == "all_at_once"
    assert (
        overall.loc["detection", "llm_calls"] == 20
        and overall.loc["simulation", "llm_calls"] == 100
    )
    assert (overall["llm_model"] == "fake-llm").all() and (
        overall["prompt_version"] == "delphi_v1"
    ).all()
    # a missing description: NaN rows with a reason for every score and group, no request sent
    missing = frame[frame["variant"] == "v1"]
    assert len(missing) == 2 * 7 + 6 and set(missing["reason"]) == {"no_description"}
    assert missing[["accuracy", "correlation"]].isna().all().all()


def test_malformed_and_missing_answers_count_as_delphi_counts_them() -> None:
    corpus, activations = planted()
    counters = {"detection": 0, "simulation": 0}

    def flaky(request: ChatRequest) -> str:
        good, prompt = oracle(request), request.messages[-1][1]
        if prompt.startswith("{"):
            counters["simulation"] += 1
            fenced = counters["simulation"] % 2 == 1  # delphi reads the bare answer: a failure
            return "```json\n" + good + "\n```" if fenced else good
        if "<<" in prompt:
            return "I cannot tell."  # fuzzing: no list at all
        counters["detection"] += 1
        if counters["detection"] % 3 == 0:  # prompts 2, 5, ..., 17: the list is cut
            return good[:-1]
        if counters["detection"] == 2:  # prompt 1: every answer wrong
            return json.dumps([1 - v for v in json.loads(good)])
        return good

    frame = score_shard(
        layer=3,
        heldout_activations=activations,
        heldout_tokens=corpus,
        config=JSON_CONFIG,
        seed=0,
        bos_token_id=BOS,
        descriptions=descriptions("the token A"),
        backend=FakeBackend(flaky),
        display=token_text,
    )
    overall = frame[frame["group"] == "all"].set_index("score")
    truth = (
        feature_plans(
            feature=FEATURE,
            heldout_activations=activations,
            corpus=corpus,
            bos_token_id=BOS,
            config=CONFIG,
            seed=0,
        )
        .plans["detection"]
        .truth
    )  # (100,) in the order shown
    failed = np.zeros(100, bool)
    for prompt in range(2, 20, 3):
        failed[prompt * 5 : prompt * 5 + 5] = True
    wrong = np.zeros(100, bool)
    wrong[5:10] = True
    tp = int(np.sum(truth & ~failed & ~wrong))
    fn = int(np.sum(truth & wrong))
    tn = int(np.sum(~truth & ~failed & ~wrong))
    fp = int(np.sum(~truth & wrong))
    row = overall.loc["detection"]
    assert row["n_failed"] == 30 and row["n_examples"] == 100  # dropped, not counted wrong
    assert row["accuracy"] == pytest.approx((tp + tn) / 70)
    assert row["precision"] == pytest.approx(tp / (tp + fp))
    assert row["recall"] == pytest.approx(tp / (tp + fn))
    assert row["balanced_accuracy"] == pytest.approx((tp / (tp + fn) + tn / (tn + fp)) / 2)
    # fuzzing: no answer had a list, so nothing is left to score
    assert overall.loc["fuzzing", "n_failed"] == 100
    assert overall.loc["fuzzing", "reason"] == "no_valid_answers"
    assert math.isnan(overall.loc["fuzzing", "accuracy"])
    # simulation: every other sequence fenced, read as zeros and counted failed
    assert overall.loc["simulation", "n_failed"] == 50
    assert 0 < overall.loc["simulation", "correlation"] < 1.0


# --- simulation by expected value (prompt log-probabilities) ---------------------------------


def prompt_pieces(request: ChatRequest) -> list[str]:
    """The prompt as a tokenizer that splits ``token<tab>value`` lines would see it."""
    pieces = ["<|im_start|>"]
    for role, content in request.messages:
        pieces += [role, "\n"]
        for line in content.split("\n"):
            if "\t" in line:
                token, value = line.split("\t")
                pieces += [token, "\t", value, "\n"]
            else:
                pieces += [line, "\n"]
        pieces += ["<|im_end|>", "\n"]
    return [*pieces, "<|im_start|>", "assistant", "\n"]


def vllm_prompt_logprobs(
    request: ChatRequest, predict: Callable[[str], dict[str, float]]
) -> list[dict[str, dict[str, object]] | None]:
    """vLLM's ``prompt_logprobs`` for the prompt: per position the prompt token first (id,
    logprob, rank, decoded_token), then the top ones; at a position after a tab, ``predict``
    of the token before the tab gives the top (text -> probability)."""
    pieces = prompt_pieces(request)
    out: list[dict[str, dict[str, object]] | None] = [None]
    for position in range(1, len(pieces)):
        actual = pieces[position]
        entries = {"900": {"logprob": -6.0, "rank": 40, "decoded_token": actual}}
        top = predict(pieces[position - 2]) if pieces[position - 1] == "\t" else {actual: 0.9}
        for rank, (text, p) in enumerate(top.items(), 1):
            entries[str(rank)] = {"logprob": math.log(p), "rank": rank, "decoded_token": text}
        out.append(entries)
    return out


class FakeVLLM(FakeBackend):
    """Answers simulation prompts as vLLM does with ``prompt_logprobs``."""

    def __init__(self, predict: Callable[[str], dict[str, float]]) -> None:
        super().__init__(oracle)
        self.predict = predict

    def chat_many(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        results = super().chat_many(requests)
        return [
            dataclasses.replace(
                result,
                parsed=compact_prompt_logprobs(
                    vllm_prompt_logprobs(request, self.predict), request.prompt_logprobs_after
                ),
            )
            if request.prompt_logprobs
            else result
            for request, result in zip(requests, results, strict=True)
        ]


def knows_a(token: str) -> dict[str, float]:
    """Mostly 10 (and some 9) on A, mostly 0 (and some 1) elsewhere."""
    return {"10": 0.7, "9": 0.2, "x": 0.1} if token == token_text(A) else {"0": 0.6, "1": 0.2}


def test_expected_value_is_delphis_renormalised_mean_over_0_to_10() -> None:
    # tokens that are not integers 0-10 are left out, the rest renormalised; int(" 5") is 5
    top = {
        "0": math.log(0.5),
        "10": math.log(0.25),
        " 5": math.log(0.25),
        "x": math.log(0.9),
        "11": math.log(0.9),
        "-1": math.log(0.9),
    }
    [(values, ok)] = expected_values([{"token": "unknown", "top": top}], [1])
    assert ok and values.tolist() == pytest.approx([3.75])
    # the last sum(lengths) unknowns are the sequences, in order
    few_shot = {"token": "unknown", "top": {"7": 0.0}}
    parsed = [few_shot, {"token": "3", "top": {"3": 0.0}}, {"token": "unknown", "top": {"2": 0.0}}]
    assert expected_values(parsed, [1])[0][0].tolist() == [2.0]
    assert expected_values(parsed, [2])[0][0].tolist() == [7.0, 2.0]
    assert [v.tolist() for v, _ in expected_values(parsed, [1, 1])] == [[7.0], [2.0]]
    assert not any(ok for _, ok in expected_values(parsed, [2, 1]))  # fewer unknowns than tokens
    # a token without any integer fails its own sequence only
    no_digit = {"token": "unknown", "top": {"cat": -0.1}}
    (first, ok_first), (second, ok_second) = expected_values([no_digit, few_shot], [1, 1])
    assert not ok_first and first.tolist() == [0.0] and ok_second and second.tolist() == [7.0]
    assert not expected_values(None, [2])[0][1] and not expected_values({"x": 1}, [2])[0][1]


def test_compact_prompt_logprobs_reads_vllms_answer() -> None:
    # the shape vLLM 0.32 answers (/v1/chat/completions with prompt_logprobs): token id ->
    # logprob, rank, decoded_token, the prompt token first even when it ranks low
    answer = [
        None,
        {
            "504": {"logprob": -5.8, "rank": 27, "decoded_token": " cat"},
            "81": {"logprob": -0.9, "rank": 1, "decoded_token": "a"},
        },
        {"197": {"logprob": -0.2, "rank": 1, "decoded_token": "\t"}},
        {
            "31295": {"logprob": -3.5, "rank": 6, "decoded_token": "unknown"},
            "33": {"logprob": -1.2, "rank": 1, "decoded_token": "1"},
            "34": {"logprob": -2.2, "rank": 2, "decoded_token": "1"},
            "32": {"logprob": -2.3, "rank": 3, "decoded_token": "0"},
        },
    ]
    kept = compact_prompt_logprobs(answer, "\t")
    assert kept is not None and [k["position"] for k in kept] == [3]
    assert kept[0]["token"] == "unknown"
    assert kept[0]["top"]["1"] == pytest.approx(math.log(math.exp(-1.2) + math.exp(-2.2)))
    assert kept[0]["top"]["0"] == -2.3
    everything = compact_prompt_logprobs(answer, None)
    assert everything is not None and [k["token"] for k in everything] == [" cat", "\t", "unknown"]
    assert compact_prompt_logprobs(None, "\t") is None
    assert compact_prompt_logprobs([None, {"1": {"rank": 1}}], "\t") is None


def simulate_planted(
    backend: FakeBackend, rules: list[Rule] | None = None, **config: object
) -> pd.DataFrame:
    """score_shard's simulation of the planted feature, described as "the token A"."""
    corpus, activations = planted()
    return score_shard(
        layer=3,
        heldout_activations=activations,
        heldout_tokens=corpus,
        config=dataclasses.replace(CONFIG, scorers=("simulation",), **config),
        seed=0,
        bos_token_id=BOS,
        descriptions=descriptions("the token A"),
        backend=backend,
        rules=rules,
        display=token_text,
    )


def test_simulation_by_expected_value_matches_the_rule_on_a_planted_feature() -> None:
    backend = FakeVLLM(knows_a)
    frame = simulate_planted(backend, rules=[token_rule(A)])
    assert len(backend.requests) == 100  # one per sequence, nothing generated
    request = backend.requests[0]
    assert request.max_tokens == 1 and request.prompt_logprobs == 15
    assert request.json_schema is None and request.prompt_logprobs_after == "\t"
    assert request.messages[-1][0] == "assistant" and "\tunknown" in request.messages[-1][1]
    llm = frame[(frame["rater"] == "llm") & (frame["group"] == "all")].iloc[0]
    rule = frame[(frame["rater"] == "rule") & (frame["group"] == "all")].iloc[0]
    assert llm["simulation_mode"] == "expected_value" and llm["n_failed"] == 0
    assert llm["n_tokens"] == rule["n_tokens"]
    # predicted 8.8 / 0.9 on A and 0.2 / 0.8 elsewhere: an affine image of the rule's 1 / 0
    assert llm["correlation"] == pytest.approx(rule["correlation"]) == pytest.approx(1.0)

    # OpenAI's format with several sequences per prompt: the same predictions, fewer prompts
    packed_backend = FakeVLLM(knows_a)
    packed = simulate_planted(packed_backend, simulation_sequences_per_prompt=30)
    assert len(packed_backend.requests) == 4  # 30 + 30 + 30 + 10 sequences
    assert packed_backend.requests[0].messages[-1][1].count("<start>") == 30
    usage = ["llm_calls", "llm_tokens_in", "llm_tokens_out"]
    pd.testing.assert_frame_equal(
        packed.drop(columns=usage),
        frame[frame["rater"] == "llm"].reset_index(drop=True).drop(columns=usage),
    )

    def no_digits_after_b(token: str) -> dict[str, float]:
        return {"cat": 0.9} if token == token_text(B) else knows_a(token)

    failing = simulate_planted(FakeVLLM(no_digits_after_b))
    row = failing[failing["group"] == "all"].iloc[0]
    shown = [r.messages[-1][1] for r in backend.requests]
    with_b = sum(f"\n{token_text(B)}\tunknown" in text for text in shown)
    assert 0 < with_b < 100 and row["n_failed"] == with_b


def test_features_without_non_activating_windows_get_a_reason() -> None:
    corpus, activations = planted(n=20)
    dense_rows = [
        (row, position) for row in range(20) for position in range(1, 33)
    ]  # the feature fires everywhere
    everywhere = pd.DataFrame(dense_rows, columns=["context", "position"])
    everywhere["context"] += 1000
    everywhere["feature"], everywhere["activation"], everywhere["excluded"] = FEATURE, 1.0, False
    frame = score_shard(
        layer=3,
        heldout_activations=everywhere,
        heldout_tokens=corpus,
        config=CONFIG,
        seed=0,
        bos_token_id=BOS,
        rules=[token_rule(A), Rule(3, FEATURE, "absent", (), "no clusters")],
    )
    planted_rows = frame[frame["variant"] == "planted"]
    classifier = planted_rows[planted_rows["score"] != "simulation"]
    assert set(classifier["reason"]) == {"no_non_activating_examples"}
    assert set(frame.loc[frame["variant"] == "absent", "reason"]) == {"missing_input"}
    never = score_shard(
        layer=3,
        heldout_activations=activations.iloc[:0],
        heldout_tokens=corpus,
        config=CONFIG,
        seed=0,
        bos_token_id=BOS,
        rules=[token_rule(A)],
    )
    assert set(never["reason"]) == {"no_activating_examples"}
    few = score_shard(  # fires in 3 windows, fewer than the 5 quantiles
        layer=3,
        heldout_activations=activations[activations["context"] < 1002],
        heldout_tokens=corpus,
        config=CONFIG,
        seed=0,
        bos_token_id=BOS,
        rules=[token_rule(A)],
    )
    assert set(few["reason"]) == {"too_few_activating_windows"}


def test_descriptions_need_a_backend_and_config_is_checked(tmp_path) -> None:
    corpus, activations = planted(n=10)
    with pytest.raises(InputError, match="backend"):
        score_shard(
            layer=3,
            heldout_activations=activations,
            heldout_tokens=corpus,
            config=CONFIG,
            seed=0,
            bos_token_id=BOS,
            descriptions=descriptions("x"),
        )
    assert tuple(SCORERS) == SCORES  # the table and the config name the same scores
    with pytest.raises(InputError, match="scores.n_bins"):
        DelphiScoresConfig.from_mapping({"n_bins": 3})
    with pytest.raises(InputError, match="scorers"):
        DelphiScoresConfig.from_mapping({"scorers": ["detection", "intruder"]})
    assert DelphiScoresConfig.from_mapping({"scorers": "simulation"}).scorers == ("simulation",)
    assert DelphiScoresConfig.from_mapping({"scorers": ["simulation", "detection"]}).scorers == (
        "detection",
        "simulation",
    )
    frame = score_shard(
        layer=3,
        heldout_activations=activations,
        heldout_tokens=corpus,
        config=DelphiScoresConfig(example_length=WINDOW, n_quantiles=2, scorers=("fuzzing",)),
        seed=0,
        bos_token_id=BOS,
        rules=[token_rule(A)],
    )
    path = tmp_path / "scores.parquet"
    write_delphi_scores(frame, path)
    table = pq.read_table(path)
    assert table.schema.equals(DELPHI_SCORES_SCHEMA)
    assert table.num_rows == len(frame) == 4 and set(frame["score"]) == {"fuzzing"}
