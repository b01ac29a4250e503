"""SubjectModel and the architecture adapters on tiny GPT-2, Gemma-2, Gemma-3 and Llama models."""

from __future__ import annotations

import pytest
import torch

from circuit_insights.core.errors import InputError
from circuit_insights.models.architectures import (
    adapter_for,
    get_path,
    norm_bias,
    norm_gain,
    normalize,
)
from circuit_insights.models.subject import SubjectModel
from circuit_insights.transcoders.base import Transcoder
from tests.conftest import TINY_VOCAB, tiny_hf_model, tiny_subject_model


def _ids(batch: int = 2, length: int = 10, bos: int | None = None) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, TINY_VOCAB - 1, (batch, length), generator=generator)
    if bos is not None:
        ids[:, 0] = bos
    return ids


def _reference_hooks(model: SubjectModel, ids: torch.Tensor, layer: int) -> dict[str, torch.Tensor]:
    """Hook values read with plain PyTorch hooks, independent of nnsight."""
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
    with torch.no_grad():
        model.hf_model(input_ids=ids)
    for handle in handles:
        handle.remove()
    seen.setdefault("post", seen["mlp_out"])
    return seen


def test_every_family_has_an_adapter_whose_parts_exist(tiny_model):
    adapter = tiny_model.adapter
    for part in ("embed", "final_norm", "unembed"):
        assert get_path(tiny_model.hf_model, getattr(adapter, part)) is not None
    for part in ("attention", "pre_attention_norm", "pre_mlp_norm", "mlp", "attention_out_proj"):
        assert tiny_model.block_part(0, part) is not None
    assert tiny_model.n_layers == 3
    assert tiny_model.d_model == 32
    assert tiny_model.vocab_size == TINY_VOCAB


def test_bos_conventions():
    assert tiny_subject_model("gpt2").bos_token_id is None
    assert tiny_subject_model("gemma2").bos_token_id == 2
    assert tiny_subject_model("gemma3").bos_token_id == 2
    assert tiny_subject_model("llama").bos_token_id == 1
    assert tiny_subject_model("llama").with_bos([5, 6]) == [1, 5, 6]
    assert tiny_subject_model("gpt2").with_bos([5, 6]) == [5, 6]
    gpt2_with_bos = SubjectModel(tiny_hf_model("gpt2"), None, prepend_bos=True)
    assert gpt2_with_bos.bos_token_id == TINY_VOCAB - 1


def test_hook_values_match_plain_pytorch_hooks(tiny_model):
    ids = _ids(bos=tiny_model.bos_token_id)
    layer = 1
    values = tiny_model.hook_values(
        ids, {layer: ["resid_mid", "mlp_in", "mlp_in_unaffine", "mlp_out", "mlp_out_post_norm"]}
    )
    reference = _reference_hooks(tiny_model, ids, layer)
    torch.testing.assert_close(values[(layer, "resid_mid")], reference["resid_mid"])
    torch.testing.assert_close(values[(layer, "mlp_in")], reference["mlp_in"])
    torch.testing.assert_close(values[(layer, "mlp_out")], reference["mlp_out"])
    torch.testing.assert_close(values[(layer, "mlp_out_post_norm")], reference["post"])
    # The affine-free normalization, times the norm's gain plus its bias, is the MLP input.
    unaffine = values[(layer, "mlp_in_unaffine")]
    norm = tiny_model.block_part(layer, "pre_mlp_norm")
    rebuilt = unaffine * norm_gain(norm, tiny_model.adapter.norm_kind)
    if norm_bias(norm) is not None:
        rebuilt = rebuilt + norm_bias(norm)
    torch.testing.assert_close(rebuilt, reference["mlp_in"], atol=1e-5, rtol=1e-4)


def test_hook_values_of_several_layers_in_one_pass(tiny_model):
    ids = _ids(bos=tiny_model.bos_token_id)
    values = tiny_model.hook_values(ids, {0: ["mlp_in"], 2: ["mlp_out"]})
    assert set(values) == {(0, "mlp_in"), (2, "mlp_out")}
    assert values[(2, "mlp_out")].shape == (2, 10, 32)


