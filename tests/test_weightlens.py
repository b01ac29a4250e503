"""WeightLens on tiny GPT-2, Gemma-2, Gemma-3 and Llama models with planted transcoder weights."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.metrics import roc_auc_score

from circuit_insights.core.contexts import ContextTokens, HeldOut, TopContexts
from circuit_insights.core.errors import InputError
from circuit_insights.core.tokens import TokenDisplay, display_token
from circuit_insights.data.schemas import WEIGHTLENS_SCHEMA, WEIGHTLENS_TWERA_SCHEMA
from circuit_insights.data.shards import Shard
from circuit_insights.models.architectures import norm_gain
from circuit_insights.models.subject import SubjectModel
from circuit_insights.transcoders.base import Transcoder
from circuit_insights.weightlens.classify import classify_features
from circuit_insights.weightlens.config import (
    Thresholds,
    WeightLensOptions,
    resolve_thresholds,
    thresholds_for,
)
from circuit_insights.weightlens.describe import describe
from circuit_insights.weightlens.directions import (
    fold_write_side,
    read_directions,
    write_directions,
)
from circuit_insights.weightlens.heldout import score_heldout
from circuit_insights.weightlens.io import gather_weightlens, read_weightlens, write_weightlens
from circuit_insights.weightlens.run import run_weightlens
from circuit_insights.weightlens.twera import twera, twera_upstream
from circuit_insights.weightlens.upstream import inherited_candidates
from circuit_insights.weightlens.validation import single_token_activations, single_token_inputs
from circuit_insights.weightlens.zscores import select_outliers, zscore_stats, zscores
from tests.conftest import tiny_subject_model

PLANTED_TOKEN = 17
N_FEATURES = 32
LOOSE = Thresholds(t_tok=3.0, t_up=3.0, preset="test")


def _transcoder(model: SubjectModel, layer: int, **kwargs) -> Transcoder:
    """A random transcoder whose features all stay silent (bias -1000) unless planted."""
    generator = torch.Generator().manual_seed(100 + layer)
    transcoder = Transcoder(model.d_model, N_FEATURES, layer=layer, **kwargs)
    with torch.no_grad():
        transcoder.W_enc.copy_(torch.randn(model.d_model, N_FEATURES, generator=generator))
        decoder = torch.randn(N_FEATURES, model.d_model, generator=generator)
        transcoder.W_dec.copy_(decoder / decoder.norm(dim=1, keepdim=True))
        transcoder.b_enc.fill_(-1000.0)
        if transcoder.b_dec_in is not None:
            transcoder.b_dec_in.copy_(0.1 * torch.randn(model.d_model, generator=generator))
    return transcoder


def _encoder_for(
    model: SubjectModel, transcoder: Transcoder, direction: torch.Tensor
) -> torch.Tensor:
    """The encoder column whose residual-stream read direction (``folded``) is ``direction``."""
    if model.adapter.norm_kind == "layernorm":
        direction = direction - direction.mean()
    if transcoder.input_hook == "mlp_in":
        gain = norm_gain(
            model.block_part(transcoder.layer, "pre_mlp_norm"), model.adapter.norm_kind
        )
        direction = direction / gain
    return direction


def _single_token_pre_activations(
    model: SubjectModel, transcoder: Transcoder, feature: int
) -> torch.Tensor:
    """The feature's pre-activation on every vocabulary token alone ([BOS, token]). (vocab,)"""
    ids = single_token_inputs(model, np.arange(model.vocab_size))
    hook = transcoder.input_hook
    x = model.hook_values(ids, {transcoder.layer: [hook]})[(transcoder.layer, hook)][:, -1]
    with torch.no_grad():
        return transcoder.pre_activation(x)[:, feature]


def _fire_only_on(model: SubjectModel, transcoder: Transcoder, feature: int, token: int) -> None:
    """Set the feature's bias so that, of all tokens alone, it fires on ``token`` only."""
    with torch.no_grad():
        transcoder.b_enc[feature] = 0.0
    pre = _single_token_pre_activations(model, transcoder, feature)
    others = torch.cat([pre[:token], pre[token + 1 :]])
    assert pre[token] > others.max(), "planted token should have the largest pre-activation"
    with torch.no_grad():
        transcoder.b_enc[feature] = -float(pre[token] + others.max()) / 2


def _planted_model(family: str) -> SubjectModel:
    """A tiny model whose PLANTED_TOKEN embedding dominates its own residual stream."""
    model = tiny_subject_model(family)
    with torch.no_grad():
        model.embedding_module.weight[PLANTED_TOKEN] *= 30
    return model


def _plant_token_feature(model: SubjectModel, transcoder: Transcoder, feature: int) -> None:
    embedding = model.embedding_matrix()[PLANTED_TOKEN]
    with torch.no_grad():
        transcoder.W_enc[:, feature] = _encoder_for(model, transcoder, embedding)
    _fire_only_on(model, transcoder, feature, PLANTED_TOKEN)


def _row(frame: pd.DataFrame, feature: int) -> pd.Series:
    return frame.set_index("feature").loc[feature]


