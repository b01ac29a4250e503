"""Tiny randomly initialised models of every supported family, built from configs (no downloads).

Used by the tests and the benchmarks; sizes are tiny so that everything runs in seconds on a CPU.
"""

from __future__ import annotations

from typing import Any

import torch

FAMILIES = ("gpt2", "gemma2", "gemma3", "llama")
TINY_VOCAB = 96


def tiny_hf_model(
    family: str,
    n_layers: int = 3,
    d_model: int = 32,
    seed: int = 0,
    *,
    vocab_size: int = TINY_VOCAB,
):
    """A randomly initialised causal LM of ``family`` with tiny sizes, in eval mode, float32.

    GPT-2's BOS (= EOS) is the last id, as in the real model: ``vocab_size=50257`` gives a tiny
    GPT-2 whose BOS is the real one, 50256.
    """
    import transformers as tf

    common: dict[str, Any] = {"vocab_size": vocab_size}
    if family == "gpt2":
        config: Any = tf.GPT2Config(
            n_layer=n_layers,
            n_embd=d_model,
            n_head=4,
            n_positions=128,
            **common,
            bos_token_id=vocab_size - 1,
            eos_token_id=vocab_size - 1,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    elif family == "gemma2":
        config = tf.Gemma2Config(
            num_hidden_layers=n_layers,
            hidden_size=d_model,
            intermediate_size=2 * d_model,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            bos_token_id=2,
            pad_token_id=0,
            eos_token_id=1,
            **common,
        )
    elif family == "gemma3":
        config = tf.Gemma3TextConfig(
            num_hidden_layers=n_layers,
            hidden_size=d_model,
            intermediate_size=2 * d_model,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=8,
            bos_token_id=2,
            pad_token_id=0,
            eos_token_id=1,
            sliding_window=8,
            **common,
        )
    elif family == "llama":
        config = tf.LlamaConfig(
            num_hidden_layers=n_layers,
            hidden_size=d_model,
            intermediate_size=2 * d_model,
            num_attention_heads=4,
            num_key_value_heads=2,
            bos_token_id=1,
            eos_token_id=2,
            **common,
        )
    else:  # pragma: no cover - guarded by FAMILIES
        raise ValueError(family)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(config).eval()
    # Random norms and biases so that no parameter is trivially 1 or 0.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name or "ln" in name or name.endswith("bias"):
                parameter.add_(0.1 * torch.randn_like(parameter))
    return model


def tiny_subject_model(family: str, **kwargs):
    from circuit_insights.models.subject import SubjectModel

    return SubjectModel(tiny_hf_model(family, **kwargs), None, name=f"tiny-{family}")
