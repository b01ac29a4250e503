"""Loaders of the published formats, on tiny files the tests write in exactly those formats.

Each test compares the loaded Transcoder's forward with a reference computed from the raw arrays
with the format's own conventions (numpy, float64), so orientation, centering, bias and skip
mistakes all show. The fixtures follow the publishers' code (docs/transcoders.md, "Evidence"):
Dunefsky's ``SparseAutoencoder.save_model`` / ``forward``; Google's ``JumpReLUSAE`` (Gemma Scope
tutorial; ``relu(pre) * (pre > threshold)``); circuit-tracer's ``SingleLayerTranscoder`` with the
``W_dec`` layout of the pinned mntss Llama files ((d_model, d_transcoder), transposed on load by
circuit-tracer d797c82's ``load_relu_transcoder``) or of current repositories.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.numpy import save_file

from circuit_insights.core.errors import InputError
from circuit_insights.transcoders.base import Transcoder
from circuit_insights.transcoders.formats import load_transcoder
from circuit_insights.transcoders.formats.circuit_tracer import read_circuit_tracer_config
from circuit_insights.transcoders.formats.common import (
    has_post_mlp_norm,
    output_hook_from_transformerlens,
)
from circuit_insights.transcoders.formats.dunefsky import read_torch_checkpoint

D_MODEL = 16
D_SAE = 64
DUNEFSKY_NAME = "final_sparse_autoencoder_gpt2-small_blocks.{layer}.ln2.hook_normalized_64.pt"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def normal(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def assert_forward_matches(transcoder: Transcoder, reference, rng: np.random.Generator) -> None:
    x = normal(rng, 11, D_MODEL)
    expected = reference(x.astype(np.float64))
    actual = transcoder(torch.from_numpy(x)).detach().double().numpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)
    active = transcoder.encode(torch.from_numpy(x)) > 0
    assert active.any() and not active.all(), "the data must switch features both on and off"


def relu(t: np.ndarray) -> np.ndarray:
    return np.maximum(t, 0.0)


def jumprelu(pre: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """circuit-tracer's JumpReLU (``activation_functions.jumprelu.forward``)."""
    return pre * (pre > threshold)