# --- planted features -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "family, hook, center",
    [
        ("gpt2", "mlp_in", False),
        ("gpt2", "mlp_in_unaffine", True),  # Dunefsky-style GPT-2 transcoders
        ("gemma2", "mlp_in", False),
        ("gemma3", "mlp_in", False),
        ("llama", "mlp_in", False),
        ("llama", "resid_mid", False),
    ],
)
def test_planted_token_feature_is_found_and_validated(family, hook, center):
    model = _planted_model(family)
    transcoder = _transcoder(model, 0, input_hook=hook, center_input=center)
    _plant_token_feature(model, transcoder, feature=3)
    frame = run_weightlens(model, {0: transcoder}, 0, range(N_FEATURES), thresholds=LOOSE)
    planted = _row(frame, 3)
    assert planted["candidate_token_ids"][0] == PLANTED_TOKEN
    assert planted["candidate_sources"][0] == "input"
    assert list(planted["validated_token_ids"]) == [PLANTED_TOKEN]
    assert planted["validated_activations"][0] > 0
    assert planted["is_token_based"]
    assert planted["description"].startswith(f'tokens: "<{PLANTED_TOKEN}>"')
    # A random encoder with a negative bias validates nothing, whatever its candidates.
    for feature in set(range(N_FEATURES)) - {3}:
        row = _row(frame, feature)
        assert len(row["validated_token_ids"]) == 0
        assert not row["is_token_based"]
        assert row["description"].startswith("tokens: none")


@pytest.mark.parametrize("family", ["gpt2", "gemma2", "llama"])
def test_two_layer_chain_inherits_and_validates_upstream_tokens(family):
    model = _planted_model(family)
    upstream = _transcoder(model, 0)
    _plant_token_feature(model, upstream, feature=5)
    downstream = _transcoder(model, 1)
    # The downstream feature 9 reads exactly what upstream feature 5 writes.
    written = write_directions(model, upstream, 0, np.array([5]), "folded")[0]
    with torch.no_grad():
        downstream.W_enc[:, 9] = _encoder_for(model, downstream, written)
    pre = _single_token_pre_activations(model, downstream, 9)
    with torch.no_grad():  # fires on the planted token alone (and maybe others)
        downstream.b_enc[9] = -float(pre[PLANTED_TOKEN]) + 1e-3

    transcoders = {0: upstream, 1: downstream}
    layer0 = run_weightlens(model, {0: upstream}, 0, range(N_FEATURES), thresholds=LOOSE)
    layer1 = run_weightlens(model, transcoders, 1, range(N_FEATURES), {0: layer0}, LOOSE)
    row = _row(layer1, 9)
    assert (0, 5) in zip(row["upstream_layers"], row["upstream_features"], strict=True)
    kept = list(row["upstream_features"]).index(5)
    assert row["upstream_z"][kept] > LOOSE.t_up
    assert row["upstream_has_result"][kept]
    assert list(row["upstream_inherited_token_ids"][kept]) == [PLANTED_TOKEN]
    assert 0 < row["upstream_relative_contributions"][kept] <= 1
    candidates = list(row["candidate_token_ids"])
    assert PLANTED_TOKEN in candidates
    assert "L0#5" in row["candidate_sources"][candidates.index(PLANTED_TOKEN)]
    assert PLANTED_TOKEN in list(row["validated_token_ids"])
    assert "via upstream L0#5" in row["description"]

    # The inherited token is validated on its own against the downstream feature: silenced, it
    # stays a candidate but is not validated.
    with torch.no_grad():
        downstream.b_enc[9] = -1000.0
    silent = _row(run_weightlens(model, transcoders, 1, [9], {0: layer0}, LOOSE), 9)
    assert PLANTED_TOKEN in list(silent["candidate_token_ids"])
    assert len(silent["validated_token_ids"]) == 0


def test_validation_applies_the_jumprelu_threshold():
    model = _planted_model("gemma2")
    transcoder = _transcoder(model, 0, activation="jumprelu")
    _plant_token_feature(model, transcoder, feature=3)
    pre = float(_single_token_pre_activations(model, transcoder, 3)[PLANTED_TOKEN])
    assert pre > 0
    with torch.no_grad():
        transcoder.threshold[3] = pre / 2
    below = _row(run_weightlens(model, {0: transcoder}, 0, [3], thresholds=LOOSE), 3)
    assert list(below["validated_token_ids"]) == [PLANTED_TOKEN]
    with torch.no_grad():
        transcoder.threshold[3] = pre * 2
    above = _row(run_weightlens(model, {0: transcoder}, 0, [3], thresholds=LOOSE), 3)
    assert list(above["candidate_token_ids"])[0] == PLANTED_TOKEN
    assert len(above["validated_token_ids"]) == 0


# --- validation inputs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "family, bos", [("gpt2", None), ("gemma2", 2), ("gemma3", 2), ("llama", 1)]
)
def test_validation_is_single_token_with_the_models_own_bos(family, bos, monkeypatch):
    model = _planted_model(family)
    assert model.bos_token_id == bos
    transcoder = _transcoder(model, 1)
    with torch.no_grad():
        transcoder.b_enc.fill_(0.0)  # many candidates fire: validation has work to do
    seen: list[torch.Tensor] = []
    original = model.hook_values

    def recording(input_ids, requests, attention_mask=None):
        seen.append(input_ids.clone())
        assert attention_mask is None
        assert set(requests) == {1}
        return original(input_ids, requests, attention_mask)

    monkeypatch.setattr(model, "hook_values", recording)
    frame = run_weightlens(
        model, {1: transcoder}, 1, range(N_FEATURES), thresholds=Thresholds(2.0, 3.0), batch_size=3
    )
    unique = np.unique(np.concatenate([list(ids) for ids in frame["candidate_token_ids"]]))
    assert len(unique) > 3
    assert len(seen) == math.ceil(len(unique) / 3)  # one pass over the unique candidate ids
    passed = torch.cat(seen)
    expected_length = 1 if bos is None else 2
    assert passed.shape == (len(unique), expected_length)
    if bos is not None:
        assert (passed[:, 0] == bos).all()
    assert sorted(passed[:, -1].tolist()) == unique.tolist()


