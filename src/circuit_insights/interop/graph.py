"""circuit-tracer attribution-graph files: their feature nodes in, our labels out.

A graph file is the JSON that circuit-tracer's ``create_graph_files`` writes (its pydantic
``Model``: ``metadata``, ``qParams``, ``nodes``, ``links``; safety-research/circuit-tracer,
``circuit_tracer/frontend/graph_models.py`` and ``circuit_tracer/utils/create_graph_files.py``),
the same file Neuronpedia's graph viewer reads (hijohnnylin/neuronpedia,
``apps/webapp/app/api/graph/graph-schema.json``). Fields and sources: docs/formats.md.

A transcoder feature is a node whose ``feature_type`` is ``"cross layer transcoder"`` (the only
type circuit-tracer gives them, per-layer transcoders included); its layer is the node's ``layer``
and its index within the layer's transcoder the middle part of its ``node_id``
``"{layer}_{feature}_{ctx_idx}"``. The node's ``feature`` field is not the index: circuit-tracer
writes ``cantor_pairing(layer, index)`` there (older releases ``index + 10**k * layer``), so it is
never read. Embedding, error and logit nodes are skipped. The viewer shows a node's ``clerp``
(``ppClerp = localClerp || remoteClerp || clerp`` in ``frontend/assets/attribution_graph/
util-cg.js``), which is where our labels go.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from circuit_insights.core.errors import InputError
from circuit_insights.core.io import atomic_path
from circuit_insights.interop.target import TranscoderSet

#: ``feature_type`` of a transcoder feature node (circuit-tracer ``Node.feature_node``).
FEATURE_TYPE = "cross layer transcoder"
#: Prefix circuit-tracer gives ``metadata.scan`` for a transcoder set given as a list.
CUSTOM_SCAN_PREFIX = "custom-"
# "{layer}_{feature}_{ctx}" (circuit-tracer); "{layer}_cro_{feature}_{ctx}" (Neuronpedia's
# llamascopium converter, apps/graph/neuronpedia_graph/format_converter.py).
_FEATURE_NODE_ID = re.compile(r"^(\d+)_(?:[a-z]+_)?(\d+)_(\d+)$")


@dataclass(frozen=True)
class FeatureNode:
    """One transcoder-feature node of a graph (a feature appears once per context position)."""

    layer: int
    feature: int
    ctx_idx: int
    node_id: str
    clerp: str
    """The label the viewer shows ("" when none)."""
    activation: float | None
    influence: float | None


def read_graph(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The graph file at ``path``, parsed and checked to be an attribution graph.

    Raises :class:`InputError` naming the file and what is wrong when it is not JSON, not an
    object with ``metadata`` (with a string ``scan``), ``nodes`` and ``links``, or when a node
    lacks ``node_id``, ``feature_type`` or ``layer``.
    """
    where = f"graph file {os.fspath(path)}"
    try:
        graph = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputError(f"{where}: no such file") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{where}: not a JSON file ({exc})") from exc
    if not isinstance(graph, dict):
        raise InputError(f"{where}: not an attribution graph (the JSON is not an object)")
    missing = [k for k in ("metadata", "nodes", "links") if k not in graph]
    if missing:
        raise InputError(f"{where}: not an attribution graph (no {', '.join(missing)})")
    metadata = graph["metadata"]
    if not isinstance(metadata, dict) or not isinstance(metadata.get("scan"), str):
        raise InputError(f"{where}: not an attribution graph (metadata.scan is not a string)")
    if not isinstance(graph["nodes"], list) or not isinstance(graph["links"], list):
        raise InputError(f"{where}: not an attribution graph (nodes / links are not lists)")
    for number, node in enumerate(graph["nodes"]):
        if not isinstance(node, dict):
            raise InputError(f"{where}: nodes[{number}] is not an object")
        lacking = [k for k in ("node_id", "feature_type", "layer") if k not in node]
        if lacking:
            raise InputError(f"{where}: nodes[{number}] has no {', '.join(lacking)}")
    return graph


def feature_nodes(graph: Mapping[str, Any], *, path: str | os.PathLike[str]) -> list[FeatureNode]:
    """The transcoder-feature nodes of ``graph`` (read from ``path``), in file order.

    Raises :class:`InputError` naming the node when its ``node_id`` does not name its layer and
    feature as circuit-tracer writes them.
    """
    found: list[FeatureNode] = []
    for number, node in enumerate(graph["nodes"]):
        if node["feature_type"] != FEATURE_TYPE:
            continue
        node_id = str(node["node_id"])
        match = _FEATURE_NODE_ID.match(node_id)
        if match is None or match.group(1) != str(node["layer"]).strip():
            raise InputError(
                f"graph file {os.fspath(path)}: nodes[{number}] (node_id {node_id!r}, layer "
                f"{node['layer']!r}) does not name its layer and feature as "
                "'{layer}_{feature}_{ctx_idx}'"
            )
        found.append(
            FeatureNode(
                layer=int(match.group(1)),
                feature=int(match.group(2)),
                ctx_idx=int(node.get("ctx_idx", match.group(3))),
                node_id=node_id,
                clerp=str(node.get("clerp") or ""),
                activation=_number(node.get("activation")),
                influence=_number(node.get("influence")),
            )
        )
    return found


