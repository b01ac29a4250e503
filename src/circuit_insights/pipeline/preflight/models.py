"""Preflight of ``models.<name>.source`` and ``models.<name>.layers``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from circuit_insights.core.errors import InputError
from circuit_insights.pipeline.preflight.hub import (
    OFFLINE_HINT,
    _in_hub_cache,
    hub_offline,
    hub_unreachable,
)

# --- subject models ----------------------------------------------------------------------------


def model_n_layers(key: str, source: str, *, network: bool) -> int | None:
    """Layer count of model ``source`` (config key ``key``): embedded, local folder or hub id.

    None when it cannot be known without the network and ``network`` is False.
    """
    from circuit_insights.models.hub import check_model_folder, hub_config, is_hub_id, n_layers_of
    from circuit_insights.pipeline.paths import (
        EMBEDDED_MODELS,
        EMBEDDED_N_LAYERS,
        EMBEDDED_PREFIX,
        is_embedded,
    )

    if is_embedded(source):
        embedded = source.removeprefix(EMBEDDED_PREFIX)
        if embedded not in EMBEDDED_MODELS:
            raise InputError(
                f"config key {key!r}: unknown model {source!r} "
                f"(embedded models: {', '.join(EMBEDDED_MODELS)})"
            )
        return EMBEDDED_N_LAYERS[embedded]
    if Path(source).expanduser().exists() or source.startswith((".", "/", "~")):
        try:
            return n_layers_of(check_model_folder(source))
        except InputError as error:
            raise InputError(f"config key {key!r}: unknown model {source!r}: {error}") from None
    if not is_hub_id(source):
        raise InputError(
            f"config key {key!r}: unknown model {source!r} (neither a folder, a Hugging Face "
            "id like gpt2 or org/name, nor embedded:gemma-3-270m)"
        )
    if network and not hub_offline() and not _in_hub_cache(source, "config.json"):
        problem = hub_unreachable()
        if problem:
            raise InputError(
                f"config key {key!r}: cannot reach the hub to resolve {source} ({problem}; "
                f"{OFFLINE_HINT})"
            )
    try:
        config = hub_config(source, network=network)
    except InputError as error:
        raise InputError(f"config key {key!r}: {error}") from None
    return None if config is None else n_layers_of(config)


def check_layers(key: str, source: str, layers: list[int], n_layers: int | None) -> None:
    """Every configured layer is below the model's layer count (when it is known)."""
    if n_layers is None:
        return
    for layer in layers:
        if layer >= n_layers:
            raise InputError(
                f"config key {key!r}: layer {layer} is out of range "
                f"(model {source!r} has layers 0..{n_layers - 1})"
            )


def check_models(config: Mapping[str, Any], *, network: bool) -> None:
    """Each model's source resolves and its layers are in range (see :func:`model_n_layers`)."""
    for name, block in config["models"].items():
        source = block["source"]
        n_layers = model_n_layers(f"models.{name}.source", source, network=network)
        check_layers(f"models.{name}.layers", source, block["layers"], n_layers)