def test_single_token_activations_equal_the_transcoder_on_each_token_alone():
    model = tiny_subject_model("gemma2")
    transcoder = _transcoder(model, 2)
    with torch.no_grad():
        transcoder.b_enc.fill_(0.0)
    tokens = np.array([5, 9, 40, 41])
    features = np.array([2, 7, 30])
    batched = single_token_activations(model, transcoder, 2, tokens, features, batch_size=3)
    for i, token in enumerate(tokens):
        ids = torch.tensor([[2, int(token)]])
        x = model.hook_values(ids, {2: ["mlp_in"]})[(2, "mlp_in")][:, -1]
        with torch.no_grad():
            alone = transcoder.encode(x)[0, features]
        torch.testing.assert_close(batched[i], alone, rtol=1e-4, atol=1e-5)


# --- thresholds and z-scores -------------------------------------------------------------------------


def test_presets_per_family_and_overrides():
    assert thresholds_for("gpt2").t_tok == 4.0
    for family in ("gemma2", "gemma3", "llama"):
        paper = thresholds_for(family, "paper")
        assert (paper.t_tok, paper.t_up, paper.z_scope) == (4.5, 3.0, "full")
    reference = thresholds_for("gpt2", "reference")
    assert (reference.t_tok, reference.t_up, reference.z_scope) == (5.5, 4.0, "top")
    assert (reference.top_tokens, reference.top_upstream) == (1000, 100)
    custom = thresholds_for("llama", "paper", t_tok=6.0)
    assert (custom.t_tok, custom.t_up, custom.preset) == (6.0, 3.0, "paper+overrides")
    with pytest.raises(InputError, match="preset"):
        thresholds_for("llama", "fancy")
    with pytest.raises(InputError, match="t_top"):
        thresholds_for("llama", "paper", t_top=3)
    with pytest.raises(InputError, match="z_scope"):
        Thresholds(4.0, 3.0, z_scope="half")
    model = tiny_subject_model("gpt2")
    assert resolve_thresholds(model, None).t_tok == 4.0
    assert resolve_thresholds(model, "reference").preset == "reference"


def test_zscores_on_known_vectors():
    values = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0])
    mean, std = 4.0, math.sqrt(((values - 4.0) ** 2).sum().item() / 4)  # Bessel's correction
    torch.testing.assert_close(zscores(values[:, None])[:, 0], (values - mean) / std)
    # Within the top 3 ([10, 4, 3]): mean 17/3.
    top_mean, top_std = zscore_stats(values[:, None], scope="top", top_k=3)
    assert top_mean.item() == pytest.approx(17 / 3)
    assert top_std.item() == pytest.approx(float(np.std([10, 4, 3], ddof=1)))
    assert zscores(torch.zeros(6, 2)).abs().sum() == 0  # constant: z = 0, not NaN
    # A large mean with a tiny spread (the fast one-pass variance would lose it) stays exact.
    shifted = 1e4 + 1e-3 * torch.randn(3, 1000, generator=torch.Generator().manual_seed(0))
    _, std = zscore_stats(shifted, dim=1)
    torch.testing.assert_close(std, shifted.double().std(1).float(), rtol=1e-3, atol=0)


def test_select_outliers_full_and_top_scope():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 500, generator=generator)  # (features, items)
    scores[0, 7] = 20.0
    scores[0, 8] = 15.0
    scores[2, 9] = -30.0
    full = select_outliers(scores, 4.0, scope="full", top_k=1000, max_keep=10)
    indices, z, values = full.per_row("indices"), full.per_row("z"), full.per_row("values")
    assert list(indices[0]) == [7, 8] and list(values[0]) == [20.0, 15.0]
    expected_z = zscores(scores, dim=1)[0, [7, 8]].double().numpy()
    np.testing.assert_allclose(z[0], expected_z, rtol=1e-6)
    assert len(indices[1]) == 0 and full.n_total.tolist()[0] == 2
    capped = select_outliers(scores, 4.0, scope="full", top_k=1000, max_keep=1)
    assert list(capped.per_row("indices")[0]) == [7] and capped.n_total[0] == 2
    low = select_outliers(-scores, 4.0, scope="full", top_k=1000, max_keep=10)
    assert list(low.per_row("indices")[2]) == [9]
    constant = select_outliers(torch.ones(2, 50), 0.5, scope="full", top_k=10, max_keep=5)
    assert len(constant.rows) == 0 and constant.n_total.tolist() == [0, 0]
    # Top scope: z within the top 50 only; an item outside them never passes.
    top = select_outliers(scores, 1.0, scope="top", top_k=50, max_keep=1000)
    top_values = scores.topk(50, dim=1).values
    expected = (top_values - top_values.mean(1, keepdim=True)) / top_values.std(1, keepdim=True)
    for row in range(3):
        kept = expected[row][expected[row] > 1.0]
        np.testing.assert_allclose(top.per_row("z")[row], kept.numpy(), rtol=1e-5)
        assert set(top.per_row("indices")[row]) <= set(scores[row].topk(50).indices.tolist())


