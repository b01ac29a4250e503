"""Workflow configuration: validation against the JSON schema, with defaults filled in.

Errors name the key at fault (``config key 'cache.shard_size': ...``) in one message. Besides the
schema: the checks it cannot express (:func:`validate_config`), among them the torch device
strings, the shard count of a layer (:data:`~circuit_insights.data.shards.MAX_SHARDS_PER_LAYER`)
and ``train_contexts`` against the caching set ``corpus`` can hold; and
:func:`coerce_command_line`, which types the values Snakemake's ``--config`` hands over as strings.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from circuit_insights.core.errors import InputError

TRAINED_HOOK_DEFAULTS = {"input_hook": "mlp_in", "output_hook": "mlp_out"}
"""Hooks of a trained transcoder when the config leaves them null (pretrained files name their own)."""


DEVICE_PATTERN = re.compile(r"cpu|mps|cuda(?::\d+)?")
"""torch devices a model may run on (``models.<name>.device``): cpu, cuda, cuda:N, mps."""


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


# --- values of --config ------------------------------------------------------------------------

_TRUE, _FALSE, _NULL = ("true", "yes", "on"), ("false", "no", "off"), ("null", "~")


def _types_of(schema: Mapping[str, Any]) -> list[str]:
    kind = schema.get("type", [])
    return [kind] if isinstance(kind, str) else list(kind)


def _property(schema: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """The schema of an object's key ``key`` (``additionalProperties`` for keys it does not
    name; empty when unknown)."""
    if key in schema.get("properties", {}):
        return schema["properties"][key]
    extra = schema.get("additionalProperties")
    return extra if isinstance(extra, dict) else {}


def _coerce(value: Any, schema: Mapping[str, Any]) -> Any:
    """``value`` with the strings in it typed as ``schema`` says, where they read as such."""
    if isinstance(value, dict):
        return {key: _coerce(item, _property(schema, key)) for key, item in value.items()}
    if isinstance(value, list):
        items = schema.get("items")
        return [_coerce(item, items if isinstance(items, dict) else {}) for item in value]
    if not isinstance(value, str):
        return value
    types = _types_of(schema)
    word = value.strip().lower()
    if "null" in types and word in _NULL:
        return None
    if "string" in types or not types:
        return value
    if "boolean" in types and word in _TRUE + _FALSE:
        return word in _TRUE
    if ("integer" in types or "number" in types) and re.fullmatch(r"[-+]?\d+", word):
        return int(word)
    if "number" in types:
        try:
            return float(word)
        except ValueError:
            pass
    return value


def coerce_command_line(
    config: Mapping[str, Any], command_line: Mapping[str, Any], schema: Mapping[str, Any]
) -> dict[str, Any]:
    """``config`` with the values that came from Snakemake's ``--config`` typed by the schema.

    Snakemake parses a nested ``--config 'cache={"shard_size": 128}'`` with YAML's BaseLoader,
    which keeps every scalar a string (``'128'``, ``'false'``): each such string where the schema
    expects an integer, number, boolean or null becomes one when it reads as one (``128``,
    ``false``, ``null``); other strings are left for the validation to name. Values that came
    from config files (the keys ``command_line`` does not hold) are not touched.
    """
    result = dict(config)
    for key, given in command_line.items():
        if key not in result:
            continue
        sub = _property(schema, key)
        if isinstance(given, Mapping) and isinstance(result[key], Mapping):
            result[key] = coerce_command_line(result[key], given, sub)
        else:
            result[key] = _coerce(result[key], sub)
    return result


# --- validation --------------------------------------------------------------------------------


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


def max_caching_contexts(corpus: Mapping[str, Any]) -> int:
    """The most contexts the caching set can hold: ``corpus.max_contexts`` less the evaluation
    split that ``data.corpus.split_contexts`` takes of them (the corpus may hold fewer, which is
    known only once it is tokenised)."""
    n = corpus["max_contexts"]
    return n - min(max(round(n * corpus["eval_fraction"]), 1), n - 1)


def _check_model(name: str, model: Mapping[str, Any], config: Mapping[str, Any]) -> None:
    """The checks of ``models.<name>`` a JSON schema cannot express."""
    from circuit_insights.data.shards import MAX_SHARDS_PER_LAYER, shard_count

    if not DEVICE_PATTERN.fullmatch(model["device"]):
        raise InputError(
            f"config key 'models.{name}.device': unknown torch device {model['device']!r} "
            "(cpu, cuda, cuda:N or mps)"
        )
    transcoders = model["transcoders"]
    shard_size = config["cache"]["shard_size"]
    n_shards = shard_count(transcoders["n_features"], shard_size)
    if n_shards > MAX_SHARDS_PER_LAYER:
        raise InputError(
            f"config key 'models.{name}.transcoders.n_features': {transcoders['n_features']} "
            f"features in shards of {shard_size} (cache.shard_size) make {n_shards} shards per "
            f"layer, more than the {MAX_SHARDS_PER_LAYER} the workflow's job graph holds; "
            f"lower n_features or raise cache.shard_size to at least "
            f"{shard_count(transcoders['n_features'], MAX_SHARDS_PER_LAYER)}"
        )
    caching = max_caching_contexts(config["corpus"])
    if transcoders["kind"] == "train" and transcoders["train_contexts"] > caching:
        raise InputError(
            f"config key 'models.{name}.transcoders.train_contexts': "
            f"{transcoders['train_contexts']} contexts, but the caching set holds at most "
            f"{caching} (corpus.max_contexts {config['corpus']['max_contexts']} less the "
            f"eval_fraction {config['corpus']['eval_fraction']} held out)"
        )


def _check_variants(config: Mapping[str, Any]) -> None:
    """Variant names are those of the variant table (the schema does not list them, so that a
    variant is added in one place: ``circuit_insights.explain.variants``)."""
    from circuit_insights.explain.variants import EXECUTABLE_VARIANTS, VARIANTS

    for key, known in (
        ("explain.variants", VARIANTS),
        ("evaluate.variants", VARIANTS),
        ("rules.variants", EXECUTABLE_VARIANTS),
        ("scores.variants", VARIANTS),
    ):
        section, name = key.split(".")
        unknown = [v for v in config[section][name] or () if v not in known]
        if unknown:
            raise InputError(
                f"config key {key!r}: {unknown[0]!r} is not a variant (choose from "
                f"{', '.join(known)})"
            )


def _check_semantics(config: Mapping[str, Any]) -> None:
    """Checks a JSON schema cannot express."""
    _check_variants(config)
    from circuit_insights.pipeline.interop import check_model_interop

    for name, model in config["models"].items():
        _check_model(name, model, config)
        check_model_interop(config, name)  # named features, graph, imports (docs/formats.md)
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
    for key in ("evaluate.variants", "scores.variants"):
        section, name = key.split(".")
        scored = config[section].get(name) or ()
        missing = sorted(set(scored) - set(config["explain"]["variants"]))
        if missing:
            raise InputError(
                f"config key {key!r}: {missing} are not in explain.variants, "
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
        if not Path(path).exists():  # a folder stands for the supported files inside
            raise InputError(f"config key 'corpus.paths': corpus file {path} does not exist")


def holds_no_setting(path: str | Path) -> bool:
    """Whether the YAML config file ``path`` is empty or comments only, which means every
    default (the Snakefile then skips its ``configfile:``, which would refuse the file). False
    when it is missing or not YAML, so that Snakemake names its problem."""
    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.safe_load(handle) is None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False


def load_config(path: str | Path, schema_path: str | Path) -> dict[str, Any]:
    """Read and validate a YAML config file."""
    with open(path) as handle:
        raw = yaml.safe_load(handle) or {}
    return validate_config(raw, load_schema(schema_path))
