"""What the explainer reads of a cluster: its defining contributors (frequency inside the cluster,
lift over the feature's samples), its trigger patterns in words and its output influence."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from circuit_insights.circuitlens.clustering import (
    FIRST_POSITION,
    ClusteringConfig,
    Element,
    FeatureClustering,
)
from circuit_insights.core.tokens import TokenDisplay

# --- cluster summaries -------------------------------------------------------------------------


def _quote(text: str) -> str:
    return '"' + text.replace('"', '\\"') + '"'


def element_label(element: Element) -> str:
    """Short name of a contributor: ``L3#12``, ``L2.H1@-3``, ``tok123@-3``."""
    kind = element[0]
    if kind == "feature":
        return f"L{element[1]}#{element[2]}"
    if kind == "head":
        where = "first" if element[3] == FIRST_POSITION else element[3]
        return f"L{element[1]}.H{element[2]}@{where}"
    return f"tok{element[1]}@{element[2]}"


def _offset(delta: int) -> str:
    if delta == FIRST_POSITION:
        return "the first position (BOS, the attention sink)"
    return "offset 0 (the target token itself)" if delta == 0 else f"offset {delta}"


def _counted(items: Sequence[tuple[str, int]], limit: int) -> str:
    """``"a" (3), "b" (2), +4 more`` (counts omitted when there is one item)."""
    shown = items[:limit]
    if len(items) == 1:
        return _quote(items[0][0])
    text = ", ".join(f"{_quote(name)} ({count})" for name, count in shown)
    more = len(items) - len(shown)
    return text + (f", +{more} more" if more > 0 else "")


def _weightlens_tokens(
    weightlens: Mapping[tuple[int, int], Sequence[str]] | None, layer: int, feature: int, limit: int
) -> str | None:
    """``WeightLens tokens: "a", "b"`` for an upstream feature; None when it has no result."""
    if weightlens is None or (layer, feature) not in weightlens:
        return None
    tokens = list(weightlens[(layer, feature)])
    if not tokens:
        return "no validated WeightLens tokens"
    shown = ", ".join(_quote(t) for t in tokens[:limit])
    more = len(tokens) - limit
    return "WeightLens tokens: " + shown + (f", +{more} more" if more > 0 else "")


#: One occurrence of a contributor: (sample, source token, delta).
Occurrence = tuple[int, int, int]


def trigger_pattern(
    element: Element,
    occurrences: Sequence[Occurrence],
    n_members: int,
    display: TokenDisplay,
    weightlens: Mapping[tuple[int, int], Sequence[str]] | None,
    config: ClusteringConfig,
) -> str:
    """One contributor in words, from its occurrences in the cluster's samples.

    ``occurrences``: (sample, token, delta) of this element in the cluster's samples. Source
    tokens (and offsets) are counted once per sample.
    """
    n_with = len({sample for sample, _, _ in occurrences})
    where = f"in {n_with} of {n_members} samples"
    limit = config.max_pattern_tokens
    if element[0] == "head":
        _, layer, head, delta = element
        tokens = _top_counts({(s, t) for s, t, _ in occurrences})
        noun = "token" if len(tokens) == 1 else "tokens"
        shown = _counted([(display(token), count) for token, count in tokens], limit)
        return f"{noun} {shown} at {_offset(delta)} via head L{layer}.H{head} ({where})"
    if element[0] == "token":
        _, token_id, delta = element
        return f"token {_quote(display(token_id))} at {_offset(delta)} (its embedding; {where})"
    _, layer, source = element
    facts = _weightlens_tokens(weightlens, layer, source, config.max_weightlens_tokens)
    name = f"upstream feature L{layer}#{source}" + (f" ({facts})" if facts else "")
    pairs = _top_counts({(s, (t, d)) for s, t, d in occurrences})
    shown = ", ".join(
        f"{_quote(display(token))} at offset {delta}" + (f" ({count})" if len(pairs) > 1 else "")
        for (token, delta), count in pairs[:limit]
    )
    more = len(pairs) - limit
    shown += f", +{more} more" if more > 0 else ""
    return f"{name} active on {shown} ({where})"


def _top_counts(pairs: Iterable[tuple[int, Any]]) -> list[tuple[Any, int]]:
    """Values of distinct (sample, value) pairs by their number of samples (ties: by value)."""
    counts = Counter(value for _, value in pairs)
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def _output_tokens(
    rows: pd.DataFrame, display: TokenDisplay, limit: int
) -> tuple[list[int], list[str], list[int]]:
    """Tokens of ``rows`` by the number of samples they appear in, then by mean |value|."""
    if rows.empty or limit == 0:
        return [], [], []
    grouped = rows.groupby("token").agg(
        count=("sample", "nunique"), magnitude=("value", lambda v: float(np.abs(v).mean()))
    )
    grouped = grouped.reset_index().sort_values(
        ["count", "magnitude", "token"], ascending=[False, False, True], kind="mergesort"
    )
    top = grouped.head(limit)
    ids = [int(t) for t in top["token"]]
    return ids, display.many(ids), [int(c) for c in top["count"]]


def _empty_summary_lists() -> dict[str, list[Any]]:
    return {
        "defining_labels": [],
        "defining_kinds": [],
        "defining_layers": [],
        "defining_indices": [],
        "defining_deltas": [],
        "defining_frequency": [],
        "defining_lift": [],
        "trigger_patterns": [],
    }


