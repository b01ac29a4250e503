"""A small, valid attribution-graph file for given features: for examples and tests.

The file has the fields, key order and node ids of circuit-tracer's writer
(safety-research/circuit-tracer ``circuit_tracer/frontend/graph_models.py``: ``Metadata``,
``QParams``, ``Node.feature_node`` / ``error_node`` / ``token_node`` / ``logit_node``, dumped by
``create_graph_files`` with ``model_dump_json(indent=2)``), plus Neuronpedia's
``metadata.feature_details.neuronpedia_source_set`` naming the transcoder set. Its attributions
are made up: every feature reads the embedding of its position and writes to the one logit, and
each layer's error node writes to the logit too, so every node is linked (circuit-tracer drops
unlinked nodes other than embeddings and logits).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from circuit_insights.core.errors import InputError
from circuit_insights.core.io import atomic_path
from circuit_insights.interop.graph import FEATURE_TYPE
from circuit_insights.interop.target import TranscoderSet


def cantor_pairing(x: int, y: int) -> int:
    """circuit-tracer's ``feature`` field of a feature node: ``(x + y)(x + y + 1) / 2 + y`` of
    (layer, index)."""
    return (x + y) * (x + y + 1) // 2 + y


def example_graph(
    *,
    target: TranscoderSet,
    features: Mapping[int, Sequence[int]],
    prompt_tokens: Sequence[str],
    token_ids: Sequence[int] | None = None,
    n_layers: int | None = None,
    slug: str = "example",
    output_token: str = "?",
    output_token_id: int = 0,
) -> dict[str, Any]:
    """The graph :func:`write_example_graph` writes, as a JSON object."""
    n_pos = len(prompt_tokens)
    if n_pos < 2:
        raise InputError("example graph: prompt_tokens needs at least two tokens")
    ids = list(token_ids) if token_ids is not None else list(range(n_pos))
    if len(ids) != n_pos:
        raise InputError(f"example graph: {len(ids)} token_ids for {n_pos} prompt_tokens")
    depth = n_layers if n_layers is not None else max(target.layers) + 1
    pairs = [
        (int(layer), int(f)) for layer in sorted(features) for f in sorted(set(features[layer]))
    ]
    for layer, feature in pairs:
        target.check_feature(layer, feature, "example graph")
    if depth <= max((layer for layer, _ in pairs), default=-1):
        raise InputError(f"example graph: n_layers {depth} leaves out a feature's layer")

    last = n_pos - 1
    logit = _node(
        node_id=f"{depth + 1}_{output_token_id}_{last}",
        feature=output_token_id,
        layer=str(depth + 1),
        ctx_idx=last,
        feature_type="logit",
        token_prob=0.5,
        is_target_logit=True,
        jsNodeId=f"L_{output_token_id}-{last}",
        clerp=f'Output "{output_token}" (p=0.500)',
    )
    nodes: list[dict[str, Any]] = []
    links: list[dict[str, Any]] = []
    for k, (layer, feature) in enumerate(pairs):
        pos = 1 + k % (n_pos - 1)  # never the first (BOS) position
        node = _node(
            node_id=f"{layer}_{feature}_{pos}",
            feature=cantor_pairing(layer, feature),
            layer=str(layer),
            ctx_idx=pos,
            feature_type=FEATURE_TYPE,
            jsNodeId=f"{layer}_{feature}-0",
            influence=round((k + 1) / (len(pairs) + 2), 6),
            activation=float(k + 1),
        )
        nodes.append(node)
        links.append(_link(f"E_{ids[pos]}_{pos}", node["node_id"], 1.0 + 0.25 * k))
        links.append(_link(node["node_id"], logit["node_id"], 0.5 + 0.125 * k))
    for layer in sorted({layer for layer, _ in pairs}):
        error = _node(
            node_id=f"{layer}_-1_{last}",
            feature=-1,
            layer=str(layer),
            ctx_idx=last,
            feature_type="mlp reconstruction error",
            jsNodeId=f"{layer}_{last}-0",
            influence=round((len(pairs) + 1) / (len(pairs) + 2), 6),
        )
        nodes.append(error)
        links.append(_link(error["node_id"], logit["node_id"], 0.0625))
    for pos, vocab in enumerate(ids):
        nodes.append(
            _node(
                node_id=f"E_{vocab}_{pos}",
                feature=pos,
                layer="E",
                ctx_idx=pos,
                feature_type="embedding",
                jsNodeId=f"E_{vocab}-{pos}",
            )
        )
    nodes.append(logit)
    metadata = {
        "slug": slug,
        "scan": target.model,
        "transcoder_list": [],
        "prompt_tokens": list(prompt_tokens),
        "prompt": "".join(prompt_tokens),
        "node_threshold": 0.8,
        "schema_version": 1,
        "feature_details": {"neuronpedia_source_set": target.source_set},
    }
    qparams = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}
    return {"metadata": metadata, "qParams": qparams, "nodes": nodes, "links": links}


def write_example_graph(
    path: str | os.PathLike[str],
    *,
    target: TranscoderSet,
    features: Mapping[int, Sequence[int]],
    prompt_tokens: Sequence[str],
    token_ids: Sequence[int] | None = None,
    n_layers: int | None = None,
    slug: str | None = None,
    output_token: str = "?",
    output_token_id: int = 0,
) -> dict[str, Any]:
    """Write a small valid graph of ``features`` (``{layer: [feature, ...]}``) for ``target`` at
    ``path``; return it as a JSON object.

    ``target.model`` becomes ``metadata.scan`` and ``target.source_set``
    ``metadata.feature_details.neuronpedia_source_set``; ``prompt_tokens`` are the tokens as the
    viewer shows them, ``token_ids`` their vocabulary ids (default ``0..n-1``); ``n_layers`` is
    the model's (default the last configured layer + 1; the logit node's layer is
    ``n_layers + 1``); ``slug`` defaults to the file name's stem; ``output_token`` /
    ``output_token_id`` make the logit node. Each feature sits at one position after the first;
    each feature layer has an error node at the last position. Raises :class:`InputError` for a
    feature outside ``target``'s layers or width.
    """
    graph = example_graph(
        target=target,
        features=features,
        prompt_tokens=prompt_tokens,
        token_ids=token_ids,
        n_layers=n_layers,
        slug=slug if slug is not None else Path(path).stem,
        output_token=output_token,
        output_token_id=output_token_id,
    )
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(graph, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return graph


def _node(**fields: Any) -> dict[str, Any]:
    """A node with every field of circuit-tracer's ``Node`` in its order and defaults."""
    node = {
        "node_id": fields["node_id"],
        "feature": fields["feature"],
        "layer": fields["layer"],
        "ctx_idx": fields["ctx_idx"],
        "feature_type": fields["feature_type"],
        "token_prob": fields.get("token_prob", 0.0),
        "is_target_logit": fields.get("is_target_logit", False),
        "run_idx": 0,
        "reverse_ctx_idx": 0,
        "jsNodeId": fields["jsNodeId"],
        "clerp": fields.get("clerp", ""),
        "influence": fields.get("influence"),
        "activation": fields.get("activation"),
    }
    return node


def _link(source: str, target: str, weight: float) -> dict[str, Any]:
    return {"source": source, "target": target, "weight": weight}
