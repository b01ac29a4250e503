"""FADE: metrics on hand-computed fixtures, the sampler, LLM answers gone wrong, steering."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from circuit_insights.core.contexts import ContextTokens
from circuit_insights.data.schemas import FADE_EVALUATION_SCHEMA
from circuit_insights.evaluation import metrics as fm
from circuit_insights.evaluation.fade import subject as subject_module
from circuit_insights.evaluation.fade.faithfulness import measure_faithfulness
from circuit_insights.evaluation.fade.judge import (
    LLMUsage,
    generate_synthetic_texts,
    load_prompt,
    parse_ratings,
    parse_texts,
    rate_text_groups,
    rate_texts,
)
from circuit_insights.evaluation.fade.presets import PRESETS, fade_preset, preset_from_config
from circuit_insights.evaluation.fade.rows import read_fade_evaluation, write_fade_evaluation
from circuit_insights.evaluation.fade.run import evaluate_descriptions, evaluate_feature
from circuit_insights.evaluation.fade.subject import (
    decode_tokens,
    encode_text,
    greedy_continuations,
    natural_sample_activations,
    steered_continuations,
    steering,
    text_activations,
)
from circuit_insights.llm.client import ChatRequest, ChatResult, result_from_text
from circuit_insights.models.subject import SubjectModel
from circuit_insights.transcoders.base import Transcoder
from tests.conftest import FAMILIES, tiny_subject_model

nan = float("nan")


# --- fakes -----------------------------------------------------------------------------------


class CharTokenizer:
    """Character-level tokenizer for the tiny models: ids 3..92 are characters 32..121."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [3 + (ord(char) - 32) % 90 for char in text]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(32 + int(i) - 3) for i in ids if 3 <= int(i) <= 92)


def result(parsed, status: str = "ok", text: str | None = None) -> ChatResult:
    return ChatResult(
        text=json.dumps(parsed) if text is None else text,
        parsed=parsed if status == "ok" else None,
        parse_status=status,
        tokens_in=10,
        tokens_out=5,
        latency_s=0.01,
        cached=False,
        error=None if status != "error" else "boom",
    )