def test_reference_preset_only_passes_top_tokens():
    model = _planted_model("llama")
    transcoder = _transcoder(model, 0)
    _plant_token_feature(model, transcoder, feature=3)
    thresholds = thresholds_for("llama", "reference", t_tok=2.0, top_tokens=10)
    frame = run_weightlens(model, {0: transcoder}, 0, range(N_FEATURES), thresholds=thresholds)
    assert (frame["z_scope"] == "top").all()
    assert (frame["n_candidate_tokens_total"] <= 10).all()
    assert _row(frame, 3)["candidate_token_ids"][0] == PLANTED_TOKEN


def test_raw_projection_is_the_papers_formula():
    model = tiny_subject_model("gemma2")
    transcoder = _transcoder(model, 1)
    frame = run_weightlens(
        model,
        {1: transcoder},
        1,
        range(N_FEATURES),
        thresholds=Thresholds(2.0, 3.0),
        options=WeightLensOptions(projection="raw"),
    )
    scores = model.embedding_matrix() @ transcoder.W_enc.detach()  # (vocab, F)
    z = zscores(scores)
    for feature in range(N_FEATURES):
        row = _row(frame, feature)
        expected = torch.nonzero(z[:, feature] > 2.0)[:, 0]
        order = torch.argsort(z[expected, feature], descending=True)
        assert list(row["candidate_token_ids"]) == expected[order].tolist()
        np.testing.assert_allclose(row["candidate_z"], z[expected[order], feature], rtol=1e-4)
        logits = transcoder.W_dec.detach()[feature] @ model.unembedding_matrix()
        promoted = torch.nonzero(zscores(logits[:, None])[:, 0] > 2.0)[:, 0]
        assert sorted(row["promoted_token_ids"]) == promoted.tolist()


@pytest.mark.parametrize("family", ["gpt2", "gemma2"])
@pytest.mark.parametrize("output_hook", ["mlp_out", "mlp_out_post_norm"])
def test_upstream_fold_equals_written_direction_dot_read_direction(family, output_hook):
    model = tiny_subject_model(family)
    upstream = _transcoder(model, 0, output_hook=output_hook)
    downstream = _transcoder(model, 2)
    reads = read_directions(model, downstream, 2, np.arange(5), "folded")  # (d, 5)
    folded = fold_write_side(model, upstream, 0, reads, "folded")
    expected = write_directions(model, upstream, 0, None, "folded") @ reads  # (F', 5)
    torch.testing.assert_close(upstream.W_dec.detach() @ folded, expected, rtol=1e-4, atol=1e-5)
    post_norm = family == "gemma2" and output_hook == "mlp_out"
    assert torch.equal(folded, reads) != post_norm


def test_chunking_does_not_change_the_result():
    model = tiny_subject_model("llama")
    transcoders = {0: _transcoder(model, 0), 1: _transcoder(model, 1)}
    with torch.no_grad():
        transcoders[1].b_enc.fill_(0.0)
    upstream = run_weightlens(model, {0: transcoders[0]}, 0, range(N_FEATURES), thresholds="paper")
    kwargs = dict(thresholds=Thresholds(2.5, 2.0))
    whole = run_weightlens(model, transcoders, 1, Shard(0, N_FEATURES), {0: upstream}, **kwargs)
    chunked = run_weightlens(
        model,
        transcoders,
        1,
        Shard(0, N_FEATURES),
        {0: upstream},
        options=WeightLensOptions(feature_chunk=5, batch_size=3),
        **kwargs,
    )
    pd.testing.assert_frame_equal(whole, chunked)


# --- display and description ----------------------------------------------------------------------


class _OddTokenizer:
    """A tokenizer with unusual vocabulary entries."""

    pieces = {0: "", 1: "<0x0A>", 2: "\n", 3: "âĢ", 4: 'say "hi"', 5: "<0xE2>", 6: "\t\x00"}
    decoded = {0: "", 1: "\n", 2: "\n", 3: "\ufffd", 4: 'say "hi"', 5: "\ufffd", 6: "\t\x00"}

    def convert_ids_to_tokens(self, token_id):
        return self.pieces.get(token_id)

    def decode(self, ids, **kwargs):
        if ids[0] not in self.decoded:
            raise IndexError(ids[0])
        return self.decoded[ids[0]]


def test_display_of_unusual_vocabulary_entries():
    tokenizer = _OddTokenizer()
    shown = [display_token(i, tokenizer) for i in range(8)]
    assert shown[0] == "<empty:0>"
    assert shown[1] == "\\n"  # byte token <0x0A>
    assert shown[2] == "\\n"
    assert shown[3] == "\\xe2\\x80"  # byte-level BPE fragment, not valid UTF-8 alone
    assert shown[4] == 'say "hi"'
    assert shown[5] == "<0xE2>"
    assert shown[6] == "\\t\\x00"
    assert shown[7] == "<7>"  # unknown id
    assert all(s and s.isprintable() for s in shown)
    assert TokenDisplay(None).many([3, 11]) == ["<3>", "<11>"]
    description = describe(
        [shown[0], shown[1], shown[4]],
        ["a", "b", "c"],
        ["z"],
        [(3, 12, ["Paris"]), (4, 1, ["x"])],
        limit=2,
        upstream_limit=1,
    )
    assert description == (
        'tokens: "<empty:0>", "\\n", +1 more | promotes: "a", "b", +1 more | suppresses: "z" | '
        'via upstream L3#12 ("Paris"), +1 more'
    )
    assert describe([]) == "tokens: none"


