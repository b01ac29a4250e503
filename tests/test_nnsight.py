"""nnsight as the model-access layer: its reads equal hand-written PyTorch hooks, bit for bit.

Every test runs on the four tiny families (GPT-2, Gemma-2, Gemma-3, Llama) of
:mod:`circuit_insights.models.tiny`.
"""

from __future__ import annotations

import torch

from circuit_insights.models.adapters import INPUT_HOOKS, OUTPUT_HOOKS, SubjectModel
from tests.conftest import TINY_VOCAB

ALL_HOOKS = list(INPUT_HOOKS + OUTPUT_HOOKS)


def _ids(model: SubjectModel, batch: int = 3, length: int = 9, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, TINY_VOCAB - 1, (batch, length), generator=generator)
    if model.bos_token_id is not None:
        ids[:, 0] = model.bos_token_id
    return ids


def _hand_written_reads(
    model: SubjectModel, ids: torch.Tensor, layer: int
) -> dict[str, torch.Tensor]:
    """The pre-MLP norm's input and output, the MLP's output and the post-MLP norm's output, read
    with plain PyTorch forward hooks over a full forward pass (no nnsight, no early stop)."""
    seen: dict[str, torch.Tensor] = {}
    norm = model.block_part(layer, "pre_mlp_norm")
    mlp = model.block_part(layer, "mlp")
    handles = [
        norm.register_forward_hook(lambda m, a, o: seen.update(resid_mid=a[0], mlp_in=o)),
        mlp.register_forward_hook(lambda m, a, o: seen.update(mlp_out=o)),
    ]
    if model.adapter.post_mlp_norm:
        post = model.block_part(layer, "post_mlp_norm")
        handles.append(post.register_forward_hook(lambda m, a, o: seen.update(post=o)))
    try:
        with torch.no_grad():
            model.hf_model(input_ids=ids, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    seen.setdefault("post", seen["mlp_out"])
    return seen


def test_nnsight_reads_equal_hand_written_hooks(tiny_model):
    ids = _ids(tiny_model)
    for layer in range(tiny_model.n_layers):
        values = tiny_model.hook_values(ids, {layer: ALL_HOOKS})
        reference = _hand_written_reads(tiny_model, ids, layer)
        assert torch.equal(values[(layer, "resid_mid")], reference["resid_mid"])
        assert torch.equal(values[(layer, "mlp_in")], reference["mlp_in"])
        assert torch.equal(values[(layer, "mlp_out")], reference["mlp_out"])
        assert torch.equal(values[(layer, "mlp_out_post_norm")], reference["post"])


def test_nnsight_reader_equals_the_torch_hooks_reader(tiny_model):
    ids = _ids(tiny_model)
    requests = {0: ["mlp_in", "mlp_out"], 1: ALL_HOOKS, 2: ["mlp_in_unaffine", "resid_mid"]}
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0  # a right-padded row
    for attention_mask in (None, mask):
        nnsight_values = tiny_model.hook_values(ids, requests, attention_mask, reader="nnsight")
        hook_values = tiny_model.hook_values(ids, requests, attention_mask, reader="torch_hooks")
        assert set(nnsight_values) == set(hook_values)
        for key, value in hook_values.items():
            assert value.shape == (3, 9, tiny_model.d_model), key
            assert torch.equal(nnsight_values[key], value), key


def test_nnsight_read_stops_after_the_deepest_requested_layer(tiny_model):
    ids = _ids(tiny_model)
    ran: list[int] = []
    handles = [
        block.register_forward_hook(lambda m, a, o, index=index: ran.append(index))
        for index, block in enumerate(tiny_model.blocks)
    ]
    try:
        tiny_model.hook_values(ids, {0: ["mlp_in"], 1: ["mlp_out"]})
        assert ran == [0]  # block 1 stops inside, at its MLP; block 2 never runs
        ran.clear()
        tiny_model.hook_values(ids, {0: ["resid_mid"]})
        assert ran == []
    finally:
        for handle in handles:
            handle.remove()