class FakeBackend:
    """Answers each request with ``answer(request)``; records every request."""

    model_name = "fake-llm"

    def __init__(self, answer: Callable[[ChatRequest], ChatResult]) -> None:
        self.answer = answer
        self.requests: list[ChatRequest] = []

    def chat_many(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        self.requests.extend(requests)
        return [self.answer(request) for request in requests]


def listed_texts(request: ChatRequest) -> list[str]:
    """The texts of a rating request, in their numbered order."""
    user = request.messages[-1][1]
    lines = [line for line in user.splitlines() if line[:1].isdigit() and ". " in line]
    return [json.loads(line.split(". ", 1)[1]) for line in lines]


def is_rating(request: ChatRequest) -> bool:
    return "ratings" in (request.json_schema or {}).get("properties", {})


def oracle(rate: Callable[[str], int], synthetic: Sequence[str]) -> FakeBackend:
    """Generation returns ``synthetic``; ratings come from ``rate(text)``."""

    def answer(request: ChatRequest) -> ChatResult:
        if is_rating(request):
            texts = listed_texts(request)
            return result(
                {"ratings": [{"id": i + 1, "rating": rate(t)} for i, t in enumerate(texts)]}
            )
        return result({"texts": list(synthetic)})

    return FakeBackend(answer)


# --- metrics ---------------------------------------------------------------------------------


def test_sample_activation_is_signed_value_at_largest_magnitude():
    assert fm.sample_activation([0.5, -2.0, 1.5]) == -2.0
    assert fm.sample_activation([0.5, 2.0, -2.0]) == 2.0  # first on ties
    assert fm.sample_activation([]) == 0.0
    values = np.array([[0.0, 3.0, -1.0], [9.0, -4.0, 1.0], [5.0, 5.0, 5.0]])
    valid = np.array([[True, True, True], [False, True, True], [False, False, False]])
    np.testing.assert_array_equal(fm.sample_activations(values, valid), [3.0, -4.0, 0.0])


def test_auroc_and_average_precision_hand_computed():
    negatives, positives = [0.0, 1.0, 2.0], [1.0, 3.0]
    # Pairs (pos > neg: 1, tie: 1/2): 1 vs (0, 1, 2) = 1 + .5 + 0; 3 vs all = 3 -> 4.5 / 6.
    assert fm.auroc(negatives, positives) == (0.75, None)
    assert fm.gini(negatives, positives) == (0.5, None)
    # Descending: 3 (P) | 2 (N) | 1, 1 (P, N tied) | 0 (N): P@1 = 1 for recall .5, P@4 = .5 for .5.
    assert fm.average_precision(negatives, positives) == (0.75, None)
    labels = [0, 0, 0, 1, 1]
    scores = negatives + positives
    assert math.isclose(roc_auc_score(labels, scores), 0.75)
    assert math.isclose(average_precision_score(labels, scores), 0.75)


def test_ranking_metrics_match_sklearn_on_random_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        neg = rng.integers(0, 5, size=rng.integers(1, 30)).astype(float)
        pos = rng.integers(0, 5, size=rng.integers(1, 30)).astype(float)
        if np.concatenate([neg, pos]).std() == 0:
            continue
        labels = np.r_[np.zeros(len(neg)), np.ones(len(pos))]
        scores = np.r_[neg, pos]
        assert math.isclose(fm.auroc(neg, pos)[0], roc_auc_score(labels, scores))
        assert math.isclose(
            fm.average_precision(neg, pos)[0], average_precision_score(labels, scores)
        )


def test_clarity_takes_absolute_gini_so_lower_synthetic_activations_score_high():
    natural = [0.0, 1.0, 2.0, 0.0]
    assert fm.clarity([5.0, 4.0], natural) == (1.0, None)  # synthetic above every natural
    assert fm.clarity([-1.0, -2.0], natural) == (1.0, None)  # below every natural: FADE's |.|
    # 1 vs (0, 1, 2, 0): 1 + .5 + 0 + 1 = 2.5 of 4 pairs -> AUROC .625 -> |2·.625 − 1| = .25
    assert fm.clarity([1.0], natural) == (0.25, None)


def test_clarity_degenerate_cases():
    value, reason = fm.clarity([], [1.0, 2.0])
    assert math.isnan(value) and reason == "no_synthetic_samples"
    value, reason = fm.clarity([1.0], [])
    assert math.isnan(value) and reason == "no_natural_samples"
    value, reason = fm.clarity([0.0, 0.0], [0.0, 0.0, 0.0])
    assert math.isnan(value) and reason == "no_variance"
    value, reason = fm.clarity([nan], [0.0, 1.0])
    assert math.isnan(value) and reason == "non_finite_activations"


def test_responsiveness_and_purity_drop_ratings_of_one_and_missing():
    activations = [3.0, 2.0, 0.5, 0.0, 9.0, -5.0]
    ratings = [2, 2, 0, 0, 1, nan]  # 9.0 (rated 1) and -5.0 (missing) must not count
    (responsiveness, r_reason), (purity, p_reason) = fm.responsiveness_and_purity(
        activations, ratings
    )
    assert (responsiveness, purity, r_reason, p_reason) == (1.0, 1.0, None, None)
    # Rated 2 = {1, 0.5}, rated 0 = {2, 0}: pairs 1>0, 1<2, .5>0, .5<2 -> AUROC .5, |gini| 0.
    (responsiveness, _), (purity, _) = fm.responsiveness_and_purity([1, 0.5, 2, 0], [2, 2, 0, 0])
    assert responsiveness == 0.0
    # Descending 2 (N), 1 (P), .5 (P), 0 (N): P = 1/2 at recall .5, 2/3 at 1 -> AP 7/12.
    assert math.isclose(purity, 7 / 12)


def test_purity_sign_flip_follows_fade():
    activations, ratings = [5.0, 4.0, 1.0, 0.0], [0, 0, 2, 2]  # concept samples activate less
    (responsiveness, _), (purity, _) = fm.responsiveness_and_purity(activations, ratings)
    assert responsiveness == 1.0 and purity == 1.0  # AP on negated activations
    (_, _), (unflipped, _) = fm.responsiveness_and_purity(activations, ratings, flip_negative=False)
    # Descending 5 N, 4 N, 1 P, 0 P: P = 1/3 at recall .5, 1/2 at 1 -> (1/3 + 1/2) / 2.
    assert math.isclose(unflipped, (1 / 3 + 1 / 2) / 2)


@pytest.mark.parametrize(
    ("ratings", "reason"),
    [([0, 0, 1], "no_rated_2"), ([2, 1, 2], "no_rated_0"), ([nan, nan, nan], "no_rated_0")],
)
def test_responsiveness_needs_both_labels(ratings, reason):
    (value, why), (purity, purity_why) = fm.responsiveness_and_purity([1.0, 2.0, 3.0], ratings)
    assert math.isnan(value) and math.isnan(purity) and why == purity_why == reason


def test_responsiveness_no_variance():
    (value, why), _ = fm.responsiveness_and_purity([1.0, 1.0, 1.0], [0, 2, 2])
    assert math.isnan(value) and why == "no_variance"


def test_faithfulness_formula_gate_and_degenerate_baselines():
    ratings = {0.0: [0, 0, 2, 1], 10.0: [2, 2, 2, 0], -10.0: [0, 0, 0, nan]}
    # p2(0) = 1/4, max p2 = 3/4 -> (3/4 − 1/4) / (1 − 1/4) = 2/3
    value, reason = fm.faithfulness(ratings)
    assert math.isclose(value, 2 / 3) and reason is None
    shares = fm.concept_shares(ratings)
    assert shares[-10.0] == (0.0, 3) and shares[0.0] == (0.25, 4)
    # Steering only lowers p2: clipped at 0.
    assert fm.faithfulness({0.0: [2, 2, 0], 5.0: [0, 0, 0]}) == (0.0, None)
    # No continuation rated 2 anywhere: 0, as in FADE.
    assert fm.faithfulness({0.0: [0, 1], 5.0: [0, 0]}) == (0.0, None)
    value, reason = fm.faithfulness({0.0: [2, 2], 5.0: [2, 2]})
    assert math.isnan(value) and reason == "baseline_saturated"
    value, reason = fm.faithfulness({0.0: [nan, 7], 5.0: [2, 2]})
    assert math.isnan(value) and reason == "no_baseline_ratings"
    assert fm.faithfulness_gate(0.5, 0.5) is None
    assert fm.faithfulness_gate(0.9, 0.49) == "gated"
    assert fm.faithfulness_gate(nan, 0.9) == "gated"
    assert fm.faithfulness_gate(0.3, 0.3, gate=0.2) is None


# --- sampler ---------------------------------------------------------------------------------


def test_stratified_sampler_shares_and_determinism():
    rng = np.random.default_rng(1)
    activations = rng.permutation(5000).astype(float)  # rank == value
    selection = fm.select_rating_samples(activations, 500, seed=3)
    index, stratum = selection.index, selection.stratum
    assert len(index) == 500 and len(np.unique(index)) == 500
    per_stratum = int(500 * 0.9 // 4)  # 112
    for label, (low, high) in enumerate([(0, 2500), (2500, 3750), (3750, 4750), (4750, 5000)]):
        members = activations[index[stratum == label]]
        assert len(members) == per_stratum
        assert members.min() >= low and members.max() < high
    top = activations[index[stratum == fm.TOP_STRATUM]]
    assert len(top) == 500 - 4 * per_stratum  # 52
    drawn_elsewhere = set(activations[index[stratum != fm.TOP_STRATUM]])
    expected_top = [v for v in range(4999, -1, -1) if v not in drawn_elsewhere][: len(top)]
    np.testing.assert_array_equal(top, expected_top)  # the highest ones not drawn yet
    again = fm.select_rating_samples(activations, 500, seed=3)
    np.testing.assert_array_equal(again.index, index)
    other = fm.select_rating_samples(activations, 500, seed=4)
    assert not np.array_equal(other.index, index)


def test_sampler_takes_whole_small_strata_and_fills_from_the_top():
    activations = np.arange(1000.0)  # the 95-100 stratum has 50 < 112 members: all taken
    selection = fm.select_rating_samples(activations, 500, seed=0)
    assert len(selection.index) == 500 and len(np.unique(selection.index)) == 500
    assert (selection.stratum == 3).sum() == 50
    top = activations[selection.index[selection.stratum == fm.TOP_STRATUM]]
    assert len(top) == 500 - 3 * 112 - 50 and top.max() < 950


def test_sampler_small_pools_and_exclusion():
    activations = np.array([0.0, 0.0, 0.0, 1.0, 2.0])
    selection = fm.select_rating_samples(activations, 10)
    assert sorted(selection.index) == [0, 1, 2, 3, 4]
    excluded = fm.select_rating_samples(np.arange(100.0), 20, exclude=np.arange(50))
    assert len(excluded.index) == 20 and excluded.index.min() >= 50
    assert len(fm.select_rating_samples([], 10).index) == 0
    assert len(fm.select_rating_samples(np.arange(10.0), 0).index) == 0


# --- LLM answers -----------------------------------------------------------------------------


def test_parse_ratings_keeps_only_valid_entries():
    answer = {
        "ratings": [
            {"id": 1, "rating": 2},
            {"id": 2, "rating": 3},  # invalid rating
            {"id": 9, "rating": 1},  # unknown id
            {"id": "3", "rating": "0"},  # strings of digits are accepted
            {"id": 1, "rating": 0},  # duplicate: the first wins
            {"rating": 1},
            "junk",
            {"id": 4, "rating": True},
        ]
    }
    assert parse_ratings(answer, 4) == {1: 2, 3: 0}
    assert parse_ratings({"2": 1, "x": 2}, 4) == {2: 1}
    assert parse_ratings(None, 4) == {} and parse_ratings("2", 4) == {}


def test_rate_texts_records_missing_ratings_and_retries_only_them():
    texts = [f"text {i}" for i in range(20)]
    calls = []

    def answer(request: ChatRequest) -> ChatResult:
        shown = listed_texts(request)
        calls.append(shown)
        if len(calls) == 1:  # first batch: text 3 left out, text 4 rated 7
            items = [{"id": i + 1, "rating": 2} for i, t in enumerate(shown) if t != "text 3"]
            items = [
                {**item, "rating": 7} if shown[item["id"] - 1] == "text 4" else item
                for item in items
            ]
            return result({"ratings": items})
        if len(calls) == 2:  # second batch: unparseable
            return result(None, status="unparseable", text="The answer is 3.")
        return result(None, status="error")  # every retry fails too

    usage = LLMUsage()
    ratings = rate_texts(FakeBackend(answer), "a concept", texts, batch_size=15, usage=usage)
    assert np.isnan(ratings[[3, 4]]).all() and np.isnan(ratings[15:]).all()
    assert (ratings[[0, 1, 2, 5, 14]] == 2).all()
    assert calls[2] == ["text 3", "text 4", *texts[15:]]  # one retry batch with the missing
    assert len(calls) == 3 and usage.calls == 3 and usage.failed_calls == 2
    assert usage.tokens_in == 30 and usage.tokens_out == 15


def test_rate_text_groups_never_mix_groups_in_a_batch():
    calls = []

    class Recording(FakeBackend):
        def chat_many(self, requests):
            calls.append(len(requests))
            return super().chat_many(requests)

    def answer(request: ChatRequest) -> ChatResult:
        shown = listed_texts(request)
        return result(
            {"ratings": [{"id": i + 1, "rating": int(t[0])} for i, t in enumerate(shown)]}
        )

    backend = Recording(answer)
    groups = [[f"0-{i}" for i in range(20)], [f"2-{i}" for i in range(4)], []]
    ratings = rate_text_groups(backend, "c", groups, batch_size=15)
    assert calls == [3]  # one chat_many: 15 + 5 texts of group 0, 4 of group 1
    assert [len(listed_texts(r)) for r in backend.requests] == [15, 5, 4]
    assert all(len({t[0] for t in listed_texts(r)}) == 1 for r in backend.requests)
    assert (ratings[0] == 0).all() and (ratings[1] == 2).all() and len(ratings[2]) == 0


def test_rate_texts_retry_succeeds_and_uses_another_seed():
    seeds = []

    def answer(request: ChatRequest) -> ChatResult:
        seeds.append(request.seed)
        if len(seeds) == 1:
            return result(None, status="empty", text="")
        return result(
            {"ratings": [{"id": i + 1, "rating": 1} for i in range(len(listed_texts(request)))]}
        )

    ratings = rate_texts(FakeBackend(answer), "c", ["a", "b"], seed=5)
    np.testing.assert_array_equal(ratings, [1, 1])
    assert seeds == [5, 6]


def test_rating_falls_back_to_json_text_when_backend_did_not_parse():
    def answer(request: ChatRequest) -> ChatResult:
        text = '```json\n{"ratings": [{"id": 1, "rating": 2}]}\n```'
        return result(None, status="unparseable", text=text)

    np.testing.assert_array_equal(
        rate_texts(FakeBackend(answer), "c", ["a"], failed_retries=0), [2]
    )


def test_schema_violating_answer_keeps_its_valid_entries():
    # llm.py parses the answer but flags it "unparseable" (rating 3 is outside the enum).
    def answer(request: ChatRequest) -> ChatResult:
        text = '{"ratings": [{"id": 1, "rating": 3}, {"id": 2, "rating": 1}]}'
        return result_from_text(request, text, tokens_in=1, tokens_out=1, latency_s=0.0)

    usage = LLMUsage()
    ratings = rate_texts(FakeBackend(answer), "c", ["a", "b"], failed_retries=0, usage=usage)
    np.testing.assert_array_equal(ratings, [nan, 1])
    assert usage.failed_calls == 1


def test_generate_synthetic_texts_dedups_and_survives_failures():
    answers = iter(
        [
            result({"texts": ["one", " two ", "one", 3, ""]}),
            result(None, status="unparseable", text="not json"),
            result(["three", "two"]),
        ]
    )
    backend = FakeBackend(lambda request: next(answers))
    texts = generate_synthetic_texts(backend, "numbers", n_calls=3, seed=2)
    assert texts == ["one", "two", "three"]
    assert len({request.seed for request in backend.requests}) == 3
    assert len({request.messages for request in backend.requests}) == 3
    assert all(request.json_schema is not None for request in backend.requests)
    assert parse_texts({"texts": "oops"}) == []


def test_prompts_are_packaged():
    assert "$description" in load_prompt("rating_user_v1").template
    assert "0:" in load_prompt("rating_system_v1").template
    assert "$description" in load_prompt("generation_user_v1").template


# --- subject model ---------------------------------------------------------------------------


def _model(family: str) -> SubjectModel:
    model = tiny_subject_model(family)
    model.tokenizer = CharTokenizer()
    return model


def _transcoder(model: SubjectModel, layer: int = 1, n_features: int = 16) -> Transcoder:
    generator = torch.Generator().manual_seed(7)
    output_hook = "mlp_out_post_norm" if model.adapter.post_mlp_norm else "mlp_out"
    transcoder = Transcoder(model.d_model, n_features, layer=layer, output_hook=output_hook)
    with torch.no_grad():
        transcoder.W_enc.copy_(torch.randn(model.d_model, n_features, generator=generator))
        transcoder.W_dec.copy_(torch.randn(n_features, model.d_model, generator=generator))
        transcoder.b_enc.copy_(0.1 * torch.randn(n_features, generator=generator))
        transcoder.b_dec_out.copy_(0.1 * torch.randn(model.d_model, generator=generator))
    return transcoder


def _feature_activations(model: SubjectModel, transcoder: Transcoder, ids: torch.Tensor):
    x = model.hook_values(ids, {transcoder.layer: [transcoder.input_hook]})
    with torch.no_grad():
        return transcoder.encode(x[(transcoder.layer, transcoder.input_hook)])  # (b, pos, n_feat)


def _busiest_feature(model, transcoder, ids) -> int:
    return int((_feature_activations(model, transcoder, ids) > 0).float().sum((0, 1)).argmax())


def _prompts(model: SubjectModel, n: int = 3, length: int = 6, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    body = torch.randint(3, 90, (n, length), generator=generator)
    return torch.tensor([model.with_bos(row.tolist()) for row in body])


@pytest.mark.parametrize("family", FAMILIES)
def test_steering_splice_keeps_model_and_moves_output_by_decoder_row(family):
    model = _model(family)
    transcoder = _transcoder(model)
    ids = _prompts(model)
    feature = _busiest_feature(model, transcoder, ids)
    hook = (transcoder.layer, transcoder.output_hook)
    original = model.logits(ids)
    original_out = model.hook_values(ids, {transcoder.layer: [transcoder.output_hook]})[hook]

    # No override ("factor 0 as no override"): identical.
    with steering(model, transcoder, feature, None):
        assert torch.equal(model.logits(ids), original)
    with model.splice({transcoder.layer: transcoder}, keep_error=True):
        assert torch.equal(model.logits(ids), original)

    # The feature overridden with its own activations ("left as is"): the same up to rounding.
    acts = _feature_activations(model, transcoder, ids)  # (b, pos, n_features)
    own = {transcoder.layer: (torch.tensor([feature]), acts[..., feature : feature + 1])}
    with model.splice({transcoder.layer: transcoder}, keep_error=True, feature_override=own):
        torch.testing.assert_close(model.logits(ids), original, rtol=1e-5, atol=1e-5)

    # Set to a value: logits change, and the output hook moves by exactly (new − old) · W_dec[f].
    value = 3.0
    with steering(model, transcoder, feature, value):
        steered = model.logits(ids)
        steered_out = model.hook_values(ids, {transcoder.layer: [transcoder.output_hook]})[hook]
    assert not torch.allclose(steered, original)
    expected = (value - acts[..., feature])[..., None] * transcoder.W_dec[feature].detach()
    torch.testing.assert_close(steered_out - original_out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ["gpt2", "gemma2"])
def test_greedy_continuations_and_factors(family):
    model = _model(family)
    transcoder = _transcoder(model)
    prompts = _prompts(model, n=3, length=5)
    feature = _busiest_feature(model, transcoder, prompts)
    plain = greedy_continuations(model, prompts, 4, batch_size=2)
    assert plain.shape == (3, 4)
    sequence = prompts[0].tolist()
    for step in range(4):  # each token is the argmax of the full-sequence logits
        token = int(model.logits(torch.tensor([sequence]))[0, -1].argmax())
        assert token == int(plain[0, step])
        sequence.append(token)

    reference = 5.0
    unsteered = steered_continuations(
        model,
        transcoder,
        feature=feature,
        prompts=prompts,
        factors=[0.0, 50.0],
        reference_activation=reference,
        n_tokens=4,
        baseline="unsteered",
    )
    assert torch.equal(unsteered[0.0], plain)
    assert not torch.equal(unsteered[50.0], plain)
    ablated = steered_continuations(
        model,
        transcoder,
        feature=feature,
        prompts=prompts,
        factors=[0.0],
        reference_activation=reference,
        n_tokens=4,
        baseline="ablate",
    )
    with steering(model, transcoder, feature, 0.0):
        assert torch.equal(ablated[0.0], greedy_continuations(model, prompts, 4))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_text_activations_match_direct_computation_and_ignore_padding(family):
    model = _model(family)
    transcoder = _transcoder(model)
    texts = ["hello world", "a", "the quick brown fox jumps", ""]
    token_lists = [encode_text(model, text, max_tokens=64) for text in texts]
    feature = 3
    batched = text_activations(model, transcoder, feature, token_lists, batch_size=4)
    one_by_one = [
        text_activations(model, transcoder, feature, [ids], batch_size=1)[0] for ids in token_lists
    ]
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-5, atol=1e-6)
    skip = 1 if model.bos_token_id is not None else 0
    for ids, value in zip(token_lists[:3], batched[:3], strict=True):
        acts = _feature_activations(model, transcoder, torch.tensor([ids]))[0, skip:, feature]
        assert math.isclose(value, fm.sample_activation(acts.numpy()), rel_tol=1e-5, abs_tol=1e-6)
    if skip:
        assert math.isnan(batched[3])  # BOS alone: nothing to score
    assert decode_tokens(model, token_lists[0]) == "hello world"


def test_natural_sample_activations_from_sparse_rows():
    rows = pd.DataFrame(
        {
            "feature": [4, 4, 4, 4, 5, 4],
            "context": [10, 10, 12, 12, 11, 13],
            "position": [0, 3, 1, 2, 1, 0],
            "activation": [99.0, 1.5, 2.0, -3.0, 7.0, 8.0],
            "excluded": [True, False, False, False, False, True],
        }
    )
    values = natural_sample_activations(rows, 4, [10, 11, 12, 13, 14])
    np.testing.assert_array_equal(values, [1.5, 0.0, -3.0, 0.0, 0.0])
    assert len(natural_sample_activations(rows.iloc[:0], 4, [1, 2])) == 2


# --- whole evaluation ------------------------------------------------------------------------


def _heldout(model: SubjectModel, transcoder: Transcoder, n: int = 40, length: int = 12):
    """Held-out contexts with their true sparse activation rows (BOS flagged excluded)."""
    tokens = _prompts(model, n=n, length=length - (1 if model.bos_token_id is not None else 0))
    acts = _feature_activations(model, transcoder, tokens)  # (n, pos, n_features)
    context, position, feature = torch.nonzero(acts > 0, as_tuple=True)
    rows = pd.DataFrame(
        {
            "feature": feature.numpy(),
            "context": context.numpy() + 100,
            "position": position.numpy(),
            "activation": acts[context, position, feature].numpy(),
            "excluded": (position == 0).numpy() & (model.bos_token_id is not None),
        }
    )
    return rows, ContextTokens(np.arange(n) + 100, tokens.numpy())


def test_evaluate_feature_end_to_end(tmp_path):
    model = _model("gpt2")
    transcoder = _transcoder(model)
    rows, corpus = _heldout(model, transcoder)
    feature = int(rows["feature"].value_counts().index[0])
    natural = natural_sample_activations(rows, feature, corpus.context_ids)
    threshold = np.median(natural[natural > 0])
    strong = {
        decode_tokens(model, t)
        for t, a in zip(corpus.tokens, natural, strict=True)
        if a > threshold
    }
    backend = oracle(lambda text: 2 if text in strong else 0, ["abc def", "xyz", "hello there"])
    preset = fade_preset("small", gate=0.0, n_prompts=3, n_generated_tokens=3, max_text_chars=None)
    details: dict = {}
    row = evaluate_feature(
        model=model,
        transcoder=transcoder,
        feature=feature,
        description="some concept",
        heldout_activations=rows,
        heldout_tokens=corpus,
        backend=backend,
        preset=preset,
        seed=1,
        variant="weightlens",
        details=details,
    )
    assert set(row) == set(FADE_EVALUATION_SCHEMA.names)
    assert row["clarity_reason"] is None and 0.0 <= row["clarity"] <= 1.0
    assert row["n_synthetic_texts"] == 3 and row["n_synthetic_scored"] == 3
    # The oracle rates exactly the strongest-activating samples 2: perfect separation.
    assert row["responsiveness"] == 1.0 and row["purity"] == 1.0
    assert row["n_rated"] == 40 and row["n_rated_0"] + row["n_rated_2"] == 40
    assert row["faithfulness_reason"] in (None, "baseline_saturated")
    assert row["steering_factors"] == [-10.0, 0.0, 10.0]
    assert row["n_continuations_rated"] == [3, 3, 3]
    assert math.isclose(row["steering_reference"], float(np.abs(natural).max()), rel_tol=1e-6)
    assert row["llm_calls"] == 2 + 3 + 3  # generation, natural ratings, one per factor
    assert row["llm_model"] == "fake-llm" and row["variant"] == "weightlens"
    assert len(details["ratings"]) == 40

    path = tmp_path / "fade.parquet"
    write_fade_evaluation([row], path)
    assert pq.read_schema(path).equals(FADE_EVALUATION_SCHEMA, check_metadata=False)
    back = read_fade_evaluation([path])
    assert back.loc[0, "feature"] == feature and back.loc[0, "responsiveness"] == 1.0


def test_measure_faithfulness_returns_what_the_row_and_details_show():
    """Faithfulness is computed apart and handed back (metric, row columns, details), never
    written into the caller's dicts; evaluate_feature records exactly that."""
    model = _model("gpt2")
    transcoder = _transcoder(model)
    rows, corpus = _heldout(model, transcoder)
    feature = int(rows["feature"].value_counts().index[0])
    natural = natural_sample_activations(rows, feature, corpus.context_ids)
    strong = {
        decode_tokens(model, t)
        for t, a in zip(corpus.tokens, natural, strict=True)
        if a > np.median(natural[natural > 0])
    }

    def rate(text: str) -> int:
        return 2 if text in strong or len(text) % 2 else 0

    backend = oracle(rate, ["abc def", "xyz"])
    preset = fade_preset("small", gate=0.0, n_prompts=3, n_generated_tokens=3)
    details: dict = {}
    row = evaluate_feature(
        model=model,
        transcoder=transcoder,
        feature=feature,
        description="c",
        heldout_activations=rows,
        heldout_tokens=corpus,
        backend=backend,
        preset=preset,
        seed=4,
        details=details,
    )
    usage = LLMUsage()
    faithfulness = measure_faithfulness(
        model=model,
        transcoder=transcoder,
        feature=feature,
        description="c",
        corpus=corpus,
        reference=row["steering_reference"],
        backend=oracle(rate, ["abc def", "xyz"]),
        preset=preset,
        seed=4,
        usage=usage,
    )
    value, reason = faithfulness.value
    assert row["faithfulness_reason"] != "gated" and reason == row["faithfulness_reason"]
    assert value == row["faithfulness"] or (math.isnan(value) and math.isnan(row["faithfulness"]))
    assert faithfulness.row_fields() == {
        name: row[name]
        for name in ("steering_factors", "concept_share_by_factor", "n_continuations_rated")
    }
    np.testing.assert_array_equal(faithfulness.steering_prompts, details["steering_prompts"])
    assert faithfulness.continuations == details["continuations"]
    assert usage.calls == len(preset.factors)  # one rating call per factor (3 prompts each)


def test_evaluate_feature_without_description_makes_no_llm_call():
    model = _model("gpt2")
    transcoder = _transcoder(model)
    rows, corpus = _heldout(model, transcoder, n=10)
    backend = oracle(lambda text: 0, [])
    for description in (None, "   "):
        row = evaluate_feature(
            model=model,
            transcoder=transcoder,
            feature=0,
            description=description,
            heldout_activations=rows,
            heldout_tokens=corpus,
            backend=backend,
            preset="small",
        )
        for name in ("clarity", "responsiveness", "purity", "faithfulness"):
            assert math.isnan(row[name]) and row[f"{name}_reason"] == "no_description"
        assert row["llm_calls"] == 0
    assert backend.requests == []


def test_evaluate_feature_with_no_heldout_activations_is_defined():
    model = _model("gpt2")
    transcoder = _transcoder(model)
    rows, corpus = _heldout(model, transcoder, n=10)
    backend = oracle(lambda text: 2, ["abc", "def"])
    row = evaluate_feature(
        model=model,
        transcoder=transcoder,
        feature=2,
        description="a concept",
        heldout_activations=rows.iloc[:0],
        heldout_tokens=corpus,
        backend=backend,
        preset="small",
    )
    assert row["responsiveness_reason"] == "no_heldout_activations"
    assert row["purity_reason"] == "no_heldout_activations"
    assert row["faithfulness_reason"] == "gated"
    assert row["n_natural"] == 10 and row["n_natural_active"] == 0 and row["n_rated"] == 0
    assert row["clarity_reason"] in (None, "no_variance")
    assert row["llm_calls"] == PRESETS["small"].generation_calls  # no rating calls


def test_evaluate_feature_when_the_llm_fails_everywhere():
    model = _model("gpt2")
    transcoder = _transcoder(model)
    rows, corpus = _heldout(model, transcoder, n=20)
    feature = int(rows["feature"].value_counts().index[0])
    backend = FakeBackend(lambda request: result(None, status="error"))
    row = evaluate_feature(
        model=model,
        transcoder=transcoder,
        feature=feature,
        description="c",
        heldout_activations=rows,
        heldout_tokens=corpus,
        backend=backend,
        preset="small",
    )
    assert row["clarity_reason"] == "no_synthetic_samples"
    assert row["responsiveness_reason"] == "no_rated_0"
    assert row["n_rating_missing"] == row["n_rated"] == 20
    assert row["faithfulness_reason"] == "gated"
    assert row["llm_failed_calls"] == row["llm_calls"] > 0


def test_evaluate_descriptions_pairs_variants_on_the_same_samples():
    model = _model("gpt2")
    transcoder = _transcoder(model)
    rows, corpus = _heldout(model, transcoder, n=60)
    feature = int(rows["feature"].value_counts().index[0])
    rated: dict[str, list[str]] = {}

    def answer(request: ChatRequest) -> ChatResult:
        if is_rating(request):
            description = request.messages[-1][1].splitlines()[0]
            rated.setdefault(description, []).extend(listed_texts(request))
            return result({"ratings": [{"id": 1, "rating": 2}]})
        return result({"texts": ["abc"]})

    descriptions = pd.DataFrame(
        {
            "feature": [feature, feature, feature],
            "variant": ["a", "b", "c"],
            "description": ["first", "second", None],
        }
    )
    preset = fade_preset("small", n_rated=30, failed_retries=0)
    frame = evaluate_descriptions(
        model, transcoder, descriptions, rows, corpus, FakeBackend(answer), preset, seed=3
    )
    assert list(frame["variant"]) == ["a", "b", "c"]
    assert frame.loc[2, "clarity_reason"] == "no_description"
    first, second = rated["Concept: first"], rated["Concept: second"]
    assert len(first) == 30 and sorted(first) == sorted(second)


def test_presets():
    paper = PRESETS["paper"]
    assert paper.generation_calls == 15 and paper.n_rated == 500 and paper.rating_batch_size == 15
    assert (paper.n_prompts, paper.n_generated_tokens) == (50, 30)
    assert paper.steering_factors == (-50, -10, -1, 0, 1, 10, 50) and paper.gate == 0.5
    assert fade_preset("small", steering_factors=[5, 10]).factors == (0.0, 5.0, 10.0)
    with pytest.raises(ValueError, match="preset"):
        fade_preset("nope")
    with pytest.raises(ValueError, match="unknown"):
        fade_preset("paper", colour=1)


# --- parity with fade-language 0.1.2 -----------------------------------------------------------


def _sparse_rows(feature: int, per_context: dict[int, list[float]]) -> pd.DataFrame:
    """Sparse activation rows of one feature: context -> activations at positions 1, 2, ..."""
    records = [
        (feature, context, position, value)
        for context, values in per_context.items()
        for position, value in enumerate(values, start=1)
    ]
    return pd.DataFrame(records, columns=["feature", "context", "position", "activation"])


def test_steering_multiplies_fade_reference_over_the_evaluated_samples(monkeypatch):
    """(a) FADE's reference is max |activation| over the natural samples it evaluates
    (``sae_max_value = natural_activations.abs().max()``), not a maximum from another split."""
    assert fm.steering_reference([0.5, -4.0, 3.0, 0.0]) == 4.0
    assert math.isnan(fm.steering_reference([1.0, nan])) and math.isnan(fm.steering_reference([]))

    model = _model("gpt2")
    transcoder = _transcoder(model)
    _, corpus = _heldout(model, transcoder, n=12)
    feature = 5
    # context 100: 0.5 and -4.0 (sample activation -4.0); a BOS row of 9.0 does not count
    per_context = {100: [0.5, -4.0], 101: [3.0], 102: [1.0], 103: [2.0], 104: [0.25]}
    rows = _sparse_rows(feature, per_context)
    rows["excluded"] = False
    bos = pd.DataFrame(
        {"feature": [feature], "context": [105], "position": [0], "activation": [9.0]}
    )
    rows = pd.concat([rows, bos.assign(excluded=True)], ignore_index=True)
    strong = {
        decode_tokens(model, corpus.tokens[context - 100])
        for context, values in per_context.items()
        if fm.sample_activation(values) >= 2.0
    }
    values: list[float | None] = []
    real_steering = subject_module.steering

    @contextlib.contextmanager
    def spy(model_, transcoder_, feature_, value):
        values.append(value)
        with real_steering(model_, transcoder_, feature_, value):
            yield

    monkeypatch.setattr(subject_module, "steering", spy)
    backend = oracle(lambda text: 2 if text in strong else 0, ["abc", "hello"])
    preset = fade_preset("small", gate=0.0, n_prompts=2, n_generated_tokens=2)
    descriptions = pd.DataFrame({"feature": [feature], "variant": ["v"], "description": ["d"]})
    frame = evaluate_descriptions(model, transcoder, descriptions, rows, corpus, backend, preset)
    assert frame.loc[0, "steering_reference"] == 4.0
    assert frame.loc[0, "responsiveness"] == 1.0  # rated 2 exactly where activation >= 2
    assert values == [-40.0, 0.0, 40.0]  # factors -10, 0, 10 times the reference 4.0


def test_nan_activation_in_the_sparse_path_is_nan_with_a_reason_never_zero():
    """(c) A NaN activation makes its context's sample activation NaN (not 0), and the metrics
    that use it NaN with reason ``non_finite_activations``."""
    rows = _sparse_rows(4, {10: [1.5, nan], 11: [nan], 12: [2.0, -0.5], 14: [-3.0, 1.0]})
    values = natural_sample_activations(rows, 4, [10, 11, 12, 13, 14])
    assert math.isnan(values[0]) and math.isnan(values[1])
    np.testing.assert_array_equal(values[2:], [2.0, 0.0, -3.0])  # 13 has no row: activation 0
    infinite = natural_sample_activations(_sparse_rows(4, {10: [1.0, -np.inf]}), 4, [10])
    assert infinite[0] == -np.inf

    model = _model("gpt2")
    transcoder = _transcoder(model)
    _, corpus = _heldout(model, transcoder, n=8)
    rows = _sparse_rows(3, {100: [1.0], 101: [nan, 2.0], 102: [0.5]})
    backend = oracle(lambda text: 2, ["abc", "def"])
    preset = fade_preset("small", gate=0.0)
    row = evaluate_feature(
        model=model,
        transcoder=transcoder,
        feature=3,
        description="c",
        heldout_activations=rows,
        heldout_tokens=corpus,
        backend=backend,
        preset=preset,
    )
    for name in ("clarity", "responsiveness", "purity"):
        assert math.isnan(row[name]) and row[f"{name}_reason"] == "non_finite_activations"
    assert row["faithfulness_reason"] == "gated" and row["steering_reference"] is None
    assert not any(is_rating(request) for request in backend.requests)  # nothing rated


def test_fade_top_selection_hand_computed():
    """(d) FADE's code takes the top samples whether or not a stratum drew them, then drops
    duplicates; ``distinct`` (the other reading) takes the top samples not drawn yet."""
    activations = np.arange(20.0)  # rank == value
    # strata [0, 80) and [80, 100] of 20 samples: 0..15 and 16..19; floor(10 * 0.8 / 2) = 4 each:
    # 4 drawn from 0..15, all of 16..19; the rest, 10 - 8 = 2, from the top: 19, 18 (drawn).
    for seed in range(5):
        fade = fm.select_rating_samples(
            activations, 10, top_fraction=0.2, percentiles=(0, 80, 100), seed=seed,
            top_selection="fade",
        )  # fmt: skip
        chosen = set(fade.index.tolist())
        assert len(fade.index) == 8 and len(chosen) == 8
        assert {16, 17, 18, 19} <= chosen and len(chosen - {16, 17, 18, 19}) == 4
        assert fm.TOP_STRATUM not in fade.stratum  # every top sample was drawn already
        distinct = fm.select_rating_samples(
            activations, 10, top_fraction=0.2, percentiles=(0, 80, 100), seed=seed,
            top_selection="distinct",
        )  # fmt: skip
        assert len(distinct.index) == 10 and len(set(distinct.index.tolist())) == 10
        top = distinct.index[distinct.stratum == fm.TOP_STRATUM]
        drawn = set(distinct.index[distinct.stratum == 0].tolist())
        assert top.tolist() == [v for v in range(15, -1, -1) if v not in drawn][:2]
        np.testing.assert_array_equal(distinct.index[:8], fade.index)  # the same strata draws

    # FADE's own strata, 40 samples, 20 rated: bounds 0, 20, 30, 38, 40; floor(20 * 0.9 / 4) = 4
    # from each of 0..19, 20..29, 30..37 and all of 38, 39: 14 drawn; the top 6 are 34..39, of
    # which 38, 39 and those of 34..37 the stratum [30, 38) drew are duplicates.
    for seed in range(5):
        fade = fm.select_rating_samples(np.arange(40.0), 20, seed=seed, top_selection="fade")
        chosen = set(fade.index.tolist())
        third = set(fade.index[fade.stratum == 2].tolist())
        assert len(third) == 4 and third <= set(range(30, 38))
        assert set(range(34, 40)) <= chosen
        assert len(fade.index) == len(chosen) == 14 + len({34, 35, 36, 37} - third)
        assert set(fade.index[fade.stratum == fm.TOP_STRATUM].tolist()) == (
            {34, 35, 36, 37} - third
        )
    with pytest.raises(ValueError, match="top_selection"):
        fm.select_rating_samples(activations, 10, top_selection="all")


def test_fade_top_selection_in_presets_config_and_rating():
    """(d) ``paper`` follows FADE's code, ``small`` keeps the distinct reading; the workflow's
    ``evaluate.top_selection`` overrides the preset; the rating uses the preset's choice."""
    assert PRESETS["paper"].top_selection == "fade"
    assert PRESETS["small"].top_selection == "distinct"
    assert preset_from_config({"preset": "paper", "top_selection": None}).top_selection == "fade"
    chosen = preset_from_config({"preset": "paper", "top_selection": "distinct"})
    assert chosen.top_selection == "distinct" and chosen.n_rated == 500
    assert preset_from_config({"preset": "small", "top_selection": "fade"}).top_selection == "fade"
    with pytest.raises(ValueError, match="evaluate.top_selection"):
        preset_from_config({"preset": "paper", "top_selection": "top"})
    with pytest.raises(ValueError, match="top_selection"):
        fade_preset("small", top_selection="top")

    # 20 held-out samples with activations 1..20; rating 10 as in the hand-computed case above
    model = _model("gpt2")
    transcoder = _transcoder(model)
    _, corpus = _heldout(model, transcoder, n=20)
    rows = _sparse_rows(2, {100 + i: [float(i + 1)] for i in range(20)})
    backend = oracle(lambda text: 0, ["abc"])
    counts = {}
    for top_selection in ("fade", "distinct"):
        preset = fade_preset(
            "small", n_rated=10, top_fraction=0.2, percentiles=(0, 80, 100),
            top_selection=top_selection,
        )  # fmt: skip
        row = evaluate_feature(
            model=model,
            transcoder=transcoder,
            feature=2,
            description="c",
            heldout_activations=rows,
            heldout_tokens=corpus,
            backend=backend,
            preset=preset,
        )
        counts[top_selection] = row["n_rated"]
    assert counts == {"fade": 8, "distinct": 10}
