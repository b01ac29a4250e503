"""Transcoder training on synthetic data from a known sparse dictionary."""

from __future__ import annotations

import logging

import pytest
import torch

from circuit_insights.core.errors import InputError
from circuit_insights.transcoders.base import Transcoder
from circuit_insights.transcoders.training import evaluate_transcoder, train_transcoder

D_MODEL = 64
N_TRUE = 32
TRUE_L0 = 3.0


pytestmark = pytest.mark.usefixtures("single_thread")


class SparseMap:
    """x = codes @ E + b_x, y = codes @ D + b_y with ~TRUE_L0 active codes in [1, 2] per token."""

    def __init__(self, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.E = torch.nn.functional.normalize(torch.randn(N_TRUE, D_MODEL, generator=generator))
        self.D = torch.nn.functional.normalize(torch.randn(N_TRUE, D_MODEL, generator=generator))
        self.b_x = torch.randn(D_MODEL, generator=generator)
        self.b_y = torch.randn(D_MODEL, generator=generator)

    def pairs(self, n_tokens: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        active = torch.rand(n_tokens, N_TRUE, generator=generator) < TRUE_L0 / N_TRUE
        codes = active * (1 + torch.rand(n_tokens, N_TRUE, generator=generator))
        return codes @ self.E + self.b_x, codes @ self.D + self.b_y


@pytest.fixture(scope="module")
def sparse_map() -> SparseMap:
    return SparseMap()


def test_training_recovers_a_sparse_map(sparse_map: SparseMap, caplog) -> None:
    data = [sparse_map.pairs(2048, seed) for seed in range(1, 9)]
    held_out = [sparse_map.pairs(4096, seed=100)]
    with caplog.at_level(logging.INFO, logger="circuit_insights.transcoders.training"):
        transcoder, report = train_transcoder(
            data,
            d_model=D_MODEL,
            d_transcoder=2 * N_TRUE,
            l1_coefficient=1.0,
            learning_rate=1e-3,
            steps=2000,
            seed=0,
            batch_size=256,
            held_out=held_out,
            log_every=500,
            layer=4,
        )
    assert report.fvu < 0.1
    assert 0.6 * TRUE_L0 <= report.mean_l0 <= 2.0 * TRUE_L0
    assert report.steps == 2000 and report.n_train_tokens == 2000 * 256
    assert report.n_held_out_tokens == 4096
    assert 0.0 <= report.dead_share < 0.75
    assert transcoder.layer == 4 and transcoder.W_enc.dtype == torch.float32
    # the report is measured on raw activations (the training scales are folded in)
    assert evaluate_transcoder(transcoder, held_out)["fvu"] == pytest.approx(report.fvu)
    assert any("step 500/2000" in record.message for record in caplog.records)


def small_run(sparse_map: SparseMap, seed: int, **overrides) -> tuple[Transcoder, object]:
    arguments = {
        "d_model": D_MODEL,
        "d_transcoder": 48,
        "l1_coefficient": 1.0,
        "learning_rate": 1e-3,
        "steps": 60,
        "seed": seed,
        "batch_size": 128,
        "held_out_tokens": 256,
        "log_every": 0,
    }
    arguments.update(overrides)
    data = [sparse_map.pairs(1024, chunk) for chunk in range(3)]
    return train_transcoder(data, **arguments)  # type: ignore[arg-type]


def test_training_is_deterministic_given_the_seed(sparse_map: SparseMap) -> None:
    first, first_report = small_run(sparse_map, seed=7)
    second, second_report = small_run(sparse_map, seed=7)
    other, _ = small_run(sparse_map, seed=8)
    for name, param in first.named_parameters():
        assert torch.equal(param, dict(second.named_parameters())[name]), name
    assert first_report.fvu == second_report.fvu
    assert not torch.equal(first.W_dec, other.W_dec)


def test_held_out_rows_are_never_trained_on_and_one_shot_sources_stop(
    sparse_map: SparseMap, caplog
) -> None:
    chunks = [sparse_map.pairs(250, seed) for seed in range(4)]  # 1000 rows
    with caplog.at_level(logging.WARNING, logger="circuit_insights.transcoders.training"):
        _, report = train_transcoder(
            iter(chunks),
            d_model=D_MODEL,
            d_transcoder=48,
            l1_coefficient=1.0,
            learning_rate=1e-3,
            steps=100,
            seed=0,
            batch_size=100,
            held_out_tokens=300,
            log_every=0,
        )
    # 700 training rows in chunks of 200, 250, 250 -> minibatches 100+100, 100+100+50, 100+100+50
    assert report.n_held_out_tokens == 300
    assert report.n_train_tokens == 700
    assert report.steps == 8
    assert any("exhausted" in record.message for record in caplog.records)


def test_re_iterable_and_callable_sources_repeat_without_the_held_out_rows(
    sparse_map: SparseMap,
) -> None:
    chunks = [sparse_map.pairs(250, seed) for seed in range(4)]
    for source in (chunks, lambda: iter(chunks)):
        _, report = train_transcoder(
            source,
            d_model=D_MODEL,
            d_transcoder=48,
            l1_coefficient=1.0,
            learning_rate=1e-3,
            steps=20,
            seed=0,
            batch_size=100,
            held_out_tokens=300,
            log_every=0,
        )
        assert report.steps == 20
        # per pass: 700 rows in 8 minibatches (see above); 20 steps = 2 passes + 4 minibatches
        assert report.n_train_tokens == 2 * 700 + 400


@pytest.mark.parametrize(
    "overrides",
    [
        {"activation": "topk", "top_k": 4, "l1_coefficient": 0.0},
        {"center_input": True},
        {"skip": True},
    ],
)
def test_variants_train_and_work_on_raw_activations(sparse_map: SparseMap, overrides) -> None:
    transcoder, report = small_run(sparse_map, seed=0, steps=150, **overrides)
    assert report.fvu < 0.9
    if overrides.get("activation") == "topk":
        assert report.mean_l0 <= 4
    x, y = sparse_map.pairs(512, seed=50)
    fvu = evaluate_transcoder(transcoder, [(x, y)])["fvu"]
    assert fvu < 0.9


def test_evaluate_transcoder_measures_an_exact_map() -> None:
    torch.manual_seed(0)
    transcoder = Transcoder(8, 16, activation="jumprelu")
    with torch.no_grad():
        transcoder.threshold.fill_(0.5)
        transcoder.b_enc.fill_(-100.0)  # only features 0..3 can ever fire
        transcoder.b_enc[:4] = 0.0
    x = torch.randn(300, 8)
    y = transcoder(x).detach()
    metrics = evaluate_transcoder(transcoder, [(x[:100], y[:100]), (x[100:], y[100:])])
    assert metrics["fvu"] == pytest.approx(0.0, abs=1e-10)
    assert metrics["mse"] == pytest.approx(0.0, abs=1e-10)
    expected_l0 = float((transcoder.encode(x) > 0).sum(dim=-1).float().mean())
    assert metrics["mean_l0"] == pytest.approx(expected_l0)
    assert metrics["dead_share"] == pytest.approx(12 / 16)
    assert metrics["n_tokens"] == 300


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"activation": "jumprelu"}, "jumprelu"),
        ({"steps": 0}, "steps"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"l1_coefficient": -1.0}, "l1_coefficient"),
        ({"d_model": D_MODEL + 1}, "d_model"),
        ({"held_out_tokens": 0}, "held-out"),
    ],
)
def test_bad_arguments_raise_input_error(sparse_map: SparseMap, overrides, message) -> None:
    with pytest.raises(InputError, match=message):
        small_run(sparse_map, seed=0, **overrides)