def test_run_uses_the_tokenizer_for_display_only():
    model = _planted_model("llama")
    transcoder = _transcoder(model, 0)
    _plant_token_feature(model, transcoder, feature=3)

    class Names:
        def convert_ids_to_tokens(self, token_id):
            return f"tok{token_id}" if token_id != PLANTED_TOKEN else ""

        def decode(self, ids, **kwargs):
            return "" if ids[0] == PLANTED_TOKEN else f"tok{ids[0]}"

    frame = run_weightlens(model, {0: transcoder}, 0, [3], thresholds=LOOSE, tokenizer=Names())
    row = _row(frame, 3)
    assert list(row["validated_token_ids"]) == [PLANTED_TOKEN]
    assert list(row["validated_tokens"]) == [f"<empty:{PLANTED_TOKEN}>"]


# --- classification and scores ---------------------------------------------------------------------


def test_token_based_rule_uses_the_share_of_top_contexts():
    corpus = ContextTokens.from_matrix(np.array([[1, 5, 6], [1, 5, 7], [1, 8, 5], [1, 9, 9]]))
    validated = pd.DataFrame({"feature": [0, 1, 1], "token_id": [5, 5, 9]})
    # feature 0: max tokens 5, 5, 8, 9 -> share 0.5; feature 1: 5, 9 -> 1.0; feature 2: no tokens;
    # feature 3: validated token but no top contexts.
    table = pd.DataFrame(
        {
            "feature": [0, 0, 0, 0, 1, 1, 2],
            "context": [0, 1, 2, 3, 0, 3, 0],
            "target_position": [1, 1, 1, 1, 1, 2, 1],
            "kind": ["top"] * 7,
        }
    )
    table = pd.concat([table, table.assign(kind="quantile", context=3, target_position=1)])
    validated = pd.concat([validated, pd.DataFrame({"feature": [3], "token_id": [6]})])
    classes = classify_features(
        np.arange(4), validated, TopContexts(table, corpus), vocab_size=16, min_token_share=0.6
    ).set_index("feature")
    assert classes.loc[0, "top_context_share"] == 0.5
    assert not classes.loc[0, "is_token_based"]
    assert classes.loc[0, "classification"] == "context_dependent"
    assert classes.loc[1, "is_token_based"] and classes.loc[1, "n_top_contexts_explained"] == 2
    assert not classes.loc[2, "is_token_based"]
    assert classes.loc[3, "classification_basis"] == "no_top_contexts"
    assert classes.loc[3, "is_token_based"]
    without = classify_features(np.arange(4), validated, None, vocab_size=16, min_token_share=0.6)
    assert (without["classification_basis"] == "validated_tokens_only").all()
    assert without["is_token_based"].tolist() == [True, True, False, True]
    with pytest.raises(InputError, match="context ids"):
        bad = table.assign(context=99)
        classify_features(
            np.arange(4), validated, TopContexts(bad, corpus), vocab_size=16, min_token_share=0.5
        )


@pytest.mark.parametrize("fraction", [0.0, 0.5])
def test_heldout_score_matches_a_dense_computation(fraction):
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 12, size=(6, 10))
    tokens[:, 0] = 2  # BOS, excluded
    validated = pd.DataFrame(
        {"feature": [0, 0, 1, 2], "token_id": [4, 5, 6, 7], "activation": [2.0, 1.0, 3.0, 1.0]}
    )
    rows = []
    for context in range(6):
        for position in range(10):
            token = tokens[context, position]
            if token in (4, 5) or rng.random() < 0.1:
                rows.append((context, position, 0, rng.random() + 0.1))
            if rng.random() < 0.2:
                rows.append((context, position, 1, 1.0))
            rows.append((context, position, 3, 1.0))  # feature 3 fires everywhere
    table = pd.DataFrame(rows, columns=["context", "position", "feature", "activation"])
    heldout = HeldOut(table, ContextTokens.from_matrix(tokens))
    features = np.arange(5)
    result = score_heldout(
        features, validated, heldout, vocab_size=16, bos_token_id=2, positive_fraction=fraction
    )
    result = result.set_index("feature")
    scored = tokens != 2
    for feature in (0, 1):
        value = np.zeros(tokens.shape)
        part = table[table["feature"] == feature]
        value[part["context"], part["position"]] = part["activation"]
        fires = (value > 0) & (value >= fraction * value[scored].max())
        lookup = dict(
            zip(
                validated["token_id"][validated["feature"] == feature],
                validated["activation"][validated["feature"] == feature],
                strict=True,
            )
        )
        score = np.vectorize(lambda t, lookup=lookup: lookup.get(t, 0.0))(tokens)
        y, s = fires[scored], score[scored]
        assert result.loc[feature, "auroc"] == pytest.approx(roc_auc_score(y, s))
        assert result.loc[feature, "precision"] == pytest.approx(
            (y & (s > 0)).sum() / (s > 0).sum()
        )
        assert result.loc[feature, "recall"] == pytest.approx((y & (s > 0)).sum() / y.sum())
        assert result.loc[feature, "n_scored_positions"] == scored.sum()
        assert result.loc[feature, "n_positive"] == (fires & scored).sum()
        if fraction and feature == 0:  # the weak tail is there, and counted as negatives
            assert 0 < (fires & scored).sum() < ((value > 0) & scored).sum()
        assert result.loc[feature, "score_reason"] == ""
    assert math.isnan(result.loc[2, "auroc"]) and "never fires" in result.loc[2, "score_reason"]
    assert "no validated tokens" in result.loc[3, "score_reason"]
    assert "no validated tokens" in result.loc[4, "score_reason"]
    with pytest.raises(InputError, match="heldout_positive_fraction"):
        score_heldout(
            features, validated, heldout, vocab_size=16, bos_token_id=2, positive_fraction=2
        )
    missing = score_heldout(features, validated, None, vocab_size=16, bos_token_id=2)
    assert (missing["score_reason"] == "no held-out data").all() and missing["auroc"].isna().all()


