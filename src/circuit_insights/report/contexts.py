"""The contexts of a feature page: corpus contexts as token spans (the target marked, trigger
tokens highlighted, validated WeightLens tokens underlined), the top activating contexts, and
the clusters with their example contexts (``docs/report.md``, feature page)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import numpy as np
import pandas as pd

from circuit_insights.core.tokens import TokenDisplay
from circuit_insights.report.paper import order_variants
from circuit_insights.report.values import as_float, as_list, opt_int, text


class CorpusView:
    """The corpus contexts by context id, shown as token spans."""

    def __init__(
        self, context_ids: np.ndarray | None, tokens: np.ndarray | None, display: TokenDisplay
    ) -> None:
        self.available = context_ids is not None and tokens is not None
        self.row_of = (
            {int(c): i for i, c in enumerate(np.asarray(context_ids))} if self.available else {}
        )
        self.tokens = np.asarray(tokens) if self.available else np.zeros((0, 0), dtype=np.int32)
        self.display = display

    def view(
        self,
        context: int,
        target: int,
        activation: float | None,
        *,
        before: int,
        after: int,
        triggers: Mapping[int, list[str]] | None = None,
        validated: Collection[int] = (),
        label: str = "",
    ) -> dict[str, Any]:
        """A context as token spans: the target marked, ``triggers`` (position -> contributor
        labels) highlighted, validated WeightLens tokens underlined."""
        view: dict[str, Any] = {
            "label": label,
            "context": int(context),
            "target_position": int(target),
            "activation": activation,
            "tokens": [],
            "note": None,
        }
        row = self.row_of.get(int(context))
        if row is None:
            view["note"] = (
                "corpus tokens not available"
                if not self.available
                else f"context {int(context)} is not in the corpus"
            )
            return view
        ids = self.tokens[row]  # (context_length,)
        if not 0 <= target < len(ids):
            view["note"] = f"target position {target} is outside the context"
            return view
        triggers = triggers or {}
        # Show ``before`` tokens; reach further back (up to 3x) for an earlier trigger token.
        start = max(0, target - before)
        earliest = min((p for p in triggers if 0 <= p <= target), default=start)
        start = max(0, min(start, max(earliest, target - 3 * before)))
        stop = min(len(ids), target + 1 + after)
        view["truncated_before"] = start > 0
        view["truncated_after"] = after > 0 and stop < len(ids)
        validated = set(int(t) for t in validated)
        for position in range(start, stop):
            token = int(ids[position])
            classes = ["tok"]
            title = [f"position {position}, token id {token}"]
            if position == target:
                classes.append("tgt")
                title.append(
                    "target token"
                    + (f", activation {activation:.4g}" if activation is not None else "")
                )
            if position in triggers:
                classes.append("trg")
                title.append("trigger: " + ", ".join(triggers[position]))
            if token in validated:
                classes.append("val")
                title.append("validated WeightLens token")
            if position > target:
                classes.append("after")
            view["tokens"].append(
                {
                    "text": self.display(token),
                    "classes": " ".join(classes),
                    "title": "; ".join(title),
                }
            )
        return view


def note_view(label: str, note: str) -> dict[str, Any]:
    """A context that cannot be shown, with why."""
    return {
        "label": label,
        "context": None,
        "target_position": None,
        "activation": None,
        "tokens": [],
        "note": note,
    }


def _element_key(kind: str, layer: Any, index: Any, delta: Any) -> tuple[Any, ...] | None:
    """A cluster's defining contributor as a hashable key (the ``clustering.Element`` shape)."""
    if kind == "feature":
        return ("feature", opt_int(layer), opt_int(index))
    if kind == "head":
        return ("head", opt_int(layer), opt_int(index), opt_int(delta))
    if kind == "token":
        return ("token", opt_int(index), opt_int(delta))
    return None


def _contribution_key(row: Mapping[str, Any]) -> tuple[Any, ...] | None:
    kind = row["kind"]
    if kind == "feature":
        return ("feature", opt_int(row["layer"]), opt_int(row["source_feature"]))
    if kind == "head":
        return ("head", opt_int(row["layer"]), opt_int(row["head"]), opt_int(row["delta"]))
    if kind == "embedding":
        return ("token", opt_int(row["token"]), opt_int(row["delta"]))
    return None


def _trigger_positions(
    defining: Mapping[tuple[Any, ...], str],
    target: int,
    contributions: pd.DataFrame | None,
) -> dict[int, list[str]]:
    """position -> labels of the cluster's defining contributors found there.

    With the sample's attribution rows: the positions where it has a defining contributor
    (features at any position, heads and embeddings at their offset). Without: the defining heads
    and token embeddings at ``target + delta``.
    """
    positions: dict[int, list[str]] = {}
    if contributions is not None and len(contributions):
        for row in contributions.to_dict("records"):
            key = _contribution_key(row)
            position = opt_int(row.get("position"))
            if key is None or position is None or key not in defining:
                continue
            labels = positions.setdefault(position, [])
            if defining[key] not in labels:
                labels.append(defining[key])
        return positions
    for key, label in defining.items():
        if key[0] in ("head", "token") and key[-1] is not None:
            positions.setdefault(target + int(key[-1]), []).append(label)
    return positions