def jumprelu_google(pre: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """Google's JumpReLU (Gemma Scope tutorial ``JumpReLUSAE.encode``; sae-lens likewise)."""
    return relu(pre) * (pre > threshold)


# --- Dunefsky -------------------------------------------------------------------------------------


def dunefsky_arrays(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "W_enc": normal(rng, D_MODEL, D_SAE),
        "b_enc": normal(rng, D_SAE) * 0.5,
        "W_dec": normal(rng, D_SAE, D_MODEL),
        "b_dec": normal(rng, D_MODEL),
        "b_dec_out": normal(rng, D_MODEL),
    }


def dunefsky_reference(a: dict[str, np.ndarray]):
    return lambda x: relu((x - a["b_dec"]) @ a["W_enc"] + a["b_enc"]) @ a["W_dec"] + a["b_dec_out"]


def write_dunefsky(path: Path, arrays: dict[str, np.ndarray], layer: int, **cfg_fields) -> Path:
    """torch.save({"cfg": <sae_training.config.LanguageModelSAERunnerConfig>, "state_dict": ...}).

    The config class lives in a throwaway module that is removed again, as on a machine without
    Dunefsky's code.
    """
    package = types.ModuleType("sae_training")
    module = types.ModuleType("sae_training.config")

    @dataclasses.dataclass
    class LanguageModelSAERunnerConfig:
        model_name: str = "gpt2-small"
        hook_point: str = f"blocks.{layer}.ln2.hook_normalized"
        hook_point_layer: int = layer
        d_in: int = D_MODEL
        is_transcoder: bool = True
        out_hook_point: str = f"blocks.{layer}.hook_mlp_out"
        dtype: torch.dtype = torch.float32
        device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
        l1_coefficient: float = 1.4e-4

    LanguageModelSAERunnerConfig.__module__ = "sae_training.config"
    LanguageModelSAERunnerConfig.__qualname__ = "LanguageModelSAERunnerConfig"
    module.LanguageModelSAERunnerConfig = LanguageModelSAERunnerConfig
    sys.modules["sae_training"], sys.modules["sae_training.config"] = package, module
    try:
        state_dict = {key: torch.from_numpy(value) for key, value in arrays.items()}
        cfg = LanguageModelSAERunnerConfig(**cfg_fields)
        torch.save({"cfg": cfg, "state_dict": state_dict}, path)
    finally:
        del sys.modules["sae_training.config"], sys.modules["sae_training"]
    return path


def test_dunefsky_file_loads_with_centering_and_output_bias(tmp_path, rng) -> None:
    arrays = dunefsky_arrays(rng)
    path = write_dunefsky(tmp_path / DUNEFSKY_NAME.format(layer=3), arrays, layer=3)
    transcoder = load_transcoder(path, "dunefsky", layer=3, d_model=D_MODEL)
    assert transcoder.config() == {
        "d_model": D_MODEL,
        "d_transcoder": D_SAE,
        "activation": "relu",
        "top_k": None,
        "center_input": True,
        "skip": False,
        "layer": 3,
        "input_hook": "mlp_in_unaffine",
        "output_hook": "mlp_out",
        "jumprelu_form": "pre",
    }
    assert_forward_matches(transcoder, dunefsky_reference(arrays), rng)


def test_dunefsky_directory_picks_the_layer_file(tmp_path, rng) -> None:
    arrays = {layer: dunefsky_arrays(rng) for layer in (1, 11)}
    for layer, layer_arrays in arrays.items():
        write_dunefsky(tmp_path / DUNEFSKY_NAME.format(layer=layer), layer_arrays, layer=layer)
    sparsity = tmp_path / DUNEFSKY_NAME.format(layer=1).replace(".pt", "_log_feature_sparsity.pt")
    torch.save(torch.zeros(D_SAE), sparsity)
    transcoder = load_transcoder(tmp_path, "dunefsky", layer=1)
    assert_forward_matches(transcoder, dunefsky_reference(arrays[1]), rng)


def test_dunefsky_plain_state_dict_without_cfg(tmp_path, rng) -> None:
    arrays = dunefsky_arrays(rng)
    path = tmp_path / DUNEFSKY_NAME.format(layer=0)
    torch.save({key: torch.from_numpy(value) for key, value in arrays.items()}, path)
    transcoder = load_transcoder(path, "dunefsky", layer=0)
    assert (transcoder.input_hook, transcoder.output_hook) == ("mlp_in_unaffine", "mlp_out")
    assert_forward_matches(transcoder, dunefsky_reference(arrays), rng)


def test_pickled_cfg_is_read_without_its_class(tmp_path, rng) -> None:
    path = write_dunefsky(tmp_path / DUNEFSKY_NAME.format(layer=2), dunefsky_arrays(rng), layer=2)
    checkpoint = read_torch_checkpoint(path)
    cfg = checkpoint["cfg"]
    assert type(cfg).__name__ == "LanguageModelSAERunnerConfig"
    assert cfg.hook_point == "blocks.2.ln2.hook_normalized"
    assert cfg.dtype == torch.float32 and cfg.device == torch.device("cpu")


class _Exploit:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.makedirs, (self.target,))


def test_checkpoint_globals_are_never_called(tmp_path) -> None:
    target = tmp_path / "created-by-unpickling"
    path = tmp_path / "evil.pt"
    torch.save({"cfg": _Exploit(str(target)), "state_dict": {}}, path)
    try:
        read_torch_checkpoint(path)  # a stand-in takes the call, or torch refuses the module
    except InputError:
        pass
    assert not target.exists()


def test_dunefsky_cfg_layer_and_width_are_checked(tmp_path, rng) -> None:
    path = write_dunefsky(tmp_path / "tc.pt", dunefsky_arrays(rng), layer=4)
    with pytest.raises(InputError, match="hook_point_layer is 4, not layer 5"):
        load_transcoder(path, "dunefsky", layer=5)
    with pytest.raises(InputError, match=r"d_model mismatch.*d_in is 16"):
        load_transcoder(path, "dunefsky", layer=4, d_model=768)


# --- GemmaScope -----------------------------------------------------------------------------------


def gemmascope_arrays(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "W_enc": normal(rng, D_MODEL, D_SAE),
        "W_dec": normal(rng, D_SAE, D_MODEL),
        "b_enc": normal(rng, D_SAE) * 0.5,
        "b_dec": normal(rng, D_MODEL),
        "threshold": np.abs(normal(rng, D_SAE)),
    }


def gemmascope_reference(a: dict[str, np.ndarray]):
    return lambda x: (
        jumprelu_google(x @ a["W_enc"] + a["b_enc"], a["threshold"]) @ a["W_dec"] + a["b_dec"]
    )