def test_run_with_top_contexts_and_heldout_and_parquet_round_trip(tmp_path):
    model = _planted_model("gemma2")
    transcoder = _transcoder(model, 0)
    _plant_token_feature(model, transcoder, feature=3)
    tokens = np.full((4, 6), 40)
    tokens[:, 0] = 2
    tokens[0, 2] = tokens[1, 4] = tokens[2, 1] = PLANTED_TOKEN
    corpus = ContextTokens(np.array([10, 11, 12, 13]), tokens)
    top = pd.DataFrame({"feature": [3, 3, 3], "context": [10, 11, 12], "max_position": [2, 4, 1]})
    activations = pd.DataFrame(
        {
            "context": [10, 11, 12, 13],
            "position": [2, 4, 1, 0],
            "feature": 3,
            "activation": [5.0, 4.0, 3.0, 9.0],
            "excluded": [False, False, False, True],
        }
    )
    frame = run_weightlens(
        model,
        {0: transcoder},
        0,
        Shard(0, N_FEATURES),
        thresholds=LOOSE,
        top_contexts=TopContexts(top, corpus),
        heldout=HeldOut(activations, corpus),
    )
    row = _row(frame, 3)
    assert row["classification_basis"] == "top_contexts" and row["top_context_share"] == 1.0
    assert row["auroc"] == 1.0 and row["precision"] == 1.0 and row["recall"] == 1.0
    assert row["n_positive"] == 3 and row["n_scored_positions"] == 20
    paths = [tmp_path / "f000016-000032.parquet", tmp_path / "f000000-000016.parquet"]
    write_weightlens(frame[frame["feature"] >= 16], paths[0])
    write_weightlens(frame[frame["feature"] < 16], paths[1])
    assert pq.read_schema(paths[0]).equals(WEIGHTLENS_SCHEMA, check_metadata=False)
    back = read_weightlens(paths)
    assert back["feature"].tolist() == list(range(N_FEATURES))
    with pytest.raises(InputError, match="repeat"):
        read_weightlens([paths[0], paths[0]])
    with pytest.raises(InputError, match="does not exist"):
        read_weightlens([tmp_path / "missing.parquet"])
    assert list(back.columns) == WEIGHTLENS_SCHEMA.names
    assert list(back.set_index("feature").loc[3, "validated_token_ids"]) == [PLANTED_TOKEN]
    # The layer table later layers read: every shard once, by feature, same schema and values.
    table = tmp_path / "layer0.parquet"
    assert gather_weightlens(paths, table) == N_FEATURES
    assert pq.read_schema(table).equals(WEIGHTLENS_SCHEMA, check_metadata=False)
    pd.testing.assert_frame_equal(read_weightlens([table]), back)
    # Results read back from parquet serve as upstream results of the next layer.
    layer1 = run_weightlens(
        model, {0: transcoder, 1: _transcoder(model, 1)}, 1, range(4), {0: back}, LOOSE
    )
    assert len(layer1) == 4


# --- bad input -------------------------------------------------------------------------------------


def test_mismatched_transcoders_are_input_errors_naming_layer_and_dimension():
    model = tiny_subject_model("gpt2")
    wrong_width = Transcoder(model.d_model + 1, 8, layer=1)
    with pytest.raises(InputError, match=r"layer 1.*d_model"):
        run_weightlens(model, {1: wrong_width}, 1, range(8))
    upstream_wrong = Transcoder(16, 8, layer=0)
    with pytest.raises(InputError, match=r"layer 0.*d_model=16"):
        run_weightlens(model, {0: upstream_wrong, 1: _transcoder(model, 1)}, 1, range(8), {0: None})
    with pytest.raises(InputError, match=r"layer 1.*d_transcoder=32"):
        run_weightlens(model, {1: _transcoder(model, 1)}, 1, Shard(16, 48))
    with pytest.raises(InputError, match=r"layer 2.*says layer=1"):
        run_weightlens(model, {2: _transcoder(model, 1)}, 2, range(4))
    with pytest.raises(InputError, match=r"upstream layer\(s\) \[0\]"):
        run_weightlens(model, {0: _transcoder(model, 0), 1: _transcoder(model, 1)}, 1, range(4))
    with pytest.raises(InputError, match="layer 5"):
        run_weightlens(model, {1: _transcoder(model, 1)}, 5, range(4))


def test_layer_without_earlier_transcoders_has_no_upstream_section():
    model = tiny_subject_model("gemma3")
    transcoder = _transcoder(model, 2)
    frame = run_weightlens(model, {2: transcoder}, 2, range(N_FEATURES), thresholds="paper")
    assert len(frame) == N_FEATURES
    assert frame["upstream_features"].map(len).sum() == 0
    assert (frame["n_upstream_total"] == 0).all()
    assert not frame["description"].str.contains("via upstream").any()
    np.testing.assert_allclose(frame["total_abs_contribution"], frame["input_abs_contribution"])


