"""The Transcoder module: shapes, the forward formula, slices, native save/load and bad input."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from circuit_insights.core.errors import InputError
from circuit_insights.transcoders.base import (
    NATIVE_CONFIG_FILENAME,
    NATIVE_WEIGHTS_FILENAME,
    Transcoder,
)

D_MODEL = 16
D_TRANSCODER = 64

CONFIGS = [
    {"activation": "relu"},
    {"activation": "jumprelu"},
    {"activation": "topk", "top_k": 5},
    {"activation": "relu", "center_input": True},
    {"activation": "jumprelu", "skip": True},
    {"activation": "jumprelu", "jumprelu_form": "relu"},
    {"activation": "topk", "top_k": 3, "center_input": True, "skip": True},
]


def make_transcoder(seed: int = 0, **config: object) -> Transcoder:
    """A transcoder with every parameter random (biases and thresholds included)."""
    torch.manual_seed(seed)
    transcoder = Transcoder(D_MODEL, D_TRANSCODER, layer=2, **config)  # type: ignore[arg-type]
    with torch.no_grad():
        for name, param in transcoder.named_parameters():
            param.copy_(torch.randn_like(param) * (0.3 if name == "threshold" else 1.0))
        if transcoder.threshold is not None:
            transcoder.threshold.abs_()
    return transcoder


def reference_forward(transcoder: Transcoder, x: torch.Tensor) -> torch.Tensor:
    """The transcoder formula written out with plain tensor operations."""
    p = {name: param.detach() for name, param in transcoder.named_parameters()}
    x_c = x - p["b_dec_in"] if transcoder.center_input else x
    pre = x_c @ p["W_enc"] + p["b_enc"]
    if transcoder.activation == "relu":
        a = pre.clamp_min(0)
    elif transcoder.activation == "jumprelu":
        kept = pre.clamp_min(0) if transcoder.jumprelu_form == "relu" else pre
        a = torch.where(pre > p["threshold"], kept, torch.zeros_like(pre))
    else:
        a = torch.zeros_like(pre)
        for row in range(pre.shape[0]):
            order = pre[row].argsort(descending=True)[: transcoder.top_k]
            a[row, order] = pre[row, order].clamp_min(0)
    y = a @ p["W_dec"] + p["b_dec_out"]
    if transcoder.skip:
        y = y + x @ p["W_skip"]
    return y


@pytest.mark.parametrize("config", CONFIGS)
def test_parameters_have_the_documented_names_and_shapes(config: dict) -> None:
    transcoder = Transcoder(D_MODEL, D_TRANSCODER, **config)
    shapes = {name: tuple(param.shape) for name, param in transcoder.named_parameters()}
    expected = {
        "W_enc": (D_MODEL, D_TRANSCODER),
        "b_enc": (D_TRANSCODER,),
        "W_dec": (D_TRANSCODER, D_MODEL),
        "b_dec_out": (D_MODEL,),
    }
    if config.get("center_input"):
        expected["b_dec_in"] = (D_MODEL,)
    if config["activation"] == "jumprelu":
        expected["threshold"] = (D_TRANSCODER,)
    if config.get("skip"):
        expected["W_skip"] = (D_MODEL, D_MODEL)
    assert shapes == expected
    assert transcoder.d_model == D_MODEL
    assert transcoder.d_transcoder == transcoder.n_features == D_TRANSCODER
    assert all(param.dtype == torch.float32 for param in transcoder.parameters())


@pytest.mark.parametrize("config", CONFIGS)
def test_forward_matches_the_formula(config: dict) -> None:
    transcoder = make_transcoder(**config)
    x = torch.randn(7, D_MODEL)
    torch.testing.assert_close(transcoder(x), reference_forward(transcoder, x))
    y_true = torch.randn(7, D_MODEL)
    torch.testing.assert_close(transcoder.error(x, y_true), y_true - transcoder(x))


def test_forward_keeps_leading_dimensions() -> None:
    transcoder = make_transcoder(activation="relu", skip=True)
    x = torch.randn(2, 5, D_MODEL)  # (batch, pos, d_model)
    assert transcoder.encode(x).shape == (2, 5, D_TRANSCODER)
    torch.testing.assert_close(transcoder(x)[1], transcoder(x[1]))


def test_jumprelu_is_strict_at_the_threshold() -> None:
    transcoder = make_transcoder(activation="jumprelu")
    pre = transcoder.threshold.detach().clone().unsqueeze(0)  # exactly at the threshold
    assert torch.all(transcoder.activate(pre) == 0)
    assert torch.all(transcoder.activate(pre + 1e-3) > 0)


@pytest.mark.parametrize(
    ("form", "expected"), [("pre", [-0.5, 0.0, 0.5]), ("relu", [0.0, 0.0, 0.5])]
)
def test_jumprelu_forms_differ_only_below_zero(form: str, expected: list[float]) -> None:
    """``pre``: pre * (pre > threshold) (circuit-tracer); ``relu``: relu(pre) * (pre > threshold)
    (sae-lens, Gemma Scope). A negative threshold lets -0.5 through only in the first."""
    transcoder = Transcoder(D_MODEL, 3, activation="jumprelu", jumprelu_form=form)  # type: ignore[arg-type]
    with torch.no_grad():
        transcoder.threshold.copy_(torch.tensor([-1.0, -1.0, 0.1]))
    pre = torch.tensor([[-0.5, -2.0, 0.5]])
    torch.testing.assert_close(transcoder.activate(pre), torch.tensor([expected]))
    torch.testing.assert_close(
        transcoder.encode_slice(torch.zeros(1, D_MODEL), 0, 3),
        transcoder.activate(transcoder.pre_activation(torch.zeros(1, D_MODEL))),
    )


def test_native_config_without_jumprelu_form_loads_as_before(tmp_path) -> None:
    """Files written before ``jumprelu_form`` existed meant ``pre * (pre > threshold)``."""
    transcoder = make_transcoder(activation="jumprelu")
    transcoder.save(tmp_path)
    config_path = tmp_path / NATIVE_CONFIG_FILENAME
    config = json.loads(config_path.read_text())
    del config["jumprelu_form"]
    config_path.write_text(json.dumps(config))
    assert Transcoder.load(tmp_path).jumprelu_form == "pre"


def test_topk_keeps_the_k_largest_positive_activations() -> None:
    transcoder = make_transcoder(activation="topk", top_k=4)
    activations = transcoder.encode(torch.randn(20, D_MODEL))
    assert torch.all((activations > 0).sum(dim=-1) <= 4)
    assert torch.all(activations >= 0)
    pre = transcoder.pre_activation(torch.zeros(1, D_MODEL)).detach()
    kept = transcoder.activate(pre)[0]
    cutoff = pre[0].topk(4).values.min()
    assert torch.equal(kept > 0, (pre[0] >= cutoff) & (pre[0] > 0))


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize(("start", "stop"), [(0, D_TRANSCODER), (5, 17), (63, 64)])
def test_encode_slice_equals_the_slice_of_encode(config: dict, start: int, stop: int) -> None:
    transcoder = make_transcoder(**config)
    x = torch.randn(9, D_MODEL)
    torch.testing.assert_close(
        transcoder.encode_slice(x, start, stop), transcoder.encode(x)[..., start:stop]
    )


@pytest.mark.parametrize(("start", "stop"), [(-1, 3), (3, 3), (10, 65)])
def test_encode_slice_rejects_ranges_outside_the_features(start: int, stop: int) -> None:
    with pytest.raises(InputError, match="feature slice"):
        make_transcoder().encode_slice(torch.randn(2, D_MODEL), start, stop)


def test_skip_decode_needs_the_input() -> None:
    transcoder = make_transcoder(activation="relu", skip=True)
    x = torch.randn(3, D_MODEL)
    with pytest.raises(InputError, match="skip"):
        transcoder.decode(transcoder.encode(x))
    torch.testing.assert_close(transcoder.decode(transcoder.encode(x), x), transcoder(x))


def test_input_of_the_wrong_width_is_rejected() -> None:
    with pytest.raises(InputError, match="d_model=16"):
        make_transcoder()(torch.randn(3, D_MODEL + 1))


def test_inputs_are_computed_in_the_parameter_dtype_and_the_module_moves() -> None:
    transcoder = make_transcoder(activation="jumprelu", center_input=True)
    x = torch.randn(4, D_MODEL, dtype=torch.float64)
    assert transcoder(x).dtype == torch.float32
    as_double = transcoder.to(torch.float64)
    assert as_double.dtype == torch.float64
    assert as_double(x).dtype == torch.float64


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"activation": "gelu"}, "activation"),
        ({"activation": "topk"}, "top_k"),
        ({"activation": "topk", "top_k": D_TRANSCODER + 1}, "top_k"),
        ({"activation": "relu", "top_k": 3}, "top_k"),
        ({"input_hook": "resid_post"}, "input_hook"),
        ({"output_hook": "resid_post"}, "output_hook"),
        ({"layer": -1}, "layer"),
        ({"activation": "jumprelu", "jumprelu_form": "step"}, "jumprelu_form"),
    ],
)
def test_bad_config_raises_input_error(kwargs: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        Transcoder(D_MODEL, D_TRANSCODER, **kwargs)


@pytest.mark.parametrize("config", CONFIGS)
def test_save_and_load_round_trip(tmp_path, config: dict) -> None:
    transcoder = make_transcoder(**config, input_hook="mlp_in_unaffine")
    transcoder.save(tmp_path / "tc")
    saved_config = json.loads((tmp_path / "tc" / NATIVE_CONFIG_FILENAME).read_text())
    assert saved_config == {"format_version": 1, **transcoder.config()}
    loaded = Transcoder.load(tmp_path / "tc")
    assert loaded.config() == transcoder.config()
    x = torch.randn(6, D_MODEL)
    torch.testing.assert_close(loaded(x), transcoder(x))
    assert not any(path.name.endswith(".partial") for path in (tmp_path / "tc").iterdir())


def test_load_reports_a_missing_file(tmp_path) -> None:
    make_transcoder().save(tmp_path)
    (tmp_path / NATIVE_WEIGHTS_FILENAME).unlink()
    with pytest.raises(InputError, match=NATIVE_WEIGHTS_FILENAME):
        Transcoder.load(tmp_path)


def test_load_reports_an_unknown_format_version(tmp_path) -> None:
    make_transcoder().save(tmp_path)
    config_path = tmp_path / NATIVE_CONFIG_FILENAME
    config = json.loads(config_path.read_text())
    config["format_version"] = 99
    config_path.write_text(json.dumps(config))
    with pytest.raises(InputError, match="format_version"):
        Transcoder.load(tmp_path)


def test_load_reports_a_missing_tensor(tmp_path) -> None:
    transcoder = make_transcoder(activation="jumprelu")
    transcoder.save(tmp_path)
    tensors = {name: p.detach() for name, p in transcoder.named_parameters() if name != "threshold"}
    save_file(tensors, str(tmp_path / NATIVE_WEIGHTS_FILENAME))
    with pytest.raises(InputError, match="missing tensor 'threshold'"):
        Transcoder.load(tmp_path)


def test_load_reports_the_mismatching_dimension(tmp_path) -> None:
    transcoder = make_transcoder()
    transcoder.save(tmp_path)
    tensors = {name: p.detach() for name, p in transcoder.named_parameters()}
    tensors["W_dec"] = torch.randn(D_TRANSCODER, D_MODEL + 2)
    save_file(tensors, str(tmp_path / NATIVE_WEIGHTS_FILENAME))
    with pytest.raises(InputError) as error:
        Transcoder.load(tmp_path)
    message = str(error.value)
    assert str(tmp_path / NATIVE_WEIGHTS_FILENAME) in message
    assert "'W_dec' dimension 1" in message and "d_model=16" in message
