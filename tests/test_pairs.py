"""MLP pairs of every trained layer from one forward per batch (rule collect_pairs): the same
values as a forward per layer, the same file back, and the same trained transcoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from circuit_insights.core.errors import InputError
from circuit_insights.models.loading import iter_context_batches
from circuit_insights.models.subject import SubjectModel
from circuit_insights.transcoders.pairs import (
    LayerPairs,
    mlp_pairs,
    read_pairs_file,
    write_pairs_file,
)

LAYERS = [0, 1, 2]


pytestmark = pytest.mark.usefixtures("single_thread")


def contexts(model: SubjectModel, n: int, length: int, seed: int) -> np.ndarray:
    """(n, length) random token ids, BOS first where the model uses one."""
    tokens = np.random.default_rng(seed).integers(3, model.vocab_size - 1, (n, length))
    if model.bos_token_id is not None:
        tokens[:, 0] = model.bos_token_id
    return tokens


def per_layer_pairs(
    model: SubjectModel, tokens: np.ndarray, layer: int, input_hook: str, output_hook: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The collection before rule collect_pairs: a forward to ``layer`` for this layer alone,
    every non-BOS position."""
    skip_first = 1 if model.bos_token_id is not None else 0
    inputs, outputs = [], []
    for _, ids in iter_context_batches(tokens, np.arange(len(tokens)), 4):
        values = model.hook_values(ids, {layer: [input_hook, output_hook]})
        inputs.append(values[(layer, input_hook)][:, skip_first:].reshape(-1, model.d_model))
        outputs.append(values[(layer, output_hook)][:, skip_first:].reshape(-1, model.d_model))
    return torch.cat(inputs), torch.cat(outputs)


@pytest.mark.parametrize("hooks", [("mlp_in", "mlp_out"), ("mlp_in_unaffine", "mlp_out_post_norm")])
def test_one_forward_gives_exactly_the_pairs_of_a_forward_per_layer(tiny_model, hooks) -> None:
    tokens = contexts(tiny_model, 10, 9, seed=1)  # 10 contexts in batches of 4: a short last one
    together = mlp_pairs(tiny_model, tokens, LAYERS, *hooks, batch_size=4)
    assert sorted(together) == LAYERS
    positions = 10 * (9 - (tiny_model.bos_token_id is not None))
    for layer in LAYERS:
        x, y = per_layer_pairs(tiny_model, tokens, layer, *hooks)
        assert together[layer][0].shape == (positions, tiny_model.d_model)
        assert torch.equal(together[layer][0], x), f"inputs of layer {layer}"
        assert torch.equal(together[layer][1], y), f"outputs of layer {layer}"
    # Layers differ from each other (the test would be void if every layer read the same).
    assert not torch.equal(together[0][0], together[2][0])


def test_a_pairs_file_reads_back_exactly_and_refuses_another_layer_or_hook(tmp_path) -> None:
    generator = torch.Generator().manual_seed(0)
    pairs = LayerPairs(
        layer=3,
        input_hook="mlp_in",
        output_hook="mlp_out",
        inputs=torch.randn(7, 5, generator=generator),
        outputs=torch.randn(7, 5, generator=generator),
        heldout_inputs=torch.randn(2, 5, generator=generator),
        heldout_outputs=torch.randn(2, 5, generator=generator),
    )
    path = tmp_path / "layer3.safetensors"
    write_pairs_file(pairs, path)
    assert [p.name for p in tmp_path.iterdir()] == ["layer3.safetensors"]  # no temporaries left
    back = read_pairs_file(path, layer=3, input_hook="mlp_in", output_hook="mlp_out")
    for name in ("inputs", "outputs", "heldout_inputs", "heldout_outputs"):
        assert torch.equal(getattr(back, name), getattr(pairs, name)), name
    with pytest.raises(InputError, match="pairs of layer 3 .* but layer 8"):
        read_pairs_file(path, layer=8, input_hook="mlp_in", output_hook="mlp_out")
    with pytest.raises(InputError, match="mlp_out_post_norm"):
        read_pairs_file(path, layer=3, input_hook="mlp_in", output_hook="mlp_out_post_norm")
    with pytest.raises(InputError, match="missing.safetensors"):
        read_pairs_file(
            tmp_path / "missing.safetensors", layer=3, input_hook="mlp_in", output_hook="mlp_out"
        )