def top_context_views(
    samples: pd.DataFrame | None,
    corpus: CorpusView,
    *,
    validated_ids: Collection[int],
    n_top: int,
    before: int,
) -> list[dict[str, Any]]:
    """The feature's ``top`` samples (MaxAct) by rank, at most ``n_top``, each with 8 tokens after
    the target."""
    top: list[dict[str, Any]] = []
    if samples is not None and len(samples) and "kind" in samples.columns:
        rows = samples[samples["kind"] == "top"].sort_values("rank").head(n_top)
        for r in rows.to_dict("records"):
            top.append(
                corpus.view(
                    int(r["context"]),
                    int(r["target_position"]),
                    as_float(r.get("activation")),
                    before=before,
                    after=8,
                    validated=validated_ids,
                    label=f"top {int(r['rank']) + 1}",
                )
            )
    return top


def cluster_views(
    clusters: pd.DataFrame | None,
    *,
    explanations: pd.DataFrame | None,
    samples: pd.DataFrame | None,
    contributions: pd.DataFrame | None,
    corpus: CorpusView,
    validated_ids: Collection[int],
    n_examples: int,
    before: int,
) -> list[dict[str, Any]]:
    """The feature's clusters by id, noise (cluster -1) last: descriptions by
    variant, trigger patterns, defining contributors, output influence and up to ``n_examples``
    example contexts with their trigger tokens (exact with the sample's ``contributions``)."""
    if clusters is None or clusters.empty:
        return []
    by_sample: dict[int, Mapping[str, Any]] = {}
    if samples is not None and len(samples):
        quantile = samples[samples["kind"] == "quantile"] if "kind" in samples.columns else samples
        key = "sample" if "sample" in quantile.columns else "rank"
        by_sample = {int(r[key]): r for r in quantile.to_dict("records")}
    contributions_of: dict[int, pd.DataFrame] = {}
    if contributions is not None and len(contributions):
        contributions_of = {int(s): part for s, part in contributions.groupby("sample")}
    described: dict[int, list[dict[str, Any]]] = {}
    if explanations is not None and len(explanations):
        for row in explanations[explanations["cluster"].astype(int) >= 0].to_dict("records"):
            described.setdefault(int(row["cluster"]), []).append(
                {
                    "variant": str(row["variant"]),
                    "description": text(row.get("description")),
                    "status": text(row.get("parse_status")),
                    "error": text(row.get("error")),
                }
            )
    order = sorted(
        clusters.to_dict("records"), key=lambda r: (int(r["cluster"]) < 0, int(r["cluster"]))
    )
    views = []
    for row in order:
        kinds = [str(k) for k in as_list(row.get("defining_kinds"))]
        labels = [str(x) for x in as_list(row.get("defining_labels"))]
        layers = as_list(row.get("defining_layers"))
        indices = as_list(row.get("defining_indices"))
        deltas = as_list(row.get("defining_deltas"))
        frequency = as_list(row.get("defining_frequency"))
        lift = as_list(row.get("defining_lift"))
        defining_rows = []
        defining: dict[tuple[Any, ...], str] = {}
        for i, kind in enumerate(kinds):
            label = labels[i] if i < len(labels) else kind
            element = _element_key(
                kind,
                layers[i] if i < len(layers) else None,
                indices[i] if i < len(indices) else None,
                deltas[i] if i < len(deltas) else None,
            )
            if element is not None:
                defining[element] = label
            defining_rows.append(
                {
                    "label": label,
                    "kind": kind,
                    "frequency": as_float(frequency[i]) if i < len(frequency) else None,
                    "lift": as_float(lift[i]) if i < len(lift) else None,
                }
            )
        examples = []
        for sample in [int(s) for s in as_list(row.get("example_samples"))][:n_examples]:
            info = by_sample.get(sample)
            if info is None:
                examples.append(note_view(f"sample {sample}", "sample not in the samples table"))
                continue
            target = int(info["target_position"])
            triggers = _trigger_positions(defining, target, contributions_of.get(sample))
            examples.append(
                corpus.view(
                    int(info["context"]),
                    target,
                    as_float(info.get("activation")),
                    before=before,
                    after=0,
                    triggers=triggers,
                    validated=validated_ids,
                    label=f"sample {sample}",
                )
            )
        cluster = int(row["cluster"])
        views.append(
            {
                "cluster": cluster,
                "is_noise": bool(row.get("is_noise", cluster < 0)),
                "status": text(row.get("status")),
                "method": text(row.get("method")),
                "n_samples": opt_int(row.get("n_samples")) or 0,
                "n_feature_samples": opt_int(row.get("n_feature_samples")) or 0,
                "share": as_float(row.get("share")),
                "mean_activation": as_float(row.get("mean_activation")),
                "patterns": [str(p) for p in as_list(row.get("trigger_patterns"))],
                "defining": defining_rows,
                "exact_triggers": bool(contributions_of),
                "promoted": _counted_tokens(row, "promoted"),
                "suppressed": _counted_tokens(row, "suppressed"),
                "next": _counted_tokens(row, "next"),
                "n_logit_samples": opt_int(row.get("output_n_logit_samples")) or 0,
                "mean_logit": as_float(row.get("output_mean_logit")),
                "descriptions": _by_variant(described.get(cluster, [])),
                "examples": examples,
            }
        )
    return views


def _by_variant(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    order = order_variants(item["variant"] for item in items)
    return sorted(items, key=lambda item: order.index(item["variant"]))


def _counted_tokens(row: Mapping[str, Any], direction: str) -> list[dict[str, Any]]:
    names = [str(t) for t in as_list(row.get(f"output_{direction}_tokens"))]
    counts = as_list(row.get(f"output_{direction}_counts"))
    return [
        {"text": name, "count": opt_int(counts[i]) if i < len(counts) else None}
        for i, name in enumerate(names)
    ]
