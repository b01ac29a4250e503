"""A subject model's ``config.json``: read from a local folder or resolved on the Hugging Face hub.

Used at start (the preflight) for layer counts and by :meth:`SubjectModel.from_pretrained`, so
that every failure names the file or the hub id: a ``config.json`` that is not JSON names the
file; a hub id that cannot be resolved offline says so instead of "unknown model".
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from circuit_insights.core.errors import InputError

HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.\-]*/)?[A-Za-z0-9][\w.\-]*$")
"""A Hugging Face model id: ``name`` (``gpt2``) or ``org/name`` (``google/gemma-2-2b``)."""

WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")
"""Files of which a local model folder must hold at least one (its weights)."""


def is_hub_id(source: str) -> bool:
    """Whether ``source`` has the form of a hub model id (and is not a path)."""
    return bool(HUB_ID.match(source)) and not source.startswith((".", "~"))


def read_config_json(path: str | Path) -> dict[str, Any]:
    """The JSON object in ``path``; :class:`InputError` naming the file when it is not one."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"model config {path} does not exist") from None
    except UnicodeDecodeError:
        raise InputError(f"model config {path} is not JSON (not UTF-8 text)") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"model config {path} is not JSON ({error})") from None
    if not isinstance(value, dict):
        raise InputError(f"model config {path} is not a JSON object")
    return value


def n_layers_of(config: dict[str, Any]) -> int | None:
    """Transformer blocks of a model config (``text_config`` of multimodal ones first)."""
    inner = config.get("text_config") or config
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(inner.get(key), int):
            return int(inner[key])
    return None


def check_model_folder(folder: str | Path) -> dict[str, Any]:
    """The config of a local model folder that has ``config.json`` and weights, else InputError."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise InputError(f"model folder {folder} does not exist")
    config = read_config_json(folder / "config.json")
    if not any(next(folder.glob(pattern), None) for pattern in WEIGHT_PATTERNS):
        raise InputError(
            f"model folder {folder} has no weights (none of {', '.join(WEIGHT_PATTERNS)})"
        )
    return config


def hub_config(repo_id: str, *, network: bool = True) -> dict[str, Any] | None:
    """The ``config.json`` of hub model ``repo_id``: from the local cache, else from the hub.

    Returns None when it is not cached and ``network`` is False. Raises :class:`InputError`:
    "cannot reach the hub to resolve X (offline?)" when neither the cache nor the hub has it
    (``HF_HUB_OFFLINE=1``, no connection), and a message naming the id when the hub answers
    that the repository does not exist, is gated, or has no ``config.json``.
    """
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    cached = try_to_load_from_cache(repo_id, "config.json")
    if isinstance(cached, str):
        return read_config_json(cached)
    if not network:
        return None
    try:
        path = hf_hub_download(repo_id, "config.json", etag_timeout=10)
    except GatedRepoError:
        raise InputError(
            f"model {repo_id!r} is gated on the hub: accept its licence on huggingface.co "
            "and set HF_TOKEN"
        ) from None
    except RepositoryNotFoundError:
        raise InputError(f"unknown model {repo_id!r}: the hub has no such repository") from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        raise InputError(f"cannot reach the hub to resolve {repo_id} (offline?)") from None
    except EntryNotFoundError:
        raise InputError(f"model {repo_id!r} on the hub has no config.json") from None
    except HfHubHTTPError as error:
        raise InputError(f"cannot resolve model {repo_id!r} on the hub: {error}") from None
    except OSError:  # a connection error below huggingface_hub
        raise InputError(f"cannot reach the hub to resolve {repo_id} (offline?)") from None
    return read_config_json(path)