def test_collect_then_train_gives_the_transcoder_of_per_layer_pairs(tmp_path) -> None:
    """Rules collect_pairs then train_transcoder (its layer's file) against training on the pairs
    of a forward to that layer alone, as rule train_transcoder collected them before: the same
    weights and the same report."""
    import pyarrow.parquet as pq

    from circuit_insights.data.corpus import build_token_table, split_contexts
    from circuit_insights.models.loading import load_subject_model
    from circuit_insights.models.tiny import tiny_hf_model
    from circuit_insights.pipeline import paths
    from circuit_insights.pipeline.stages.collect_pairs import run_collect_pairs
    from circuit_insights.pipeline.stages.train_transcoder import run_train_transcoder
    from circuit_insights.transcoders.base import Transcoder
    from circuit_insights.transcoders.splicing import spliced_loss_report
    from circuit_insights.transcoders.training import train_transcoder

    tiny_hf_model("gemma3").save_pretrained(tmp_path / "model")
    settings = {
        "input_hook": "mlp_in",
        "output_hook": "mlp_out",
        "train_contexts": 12,
        "n_features": 24,
        "activation": "relu",
        "top_k": None,
        "l1_coefficient": 0.5,
        "learning_rate": 1e-3,
        "steps": 30,
        "seed": 3,
        "batch_tokens": 64,
    }
    model_config = {
        "source": str(tmp_path / "model"),
        "dtype": "float32",
        "device": "cpu",
        "prepend_bos": True,
        "transcoders": settings,
    }
    model = load_subject_model(model_config, str(tmp_path / "model"), "tiny")
    tokens = contexts(model, 20, 10, seed=2)
    cache_idx, eval_idx = split_contexts(len(tokens), 0.25, seed=0)
    tokens_path = tmp_path / "tokens.parquet"
    pq.write_table(
        build_token_table(tokens, np.zeros(len(tokens), dtype=np.int32), cache_idx, eval_idx),
        tokens_path,
    )
    pairs_dir = str(tmp_path / "mlp_pairs")
    counts = run_collect_pairs(
        model_config=model_config,
        tokens_path=str(tokens_path),
        layers=[0, 2],
        model_files=[],
        out_dir=pairs_dir,
        batch_size=5,
        model_name="tiny",
    )
    assert counts == {layer: {"train": 12 * 9, "heldout": 5 * 9} for layer in (0, 2)}
    assert sorted(p.name for p in (tmp_path / "mlp_pairs").iterdir()) == [
        "layer0.safetensors",
        "layer2.safetensors",
    ]
    layer = 2
    weights = tmp_path / "layer2" / "transcoder.safetensors"
    summary = run_train_transcoder(
        model_config=model_config,
        tokens_path=str(tokens_path),
        pairs_dir=pairs_dir,
        layer=layer,
        model_files=[],
        weights_path=str(weights),
        report_path=str(tmp_path / "layer2" / "report.json"),
        model_name="tiny",
    )

    # Before: rule train_transcoder's own forward to its layer over the same contexts.
    train_tokens, eval_tokens = tokens[cache_idx][:12], tokens[eval_idx]
    x, y = per_layer_pairs(model, train_tokens, layer, "mlp_in", "mlp_out")
    held = read_pairs_file(
        paths.mlp_pairs_file(pairs_dir, layer),
        layer=layer,
        input_hook="mlp_in",
        output_hook="mlp_out",
    )
    assert torch.equal(held.inputs, x) and torch.equal(held.outputs, y)
    x_eval, y_eval = per_layer_pairs(model, eval_tokens, layer, "mlp_in", "mlp_out")
    expected, report = train_transcoder(
        [(x, y)],
        d_model=model.d_model,
        d_transcoder=24,
        l1_coefficient=0.5,
        learning_rate=1e-3,
        steps=30,
        seed=3,
        batch_size=64,
        held_out=[(x_eval, y_eval)],
        layer=layer,
    )
    trained = Transcoder.load(weights.parent)
    for name, value in expected.state_dict().items():
        assert torch.equal(trained.state_dict()[name], value), name
    assert summary["fvu"] == report.fvu and summary["mean_l0"] == report.mean_l0
    assert (
        summary["loss_spliced"]
        == spliced_loss_report(model, expected, layer, eval_tokens, 16)["loss_spliced"]
    )