def test_embedding_matrix_is_what_the_residual_stream_starts_from(tiny_model):
    ids = _ids(batch=1, length=4, bos=tiny_model.bos_token_id)
    first = tiny_model.blocks[0]
    seen = {}
    norm = get_path(first, tiny_model.adapter.pre_attention_norm)
    handle = norm.register_forward_pre_hook(lambda m, a: seen.update(resid=a[0]))
    with torch.no_grad():
        tiny_model.hf_model(input_ids=ids)
    handle.remove()
    expected = tiny_model.embedding_matrix()[ids[0]]
    if tiny_model.adapter.position_embed:
        expected = (
            expected + get_path(tiny_model.hf_model, tiny_model.adapter.position_embed).weight[:4]
        )
    torch.testing.assert_close(seen["resid"][0], expected, atol=1e-5, rtol=1e-5)


def test_unembedding_gives_the_logits(tiny_model):
    ids = _ids(batch=1, length=5, bos=tiny_model.bos_token_id)
    seen = {}
    final_norm = get_path(tiny_model.hf_model, tiny_model.adapter.final_norm)
    handle = final_norm.register_forward_hook(lambda m, a, o: seen.update(out=o))
    logits = tiny_model.logits(ids)
    handle.remove()
    projected = seen["out"] @ tiny_model.unembedding_matrix()
    if tiny_model.adapter.family == "gemma2" and tiny_model.config.final_logit_softcapping:
        cap = tiny_model.config.final_logit_softcapping
        projected = cap * torch.tanh(projected / cap)
    torch.testing.assert_close(logits, projected, atol=1e-4, rtol=1e-4)


def _random_transcoder(model: SubjectModel, layer: int, input_hook: str, output_hook: str):
    torch.manual_seed(layer)
    transcoder = Transcoder(
        model.d_model, 64, layer=layer, input_hook=input_hook, output_hook=output_hook
    )
    with torch.no_grad():
        for parameter in transcoder.parameters():
            parameter.copy_(0.2 * torch.randn_like(parameter))
    return transcoder


@pytest.mark.parametrize("output_hook", ["mlp_out", "mlp_out_post_norm"])
@pytest.mark.parametrize("input_hook", ["mlp_in", "mlp_in_unaffine"])
def test_splice_reproduces_the_transcoders_own_forward(tiny_model, input_hook, output_hook):
    """With the transcoder in place of the MLP, the hook it writes equals transcoder(its input)."""
    layer = 1
    transcoder = _random_transcoder(tiny_model, layer, input_hook, output_hook)
    ids = _ids(bos=tiny_model.bos_token_id)
    with tiny_model.splice({layer: transcoder}):
        values = tiny_model.hook_values(ids, {layer: [input_hook, output_hook]})
        spliced_logits = tiny_model.logits(ids)
    expected = transcoder(values[(layer, input_hook)])
    torch.testing.assert_close(values[(layer, output_hook)], expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(spliced_logits, tiny_model.logits(ids))
    # The splice is undone on exit.
    after = tiny_model.hook_values(ids, {layer: [output_hook]})[(layer, output_hook)]
    assert not torch.allclose(after, expected)


def test_splice_keeping_the_error_leaves_the_model_unchanged(tiny_model):
    layer = 2
    transcoder = _random_transcoder(tiny_model, layer, "mlp_in", "mlp_out")
    ids = _ids(bos=tiny_model.bos_token_id)
    reference = tiny_model.logits(ids)
    with tiny_model.splice({layer: transcoder}, keep_error=True):
        torch.testing.assert_close(tiny_model.logits(ids), reference)
    feature = torch.tensor([3])
    with tiny_model.splice(
        {layer: transcoder}, keep_error=True, feature_override={layer: (feature, torch.tensor(5.0))}
    ):
        steered = tiny_model.logits(ids)
    assert not torch.allclose(steered, reference)


def test_layer_out_of_range_names_the_layer(tiny_model):
    with pytest.raises(InputError, match="layer 7 is out of range"):
        tiny_model.hook_values(_ids(), {7: ["mlp_in"]})


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(InputError, match="'bert' is not supported"):
        adapter_for("bert")


def test_unknown_model_source_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        SubjectModel.from_pretrained(tmp_path / "no-such-model")
    with pytest.raises(InputError, match="unknown model"):
        SubjectModel.from_pretrained("no-such-org/no-such-model", local_files_only=True)


def test_normalize_matches_layer_norm_without_affine():
    x = torch.randn(3, 5, 16)
    layer_norm = torch.nn.LayerNorm(16, elementwise_affine=False)
    torch.testing.assert_close(normalize(layer_norm, "layernorm", x), layer_norm(x))