def test_all_rows_held_out_is_an_error(sparse_map: SparseMap) -> None:
    with pytest.raises(InputError, match="no training rows"):
        train_transcoder(
            [sparse_map.pairs(100, 0)],
            d_model=D_MODEL,
            d_transcoder=8,
            l1_coefficient=1.0,
            learning_rate=1e-3,
            steps=5,
            seed=0,
            held_out_tokens=100,
        )


def test_clean_loss_computed_once_gives_the_same_report(tmp_path) -> None:
    import numpy as np

    from circuit_insights.core.io import write_json_atomic
    from circuit_insights.transcoders.splicing import mean_next_token_loss, spliced_loss_report
    from circuit_insights.transcoders.training import clean_loss_record, read_clean_loss
    from tests.conftest import tiny_subject_model

    model = tiny_subject_model("llama")
    tokens = np.random.default_rng(0).integers(3, model.vocab_size, (6, 12))
    tokens[:, 0] = model.bos_token_id
    torch.manual_seed(0)
    transcoder = Transcoder(model.d_model, 16, layer=1)
    path = tmp_path / "clean_loss.json"
    write_json_atomic(
        clean_loss_record(mean_next_token_loss(model, tokens, 4), "tiny", tokens), path
    )
    stored = read_clean_loss(path, "tiny", tokens)
    assert spliced_loss_report(model, transcoder, 1, tokens, 4, clean=stored) == (
        spliced_loss_report(model, transcoder, 1, tokens, 4)
    )
    with pytest.raises(InputError, match="not 'other'"):
        read_clean_loss(path, "other", tokens)
    changed = tokens.copy()
    changed[0, 1] += 1
    with pytest.raises(InputError, match="other tokens"):
        read_clean_loss(path, "tiny", changed)
    with pytest.raises(InputError, match="missing.json"):
        read_clean_loss(tmp_path / "missing.json", "tiny", tokens)


