"""CircuitLens attribution on tiny GPT-2, Gemma-2, Gemma-3 and Llama models.

Properties tested: completeness (leaves sum to the plain forward pass's pre-activation), exactness
(a head's / an upstream feature's contribution is the change of the frozen-linearized
pre-activation when it is removed; the logit effect is the change of the frozen logits), gradients
against central finite differences (float64), batch invariance, defined behaviour on bad input.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from circuit_insights.circuitlens.attribution import (
    STATUS_SKIPPED_BOS,
    AttributionRequest,
    attribute,
)
from circuit_insights.circuitlens.contributions import top_per_row
from circuit_insights.circuitlens.frozen import FrozenReplacement
from circuit_insights.circuitlens.frozen_capture import capture_frozen_state
from circuit_insights.core.errors import InputError
from circuit_insights.core.io import write_parquet_atomic
from circuit_insights.data.schemas import (
    ATTRIBUTION_CONTRIBUTIONS_SCHEMA,
    ATTRIBUTION_TOTALS_SCHEMA,
)
from circuit_insights.models.architectures import get_path
from circuit_insights.models.subject import SubjectModel
from circuit_insights.transcoders.base import Transcoder
from tests.conftest import TINY_VOCAB, tiny_subject_model

LAYER = 2
N_FEATURES = 48
REL_TOL = 1e-4

#: Transcoder styles per family (the published transcoders' conventions), per layer.
STYLES: dict[str, dict[str, object]] = {
    "gpt2": dict(input_hook="mlp_in_unaffine", center_input=True, activation="relu"),
    "gemma2": dict(input_hook="mlp_in", output_hook="mlp_out_post_norm", activation="jumprelu"),
    "gemma3": dict(input_hook="mlp_in", output_hook="mlp_out", activation="topk", top_k=12),
    "llama": dict(input_hook="mlp_in", skip=True, activation="relu"),
}


def _contexts(model: SubjectModel, lengths: list[int], seed: int = 1) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    contexts = []
    for length in lengths:
        n = length - (1 if model.bos_token_id is not None else 0)
        tokens = torch.randint(3, TINY_VOCAB - 1, (n,), generator=generator).tolist()
        contexts.append(model.with_bos(tokens))
    return contexts


def _hook_values(model: SubjectModel, layer: int, input_hook: str, output_hook: str, ids):
    values = model.hook_values(ids, {layer: [input_hook, output_hook]})
    return values[(layer, input_hook)], values[(layer, output_hook)]


def calibrated_transcoder(
    model: SubjectModel,
    layer: int,
    *,
    seed: int,
    d_transcoder: int = N_FEATURES,
    **style: object,
) -> Transcoder:
    """A random transcoder whose scales match the model's hooks: about a third of the features
    fire, and its output is of the size of the true MLP output (like a trained one)."""
    generator = torch.Generator().manual_seed(seed)
    transcoder = Transcoder(model.d_model, d_transcoder, layer=layer, **style)  # type: ignore[arg-type]
    ids = torch.tensor(_contexts(model, [16] * 4, seed=seed + 100))
    x, y = _hook_values(model, layer, transcoder.input_hook, transcoder.output_hook, ids)
    x = x.reshape(-1, model.d_model)
    y = y.reshape(-1, model.d_model)
    with torch.no_grad():
        if transcoder.b_dec_in is not None:
            transcoder.b_dec_in.copy_(
                0.1 * x.std() * torch.randn(model.d_model, generator=generator)
            )
        W_enc = torch.randn(model.d_model, d_transcoder, generator=generator)
        transcoder.W_enc.copy_(W_enc / (x.pow(2).mean().sqrt() * math.sqrt(model.d_model)))
        transcoder.b_enc.zero_()
        pre = transcoder.pre_activation(x)
        transcoder.b_enc.copy_(-pre.quantile(0.65, dim=0))
        if transcoder.threshold is not None:
            transcoder.threshold.copy_(0.05 * pre.std(dim=0))
        transcoder.W_dec.copy_(torch.randn(d_transcoder, model.d_model, generator=generator))
        out = transcoder.encode(x) @ transcoder.W_dec
        transcoder.W_dec.mul_(y.pow(2).mean().sqrt() / out.pow(2).mean().sqrt().clamp_min(1e-8))
        transcoder.b_dec_out.copy_(0.1 * y.std() * torch.randn(model.d_model, generator=generator))
        if transcoder.W_skip is not None:
            skip = torch.randn(model.d_model, model.d_model, generator=generator)
            transcoder.W_skip.copy_(0.1 * skip * y.std() / (x.std() * math.sqrt(model.d_model)))
    return transcoder


def transcoders_for(model: SubjectModel, layers: tuple[int, ...]) -> dict[int, Transcoder]:
    style = STYLES[model.adapter.family]
    return {
        layer: calibrated_transcoder(model, layer, seed=10 + layer, **style) for layer in layers
    }


def reference_pre_activations(
    model: SubjectModel, transcoder: Transcoder, layer: int, requests: list[AttributionRequest]
) -> np.ndarray:
    """Pre-activations from a plain forward pass, one context at a time."""
    out = []
    for request in requests:
        ids = torch.tensor([list(request.context_tokens)])
        x = model.hook_values(ids, {layer: [transcoder.input_hook]})[(layer, transcoder.input_hook)]
        with torch.no_grad():
            pre = transcoder.pre_activation(x[0, request.target_position])
        out.append(float(pre[request.feature]))
    return np.array(out)


def _requests(
    model: SubjectModel, lengths: list[int], features: list[int]
) -> list[AttributionRequest]:
    contexts = _contexts(model, lengths)
    requests = []
    for sample, context in enumerate(contexts):
        target = len(context) - 2 - sample % 3
        for feature in features:
            requests.append(AttributionRequest(context, target, feature, sample))
    return requests


def _close(actual, expected, scale) -> bool:
    return bool(np.all(np.abs(np.asarray(actual) - np.asarray(expected)) <= REL_TOL * scale))


# --- completeness ------------------------------------------------------------------------------------


@pytest.mark.parametrize("transcoder_layers", [(0, 2), (0, 1, 2)])
def test_leaves_sum_to_the_plain_pre_activation(tiny_model, transcoder_layers, seed):
    transcoders = transcoders_for(tiny_model, transcoder_layers)
    requests = _requests(tiny_model, [12, 9, 14], features=[0, 3, 5, 11])
    result = attribute(tiny_model, transcoders, LAYER, requests, batch_size=4, threshold=0.0)
    totals = result.totals
    expected = reference_pre_activations(tiny_model, transcoders[LAYER], LAYER, requests)
    scale = np.maximum(np.abs(expected), 1.0)
    assert _close(totals["pre_activation"], expected, scale)
    assert _close(totals["leaf_sum"], expected, scale)
    assert _close(totals["frozen_pre_activation"], expected, scale)
    # With threshold 0 every leaf is a row, and the rows add up to the totals.
    leaves = result.contributions[result.contributions["partition"] == "leaf"]
    by_sample = leaves.groupby(["feature", "sample"])["value"].sum()
    keyed = totals.set_index(["feature", "sample"])
    assert np.allclose(by_sample.loc[keyed.index], keyed["leaf_sum"], rtol=1e-5, atol=1e-5)
    assert (keyed["n_leaves_dropped"] == 0).all()
    kinds = set(leaves["kind"])
    assert {"embedding", "feature", "error", "bias"} <= kinds
    assert ("mlp_error" in kinds) == (1 not in transcoder_layers)
    assert (totals["fires"] == (totals["activation"] != 0)).all()
    assert (totals["fires"]).any() and not (totals["fires"]).all()


@pytest.mark.parametrize(
    ("input_hook", "output_hook"),
    [("resid_mid", "mlp_out"), ("mlp_in_unaffine", "mlp_out_post_norm"), ("mlp_in", "mlp_out")],
)
def test_completeness_for_every_hook(input_hook, output_hook):
    model = tiny_subject_model("gemma2")
    transcoders = {
        layer: calibrated_transcoder(
            model, layer, seed=layer, input_hook=input_hook, output_hook=output_hook, skip=True
        )
        for layer in (0, 1, 2)
    }
    requests = _requests(model, [11, 13], features=[2, 7])
    result = attribute(model, transcoders, LAYER, requests, threshold=0.0, output_k=2)
    expected = reference_pre_activations(model, transcoders[LAYER], LAYER, requests)
    assert _close(result.totals["leaf_sum"], expected, np.maximum(np.abs(expected), 1.0))


def test_top_per_row_is_exact_with_ties():
    generator = torch.Generator().manual_seed(0)
    for _ in range(100):
        n_rows = int(torch.randint(1, 6, (1,), generator=generator))
        rows = torch.randint(0, n_rows, (int(torch.randint(0, 60, (1,), generator=generator)),))
        magnitude = torch.randint(0, 10, (len(rows),), generator=generator).double()
        k = int(torch.randint(0, 5, (1,), generator=generator))
        top = top_per_row(rows, magnitude, n_rows, k)
        for row in range(n_rows):
            mine = rows == row
            assert int(top[mine].sum()) == min(k, int(mine.sum()))
            if k and mine.any():
                kth = magnitude[mine].sort(descending=True).values[min(k, int(mine.sum())) - 1]
                assert (magnitude[mine][top[mine]] >= kth).all()
                assert (magnitude[mine][~top[mine]] <= kth).all()


def test_significance_filter_keeps_exact_totals(tiny_model):
    transcoders = transcoders_for(tiny_model, (0, 2))
    requests = _requests(tiny_model, [12, 10], features=[1, 2])
    full = attribute(tiny_model, transcoders, LAYER, requests, threshold=0.0)
    kept = attribute(tiny_model, transcoders, LAYER, requests, threshold=0.05, keep_top=2)
    totals = kept.totals.set_index(["feature", "sample"])
    assert np.allclose(totals["leaf_sum"], full.totals.set_index(["feature", "sample"])["leaf_sum"])
    assert np.allclose(totals["kept_leaf_sum"] + totals["dropped_leaf_sum"], totals["leaf_sum"])
    assert (totals["n_leaves_kept"] + totals["n_leaves_dropped"] == totals["n_leaves"]).all()
    assert (totals["n_leaves_dropped"] > 0).all()
    leaves = kept.contributions[kept.contributions["partition"] == "leaf"]
    sums = leaves.groupby(["feature", "sample"])["value"].sum()
    counts = leaves.groupby(["feature", "sample"]).size()
    assert np.allclose(sums.loc[totals.index], totals["kept_leaf_sum"], atol=1e-5)
    assert (counts.loc[totals.index] == totals["n_leaves_kept"]).all()
    # Kept rows are those at or above the threshold, plus the top two of each sample.
    for _key, group in leaves.groupby(["feature", "sample"]):
        below = group[group["share"] < 0.05]
        assert len(below) <= 2
        if len(below):
            assert below["share"].max() <= group["share"].max()
    heads = kept.contributions[kept.contributions["partition"] == "mediator"]
    assert (heads["delta"] <= 0).all()
    assert np.allclose(
        totals["kept_head_sum"] + totals["dropped_head_sum"], totals["head_sum"], atol=1e-6
    )


# --- exactness ---------------------------------------------------------------------------------------


def _frozen(model, transcoders, context, n_rows: int, complete: bool = False):
    ids = torch.tensor([context])
    state = capture_frozen_state(model, transcoders, ids, target_layer=LAYER, complete=complete)
    state = state.select(torch.zeros(n_rows, dtype=torch.long))
    return FrozenReplacement(model, transcoders, state, LAYER)


def test_head_contribution_is_the_effect_of_removing_the_value_vector(tiny_model):
    transcoders = transcoders_for(tiny_model, (0, 2))
    context = _contexts(tiny_model, [11])[0]
    target = 9
    features = [0, 4, 7]
    requests = [AttributionRequest(context, target, f, 0) for f in features]
    result = attribute(tiny_model, transcoders, LAYER, requests, threshold=0.0, output_k=0)
    heads = result.contributions[result.contributions["kind"] == "head"]
    frozen = _frozen(tiny_model, transcoders, context, len(features))
    feature_t = torch.tensor(features)
    position_t = torch.full((len(features),), target)
    with torch.no_grad():
        clean = frozen.pre_activation(frozen.default_leaves(), feature_t, position_t)
    generator = np.random.default_rng(0)
    n_heads = tiny_model.n_heads
    for _ in range(6):
        layer = int(generator.integers(0, LAYER + 1))
        head = int(generator.integers(0, n_heads))
        source = int(generator.integers(0, target + 1))
        mask = torch.ones(len(features), n_heads, len(context))
        mask[:, head, source] = 0.0
        with torch.no_grad():
            ablated = frozen.pre_activation(
                frozen.default_leaves(), feature_t, position_t, value_mask={layer: mask}
            )
        for row, feature in enumerate(features):
            row_of = heads[
                (heads["feature"] == feature)
                & (heads["layer"] == layer)
                & (heads["head"] == head)
                & (heads["position"] == source)
            ]
            assert len(row_of) == 1
            assert row_of["delta"].iloc[0] == source - target
            assert row_of["token"].iloc[0] == context[source]
            change = float(clean[row] - ablated[row])
            assert abs(row_of["value"].iloc[0] - change) <= 1e-4 * max(1.0, abs(float(clean[row])))


def test_feature_contribution_is_the_effect_of_removing_its_decoder_write(tiny_model):
    transcoders = transcoders_for(tiny_model, (0, 1, 2))
    context = _contexts(tiny_model, [10])[0]
    target, feature = 8, 5
    result = attribute(
        tiny_model,
        transcoders,
        LAYER,
        [AttributionRequest(context, target, feature, 0)],
        threshold=0.0,
        output_k=0,
    )
    rows = result.contributions[result.contributions["kind"] == "feature"]
    frozen = _frozen(tiny_model, transcoders, context, 1)
    feature_t, position_t = torch.tensor([feature]), torch.tensor([target])
    with torch.no_grad():
        clean = float(frozen.pre_activation(frozen.default_leaves(), feature_t, position_t)[0])
    checked = 0
    for _, row in rows.sort_values("share", ascending=False).head(8).iterrows():
        layer, position, source = (
            int(row["layer"]),
            int(row["position"]),
            int(row["source_feature"]),
        )
        capture = frozen.state.layers[layer].transcoder
        entry = ((capture.active[:, 1] == position) & (capture.active[:, 2] == source)).nonzero()[
            0, 0
        ]
        activation = capture.values[entry]
        leaves = frozen.default_leaves()
        leaves.writes[layer][0, position] -= activation * transcoders[layer].W_dec[source]
        with torch.no_grad():
            ablated = float(frozen.pre_activation(leaves, feature_t, position_t)[0])
        assert abs(row["value"] - (clean - ablated)) <= 1e-4 * max(1.0, abs(clean))
        checked += 1
    assert checked > 0


def test_gradients_match_central_finite_differences(family):
    model = tiny_subject_model(family)
    transcoders = transcoders_for(model, (0, 1, 2))
    model.hf_model.double()
    transcoders = {layer: tc.double() for layer, tc in transcoders.items()}
    context = _contexts(model, [9])[0]
    frozen = _frozen(model, transcoders, context, 1)
    feature_t, position_t = torch.tensor([3]), torch.tensor([7])
    leaves = frozen.default_leaves(requires_grad=True)
    pre = frozen.pre_activation(leaves, feature_t, position_t)
    tensors = leaves.tensors()
    grads = torch.autograd.grad(pre.sum(), tensors, allow_unused=True)
    epsilon = 1e-6
    generator = torch.Generator().manual_seed(0)
    checked = 0
    for tensor, grad in zip(tensors, grads, strict=True):
        if grad is None:
            continue
        for _ in range(2):
            index = tuple(
                int(torch.randint(0, size, (1,), generator=generator)) for size in tensor.shape
            )
            plus = frozen.default_leaves()
            minus = frozen.default_leaves()
            _perturb(plus, tensor, leaves, index, epsilon)
            _perturb(minus, tensor, leaves, index, -epsilon)
            with torch.no_grad():
                difference = (
                    frozen.pre_activation(plus, feature_t, position_t)
                    - frozen.pre_activation(minus, feature_t, position_t)
                ) / (2 * epsilon)
            assert torch.allclose(difference, grad[index].reshape(1), rtol=1e-6, atol=1e-8)
            checked += 1
    assert checked >= 10


def _perturb(leaves, tensor, template, index, epsilon) -> None:
    """Add ``epsilon`` at ``index`` to the leaf of ``leaves`` that matches ``tensor`` of ``template``."""
    for name in ("writes", "errors", "biases"):
        source = getattr(template, name)
        for key, value in source.items():
            if value is tensor:
                target = getattr(leaves, name)[key]
                target[index] += epsilon
                return
    assert template.embedding is tensor
    leaves.embedding[index] += epsilon


# --- output side ---------------------------------------------------------------------------------------


def _unembed_output(model: SubjectModel, ids: torch.Tensor) -> torch.Tensor:
    seen = {}
    unembed = get_path(model.hf_model, model.adapter.unembed)
    handle = unembed.register_forward_hook(lambda m, a, o: seen.update(logits=o))
    try:
        with torch.no_grad():
            model.hf_model(input_ids=ids, use_cache=False)
    finally:
        handle.remove()
    return seen["logits"].float()


def test_logit_effects_are_the_change_of_the_frozen_logits(tiny_model):
    transcoders = transcoders_for(tiny_model, (0, 1, 2))
    layer = 1
    context = _contexts(tiny_model, [12])[0]
    target = 7
    features = [0, 2, 4, 6, 8, 9]
    requests = [AttributionRequest(context, target, f, 0) for f in features]
    result = attribute(
        tiny_model, transcoders, layer, requests, threshold=0.0, output_k=3, top_tokens=5
    )
    n_forward = target + 3
    ids = torch.tensor([context[:n_forward]])
    state = capture_frozen_state(tiny_model, transcoders, ids, target_layer=layer, complete=True)
    frozen = FrozenReplacement(tiny_model, transcoders, state, layer)
    with torch.no_grad():
        clean = frozen.logits(frozen.default_leaves())[0]
    # The frozen replay of the whole model is the plain forward pass.
    true = _unembed_output(tiny_model, ids)[0]
    assert torch.allclose(clean, true, rtol=1e-4, atol=1e-4 * true.abs().max().item())
    capture = state.layers[layer].transcoder
    contributions = result.contributions
    fired = 0
    for feature in features:
        entry = (capture.active[:, 1] == target) & (capture.active[:, 2] == feature)
        activation = capture.values[entry].sum()
        fired += int(activation != 0)
        leaves = frozen.default_leaves()
        leaves.writes[layer][0, target] -= activation * transcoders[layer].W_dec[feature]
        with torch.no_grad():
            change = clean - frozen.logits(leaves)[0]  # (pos, vocab)
        logits = contributions[
            (contributions["feature"] == feature) & (contributions["kind"] == "logit")
        ].sort_values("position")
        assert list(logits["position"]) == [target, target + 1, target + 2]
        assert list(logits["delta"]) == [0, 1, 2]
        assert list(logits["token"]) == context[target + 1 : target + 4]
        for _, row in logits.iterrows():
            expected = float(change[int(row["position"]), int(row["token"])])
            assert abs(row["value"] - expected) <= 1e-4 * max(1.0, change.abs().max().item())
        top = contributions[
            (contributions["feature"] == feature) & (contributions["kind"] == "top_token")
        ]
        promoted = top[top["detail"] == "promoted"]
        suppressed = top[top["detail"] == "suppressed"]
        if activation == 0:
            assert top.empty
            assert (logits["value"] == 0).all()
            continue
        assert set(promoted["token"]) == set(change[target].topk(5).indices.tolist())
        assert set(suppressed["token"]) == set((-change[target]).topk(5).indices.tolist())
        for _, row in top.iterrows():
            assert abs(row["value"] - float(change[target, int(row["token"])])) <= 1e-4 * max(
                1.0, change.abs().max().item()
            )
    assert fired > 0
    totals = result.totals
    assert (totals["n_output_positions"] == 3).all()


def test_output_positions_stop_at_the_end_of_the_context(tiny_model):
    transcoders = transcoders_for(tiny_model, (0, 2))
    context = _contexts(tiny_model, [10])[0]
    requests = [
        AttributionRequest(context, 9, 1, 0),  # last token: no next token
        AttributionRequest(context, 8, 1, 1),
    ]
    result = attribute(tiny_model, transcoders, LAYER, requests, output_k=5)
    assert list(result.totals["n_output_positions"]) == [0, 1]
    logits = result.contributions[result.contributions["kind"] == "logit"]
    assert list(logits["sample"]) == [1]


# --- batching ------------------------------------------------------------------------------------------


def _canonical(result) -> pd.DataFrame:
    frame = result.contributions.copy()
    keys = [
        "feature",
        "sample",
        "kind",
        "layer",
        "head",
        "source_feature",
        "position",
        "token",
        "detail",
    ]
    frame = frame.fillna({"detail": ""})
    return frame.sort_values(keys, kind="stable").reset_index(drop=True)


def test_results_do_not_depend_on_batching(tiny_model):
    transcoders = transcoders_for(tiny_model, (0, 1, 2))
    requests = _requests(tiny_model, [12, 7, 15, 10, 7], features=[1, 6, 9])
    results = [
        attribute(tiny_model, transcoders, LAYER, requests, batch_size=size, threshold=0.0)
        for size in (1, 2, 5)
    ]
    reference = _canonical(results[0])
    for other in results[1:]:
        frame = _canonical(other)
        assert len(frame) == len(reference)
        assert (frame["kind"] == reference["kind"]).all()
        assert (frame["position"].fillna(-1) == reference["position"].fillna(-1)).all()
        scale = max(1.0, float(reference["value"].abs().max()))
        assert np.allclose(frame["value"], reference["value"], rtol=0, atol=1e-5 * scale)
        numbers = ["pre_activation", "leaf_sum", "head_sum", "activation"]
        assert np.allclose(other.totals[numbers], results[0].totals[numbers], rtol=1e-5, atol=1e-6)
    assert list(results[0].totals["sample"]) == [r.sample_id for r in requests]


# --- bad input and edge cases ------------------------------------------------------------------------------


def test_bad_requests_raise_input_error_naming_them(tiny_model):
    transcoders = transcoders_for(tiny_model, (0, 2))
    context = _contexts(tiny_model, [8])[0]
    cases = [
        (AttributionRequest(context, 8, 0, 7), "target_position 8 is out of range"),
        (AttributionRequest(context, -1, 0, 7), "target_position -1"),
        (AttributionRequest([], 0, 0, 7), "context_tokens is empty"),
        (AttributionRequest(context, 5, N_FEATURES, 7), f"feature {N_FEATURES} is out of range"),
        (AttributionRequest([*context[:-1], 10_000], 5, 0, 7), "token id 10000"),
    ]
    for request, message in cases:
        with pytest.raises(InputError, match=message) as error:
            attribute(tiny_model, transcoders, LAYER, [request])
        assert "sample 7" in str(error.value)
    good = AttributionRequest(context, 5, 0, 1)
    with pytest.raises(InputError, match="no transcoder for attribution layer 1"):
        attribute(tiny_model, transcoders, 1, [good])
    with pytest.raises(InputError, match="attribution layer 9 is out of range"):
        attribute(tiny_model, transcoders, 9, [good])
    with pytest.raises(InputError, match="same feature 0 and sample_id 1"):
        attribute(tiny_model, transcoders, LAYER, [good, good])
    with pytest.raises(InputError, match="threshold"):
        attribute(tiny_model, transcoders, LAYER, [good], threshold=1.5)
    with pytest.raises(InputError, match="batch_size"):
        attribute(tiny_model, transcoders, LAYER, [good], batch_size=0)


@pytest.mark.parametrize("family", ["gemma2", "llama"])
def test_target_on_bos_is_skipped_with_a_reason(family):
    model = tiny_subject_model(family)
    transcoders = transcoders_for(model, (0, 2))
    context = _contexts(model, [8])[0]
    requests = [AttributionRequest(context, 0, 1, 0), AttributionRequest(context, 4, 1, 1)]
    result = attribute(model, transcoders, LAYER, requests)
    totals = result.totals
    assert list(totals["status"]) == [STATUS_SKIPPED_BOS, "ok"]
    assert math.isnan(totals["pre_activation"].iloc[0])
    assert set(result.contributions["sample"]) == {1}


def test_gpt2_without_bos_attributes_position_zero():
    model = tiny_subject_model("gpt2")
    transcoders = transcoders_for(model, (0, 2))
    context = _contexts(model, [6])[0]
    result = attribute(model, transcoders, LAYER, [AttributionRequest(context, 0, 2, 0)])
    assert result.totals["status"].iloc[0] == "ok"
    expected = reference_pre_activations(
        model, transcoders[LAYER], LAYER, [AttributionRequest(context, 0, 2, 0)]
    )
    assert abs(result.totals["leaf_sum"].iloc[0] - expected[0]) <= REL_TOL * max(
        1, abs(expected[0])
    )


def test_a_feature_that_never_fires_is_still_decomposed(tiny_model):
    transcoders = transcoders_for(tiny_model, (0, 2))
    dead = 3
    with torch.no_grad():
        transcoders[LAYER].b_enc[dead] = -1e3
    requests = _requests(tiny_model, [10, 12], features=[dead])
    result = attribute(tiny_model, transcoders, LAYER, requests, threshold=0.0)
    totals = result.totals
    assert not totals["fires"].any()
    assert (totals["activation"] == 0).all()
    expected = reference_pre_activations(tiny_model, transcoders[LAYER], LAYER, requests)
    assert (expected < 0).all()
    assert _close(totals["leaf_sum"], expected, np.abs(expected))
    logits = result.contributions[result.contributions["kind"] == "logit"]
    assert (logits["value"] == 0).all()


# --- tables ------------------------------------------------------------------------------------------------


def test_tables_follow_the_schemas(tiny_model, tmp_path):
    transcoders = transcoders_for(tiny_model, (0, 2))
    requests = _requests(tiny_model, [9, 11], features=[0, 1])
    requests.append(AttributionRequest(requests[0].context_tokens, 0, 5, 99))
    result = attribute(tiny_model, transcoders, LAYER, requests)
    write_parquet_atomic(
        result.contributions, tmp_path / "c.parquet", schema=ATTRIBUTION_CONTRIBUTIONS_SCHEMA
    )
    write_parquet_atomic(result.totals, tmp_path / "t.parquet", schema=ATTRIBUTION_TOTALS_SCHEMA)
    assert pq.read_schema(tmp_path / "c.parquet").equals(ATTRIBUTION_CONTRIBUTIONS_SCHEMA)
    assert pq.read_schema(tmp_path / "t.parquet").equals(ATTRIBUTION_TOTALS_SCHEMA)
    assert result.contributions_table().schema.equals(ATTRIBUTION_CONTRIBUTIONS_SCHEMA)
    assert result.totals_table().num_rows == len(requests)
    frame = result.contributions
    assert set(frame["partition"]) <= {"leaf", "mediator", "output", "output_vocab"}
    assert frame.loc[frame["kind"] == "embedding", "layer"].isna().all()
    assert frame.loc[frame["kind"] == "bias", "position"].isna().all()
    assert frame.loc[frame["kind"] == "head", "head"].notna().all()


def test_no_requests_give_empty_tables(tiny_model):
    transcoders = transcoders_for(tiny_model, (2,))
    result = attribute(tiny_model, transcoders, LAYER, [])
    assert result.contributions.empty and result.totals.empty
    assert result.contributions_table().schema.equals(ATTRIBUTION_CONTRIBUTIONS_SCHEMA)


# --- the embedded model -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_completeness_on_gemma3_270m(gemma3_270m_dir):
    model = SubjectModel.from_pretrained(gemma3_270m_dir, local_files_only=True)
    layer = 3
    transcoders = {
        tc_layer: calibrated_transcoder(
            model, tc_layer, seed=tc_layer, d_transcoder=512, input_hook="mlp_in", activation="relu"
        )
        for tc_layer in (1, layer)
    }
    tokens = model.tokenizer(
        "The quick brown fox jumps over the lazy dog because it was late for dinner.",
        add_special_tokens=False,
    )["input_ids"]
    context = model.with_bos(tokens)
    requests = [AttributionRequest(context, len(context) - 2, f, 0) for f in range(8)]
    result = attribute(model, transcoders, layer, requests, batch_size=4, output_k=1)
    expected = reference_pre_activations(model, transcoders[layer], layer, requests)
    scale = np.maximum(np.abs(expected), 1.0)
    assert _close(result.totals["pre_activation"], expected, scale)
    assert _close(result.totals["leaf_sum"], expected, scale)
    assert (result.contributions["kind"] == "logit").sum() == len(requests)