def test_gemmascope_npz_loads_as_jumprelu_with_output_bias(tmp_path, rng) -> None:
    arrays = gemmascope_arrays(rng)
    np.savez(tmp_path / "params.npz", **arrays)
    transcoder = load_transcoder(tmp_path / "params.npz", "gemmascope", layer=0, d_model=D_MODEL)
    assert transcoder.activation == "jumprelu" and not transcoder.center_input
    assert (transcoder.input_hook, transcoder.output_hook) == (
        "mlp_in_unaffine",
        "mlp_out_post_norm",
    )
    assert_forward_matches(transcoder, gemmascope_reference(arrays), rng)


def test_gemmascope_repository_layout_picks_the_lowest_l0(tmp_path, rng) -> None:
    low, high = gemmascope_arrays(rng), gemmascope_arrays(rng)
    for l0, arrays in ((12, low), (40, high)):
        folder = tmp_path / "layer_3" / "width_16k" / f"average_l0_{l0}"
        folder.mkdir(parents=True)
        np.savez(folder / "params.npz", **arrays)
    transcoder = load_transcoder(tmp_path, "gemmascope", layer=3)
    assert_forward_matches(transcoder, gemmascope_reference(low), rng)
    with pytest.raises(InputError, match="path is for layer 3, not layer 4"):
        load_transcoder(
            tmp_path / "layer_3/width_16k/average_l0_12/params.npz", "gemmascope", layer=4
        )


# --- circuit-tracer -------------------------------------------------------------------------------


def skip_transcoder_arrays(
    rng: np.random.Generator,
    *,
    threshold: bool = False,
    layout: str = "current",
    d_model: int = D_MODEL,
) -> dict:
    """A circuit-tracer layer file's tensors.

    ``layout="pinned"``: ``W_dec`` stored (d_model, d_transcoder), as in
    ``mntss/skip-transcoder-Llama-3.2-1B-131k-nobos@new-training`` (circuit-tracer d797c82's
    ``load_relu_transcoder`` transposes it into its (d_transcoder, d_model) parameter);
    ``"current"``: (d_transcoder, d_model), read as is by circuit-tracer 0.5.
    """
    arrays = {
        "W_enc": normal(rng, D_SAE, d_model),  # (d_transcoder, d_model): F.linear(x, W_enc, b_enc)
        "W_dec": normal(rng, D_SAE, d_model),
        "b_enc": normal(rng, D_SAE) * 0.5,
        "b_dec": normal(rng, d_model),
        "W_skip": normal(rng, d_model, d_model),  # applied as x @ W_skip.T
    }
    if layout == "pinned":
        arrays["W_dec"] = np.ascontiguousarray(arrays["W_dec"].T)
    if threshold:
        arrays["activation_function.threshold"] = np.abs(normal(rng, D_SAE))
    return arrays


def skip_transcoder_reference(a: dict[str, np.ndarray]):
    """circuit-tracer's forward: ``acts @ W_dec + b_dec + x @ W_skip.T``, ``W_dec`` features first."""
    W_dec = a["W_dec"] if a["W_dec"].shape[0] == a["b_enc"].shape[0] else a["W_dec"].T

    def forward(x: np.ndarray) -> np.ndarray:
        pre = x @ a["W_enc"].T + a["b_enc"]
        if "activation_function.threshold" in a:
            acts = jumprelu(pre, a["activation_function.threshold"])
        else:
            acts = relu(pre)
        return acts @ W_dec + a["b_dec"] + x @ a["W_skip"].T

    return forward


def write_yaml(path: Path, content: dict) -> None:
    path.write_text(yaml.safe_dump(content))


@pytest.mark.parametrize("layout", ["pinned", "current"])
@pytest.mark.parametrize("threshold", [False, True])
def test_mntss_skip_transcoder_repository(tmp_path, rng, threshold: bool, layout: str) -> None:
    arrays = {
        layer: skip_transcoder_arrays(rng, threshold=threshold, layout=layout) for layer in range(2)
    }
    for layer, layer_arrays in arrays.items():
        save_file(layer_arrays, str(tmp_path / f"layer_{layer}.safetensors"))
    write_yaml(
        tmp_path / "config.yaml",
        {
            "model_kind": "transcoder_set",
            "model_name": "meta-llama/Llama-3.2-1B",
            "feature_input_hook": "hook_resid_mid",
            "feature_output_hook": "mlp.hook_out",
            "scan": "mntss/skip-transcoder-Llama-3.2-1B-131k-nobos",
        },
    )
    transcoder = load_transcoder(tmp_path, "circuit_tracer", layer=1, d_model=D_MODEL)
    assert transcoder.skip and transcoder.layer == 1
    assert transcoder.activation == ("jumprelu" if threshold else "relu")
    assert (transcoder.input_hook, transcoder.output_hook) == ("resid_mid", "mlp_out")
    assert_forward_matches(transcoder, skip_transcoder_reference(arrays[1]), rng)


