"""Loading a subject model or only its tokenizer from a validated config block, and feeding
contexts to a model in batches."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from circuit_insights.core.errors import InputError
from circuit_insights.models.architectures import adapter_for
from circuit_insights.models.subject import SubjectModel

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def set_threads(threads: int) -> None:
    """Use ``threads`` torch threads (small ops slow down badly when oversubscribed)."""
    torch.set_num_threads(max(1, int(threads)))


def load_subject_model(
    model_config: Mapping[str, Any],
    location: str,
    name: str = "",
    layers: Sequence[int] = (),
) -> SubjectModel:
    """Load the subject model of a config block from ``location`` (folder or hub id) and check
    that it has every one of ``layers``.

    ``model_config`` needs the keys ``pipeline.params.SUBJECT_KEYS`` only.
    """
    model = SubjectModel.from_pretrained(
        location,
        name=name or Path(location).name,
        dtype=DTYPES[model_config["dtype"]],
        device=model_config["device"],
        prepend_bos=model_config["prepend_bos"],
    )
    for layer in layers:
        model.check_layer(layer, what=f"config models.{name or model.name}.layers entry")
    return model


def load_tokenizer_and_bos(
    model_config: Mapping[str, Any], location: str
) -> tuple[Any, int | None]:
    """The model's tokenizer and the BOS id its contexts start with (None: no BOS), without weights."""
    from transformers import AutoConfig, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(location)
    except (OSError, ValueError) as exc:
        raise InputError(f"unknown model {location!r}: {exc}") from exc
    adapter = adapter_for(config.model_type)
    prepend = model_config["prepend_bos"]
    prepend = adapter.uses_bos if prepend is None else prepend
    tokenizer = AutoTokenizer.from_pretrained(location)
    bos = getattr(config, "bos_token_id", None)
    if bos is None:
        bos = tokenizer.bos_token_id
    if prepend and bos is None:
        raise InputError(f"model {location!r} should start contexts with BOS but has none")
    return tokenizer, (bos if prepend else None)


def iter_context_batches(
    tokens: np.ndarray, context_ids: np.ndarray, batch_size: int
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Consecutive batches of contexts: (context ids (batch,), token ids (batch, pos))."""
    for start in range(0, len(tokens), batch_size):
        yield (
            context_ids[start : start + batch_size],
            torch.from_numpy(tokens[start : start + batch_size].astype(np.int64)),
        )
