"""Workflow configuration: validation against the JSON schema, with defaults filled in.

Errors name the key at fault (``config key 'cache.shard_size': ...``) in one message.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from circuit_insights.core.errors import InputError

TRAINED_HOOK_DEFAULTS = {"input_hook": "mlp_in", "output_hook": "mlp_out"}
"""Hooks of a trained transcoder when the config leaves them null (pretrained files name their own)."""


def gpus_for_device(device: str) -> int:
    """GPUs a job asks for (Snakemake resource ``gpu``) when its model runs on torch ``device``."""
    return 1 if device.split(":", 1)[0] == "cuda" else 0


def load_schema(path: str | Path) -> dict[str, Any]:
    """Read a YAML JSON-schema file."""
    with open(path) as handle:
        return yaml.safe_load(handle)


def _fill_defaults(instance: Any, schema: Mapping[str, Any]) -> Any:
    """Insert schema defaults into ``instance`` recursively (objects only)."""
    if not isinstance(instance, dict) or schema.get("type") not in ("object", None):
        return instance
    for key, sub in schema.get("properties", {}).items():
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if key in instance:
            instance[key] = _fill_defaults(instance[key], sub)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key, value in instance.items():
            if key not in schema.get("properties", {}):
                instance[key] = _fill_defaults(value, extra)
    return instance


def _key_of(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(part) for part in error.absolute_path)
    if error.validator == "additionalProperties":
        schema = error.schema if isinstance(error.schema, Mapping) else {}
        instance = error.instance if isinstance(error.instance, Mapping) else {}
        unknown = sorted(set(instance) - set(schema.get("properties", {})))
        name = ".".join(filter(None, [path, unknown[0] if unknown else ""]))
        return name or "<top level>"
    return path or "<top level>"


def validate_config(config: Mapping[str, Any], schema: Mapping[str, Any]) -> dict[str, Any]:
    """Return a validated copy of ``config`` with every default filled in.

    Raises :class:`InputError` naming the first wrong key (unknown key, wrong type or value).
    """
    filled = _fill_defaults(copy.deepcopy(dict(config)), schema)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(filled), key=lambda e: list(e.absolute_path))
    if errors:
        error = errors[0]
        key = _key_of(error)
        if error.validator == "additionalProperties":
            raise InputError(f"config key {key!r} is not known (see the config schema)")
        raise InputError(f"config key {key!r}: {error.message}")
    _check_semantics(filled)
    for model in filled["models"].values():
        transcoders = model["transcoders"]
        if transcoders["kind"] == "train":
            for key, default in TRAINED_HOOK_DEFAULTS.items():
                transcoders[key] = transcoders[key] or default
    return filled


def _check_semantics(config: Mapping[str, Any]) -> None:
    """Checks a JSON schema cannot express."""
    for name, model in config["models"].items():
        transcoders = model["transcoders"]
        if transcoders["kind"] == "pretrained" and not transcoders["path"]:
            raise InputError(
                f"config key 'models.{name}.transcoders.path' must be set when kind is pretrained"
            )
        if transcoders["activation"] == "topk" and transcoders["top_k"] is None:
            raise InputError(f"config key 'models.{name}.transcoders.top_k' must be set for topk")
        if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise InputError(
                f"config key 'models.{name}': model names may hold letters, digits, -_."
            )
    missing = sorted(set(config["evaluate"]["variants"]) - set(config["explain"]["variants"]))
    if missing:
        raise InputError(
            f"config key 'evaluate.variants': {missing} are not in explain.variants, "
            "so they have no descriptions to score"
        )
    llm = config["llm"]
    if not llm["url"]:
        from circuit_insights.pipeline.paths import EMBEDDED_LLMS, EMBEDDED_PREFIX, is_embedded

        source = llm["model"]
        if is_embedded(source) and source.removeprefix(EMBEDDED_PREFIX) not in EMBEDDED_LLMS:
            raise InputError(
                f"config key 'llm.model': unknown model {source!r} "
                f"(embedded LLMs: {', '.join(EMBEDDED_LLMS)})"
            )
        if not is_embedded(source) and source.startswith((".", "/")) and not Path(source).is_dir():
            raise InputError(f"config key 'llm.model': model folder {source} does not exist")
    corpus = config["corpus"]
    if corpus["source"] == "files" and not corpus["paths"]:
        raise InputError("config key 'corpus.paths' must list files when corpus.source is files")
    if corpus["source"] == "huggingface" and not corpus["dataset"]:
        raise InputError(
            "config key 'corpus.dataset' must be set when corpus.source is huggingface"
        )
    for path in corpus["paths"] if corpus["source"] == "files" else []:
        if not Path(path).is_file():
            raise InputError(f"config key 'corpus.paths': corpus file {path} does not exist")


def load_config(path: str | Path, schema_path: str | Path) -> dict[str, Any]:
    """Read and validate a YAML config file."""
    with open(path) as handle:
        raw = yaml.safe_load(handle) or {}
    return validate_config(raw, load_schema(schema_path))
