"""Random models of the published shapes (models/shapes.py), built on the meta device."""

from __future__ import annotations

import pytest

from circuit_insights.core.errors import InputError
from circuit_insights.models.shapes import PUBLISHED_SHAPES, published_shape_model

# Parameter counts of the published checkpoints (tied embeddings counted once).
PUBLISHED_PARAMETERS = {
    "gpt2": 124_439_808,
    "gemma-2-2b": 2_614_341_888,
    "llama-3.2-1b": 1_235_814_400,
}
# (layers, d_model, vocab, query heads, key/value heads, head dim, BOS in contexts)
PUBLISHED_GEOMETRY = {
    "gpt2": (12, 768, 50257, 12, 12, 64, None),
    "gemma-2-2b": (26, 2304, 256000, 8, 4, 256, 2),
    "llama-3.2-1b": (16, 2048, 128256, 32, 8, 64, 128000),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_SHAPES))
def test_published_shapes_have_the_checkpoints_sizes(name: str) -> None:
    model = published_shape_model(name, device="meta")
    n_parameters = sum(p.numel() for p in model.hf_model.parameters())
    assert n_parameters == PUBLISHED_PARAMETERS[name]
    geometry = (
        model.n_layers,
        model.d_model,
        model.vocab_size,
        model.n_heads,
        model.n_kv_heads,
        model.head_dim,
        model.bos_token_id,
    )
    assert geometry == PUBLISHED_GEOMETRY[name]
    assert model.tokenizer is None


def test_unknown_published_shape_is_named() -> None:
    with pytest.raises(InputError, match="gemma-9"):
        published_shape_model("gemma-9", device="meta")