def test_circuit_tracer_packaged_config_with_layer_entries(tmp_path, rng) -> None:
    arrays = skip_transcoder_arrays(rng)
    del arrays["W_skip"]
    save_file(arrays, str(tmp_path / "tc_l0.safetensors"))
    write_yaml(
        tmp_path / "config.yaml",
        {
            "model_name": "meta-llama/Llama-3.2-1B",
            "feature_input_hook": "hook_resid_mid",
            "feature_output_hook": "mlp.hook_out",
            "transcoders": [{"id": "relu-0", "layer": 0, "filepath": "tc_l0.safetensors"}],
        },
    )
    transcoder = load_transcoder(tmp_path, "circuit_tracer", layer=0)
    assert not transcoder.skip
    assert_forward_matches(
        transcoder,
        lambda x: relu(x @ arrays["W_enc"].T + arrays["b_enc"]) @ arrays["W_dec"] + arrays["b_dec"],
        rng,
    )


def gemma_scope_2_arrays(rng: np.random.Generator, *, affine: bool) -> dict[str, np.ndarray]:
    arrays = {
        "w_enc": normal(rng, D_MODEL, D_SAE),
        "w_dec": normal(rng, D_SAE, D_MODEL),
        "b_enc": normal(rng, D_SAE) * 0.5,
        "b_dec": normal(rng, D_MODEL),
        "threshold": np.abs(normal(rng, D_SAE)),
    }
    if affine:
        arrays["affine_skip_connection"] = normal(rng, D_MODEL, D_MODEL)  # x @ asc
    return arrays


def gemma_scope_2_reference(a: dict[str, np.ndarray]):
    def forward(x: np.ndarray) -> np.ndarray:
        y = jumprelu_google(x @ a["w_enc"] + a["b_enc"], a["threshold"]) @ a["w_dec"] + a["b_dec"]
        if "affine_skip_connection" in a:
            y = y + x @ a["affine_skip_connection"]
        return y

    return forward


@pytest.mark.parametrize("affine", [False, True])
def test_gemma_scope_2_repository_with_hf_references(tmp_path, rng, affine: bool) -> None:
    suffix = "_affine" if affine else ""
    references, arrays = [], {}
    for layer in range(2):
        inside = f"transcoder_all/layer_{layer}_width_16k_l0_small{suffix}/params.safetensors"
        arrays[layer] = gemma_scope_2_arrays(rng, affine=affine)
        (tmp_path / inside).parent.mkdir(parents=True)
        save_file(arrays[layer], str(tmp_path / inside))
        references.append(f"hf://google/gemma-scope-2-270m-pt/{inside}")
    write_yaml(
        tmp_path / "config.yaml",
        {
            "model_kind": "transcoder_set",
            "model_name": "google/gemma-3-270m",
            "feature_input_hook": "mlp.hook_in",
            "feature_output_hook": "hook_mlp_out",
            "transcoders": references,
        },
    )
    assert read_circuit_tracer_config(tmp_path).transcoders[1] == references[1]
    transcoder = load_transcoder(tmp_path, "circuit_tracer", layer=1, d_model=D_MODEL)
    assert transcoder.activation == "jumprelu" and transcoder.skip == affine
    assert (transcoder.input_hook, transcoder.output_hook) == ("mlp_in", "mlp_out_post_norm")
    assert_forward_matches(transcoder, gemma_scope_2_reference(arrays[1]), rng)


def test_gemma_scope_2_file_without_config_uses_its_documented_hooks(tmp_path, rng) -> None:
    arrays = gemma_scope_2_arrays(rng, affine=True)
    save_file(arrays, str(tmp_path / "params.safetensors"))
    transcoder = load_transcoder(tmp_path / "params.safetensors", "circuit_tracer", layer=0)
    assert (transcoder.input_hook, transcoder.output_hook) == ("mlp_in", "mlp_out_post_norm")
    assert_forward_matches(transcoder, gemma_scope_2_reference(arrays), rng)