def test_upstream_feature_missing_from_results_is_flagged():
    model = _planted_model("llama")
    upstream = _transcoder(model, 0)
    downstream = _transcoder(model, 1)
    written = write_directions(model, upstream, 0, np.array([5]), "folded")[0]
    with torch.no_grad():
        downstream.W_enc[:, 9] = _encoder_for(model, downstream, written)
    partial = pd.DataFrame({"feature": [0, 1], "validated_token_ids": [[3], []]})
    frame = run_weightlens(model, {0: upstream, 1: downstream}, 1, [9], {0: partial}, LOOSE)
    row = _row(frame, 9)
    kept = list(row["upstream_features"]).index(5)
    assert not row["upstream_has_result"][kept]
    assert len(row["upstream_inherited_token_ids"][kept]) == 0


def test_inherited_candidates_keep_the_largest_contributions_up_to_the_bound():
    own = np.array([7, 8])
    offers = [  # (label, c, validated ids, their activations): scores |c| * a
        ("L0#1", 2.0, np.array([8, 10, 11, 12]), np.array([9.0, 1.0, 3.0, 0.5])),  # 2, 6, 1
        ("L1#4", -1.0, np.array([12, 13, 10]), np.array([7.0, 4.0, 0.1])),  # 7, 4, 0.1
    ]
    uncapped, sources = inherited_candidates(own, offers, None)
    assert uncapped == [7, 8, 12, 11, 13, 10]  # own first, then by the best |c| * a
    assert sources[8] == ["input", "L0#1"]
    assert sources[12] == ["L0#1", "L1#4"]
    capped, capped_sources = inherited_candidates(own, offers, 2)
    assert capped == [7, 8, 12, 11]  # own ones are never cut; inherited: the 2 largest
    assert set(capped_sources) == set(capped)
    assert inherited_candidates(own, offers, 0)[0] == [7, 8]
    with pytest.raises(InputError, match="max_inherited_tokens"):
        WeightLensOptions(max_inherited_tokens=-1)


@pytest.mark.parametrize("bound", [3, None])
def test_inheritance_bound_caps_candidates_and_keeps_the_largest_contributions(bound):
    model = _planted_model("llama")
    upstream = _transcoder(model, 0)
    downstream = _transcoder(model, 1)
    written = write_directions(model, upstream, 0, np.array([5]), "folded")[0]
    with torch.no_grad():
        downstream.W_enc[:, 9] = _encoder_for(model, downstream, written)
        downstream.b_enc[9] = 1000.0  # fires on every token: every candidate is validated
    offered = np.arange(20, 32)
    activations = np.random.default_rng(0).permutation(len(offered)).astype(float) + 1.0
    results = pd.DataFrame(
        {
            "feature": [5],
            "validated_token_ids": [offered.tolist()],
            "validated_activations": [activations.tolist()],
        }
    )
    options = WeightLensOptions(max_inherited_tokens=bound)
    frame = run_weightlens(
        model, {0: upstream, 1: downstream}, 1, [9], {0: results}, LOOSE, options=options
    )
    row = _row(frame, 9)
    assert list(row["upstream_features"]) == [5]
    sources = list(row["candidate_sources"])
    own = [t for t, s in zip(row["candidate_token_ids"], sources, strict=True) if "input" in s]
    inherited = [t for t, s in zip(row["candidate_token_ids"], sources, strict=True) if s == "L0#5"]
    # One upstream feature: its contribution is common, so the order is by activation.
    by_activation = [int(t) for t in offered[np.argsort(-activations)] if t not in own]
    expected = by_activation if bound is None else by_activation[:bound]
    assert inherited == expected
    assert set(expected) <= set(row["validated_token_ids"])
    cut = set(by_activation) - set(expected)
    assert not cut & set(row["validated_token_ids"])
    assert list(row["upstream_inherited_token_ids"][0]) == offered.tolist()  # what was offered


# --- TWERA ------------------------------------------------------------------------------------------


def test_twera_matches_a_dense_computation():
    model = tiny_subject_model("gemma2")
    source, target = _transcoder(model, 0), _transcoder(model, 2)
    rng = np.random.default_rng(1)

    def sparse_acts(n_features: int, density: float) -> pd.DataFrame:
        dense = rng.random((5, 8, n_features)) * (rng.random((5, 8, n_features)) < density)
        context, position, feature = np.nonzero(dense)
        return pd.DataFrame(
            {
                "context": context,
                "position": position,
                "feature": feature,
                "activation": dense[context, position, feature],
            }
        ), dense.reshape(40, n_features)

    source_table, source_dense = sparse_acts(N_FEATURES, 0.3)
    target_table, target_dense = sparse_acts(N_FEATURES, 0.2)
    result = twera(model, (0, source, source_table), (2, target, target_table), top_k=None)
    assert list(result.columns) == WEIGHTLENS_TWERA_SCHEMA.names
    coactivation = (source_dense.T @ target_dense) / target_dense.sum(0)  # (F_s, F_t)
    virtual = (
        (
            write_directions(model, source, 0, None, "folded")
            @ read_directions(model, target, 2, np.arange(N_FEATURES), "folded")
        )
        .double()
        .numpy()
    )
    expected = coactivation * virtual
    assert len(result) == int((coactivation > 0).sum())
    np.testing.assert_allclose(
        result["twera"],
        expected[result["source_feature"], result["target_feature"]],
        rtol=1e-4,
        atol=1e-6,
    )
    counts = (source_dense > 0).astype(int).T @ (target_dense > 0).astype(int)
    np.testing.assert_array_equal(
        result["n_coactive"], counts[result["source_feature"], result["target_feature"]]
    )
    top = twera(model, (0, source, source_table), (2, target, target_table), top_k=3)
    assert top.groupby("target_feature").size().max() <= 3
    first = top[top["rank"] == 0].set_index("target_feature")["twera"].abs()
    best = result.assign(a=result["twera"].abs()).groupby("target_feature")["a"].max()
    np.testing.assert_allclose(first, best.loc[first.index])
    with pytest.raises(InputError, match="before"):
        twera(model, (2, target, target_table), (0, source, source_table))


