"""What a model's config says about the files that cross the border (docs/formats.md): how other
tools name its transcoders (:func:`transcoder_set`), the features it names
(:func:`named_features`: ``models.<m>.features`` and the feature nodes of ``models.<m>.graph``),
the explanations it imports (``models.<m>.imports``) and the labels written back into its graph.

Every check here runs at start (:func:`check_model_interop`, from ``pipeline.config``) and names
the config key at fault; the functions are also what the rules' params and input functions call
at parse time, so a graph file is read once per Snakemake process (:func:`_graph_features`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from circuit_insights.core.errors import InputError
from circuit_insights.data.shards import Shard, parse_shard
from circuit_insights.explain.kinds import Imported
from circuit_insights.explain.variants import TABLE, imported_variant
from circuit_insights.interop.delphi import read_delphi
from circuit_insights.interop.features import parse_named_features
from circuit_insights.interop.formats import DELPHI, explanation_format
from circuit_insights.interop.graph import graph_features
from circuit_insights.interop.target import TranscoderSet

#: The Neuronpedia-style source set of the transcoders trained here: ``<maker>-transcoder-<width>``
#: (no published set exists; docs/formats.md).
TRAINED_SOURCE_SET = "circuit-insights-transcoder-{n_features}"
#: Names an imported variant may take (the workflow's ``{variant}`` wildcard).
IMPORT_NAME = re.compile(r"^[a-z_]+$")


def model_id(source: str) -> str:
    """The model's id in other tools from its ``source``: the Hugging Face name without its owner
    (``google/gemma-2-2b`` -> ``gemma-2-2b``, as circuit-tracer's ``transcoder_list`` and
    Neuronpedia name it), an embedded model's name, a local folder's name."""
    name = source.split(":", 1)[1] if source.startswith("embedded:") else source
    return Path(name.rstrip("/")).name or name


def transcoder_set(config: Mapping[str, Any], model: str) -> TranscoderSet:
    """How other tools name ``models.<model>``'s transcoders, from its ``interop`` block: the
    model id (default :func:`model_id` of its source; the config's model name is an alias), the
    source set (default :data:`TRAINED_SOURCE_SET`), the configured layers and width."""
    block = config["models"][model]
    names = block.get("interop", {})
    transcoders = block["transcoders"]
    identity = names.get("model_id") or model_id(block["source"])
    aliases = [a for a in [model, *names.get("model_aliases", [])] if a != identity]
    source_set = names.get("source_set") or TRAINED_SOURCE_SET.format(
        n_features=transcoders["n_features"]
    )
    try:
        return TranscoderSet(
            model=identity,
            source_set=source_set,
            layers=tuple(block["layers"]),
            width=int(transcoders["n_features"]),
            model_aliases=tuple(dict.fromkeys(aliases)),
            preset_scans=tuple(names.get("preset_scans", [])),
            transcoder_ids={int(k): str(v) for k, v in names.get("transcoder_ids", {}).items()},
            delphi_module=names.get("delphi_module", "layers.{layer}.mlp"),
        )
    except InputError as exc:
        raise InputError(f"config key 'models.{model}.interop': {exc}") from None


#: Feature lists of the graph files read in this process, by (path, mtime, size, target).
_GRAPHS: dict[tuple[str, int, int, str], dict[int, list[int]]] = {}


def _graph_features(path: str, target: TranscoderSet) -> dict[int, list[int]]:
    """:func:`interop.graph.graph_features` of ``path``, read once per file version, target and
    process (the params of every select_features job ask for it at parse time)."""
    try:
        stat = os.stat(path)
    except OSError:
        return graph_features(path, target=target)  # names the missing file
    key = (path, stat.st_mtime_ns, stat.st_size, repr(target))
    if key not in _GRAPHS:
        _GRAPHS[key] = graph_features(path, target=target)
    return {layer: list(features) for layer, features in _GRAPHS[key].items()}


def graph_path(config: Mapping[str, Any], model: str) -> str | None:
    """``models.<model>.graph``: the path of its attribution graph, None when none is given."""
    return config["models"][model].get("graph") or None


def graph_features_of(config: Mapping[str, Any], model: str) -> dict[int, list[int]]:
    """The feature nodes of ``models.<model>.graph`` per layer ({} without a graph)."""
    path = graph_path(config, model)
    return {} if path is None else _graph_features(path, transcoder_set(config, model))


def named_features(config: Mapping[str, Any], model: str) -> dict[int, list[int]]:
    """The features ``models.<model>`` names, per layer, sorted and unique: its ``features``
    lists (:func:`interop.features.parse_named_features`) with the feature nodes of its
    ``graph`` (:func:`interop.graph.graph_features`, its origin checked against
    :func:`transcoder_set`). Raises :class:`InputError` naming the config key, and the entry or
    graph node at fault."""
    block = config["models"][model]
    target = transcoder_set(config, model)
    named = parse_named_features(
        block.get("features") or {},
        layers=target.layers,
        width=target.width,
        key=f"config key 'models.{model}.features'",
    )
    path = graph_path(config, model)
    if path is not None:
        try:
            from_graph = _graph_features(path, target)
        except InputError as exc:
            raise InputError(
                f"config key 'models.{model}.graph': {exc}{_origin_hint(exc, model)}"
            ) from None
        for layer, features in from_graph.items():
            named[layer] = sorted(set(named.get(layer, [])) | set(features))
    return {layer: named[layer] for layer in sorted(named) if named[layer]}


def _origin_hint(error: InputError, model: str) -> str:
    """Where to say which model or transcoder set the config means, when a graph names others."""
    if "made for" in str(error) or "names no transcoder set" in str(error):
        return (
            f" (the configured names are models.{model}.interop.model_id / source_set; "
            "docs/formats.md)"
        )
    return ""


def shard_named_features(
    named: Mapping[int, list[int]], layer: int | str, shard: str | Shard
) -> list[int]:
    """The features of ``named`` (:func:`named_features`) in one layer's shard, ascending."""
    span = parse_shard(shard) if isinstance(shard, str) else shard
    return [f for f in named.get(int(layer), []) if span.start <= f < span.stop]


def target_params(config: Mapping[str, Any], model: str) -> dict[str, Any]:
    """:func:`transcoder_set` as plain values (a rule's params; :func:`target_from_params`)."""
    target = transcoder_set(config, model)
    return {
        "delphi_module": target.delphi_module,
        "layers": list(target.layers),
        "model": target.model,
        "model_aliases": list(target.model_aliases),
        "preset_scans": list(target.preset_scans),
        "source_set": target.source_set,
        "transcoder_ids": {str(k): v for k, v in sorted(target.transcoder_ids.items())},
        "width": target.width,
    }


def target_from_params(params: Mapping[str, Any]) -> TranscoderSet:
    """The :class:`TranscoderSet` of :func:`target_params`."""
    return TranscoderSet(
        model=params["model"],
        source_set=params["source_set"],
        layers=tuple(params["layers"]),
        width=int(params["width"]),
        model_aliases=tuple(params["model_aliases"]),
        preset_scans=tuple(params["preset_scans"]),
        transcoder_ids={int(k): str(v) for k, v in params["transcoder_ids"].items()},
        delphi_module=params["delphi_module"],
    )


def imports(config: Mapping[str, Any], model: str) -> dict[str, Mapping[str, Any]]:
    """``models.<model>.imports``: imported variant name -> its block."""
    return dict(config["models"][model].get("imports") or {})


def evaluated_imports(config: Mapping[str, Any], model: str) -> list[str]:
    """The imported variants of ``model`` that FADE scores (``evaluate: true``)."""
    return [name for name, block in imports(config, model).items() if block.get("evaluate", True)]


def imported_variant_of(name: str, block: Mapping[str, Any]) -> Imported:
    """The imported variant ``name`` of an ``imports`` block."""
    return imported_variant(name, source=str(block["format"]), path=str(block["path"]))


def read_import(
    block: Mapping[str, Any], *, target: TranscoderSet, key: str = "import"
) -> pd.DataFrame:
    """The explanations of one ``imports`` block, read by its format's reader
    (``interop.formats.FORMATS``) into the tidy frame of ``interop.table``; ``explainer_model``
    fills rows whose file names none. Errors are prefixed with ``key``."""
    try:
        form = explanation_format(str(block["format"]), key=key)
        explainer = block.get("explainer_model")
        if form.name == DELPHI.name:
            frame = read_delphi(block["path"], target=target, explainer_model=explainer)
        else:
            frame = form.read(block["path"], target=target)
    except InputError as exc:
        raise InputError(f"{key}: {exc}" if not str(exc).startswith(key) else str(exc)) from None
    if explainer:
        frame["explainer_model"] = [m or explainer for m in frame["explainer_model"]]
    return frame


def check_model_interop(config: Mapping[str, Any], model: str) -> None:
    """The start-time checks of ``models.<model>``'s interop keys that need no large file read:
    its transcoder set, its named features and graph (:func:`named_features`), the label
    variants (:func:`check_labels`), its imports' names (not a variant of the table), formats
    and paths (read in full by the preflight, :func:`check_imports`)."""
    transcoder_set(config, model)
    named_features(config, model)
    check_labels(config)
    for name, block in imports(config, model).items():
        key = f"config key 'models.{model}.imports.{name}'"
        if not IMPORT_NAME.match(name):
            raise InputError(f"{key}: a variant's name holds lower-case letters and _ only")
        try:
            imported_variant_of(name, block)
        except InputError as exc:
            raise InputError(f"{key}: {exc}") from None
        explanation_format(str(block["format"]), key=f"{key[:-1]}.format'")
        if not block["path"]:
            raise InputError(f"{key[:-1]}.path': the file or folder of the import must be given")
        if not Path(block["path"]).exists():
            raise InputError(f"{key[:-1]}.path': {block['path']} does not exist")


def label_variants(config: Mapping[str, Any], model: str) -> list[str]:
    """``labels.variants`` in fallback order, less the imported variants of other models."""
    own = set(imports(config, model))
    return [v for v in config["labels"]["variants"] if v in TABLE or v in own]


def check_labels(config: Mapping[str, Any]) -> None:
    """Every ``labels.variants`` entry is a variant of the table or an imported variant."""
    imported = {name for model in config["models"] for name in imports(config, model)}
    for variant in config["labels"]["variants"]:
        if variant not in TABLE and variant not in imported:
            raise InputError(
                f"config key 'labels.variants': {variant!r} is neither a variant (choose from "
                f"{', '.join(TABLE.names)}) nor an imported variant (models.<m>.imports)"
            )


def check_imports(config: Mapping[str, Any]) -> None:
    """Read every model's imports in full (the preflight): a file its format's reader refuses
    stops the run at start, naming the config key, the file and the entry."""
    for model in config["models"]:
        target = transcoder_set(config, model)
        for name, block in imports(config, model).items():
            read_import(block, target=target, key=f"config key 'models.{model}.imports.{name}'")
