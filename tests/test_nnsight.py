"""nnsight as the model-access layer: its reads equal hand-written PyTorch hooks, bit for bit.

Every test runs on the four tiny families (GPT-2, Gemma-2, Gemma-3, Llama) of
:mod:`circuit_insights.models.tiny`.
"""

from __future__ import annotations

import pytest
import torch

from circuit_insights.evaluation.fade.subject import greedy_continuations, steering
from circuit_insights.models.architectures import INPUT_HOOKS, OUTPUT_HOOKS, normalize
from circuit_insights.models.subject import SubjectModel
from circuit_insights.transcoders.base import Transcoder
from tests.conftest import TINY_VOCAB

ALL_HOOKS = list(INPUT_HOOKS + OUTPUT_HOOKS)


def _ids(model: SubjectModel, batch: int = 3, length: int = 9, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, TINY_VOCAB - 1, (batch, length), generator=generator)
    if model.bos_token_id is not None:
        ids[:, 0] = model.bos_token_id
    return ids


def _hand_written_reads(
    model: SubjectModel, ids: torch.Tensor, layer: int, attention_mask: torch.Tensor | None = None
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
            model.hf_model(input_ids=ids, attention_mask=attention_mask, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    seen.setdefault("post", seen["mlp_out"])
    seen["mlp_in_unaffine"] = normalize(norm, model.adapter.norm_kind, seen["resid_mid"])
    return seen


def test_nnsight_reads_equal_hand_written_hooks(tiny_model):
    """Every hook of every layer, read in one trace, is bit-identical to what a PyTorch forward
    hook sees, with and without a padding mask."""
    ids = _ids(tiny_model)
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0  # a right-padded row
    requests = {layer: ALL_HOOKS for layer in range(tiny_model.n_layers)}
    for attention_mask in (None, mask):
        values = tiny_model.hook_values(ids, requests, attention_mask)
        assert set(values) == {(layer, hook) for layer in requests for hook in ALL_HOOKS}
        for layer in requests:
            reference = _hand_written_reads(tiny_model, ids, layer, attention_mask)
            reference["mlp_out_post_norm"] = reference.pop("post")
            for hook in ALL_HOOKS:
                value = values[(layer, hook)]
                assert value.shape == (3, 9, tiny_model.d_model), (layer, hook)
                assert value.dtype == torch.float32
                assert torch.equal(value, reference[hook]), (layer, hook)


def test_one_layer_read_equals_the_all_layers_read(tiny_model):
    """Stopping early changes nothing: a read of one layer equals the same layer in a full read."""
    ids = _ids(tiny_model)
    full = tiny_model.hook_values(ids, {layer: ALL_HOOKS for layer in range(tiny_model.n_layers)})
    for layer in range(tiny_model.n_layers):
        alone = tiny_model.hook_values(ids, {layer: ["mlp_in", "mlp_out_post_norm"]})
        assert torch.equal(alone[(layer, "mlp_in")], full[(layer, "mlp_in")])
        assert torch.equal(alone[(layer, "mlp_out_post_norm")], full[(layer, "mlp_out_post_norm")])


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


# --- splicing and steering -----------------------------------------------------------------------


def _transcoder(model: SubjectModel, layer: int, input_hook: str, output_hook: str) -> Transcoder:
    generator = torch.Generator().manual_seed(layer + 11)
    transcoder = Transcoder(
        model.d_model, 48, layer=layer, input_hook=input_hook, output_hook=output_hook
    )
    with torch.no_grad():
        for parameter in transcoder.parameters():
            parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
    return transcoder


def _splice_target(model: SubjectModel, transcoder: Transcoder) -> torch.nn.Module:
    if transcoder.output_hook == "mlp_out_post_norm" and model.adapter.post_mlp_norm:
        return model.block_part(transcoder.layer, "post_mlp_norm")
    return model.block_part(transcoder.layer, "mlp")


def _hand_written_splice_logits(
    model: SubjectModel,
    transcoder: Transcoder,
    ids: torch.Tensor,
    *,
    keep_error: bool = False,
    override: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Logits with the transcoder spliced in by plain PyTorch hooks (the pre-nnsight splice)."""
    layer = transcoder.layer
    norm = model.block_part(layer, "pre_mlp_norm")
    seen: dict[str, torch.Tensor] = {}

    def capture(_module, args, output):
        seen.update(resid_mid=args[0], mlp_in=output)

    def replace(_module, _args, output):
        if transcoder.input_hook == "mlp_in":
            x = seen["mlp_in"].float()
        elif transcoder.input_hook == "mlp_in_unaffine":
            x = normalize(norm, model.adapter.norm_kind, seen["resid_mid"])
        else:
            x = seen["resid_mid"].float()
        activations = transcoder.encode(x)
        if override is None:
            return output if keep_error else transcoder.decode(activations, x).to(output.dtype)
        steered = activations.clone()
        steered[..., override[0]] = override[1].to(steered.dtype)
        new = transcoder.decode(steered, x)
        if keep_error:
            new = output.float() + new - transcoder.decode(activations, x)
        return new.to(output.dtype)

    handles = [
        norm.register_forward_hook(capture),
        _splice_target(model, transcoder).register_forward_hook(replace),
    ]
    try:
        with torch.no_grad():
            return model.hf_model(input_ids=ids, use_cache=False).logits.float()
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize(
    "input_hook,output_hook",
    [("mlp_in", "mlp_out"), ("mlp_in_unaffine", "mlp_out_post_norm"), ("resid_mid", "mlp_out")],
)
def test_nnsight_splice_equals_hand_written_splice(tiny_model, input_hook, output_hook):
    ids = _ids(tiny_model)
    transcoder = _transcoder(tiny_model, 1, input_hook, output_hook)
    override = (torch.tensor([3, 5]), torch.tensor([2.0, -1.0]))
    with torch.no_grad():
        with tiny_model.splice({1: transcoder}):
            spliced = tiny_model.logits(ids)
        with tiny_model.splice({1: transcoder}, keep_error=True, feature_override={1: override}):
            steered = tiny_model.logits(ids)
    assert torch.equal(spliced, _hand_written_splice_logits(tiny_model, transcoder, ids))
    reference = _hand_written_splice_logits(
        tiny_model, transcoder, ids, keep_error=True, override=override
    )
    assert torch.equal(steered, reference)
    assert not torch.allclose(spliced, tiny_model.logits(ids))  # the splice is undone on exit


def test_factor_free_steering_reproduces_the_clean_logits(tiny_model):
    ids = _ids(tiny_model)
    output_hook = "mlp_out_post_norm" if tiny_model.adapter.post_mlp_norm else "mlp_out"
    transcoder = _transcoder(tiny_model, 1, "mlp_in", output_hook)
    clean = tiny_model.logits(ids)
    # Compared with the clean run of the same shape: the unembedding of one position and of all
    # positions may round differently on some CPUs (GEMMs of other shapes), spliced or not.
    clean_last = tiny_model.logits(ids, logits_to_keep=1)
    with steering(tiny_model, transcoder, 4, None):
        assert torch.equal(tiny_model.logits(ids), clean)
    with tiny_model.splice({1: transcoder}, keep_error=True):  # error kept, nothing overridden
        assert torch.equal(tiny_model.logits(ids), clean)
        assert torch.equal(tiny_model.logits(ids, logits_to_keep=1), clean_last)


def test_steering_moves_the_logits_as_computed_by_hand(tiny_model):
    """Setting feature f to v moves the written hook by (v - a_f) W_dec[f] at every position,
    and nothing else: the logits equal a plain forward pass with that vector added by hand."""
    ids = _ids(tiny_model)
    output_hook = "mlp_out_post_norm" if tiny_model.adapter.post_mlp_norm else "mlp_out"
    transcoder = _transcoder(tiny_model, 1, "mlp_in", output_hook)
    x = tiny_model.hook_values(ids, {1: ["mlp_in"]})[(1, "mlp_in")]
    with torch.no_grad():
        activations = transcoder.encode(x)  # (batch, pos, 48)
    feature = int((activations > 0).float().sum((0, 1)).argmax())
    value = 4.0
    shift = (value - activations[..., feature])[..., None] * transcoder.W_dec[feature].detach()
    handle = _splice_target(tiny_model, transcoder).register_forward_hook(
        lambda _m, _a, output: output + shift.to(output.dtype)
    )
    try:
        by_hand = tiny_model.logits(ids)
    finally:
        handle.remove()
    clean = tiny_model.logits(ids)
    with steering(tiny_model, transcoder, feature, value):
        steered = tiny_model.logits(ids)
        continuations = greedy_continuations(tiny_model, ids, 3)
    assert not torch.allclose(steered, clean)
    torch.testing.assert_close(steered, by_hand, rtol=1e-4, atol=1e-4)
    assert continuations.shape == (3, 3)
    assert torch.equal(continuations[:, 0], steered[:, -1].argmax(-1))


def test_kv_cached_steered_generation_matches_the_full_reruns(tiny_model):
    """Under steering, the KV-cached step (prompt once, then one position per step) gives the
    logits of rerunning the whole sequence, at every step, and the same greedy tokens."""
    ids = _ids(tiny_model, length=6)
    output_hook = "mlp_out_post_norm" if tiny_model.adapter.post_mlp_norm else "mlp_out"
    transcoder = _transcoder(tiny_model, 1, "mlp_in", output_hook)
    x = tiny_model.hook_values(ids, {1: ["mlp_in"]})[(1, "mlp_in")]
    with torch.no_grad():
        feature = int((transcoder.encode(x) > 0).float().sum((0, 1)).argmax())
    forced = torch.randint(3, TINY_VOCAB - 1, (ids.shape[0], 4), generator=torch.Generator())
    for value in (None, 6.0):
        with steering(tiny_model, transcoder, feature, value):
            logits, cache = tiny_model.next_token_logits(ids)
            sequence = ids
            for step in range(forced.shape[1]):
                full = tiny_model.logits(sequence)[:, -1]  # (batch, vocab)
                torch.testing.assert_close(logits, full, rtol=1e-4, atol=1e-4)
                sequence = torch.cat([sequence, forced[:, step : step + 1]], dim=1)
                logits, cache = tiny_model.next_token_logits(forced[:, step : step + 1], cache)
            cached = greedy_continuations(tiny_model, ids, 4, kv_cache=True)
            rerun = greedy_continuations(tiny_model, ids, 4, kv_cache=False)
        assert torch.equal(cached, rerun)
    with steering(tiny_model, transcoder, feature, 6.0):
        steered = greedy_continuations(tiny_model, ids, 4)
    assert not torch.equal(steered, greedy_continuations(tiny_model, ids, 4))


def test_splice_errors_name_the_layer():
    from circuit_insights.core.errors import InputError
    from circuit_insights.models.tiny import tiny_subject_model

    model = tiny_subject_model("llama")
    transcoder = _transcoder(model, 1, "mlp_in", "mlp_out")
    with pytest.raises(InputError, match="layer 1 is already spliced"):
        with model.splice({1: transcoder}), model.splice({1: transcoder}):
            pass
    wide = Transcoder(model.d_model + 8, 16, layer=2)
    with pytest.raises(InputError, match="transcoder for layer 2 has d_model 40"):
        with model.splice({2: wide}):
            pass
    override = {0: (torch.tensor([1]), torch.tensor([1.0]))}
    with pytest.raises(InputError, match="feature_override names layer 0"):
        with model.splice({1: transcoder}, feature_override=override):
            pass
    ids = _ids(model)
    assert torch.equal(model.logits(ids), _hand_written_reads_logits(model, ids))  # all undone


def _hand_written_reads_logits(model: SubjectModel, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.hf_model(input_ids=ids, use_cache=False).logits.float()