def test_circuit_tracer_config_pointing_at_gemmascope_npz(tmp_path, rng) -> None:
    arrays = gemmascope_arrays(rng)
    inside = "layer_0/width_16k/average_l0_76/params.npz"
    (tmp_path / inside).parent.mkdir(parents=True)
    np.savez(tmp_path / inside, **arrays)
    write_yaml(
        tmp_path / "config.yaml",
        {
            "model_name": "google/gemma-2-2b",
            "feature_input_hook": "ln2.hook_normalized",
            "feature_output_hook": "hook_mlp_out",
            "transcoders": [
                {
                    "id": "gemma-2-2b-gemmascope-0-l0-76",
                    "layer": 0,
                    "filepath": f"hf://google/gemma-scope-2b-pt-transcoders/{inside}",
                }
            ],
        },
    )
    transcoder = load_transcoder(tmp_path, "circuit_tracer", layer=0)
    assert (transcoder.input_hook, transcoder.output_hook) == (
        "mlp_in_unaffine",
        "mlp_out_post_norm",
    )
    assert_forward_matches(transcoder, gemmascope_reference(arrays), rng)


def test_hook_overrides_win(tmp_path, rng) -> None:
    np.savez(tmp_path / "params.npz", **gemmascope_arrays(rng))
    transcoder = load_transcoder(
        tmp_path, "gemmascope", layer=0, input_hook="mlp_in", output_hook="mlp_out"
    )
    assert (transcoder.input_hook, transcoder.output_hook) == ("mlp_in", "mlp_out")


def test_native_format_through_load_transcoder(tmp_path) -> None:
    torch.manual_seed(0)
    original = Transcoder(D_MODEL, D_SAE, activation="topk", top_k=4, layer=5)
    original.save(tmp_path)
    loaded = load_transcoder(tmp_path, "native", layer=5, d_model=D_MODEL)
    x = torch.randn(3, D_MODEL)
    torch.testing.assert_close(loaded(x), original(x))
    with pytest.raises(InputError, match="layer 5, not layer 6"):
        load_transcoder(tmp_path, "native", layer=6)
    with pytest.raises(InputError, match="d_model mismatch"):
        load_transcoder(tmp_path, "native", layer=5, d_model=D_MODEL * 2)


# --- bad input, for every format ------------------------------------------------------------------