def _sparse_activations(rng: np.random.Generator, density: float) -> pd.DataFrame:
    """Random sparse activations of N_FEATURES features over 6 contexts x 8 positions."""
    dense = rng.random((6, 8, N_FEATURES)) * (rng.random((6, 8, N_FEATURES)) < density)
    context, position, feature = np.nonzero(dense)
    return pd.DataFrame(
        {
            "context": context,
            "position": position,
            "feature": feature,
            "activation": dense[context, position, feature],
            "excluded": position == 0,
        }
    )


def test_twera_upstream_ranks_every_earlier_layer_together():
    model = tiny_subject_model("gemma2")
    transcoders = {layer: _transcoder(model, layer) for layer in (0, 1, 2)}
    rng = np.random.default_rng(3)
    acts = {layer: _sparse_activations(rng, 0.25) for layer in (0, 1, 2)}
    every = pd.concat(
        [
            twera(model, (up, transcoders[up], acts[up]), (2, transcoders[2], acts[2]), top_k=None)
            for up in (0, 1)
        ],
        ignore_index=True,
    )
    top = twera_upstream(model, transcoders, 2, acts, target_features=[0, 5, 9], top_k=4)
    assert list(top.columns) == WEIGHTLENS_TWERA_SCHEMA.names
    assert set(top["target_feature"]) <= {0, 5, 9}
    assert set(top["source_layer"]) == {0, 1}  # both earlier layers compete for the top 4
    for feature, rows in top.groupby("target_feature"):
        assert rows["rank"].tolist() == list(range(len(rows)))
        assert len(rows) == 4
        pool = every[every["target_feature"] == feature]["twera"].abs().sort_values(ascending=False)
        # The global top 4 over both layers, in order (ties do not occur with random values).
        np.testing.assert_allclose(rows["twera"].abs().to_numpy(), pool.to_numpy()[:4])
    # The first configured layer has no earlier layer: an empty table with the schema's columns.
    first = twera_upstream(model, transcoders, 0, {0: acts[0]})
    assert first.empty and list(first.columns) == WEIGHTLENS_TWERA_SCHEMA.names
    with pytest.raises(InputError, match="target layer 1"):
        twera_upstream(model, transcoders, 1, {0: acts[0]})


def test_twera_stage_writes_the_shards_ranking_from_the_cache_files(tmp_path):
    from circuit_insights.core.io import write_parquet_atomic
    from circuit_insights.data.schemas import ACTIVATIONS_SCHEMA
    from circuit_insights.models.tiny import tiny_hf_model
    from circuit_insights.pipeline.stages.twera import run_twera_stage
    from circuit_insights.transcoders.loading import save_transcoder_files

    hf = tiny_hf_model("gemma2")
    hf.save_pretrained(tmp_path / "model")
    model = SubjectModel(hf, None, name="tiny")
    rng = np.random.default_rng(4)
    transcoder_files, files, acts = {}, {}, {}
    for layer in (0, 2):
        folder = tmp_path / f"layer{layer}"
        folder.mkdir()
        save_transcoder_files(_transcoder(model, layer), str(folder / "weights.safetensors"))
        transcoder_files[layer] = [str(folder / "weights.safetensors"), str(folder / "config.json")]
        acts[layer] = _sparse_activations(rng, 0.3)
        path = folder / "activations.parquet"
        write_parquet_atomic(acts[layer], path, ACTIVATIONS_SCHEMA)  # as the cache writes it
        files[layer] = [str(path)]
    model_config = {
        "source": str(tmp_path / "model"),
        "dtype": "float32",
        "device": "cpu",
        "prepend_bos": True,
        "transcoders": {
            "kind": "train",
            "n_features": N_FEATURES,
            "format": None,
            "path": None,
            "input_hook": None,
            "output_hook": None,
        },
    }
    out = tmp_path / "twera" / "f000008-000016.parquet"
    run_twera_stage(
        model_config=model_config,
        twera_config={"enabled": True, "top_k": 3},
        projection="folded",
        model_files=[],  # a local folder: the source itself
        layer=2,
        shard_name=out.stem,
        transcoder_files=transcoder_files,
        activation_files=files,
        out_path=str(out),
        model_name="tiny",
    )
    written = pq.read_table(out)
    assert written.schema.names == WEIGHTLENS_TWERA_SCHEMA.names
    frame = written.to_pandas()
    assert len(frame) and frame["target_feature"].between(8, 15).all()
    assert (frame["source_layer"] == 0).all() and (frame["target_layer"] == 2).all()
    assert frame.groupby("target_feature")["rank"].max().max() <= 2
    transcoders = {layer: _transcoder(model, layer) for layer in (0, 2)}
    expected = twera_upstream(model, transcoders, 2, acts, target_features=range(8, 16), top_k=3)
    np.testing.assert_allclose(frame["twera"], expected["twera"], rtol=1e-5)
    assert frame["source_feature"].tolist() == expected["source_feature"].tolist()