def summarize_clusters(
    clustering: FeatureClustering,
    *,
    layer: int,
    feature: int,
    occurrences: pd.DataFrame,
    outputs: pd.DataFrame | None = None,
    activations: Mapping[int, float] | None = None,
    weightlens: Mapping[tuple[int, int], Sequence[str]] | None = None,
    display: TokenDisplay | None = None,
    config: ClusteringConfig | None = None,
) -> list[dict[str, Any]]:
    """One :data:`CLUSTERS_SCHEMA` row per cluster of ``clustering`` and one for its noise.

    ``occurrences``: this feature's rows of :func:`contribution_occurrences` (the same kinds as the
    clustering); ``outputs``: its ``logit`` / ``top_token`` contribution rows; ``activations``:
    sample -> activation; ``weightlens``: ``(layer, feature) -> validated tokens`` of upstream
    features. Defining contributors: kept elements present in at least ``min_cluster_frequency``
    of the cluster's samples with lift >= ``min_lift``, by in-cluster frequency, then lift.
    """
    config = config or ClusteringConfig()
    display = display or TokenDisplay(None)
    n_total = len(clustering.samples)
    membership = clustering.membership.tocsc()
    overall = (
        np.asarray(membership.sum(axis=0)).ravel() / n_total
        if n_total
        else np.zeros(len(clustering.elements))
    )
    by_element: dict[Element, list[Occurrence]] = {}
    for element, sample, token, delta in zip(
        occurrences["element"],
        occurrences["sample"],
        occurrences["token"],
        occurrences["delta"],
        strict=True,
    ):
        by_element.setdefault(element, []).append((int(sample), int(token), int(delta)))
    outputs = outputs if outputs is not None else pd.DataFrame(columns=["sample", "kind"])
    rows = []
    labels = clustering.labels
    groups = list(range(clustering.n_clusters)) + ([-1] if (labels == -1).any() else [])
    for cluster in groups:
        members_idx = np.flatnonzero(labels == cluster)
        members = clustering.samples[members_idx]
        n_members = len(members)
        row: dict[str, Any] = {
            "layer": int(layer),
            "feature": int(feature),
            "cluster": int(cluster),
            "is_noise": cluster == -1,
            "status": clustering.status,
            "method": clustering.method,
            "n_clusters": clustering.n_clusters,
            "n_samples": n_members,
            "share": n_members / n_total if n_total else math.nan,
            "n_feature_samples": n_total,
            "n_elements": len(clustering.elements),
        }
        row.update(_empty_summary_lists())
        if len(clustering.elements) and n_members:
            sub = membership[members_idx]
            inside = np.asarray(sub.sum(axis=0)).ravel() / n_members
            with np.errstate(divide="ignore", invalid="ignore"):
                lift = np.where(overall > 0, inside / np.where(overall > 0, overall, 1.0), 0.0)
            chosen = [
                j
                for j in range(len(clustering.elements))
                if inside[j] > 0
                and inside[j] >= config.min_cluster_frequency - 1e-12
                and lift[j] >= config.min_lift
            ]
            chosen.sort(key=lambda j: (-inside[j], -lift[j], clustering.elements[j]))
            member_set = set(int(s) for s in members)
            for j in chosen[: config.max_defining]:
                element = clustering.elements[j]
                row["defining_labels"].append(element_label(element))
                row["defining_kinds"].append(element[0])
                row["defining_layers"].append(int(element[1]) if element[0] != "token" else None)
                row["defining_indices"].append(
                    int(element[2] if element[0] != "token" else element[1])
                )
                row["defining_deltas"].append(
                    int(element[-1]) if element[0] in ("head", "token") else None
                )
                row["defining_frequency"].append(float(inside[j]))
                row["defining_lift"].append(float(lift[j]))
                found = [o for o in by_element.get(element, ()) if o[0] in member_set]
                row["trigger_patterns"].append(
                    trigger_pattern(element, found, n_members, display, weightlens, config)
                )
        member_outputs = outputs[outputs["sample"].isin(members)] if len(outputs) else outputs
        k = config.top_output_tokens
        for direction in ("promoted", "suppressed"):
            part = (
                member_outputs[
                    (member_outputs["kind"] == "top_token")
                    & (member_outputs["detail"] == direction)
                ]
                if len(member_outputs)
                else member_outputs
            )
            ids, names, counts = _output_tokens(part, display, k)
            row[f"output_{direction}_token_ids"] = ids
            row[f"output_{direction}_tokens"] = names
            row[f"output_{direction}_counts"] = counts
        logits = (
            member_outputs[(member_outputs["kind"] == "logit") & (member_outputs["delta"] == 0)]
            if len(member_outputs)
            else member_outputs
        )
        row["output_n_logit_samples"] = int(logits["sample"].nunique()) if len(logits) else 0
        row["output_mean_logit"] = (
            float(logits.groupby("sample")["value"].sum().mean()) if len(logits) else None
        )
        ids, names, counts = _output_tokens(logits, display, k)
        row["output_next_token_ids"] = ids
        row["output_next_tokens"] = names
        row["output_next_counts"] = counts
        values = [
            activations[int(s)]
            for s in members
            if activations is not None and int(s) in activations
        ]
        values = [v for v in values if v is not None and math.isfinite(v)]
        row["mean_activation"] = float(np.mean(values)) if values else None
        # Examples: the most central samples (lowest mean distance to the other members).
        if n_members:
            block = clustering.distances[np.ix_(members_idx, members_idx)]
            centrality = block.mean(axis=1)
            order = sorted(range(n_members), key=lambda i: (centrality[i], int(members[i])))
            row["example_samples"] = [int(members[i]) for i in order[: config.n_examples]]
        else:
            row["example_samples"] = []
        rows.append(row)
    return rows