def write_format(fmt: str, directory: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` in ``fmt`` for layer 0; return the path to hand to load_transcoder."""
    if fmt == "dunefsky":
        return write_dunefsky(directory / DUNEFSKY_NAME.format(layer=0), arrays, layer=0)
    if fmt == "gemmascope":
        np.savez(directory / "params.npz", **arrays)
        return directory / "params.npz"
    if fmt == "circuit_tracer":
        save_file(arrays, str(directory / "layer_0.safetensors"))
        write_yaml(
            directory / "config.yaml",
            {"feature_input_hook": "hook_resid_mid", "feature_output_hook": "mlp.hook_out"},
        )
        return directory
    renames = {"W_enc": "W_enc", "b_enc": "b_enc", "W_dec": "W_dec", "b_dec": "b_dec_out"}
    native = {renames[key]: value for key, value in arrays.items() if key in renames}
    Transcoder(D_MODEL, D_SAE).save(directory)
    save_file(native, str(directory / "transcoder.safetensors"))
    return directory


def valid_arrays(fmt: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    if fmt == "dunefsky":
        return dunefsky_arrays(rng)
    if fmt == "gemmascope":
        return gemmascope_arrays(rng)
    if fmt == "circuit_tracer":
        return skip_transcoder_arrays(rng)
    return gemmascope_arrays(rng)  # native: W_enc (d_model, d_sae) like GemmaScope


FORMATS = ["native", "dunefsky", "gemmascope", "circuit_tracer"]


def weights_file(fmt: str, path: Path) -> Path:
    return {
        "native": path / "transcoder.safetensors",
        "dunefsky": path,
        "gemmascope": path,
        "circuit_tracer": path / "layer_0.safetensors",
    }[fmt]


@pytest.mark.parametrize("fmt", FORMATS)
def test_valid_files_load(tmp_path, rng, fmt: str) -> None:
    path = write_format(fmt, tmp_path, valid_arrays(fmt, rng))
    assert load_transcoder(path, fmt, layer=0, d_model=D_MODEL).d_transcoder == D_SAE


@pytest.mark.parametrize("fmt", FORMATS)
def test_d_model_mismatch_names_the_file_and_dimension(tmp_path, rng, fmt: str) -> None:
    path = write_format(fmt, tmp_path, valid_arrays(fmt, rng))
    with pytest.raises(InputError) as error:
        load_transcoder(path, fmt, layer=0, d_model=D_MODEL + 4)
    message = str(error.value)
    assert "d_model" in message and str(D_MODEL + 4) in message
    if fmt != "native":
        assert str(weights_file(fmt, path)) in message


@pytest.mark.parametrize("fmt", FORMATS)
def test_missing_key_names_the_file_and_key(tmp_path, rng, fmt: str) -> None:
    arrays = valid_arrays(fmt, rng)
    del arrays["b_enc"]
    path = write_format(fmt, tmp_path, arrays)
    with pytest.raises(InputError, match="missing tensor 'b_enc'") as error:
        load_transcoder(path, fmt, layer=0)
    assert str(weights_file(fmt, path)) in str(error.value)


@pytest.mark.parametrize("fmt", FORMATS)
def test_wrong_ndim_names_the_file_and_key(tmp_path, rng, fmt: str) -> None:
    arrays = valid_arrays(fmt, rng)
    arrays["W_dec"] = arrays["W_dec"][None]  # 3 dimensions
    path = write_format(fmt, tmp_path, arrays)
    with pytest.raises(InputError, match=r"'W_dec' has 3 dimension\(s\)") as error:
        load_transcoder(path, fmt, layer=0)
    assert str(weights_file(fmt, path)) in str(error.value)


@pytest.mark.parametrize("fmt", FORMATS)
def test_missing_file_is_named(tmp_path, fmt: str) -> None:
    path = {
        "native": tmp_path,
        "dunefsky": tmp_path / "nothing.pt",
        "gemmascope": tmp_path / "params.npz",
        "circuit_tracer": tmp_path,
    }[fmt]
    with pytest.raises(InputError, match="not found") as error:
        load_transcoder(path, fmt, layer=0)
    assert str(tmp_path) in str(error.value)


def test_inconsistent_feature_count_is_named(tmp_path, rng) -> None:
    arrays = gemmascope_arrays(rng)
    arrays["threshold"] = arrays["threshold"][:-1]
    path = write_format("gemmascope", tmp_path, arrays)
    with pytest.raises(InputError, match=r"'threshold' dimension 0 is 63, expected d_sae=64"):
        load_transcoder(path, "gemmascope", layer=0)


def test_unknown_format_is_rejected(tmp_path) -> None:
    with pytest.raises(InputError, match="format"):
        load_transcoder(tmp_path, "saelens", layer=0)  # type: ignore[arg-type]


def test_unresolvable_hf_reference_is_not_downloaded(tmp_path) -> None:
    write_yaml(
        tmp_path / "config.yaml",
        {
            "feature_input_hook": "mlp.hook_in",
            "feature_output_hook": "hook_mlp_out",
            "transcoders": ["hf://org/repo/layer_0.safetensors"],
        },
    )
    with pytest.raises(InputError, match="never downloaded"):
        load_transcoder(tmp_path, "circuit_tracer", layer=0)
    with pytest.raises(InputError, match="no entry for layer 1"):
        load_transcoder(tmp_path, "circuit_tracer", layer=1)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"feature_output_hook": "hook_mlp_out"}, "'feature_input_hook'"),
        (
            {
                "model_kind": "cross_layer_transcoder",
                "feature_input_hook": "hook_resid_mid",
                "feature_output_hook": "hook_mlp_out",
            },
            "model_kind",
        ),
        (
            {"feature_input_hook": "hook_resid_pre", "feature_output_hook": "hook_mlp_out"},
            "input hook 'hook_resid_pre'",
        ),
    ],
)
def test_bad_circuit_tracer_config_names_the_key(tmp_path, rng, config, message) -> None:
    save_file(skip_transcoder_arrays(rng), str(tmp_path / "layer_0.safetensors"))
    write_yaml(tmp_path / "config.yaml", config)
    with pytest.raises(InputError, match=message) as error:
        load_transcoder(tmp_path, "circuit_tracer", layer=0)
    assert str(tmp_path / "config.yaml") in str(error.value)


def test_pinned_llama_layer_file_without_config_takes_the_fallback_hooks(tmp_path, rng) -> None:
    """The pinned mntss files: W_dec (d_model, d_transcoder), no config.yaml beside them."""
    arrays = skip_transcoder_arrays(rng, layout="pinned")
    assert arrays["W_dec"].shape == (D_MODEL, D_SAE)
    save_file(arrays, str(tmp_path / "layer_3.safetensors"))
    transcoder = load_transcoder(
        tmp_path / "layer_3.safetensors",
        "circuit_tracer",
        layer=3,
        d_model=D_MODEL,
        fallback_hooks=("resid_mid", "mlp_out"),
    )
    assert (transcoder.input_hook, transcoder.output_hook) == ("resid_mid", "mlp_out")
    assert transcoder.W_dec.shape == (D_SAE, D_MODEL) and transcoder.skip
    assert_forward_matches(transcoder, skip_transcoder_reference(arrays), rng)


def test_fallback_hooks_never_override_a_config(tmp_path, rng) -> None:
    save_file(skip_transcoder_arrays(rng), str(tmp_path / "layer_0.safetensors"))
    write_yaml(
        tmp_path / "config.yaml",
        {"feature_input_hook": "hook_resid_mid", "feature_output_hook": "mlp.hook_out"},
    )
    transcoder = load_transcoder(
        tmp_path, "circuit_tracer", layer=0, fallback_hooks=("mlp_in", "mlp_out_post_norm")
    )
    assert (transcoder.input_hook, transcoder.output_hook) == ("resid_mid", "mlp_out")


@pytest.mark.parametrize(
    ("square", "message"),
    [
        (True, "square"),
        (False, r"expected \(d_transcoder=64, d_model=16\) or its transpose"),
    ],
)
def test_circuit_tracer_decoder_of_neither_orientation_is_refused(
    tmp_path, rng, square: bool, message: str
) -> None:
    arrays = skip_transcoder_arrays(rng)
    if square:  # d_transcoder == d_model: the orientation cannot be told
        arrays.update(
            W_enc=normal(rng, D_MODEL, D_MODEL),
            b_enc=normal(rng, D_MODEL),
            W_dec=normal(rng, D_MODEL, D_MODEL),
        )
    else:
        arrays["W_dec"] = normal(rng, D_SAE, D_MODEL + 1)
    save_file(arrays, str(tmp_path / "layer_0.safetensors"))
    with pytest.raises(InputError, match=message) as error:
        load_transcoder(
            tmp_path / "layer_0.safetensors",
            "circuit_tracer",
            layer=0,
            fallback_hooks=("resid_mid", "mlp_out"),
        )
    assert "layer_0.safetensors" in str(error.value) and "'W_dec'" in str(error.value)


# --- JumpReLU: each publisher's form, told apart by a negative threshold --------------------------


def negative_threshold_arrays(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """At x = 0: feature 0 has pre-activation -0.5 above its threshold -1 (and below 0),
    feature 1 has -2 below its threshold -1, feature 2 has 0.5 above its threshold 0.1."""
    return {
        "W_enc": normal(rng, D_MODEL, 3),
        "W_dec": normal(rng, 3, D_MODEL),
        "b_enc": np.array([-0.5, -2.0, 0.5], dtype=np.float32),
        "b_dec": normal(rng, D_MODEL),
        "threshold": np.array([-1.0, -1.0, 0.1], dtype=np.float32),
    }


def write_negative_threshold(fmt: str, directory: Path, a: dict[str, np.ndarray]) -> Path:
    """One transcoder in each JumpReLU layout: GemmaScope npz, Gemma Scope 2 safetensors
    (lower-case names), circuit-tracer layer file (encoder (d_transcoder, d_model),
    ``activation_function.threshold``)."""
    if fmt == "gemmascope":
        np.savez(directory / "params.npz", **a)
        return directory / "params.npz"
    if fmt == "gemma_scope_2":
        renamed = {"w_enc": a["W_enc"], "w_dec": a["W_dec"]}
        renamed.update({key: a[key] for key in ("b_enc", "b_dec", "threshold")})
        save_file(renamed, str(directory / "params.safetensors"))
        return directory / "params.safetensors"
    tracer = {
        "W_enc": np.ascontiguousarray(a["W_enc"].T),
        "W_dec": a["W_dec"],
        "b_enc": a["b_enc"],
        "b_dec": a["b_dec"],
        "activation_function.threshold": a["threshold"],
    }
    save_file(tracer, str(directory / "layer_0.safetensors"))
    return directory / "layer_0.safetensors"


@pytest.mark.parametrize(
    ("fmt", "loader", "form", "expected"),
    [
        # Google (Gemma Scope 1 and 2): relu(pre) * (pre > threshold), so -0.5 becomes 0.
        ("gemmascope", "gemmascope", "relu", [0.0, 0.0, 0.5]),
        ("gemma_scope_2", "circuit_tracer", "relu", [0.0, 0.0, 0.5]),
        # circuit-tracer: pre * (pre > threshold), so -0.5 passes, negative.
        ("circuit_tracer", "circuit_tracer", "pre", [-0.5, 0.0, 0.5]),
    ],
)
def test_negative_threshold_follows_each_publishers_jumprelu(
    tmp_path, rng, fmt: str, loader: str, form: str, expected: list[float]
) -> None:
    arrays = negative_threshold_arrays(rng)
    path = write_negative_threshold(fmt, tmp_path, arrays)
    transcoder = load_transcoder(
        path, loader, layer=0, d_model=D_MODEL, fallback_hooks=("resid_mid", "mlp_out")
    )
    assert transcoder.activation == "jumprelu" and transcoder.jumprelu_form == form
    zero = torch.zeros(1, D_MODEL)
    np.testing.assert_allclose(transcoder.encode(zero)[0].detach().numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(
        transcoder.encode_slice(zero, 0, 1)[0].detach().numpy(), expected[:1]
    )
    gate = jumprelu_google if form == "relu" else jumprelu
    x = normal(rng, 11, D_MODEL).astype(np.float64)
    pre = x @ arrays["W_enc"] + arrays["b_enc"]
    expected_y = gate(pre, arrays["threshold"]) @ arrays["W_dec"] + arrays["b_dec"]
    actual_y = transcoder(torch.from_numpy(x).float()).detach().double().numpy()
    np.testing.assert_allclose(actual_y, expected_y, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("model_name", "post_norm"),
    [
        ("google/gemma-2-2b", True),
        ("gemma2", True),
        ("google/gemma-3-1b-pt", True),
        ("gemma3_text", True),
        ("google/gemma-3-270m", True),
        ("google/gemma-2b", False),  # Gemma 1: no post-feedforward norm
        ("google/gemma-7b", False),
        ("gemma-2b-it", False),
        ("meta-llama/Llama-3.2-1B", False),
        (None, False),
    ],
)
def test_post_mlp_norm_models_are_gemma_2_and_3_only(model_name, post_norm: bool) -> None:
    assert has_post_mlp_norm(model_name) is post_norm
    expected = "mlp_out_post_norm" if post_norm else "mlp_out"
    assert output_hook_from_transformerlens("hook_mlp_out", model_name=model_name, source="t") == (
        expected
    )


def test_circuit_tracer_file_without_config_needs_hooks(tmp_path, rng) -> None:
    arrays = skip_transcoder_arrays(rng)
    save_file(arrays, str(tmp_path / "layer_0.safetensors"))
    with pytest.raises(InputError, match="input_hook"):
        load_transcoder(tmp_path / "layer_0.safetensors", "circuit_tracer", layer=0)
    transcoder = load_transcoder(
        tmp_path / "layer_0.safetensors",
        "circuit_tracer",
        layer=0,
        input_hook="mlp_in",
        output_hook="mlp_out",
    )
    assert_forward_matches(transcoder, skip_transcoder_reference(arrays), rng)


@pytest.mark.parametrize(
    ("hooks", "message"),
    [
        ({"input_hook": None, "output_hook": None}, None),
        ({"input_hook": "mlp_in_unaffine", "output_hook": "mlp_out"}, None),
        (
            {"input_hook": "resid_mid", "output_hook": None},
            "transcoders.input_hook' says resid_mid",
        ),
        ({"input_hook": None, "output_hook": "mlp_out_post_norm"}, "transcoders.output_hook'"),
    ],
)
def test_configured_hooks_of_pretrained_files_are_checked(tmp_path, hooks, message) -> None:
    """A hook set in config for a pretrained file must agree with the file; null takes the file's."""
    from circuit_insights.transcoders.loading import load_layer_transcoder

    path = write_dunefsky(tmp_path / "tc2.pt", dunefsky_arrays(np.random.default_rng(0)), layer=2)
    config = {
        "transcoders": {"kind": "pretrained", "format": "dunefsky", "n_features": D_SAE, **hooks}
    }
    model = types.SimpleNamespace(d_model=D_MODEL, device=torch.device("cpu"))
    if message is None:
        transcoder = load_layer_transcoder(config, model, 2, str(path), "gpt2")
        assert transcoder.input_hook == "mlp_in_unaffine"
    else:
        with pytest.raises(InputError, match=message.replace(".", r"\.")):
            load_layer_transcoder(config, model, 2, str(path), "gpt2")