def test_next_token_loss_equals_the_loss_of_the_shifted_logits(family) -> None:
    """The loss read from the logits in place (last position ignored) is the mean cross-entropy
    of the logits without their last position against the next tokens, clean and spliced."""
    import numpy as np

    from circuit_insights.models.loading import iter_context_batches
    from circuit_insights.transcoders.splicing import mean_next_token_loss
    from tests.conftest import tiny_subject_model

    model = tiny_subject_model(family)
    tokens = np.random.default_rng(1).integers(3, model.vocab_size - 1, (7, 10))

    def shifted(batch_size: int) -> float:  # the computation before: a copy of the shifted logits
        total, count = 0.0, 0
        for _, ids in iter_context_batches(tokens, np.arange(len(tokens)), batch_size):
            logits = model.logits(ids)
            total += float(
                torch.nn.functional.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.shape[-1]),
                    ids[:, 1:].reshape(-1),
                    reduction="sum",
                )
            )
            count += ids[:, 1:].numel()
        return total / count

    assert mean_next_token_loss(model, tokens, 3) == pytest.approx(shifted(3), rel=1e-6)
    torch.manual_seed(0)
    with model.splice({1: Transcoder(model.d_model, 16, layer=1)}):
        assert mean_next_token_loss(model, tokens, 4) == pytest.approx(shifted(4), rel=1e-6)


def test_a_caching_split_shorter_than_train_contexts_stops_the_job_naming_key_and_file():
    """Never a silent cap: 5 contexts held, 8 asked -> the key, both counts and the file."""
    import numpy as np

    from circuit_insights.pipeline.stages.collect_pairs import training_contexts

    tokens = np.arange(5 * 4, dtype=np.int32).reshape(5, 4)
    assert training_contexts(tokens, 3, model_name="m", tokens_path="t.parquet").shape == (3, 4)
    assert training_contexts(tokens, 5, model_name="m", tokens_path="t.parquet").shape == (5, 4)
    with pytest.raises(InputError) as caught:
        training_contexts(tokens, 8, model_name="m", tokens_path="results/m/corpus/tokens.parquet")
    text = str(caught.value)
    assert "models.m.transcoders.train_contexts" in text
    assert "8 contexts" in text and "holds 5" in text
    assert "results/m/corpus/tokens.parquet" in text
