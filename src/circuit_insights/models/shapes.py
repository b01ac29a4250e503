"""Randomly initialised models with the exact shapes of the published models (no weights fetched).

For benchmarks on machines that cannot reach the model hub (a GPU node without internet, say):
the cost of a forward or backward pass, of caching and of attribution depends on the shapes,
not on the values of the weights. The benchmarks calibrate their random transcoders to a stated
firing density on these models' own layer inputs, so the sparse work is realistic too.

The configurations are the publishers' ``config.json`` files on the Hugging Face hub
(architecture fields only; dropout off, as in eval mode):

- ``gpt2``: openai-community/gpt2 (GPT-2 small, 124M parameters)
- ``gemma-2-2b``: google/gemma-2-2b (2.6B parameters, the paper's main model)
- ``llama-3.2-1b``: meta-llama/Llama-3.2-1B (1.2B parameters)
"""

from __future__ import annotations

from typing import Any

import torch

from circuit_insights.core.errors import InputError

PUBLISHED_SHAPES: dict[str, dict[str, Any]] = {
    "gpt2": {
        "model_type": "gpt2",
        "n_layer": 12,
        "n_embd": 768,
        "n_head": 12,
        "n_positions": 1024,
        "vocab_size": 50257,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
    },
    "gemma-2-2b": {
        "model_type": "gemma2",
        "num_hidden_layers": 26,
        "hidden_size": 2304,
        "intermediate_size": 9216,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "query_pre_attn_scalar": 256,
        "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0,
        "sliding_window": 4096,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "hidden_activation": "gelu_pytorch_tanh",
        "vocab_size": 256000,
        "bos_token_id": 2,
        "eos_token_id": 1,
        "pad_token_id": 0,
    },
    "llama-3.2-1b": {
        "model_type": "llama",
        "num_hidden_layers": 16,
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        "tie_word_embeddings": True,
        "vocab_size": 128256,
        "bos_token_id": 128000,
        "eos_token_id": 128001,
    },
}


def published_shape_config(name: str) -> Any:
    """The transformers config of ``name`` (a key of PUBLISHED_SHAPES)."""
    from transformers import AutoConfig

    if name not in PUBLISHED_SHAPES:
        raise InputError(
            f"unknown published shape {name!r}; known: {', '.join(sorted(PUBLISHED_SHAPES))}"
        )
    fields = dict(PUBLISHED_SHAPES[name])
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


def published_shape_model(
    name: str, *, device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
):
    """A SubjectModel of ``name``'s architecture and sizes with random weights, without tokenizer.

    The attention implementation is the one transformers picks by default, as for the real
    checkpoints loaded by ``SubjectModel.from_pretrained``. The weights are built directly on
    ``device``.
    """
    from transformers import AutoModelForCausalLM

    from circuit_insights.models.subject import SubjectModel

    config = published_shape_config(name)
    torch.manual_seed(seed)
    with torch.device(device):
        hf_model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return SubjectModel(hf_model.eval(), None, name=f"random-{name}")


def benchmark_model(spec: str, *, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """``random:NAME`` (a published shape) or a local Hugging Face folder, as benchmarks take it."""
    from circuit_insights.models.subject import SubjectModel

    if spec.startswith("random:"):
        return published_shape_model(spec.removeprefix("random:"), device=device, dtype=dtype)
    return SubjectModel.from_pretrained(spec, local_files_only=True, device=device, dtype=dtype)
