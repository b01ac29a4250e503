"""The report's page of a model's attribution graph (``models.<m>.graph``): its features by layer,
each with the label rule label_graph writes into the graph (the first variant of
``labels.variants`` that describes it; an imported variant marked with its source), the node's own
label, where in the prompt it sits, and a link to the feature's page.

The graph is one of the report rule's declared inputs (:class:`~circuit_insights.report.inputs.
ModelInputs` ``graph``); its features come from ``interop.graph.feature_nodes``, the labels from
``interop.table.chosen_descriptions`` (what rule label_graph writes).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import pandas as pd

from circuit_insights.interop.graph import feature_nodes
from circuit_insights.interop.table import chosen_descriptions

__all__ = ["graph_features", "graph_page", "graph_page_path"]


def graph_page_path(model_slug: str) -> str:
    """The graph page's path relative to the report root."""
    return f"{model_slug}/graph.html"


def graph_features(graph: Mapping[str, Any] | None) -> dict[int, set[int]]:
    """layer -> the features of the graph's feature nodes ({} without a graph)."""
    if graph is None:
        return {}
    found: dict[int, set[int]] = {}
    for node in feature_nodes(graph, path="<graph>"):
        found.setdefault(node.layer, set()).add(node.feature)
    return found


def graph_page(
    graph: Mapping[str, Any],
    *,
    model: str,
    model_slug: str,
    source: str,
    explanations: pd.DataFrame | None,
    label_variants: Sequence[str],
    sources: Mapping[str, str],
    page_exists: Collection[tuple[int, int]],
) -> dict[str, Any]:
    """The context of ``graph.html``: per layer, each feature of the graph (once, with the
    prompt positions of its nodes and their largest activation), its label and the variant it
    comes from (``sources``: imported variant -> where it came from), the node's own label,
    and the link to its page where it has one."""
    metadata = graph.get("metadata", {})
    tokens = [str(t) for t in metadata.get("prompt_tokens") or []]
    chosen = (
        chosen_descriptions(explanations, label_variants)
        if explanations is not None and len(explanations)
        else {}
    )
    by_feature: dict[tuple[int, int], dict[str, Any]] = {}
    for node in feature_nodes(graph, path=source):
        key = (node.layer, node.feature)
        row = by_feature.setdefault(
            key,
            {
                "layer": node.layer,
                "feature": node.feature,
                "positions": [],
                "clerp": "",
                "act": None,
            },
        )
        token = tokens[node.ctx_idx] if 0 <= node.ctx_idx < len(tokens) else "?"
        row["positions"].append(f"{node.ctx_idx} {token!r}")
        row["clerp"] = row["clerp"] or node.clerp
        if node.activation is not None:
            row["act"] = node.activation if row["act"] is None else max(row["act"], node.activation)
    layers: dict[int, list[dict[str, Any]]] = {}
    n_labelled = 0
    for key in sorted(by_feature):
        row = by_feature[key]
        variant, label = chosen.get(key, (None, None))
        n_labelled += label is not None
        layers.setdefault(key[0], []).append(
            {
                **row,
                "label": label,
                "variant": variant,
                "imported": sources.get(variant) if variant is not None else None,
                "activation": "" if row["act"] is None else f"{row['act']:.3g}",
                "href": f"layer{key[0]}/feature{key[1]:06d}.html" if key in page_exists else None,
            }
        )
    return {
        "title": f"{model} · graph {metadata.get('slug', '')}",
        "root": "../",
        "model": model,
        "model_slug": model_slug,
        "slug": str(metadata.get("slug", "")),
        "prompt": str(metadata.get("prompt", "")),
        "source": source,
        "label_variants": list(label_variants),
        "n_features": len(by_feature),
        "n_labelled": n_labelled,
        "layers": [{"layer": layer, "rows": layers[layer]} for layer in sorted(layers)],
    }