def check_graph_origin(
    graph: Mapping[str, Any], *, path: str | os.PathLike[str], target: TranscoderSet
) -> None:
    """Raise :class:`InputError` unless ``graph``'s metadata names ``target``'s model and
    transcoder set.

    The model is ``metadata.scan``, or, for a list-given set (``scan`` ``custom-<hash>``), the
    part before ``/`` of every ``metadata.transcoder_list`` entry. The transcoder set is
    ``metadata.feature_details.neuronpedia_source_set`` where given (Neuronpedia), else the
    ``transcoder_list`` entries of the configured layers (entry ``L`` is layer ``L``'s
    transcoder), else the preset ``scan`` itself.
    """
    where = f"graph file {os.fspath(path)}"
    metadata = graph["metadata"]
    scan = metadata["scan"]
    listed = metadata.get("transcoder_list") or []
    if not isinstance(listed, list) or not all(isinstance(e, str) for e in listed):
        raise InputError(f"{where}: metadata.transcoder_list is not a list of strings")
    if scan.startswith(CUSTOM_SCAN_PREFIX):
        if not listed or not all("/" in entry for entry in listed):
            raise InputError(
                f"{where}: metadata.scan {scan!r} names a listed transcoder set, but "
                "metadata.transcoder_list does not list 'model/transcoder' ids"
            )
        models = sorted({entry.split("/", 1)[0] for entry in listed})
        model, said = models[0], "metadata.transcoder_list"
        if len(models) > 1:
            raise InputError(f"{where}: metadata.transcoder_list mixes models {models}")
    else:
        model, said = scan, "metadata.scan"
    if model not in target.model_names:
        raise InputError(
            f"{where}: made for model {model!r} ({said}), not for {target.model!r} "
            f"(accepted: {', '.join(target.model_names)})"
        )
    details = metadata.get("feature_details") or {}
    source_set = details.get("neuronpedia_source_set") if isinstance(details, dict) else None
    if source_set is not None:
        if source_set != target.source_set:
            raise InputError(
                f"{where}: made for transcoder set {source_set!r} "
                f"(metadata.feature_details.neuronpedia_source_set), not {target.source_set!r}"
            )
        return
    if listed:
        for layer in target.layers:
            if layer < len(listed):
                expected = f"{model}/{target.transcoder_id(layer)}"
                if listed[layer] != expected:
                    raise InputError(
                        f"{where}: made for another transcoder set: metadata.transcoder_list"
                        f"[{layer}] is {listed[layer]!r}, the configured transcoder of layer "
                        f"{layer} is {expected!r}"
                    )
        return
    if scan not in target.preset_scans:
        raise InputError(
            f"{where}: metadata names no transcoder set of {target.model!r}: scan {scan!r} is "
            "not a known preset (accepted: "
            f"{', '.join(target.preset_scans) or 'none'}), and there is neither "
            "metadata.feature_details.neuronpedia_source_set nor metadata.transcoder_list"
        )


def graph_features(
    path: str | os.PathLike[str], *, target: TranscoderSet, skip_other_layers: bool = False
) -> dict[int, list[int]]:
    """The transcoder features of the graph at ``path`` per layer, sorted and unique.

    Checks the file (:func:`read_graph`), its origin (:func:`check_graph_origin`) and every
    feature node: a layer that is not configured raises :class:`InputError` naming the node
    (unless ``skip_other_layers``), as does a feature index at or above ``target.width``.
    """
    graph = read_graph(path)
    check_graph_origin(graph, path=path, target=target)
    found: dict[int, set[int]] = {}
    for node in feature_nodes(graph, path=path):
        if skip_other_layers and node.layer not in target.layers:
            continue
        where = f"graph file {os.fspath(path)}, node {node.node_id!r}"
        target.check_feature(node.layer, node.feature, where)
        found.setdefault(node.layer, set()).add(node.feature)
    return {layer: sorted(found[layer]) for layer in sorted(found)}


def write_labelled_graph(
    source: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    labels: Mapping[tuple[int, int], str | None],
    *,
    target: TranscoderSet | None = None,
) -> int:
    """Copy the graph at ``source`` to ``dest`` with ``labels[(layer, feature)]`` as the ``clerp``
    of every node of that feature; return how many nodes were labelled.

    A feature without a label (absent, ``None`` or empty) keeps its node's ``clerp``; nothing
    else of the file changes (keys, their order and every other value stay as they were). With
    ``target``, the graph's origin is checked first. The copy is written atomically.
    """
    graph = read_graph(source)
    if target is not None:
        check_graph_origin(graph, path=source, target=target)
    by_id = {node.node_id: node for node in feature_nodes(graph, path=source)}
    labelled = 0
    for node in graph["nodes"]:
        feature = by_id.get(str(node["node_id"])) if node["feature_type"] == FEATURE_TYPE else None
        if feature is None:
            continue
        label = labels.get((feature.layer, feature.feature))
        if label:
            node["clerp"] = label
            labelled += 1
    _write_json(graph, dest)
    return labelled


def write_graph_index(
    folder: str | os.PathLike[str], graphs: Iterable[str | os.PathLike[str]]
) -> Path:
    """Write ``folder/graph-metadata.json``, the list of graphs circuit-tracer's local server
    offers (``{"graphs": [metadata, ...]}``, one entry per slug, as its
    ``frontend/utils.py:add_graph_metadata`` keeps it); return its path.

    The server reads ``<slug>.json`` from the same folder, so each graph file should sit there
    under its slug's name.
    """
    entries: dict[str, dict[str, Any]] = {}
    for path in graphs:
        metadata = read_graph(path)["metadata"]
        entries[str(metadata.get("slug", Path(path).stem))] = metadata
    index = Path(folder) / "graph-metadata.json"
    _write_json({"graphs": list(entries.values())}, index)
    return index


def _write_json(obj: Any, path: str | os.PathLike[str]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _number(value: Any) -> float | None:
    return None if value is None else float(value)
