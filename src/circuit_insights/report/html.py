"""A static HTML report of a run: opens from disk, no server, no external assets.

``build_report(results_dir or frames, out_dir)`` writes

- ``index.html``: per model the summary (paper-style score table with bootstrap CIs, missing
  values by reason, token-based shares next to the paper's, one plot per metric) and, per layer,
  the features with their classification, WeightLens description and scores, each linked to
- ``{model}/layer{L}/feature{F:06d}.html``: the feature's WeightLens tokens (validated with
  their activations, candidates, promoted / suppressed, upstream features), its output influence,
  its clusters (trigger patterns, defining contributors, output influence, example contexts with
  the trigger tokens highlighted and the target token marked), its top contexts, the description
  of every variant and every score with the reason when it is missing;
- ``{model}/layer{L}/descriptions.html``: every explained feature of the layer (not only those
  with a page) with its final description by every variant, or why there is none;
- ``{model}/summary/``: :func:`circuit_insights.report.summary.write_summary`'s files.

Pages are rendered with the jinja2 templates in ``templates/`` (autoescape on: every string from
the tables is escaped), CSS inline, links relative. Every file is written atomically. Missing
pieces (no clusters, no description, no corpus, missing scores) are shown as such, never an
error. Layout and choices: ``docs/report.md``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from circuit_insights.core.errors import InputError
from circuit_insights.core.io import atomic_path
from circuit_insights.core.tokens import TokenDisplay
from circuit_insights.data.corpus import load_contexts
from circuit_insights.pipeline import paths
from circuit_insights.report import claims
from circuit_insights.report import summary as summ

__all__ = [
    "STAGE_DIRS",
    "ModelFrames",
    "build_report",
    "descriptions_page_path",
    "discover_models",
    "feature_page_path",
    "load_model_frames",
    "read_stage",
]

#: Folder name of each stage under ``results/{model}/layer{L}/`` (the workflow's layout,
#: ``circuit_insights.pipeline.paths``). Override with ``stage_dirs``.
STAGE_DIRS: dict[str, tuple[str, ...]] = {
    "weightlens": ("weightlens",),
    "evaluation": ("evaluation",),
    "rule_evaluation": ("evaluation-rules",),
    "explanations": ("explanations",),
    "clusters": ("clusters",),
    "samples": ("samples",),
    "contributions": ("contributions",),
    "twera": ("twera",),
}

#: Stages keyed by other columns than ``layer`` / ``feature``: renamed to those on reading
#: (TWERA rows belong to their target feature).
_KEY_COLUMNS = {"twera": ("target_layer", "target_feature")}

#: Stages whose tables have no ``layer`` column of the explained feature: the loader adds it
#: under this name, from the file's path.
_ADDED_LAYER_COLUMN = {"samples": "layer", "contributions": "feature_layer"}

#: Columns read from the attribution contributions (the trigger tokens of example contexts).
_CONTRIBUTION_COLUMNS = [
    "feature",
    "sample",
    "kind",
    "layer",
    "head",
    "source_feature",
    "position",
    "delta",
    "token",
]

_LAYER_DIR = re.compile(r"^layer(\d+)$")
#: Columns of the clusters tables the coverage table reads.
_COVERAGE_COLUMNS = ["layer", "feature", "cluster", "is_noise", "n_samples", "n_clusters", "status"]
_DASH = "\u2014"


# --- loading -------------------------------------------------------------------------------------


@dataclass
class ModelFrames:
    """Everything the report shows of one model; every table may be missing (None).

    ``weightlens`` (``WEIGHTLENS_SCHEMA``), ``evaluation`` (``FADE_EVALUATION_SCHEMA``),
    ``explanations`` (``EXPLANATIONS_SCHEMA``), ``clusters`` (``CLUSTERS_SCHEMA``) carry their own
    ``layer`` column; ``samples`` is ``SAMPLES_SCHEMA`` plus ``layer``; ``contributions`` is
    ``ATTRIBUTION_CONTRIBUTIONS_SCHEMA`` (at least :data:`_CONTRIBUTION_COLUMNS`) plus
    ``feature_layer`` (the explained feature's layer; ``layer`` is the contributor's).
    ``context_ids`` (n,) and ``tokens`` (n, context_length): the corpus contexts
    (``corpus.load_contexts``). ``tokenizer``: display only (None: ``<id>``).
    """

    model: str
    weightlens: pd.DataFrame | None = None
    evaluation: pd.DataFrame | None = None
    explanations: pd.DataFrame | None = None
    clusters: pd.DataFrame | None = None
    samples: pd.DataFrame | None = None
    contributions: pd.DataFrame | None = None
    context_ids: np.ndarray | None = None
    tokens: np.ndarray | None = None
    tokenizer: object | None = None
    rule_evaluation: pd.DataFrame | None = None
    """Rule-rated scores of the executable explanations (``rater`` = ``rule``)."""
    twera: pd.DataFrame | None = None
    """Optional TWERA ranking of upstream connections (``WEIGHTLENS_TWERA_SCHEMA`` with
    ``target_layer`` / ``target_feature`` renamed ``layer`` / ``feature``)."""


def discover_models(results_dir: str | os.PathLike[str]) -> list[str]:
    """Models of a results folder: the sub-folders holding at least one ``layer{L}`` folder."""
    root = Path(results_dir)
    if not root.is_dir():
        raise InputError(f"results folder {root} does not exist")
    return sorted(
        child.name
        for child in root.iterdir()
        if child.is_dir() and any(_LAYER_DIR.match(p.name) for p in child.iterdir() if p.is_dir())
    )


def _stage_folders(
    results_dir: Path, model: str, stage: str, stage_dirs: Mapping[str, Sequence[str]]
) -> dict[int, Path]:
    """layer -> the stage's folder of that layer (the first existing name)."""
    if stage not in stage_dirs:
        raise InputError(f"unknown stage {stage!r}: choose from {sorted(stage_dirs)}")
    found: dict[int, Path] = {}
    model_dir = results_dir / model
    if not model_dir.is_dir():
        return found
    for layer_dir in model_dir.iterdir():
        match = _LAYER_DIR.match(layer_dir.name)
        if not match or not layer_dir.is_dir():
            continue
        for name in stage_dirs[stage]:
            if (layer_dir / name).is_dir():
                found[int(match.group(1))] = layer_dir / name
                break
    return dict(sorted(found.items()))


def read_stage(
    results_dir: str | os.PathLike[str],
    model: str,
    stage: str,
    *,
    features: Mapping[int, Collection[int]] | None = None,
    columns: Sequence[str] | None = None,
    stage_dirs: Mapping[str, Sequence[str]] | None = None,
    files: Collection[Path] | None = None,
) -> pd.DataFrame | None:
    """All shard files of one stage of a model, concatenated; None when the stage has none.

    ``features``: layer -> features to keep (other layers are skipped). Partial files
    (``.*.partial``) are ignored; samples / contributions get the layer from the path
    (:data:`_ADDED_LAYER_COLUMN`).
    """
    stage_dirs = stage_dirs or STAGE_DIRS
    parts: list[pd.DataFrame] = []
    for layer, folder in _stage_folders(Path(results_dir), model, stage, stage_dirs).items():
        if features is not None and layer not in features:
            continue
        for path in sorted(folder.rglob("*.parquet")):  # evaluation/{variant}/{shard}
            if path.name.startswith(".") or (files is not None and path.resolve() not in files):
                continue
            names = pq.read_schema(path).names
            wanted = [c for c in columns if c in names] if columns is not None else None
            filters = None
            layer_column, feature_column = _KEY_COLUMNS.get(stage, ("layer", "feature"))
            if features is not None:
                keep = sorted(int(f) for f in features[layer])
                if not keep:
                    continue
                filters = [(feature_column, "in", keep)]
            try:
                table = pq.read_table(path, columns=wanted, filters=filters)
            except Exception as exc:  # noqa: BLE001 - name the file at fault
                raise InputError(f"cannot read {stage} file {path}: {exc}") from exc
            frame = table.to_pandas().rename(
                columns={layer_column: "layer", feature_column: "feature"}
            )
            added = _ADDED_LAYER_COLUMN.get(stage, "layer")
            if added not in frame.columns:
                frame[added] = layer
            parts.append(frame)
    if not parts:
        return None
    return pd.concat(parts, ignore_index=True)


def load_model_frames(
    results_dir: str | os.PathLike[str],
    model: str,
    *,
    features: Mapping[int, Collection[int]] | None = None,
    stages: Collection[str] | None = None,
    stage_dirs: Mapping[str, Sequence[str]] | None = None,
    tokenizer: object | None = None,
    files: Collection[Path] | None = None,
) -> ModelFrames:
    """The tables of one model from ``results_dir`` (missing stages: None) and its corpus."""
    stages = set(stages) if stages is not None else set(STAGE_DIRS)
    tables: dict[str, pd.DataFrame | None] = {}
    for stage in STAGE_DIRS:
        if stage not in stages:
            tables[stage] = None
            continue
        columns = _CONTRIBUTION_COLUMNS if stage == "contributions" else None
        tables[stage] = read_stage(
            results_dir,
            model,
            stage,
            features=features,
            columns=columns,
            stage_dirs=stage_dirs,
            files=files,
        )
    context_ids = tokens = None
    corpus = Path(paths.tokens_file(str(results_dir), model))
    if corpus.is_file():
        context_ids, tokens = load_contexts(corpus, None)
    return ModelFrames(
        model=model,
        context_ids=context_ids,
        tokens=tokens,
        tokenizer=tokenizer,
        **tables,
    )


# --- small helpers -------------------------------------------------------------------------------


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _float(value: Any) -> float | None:
    """A finite float or None."""
    if _is_missing(value):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _list(values: Any) -> list[Any]:
    """A list from a parquet list cell (array, list, None)."""
    if values is None or (isinstance(values, float) and math.isnan(values)):
        return []
    return list(values)


def _opt_int(value: Any) -> int | None:
    number = _float(value)
    return None if number is None else int(number)


def _text(value: Any) -> str | None:
    if _is_missing(value):
        return None
    text = str(value)
    return text if text.strip() else None


def _slug(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")
    return slug or "model"


def descriptions_page_path(model_slug: str, layer: int) -> str:
    """Path of a layer's page of every feature's descriptions, relative to the report root."""
    return f"{model_slug}/layer{int(layer)}/descriptions.html"


def feature_page_path(model_slug: str, layer: int, feature: int) -> str:
    """A feature page's path relative to the report root."""
    return f"{model_slug}/layer{int(layer)}/feature{int(feature):06d}.html"


def _grouped(
    frame: pd.DataFrame | None,
    layer_column: str = "layer",
    keep: Collection[tuple[int, int]] | None = None,
) -> dict[tuple[int, int], pd.DataFrame]:
    """(layer, feature) -> the frame's rows, for the (layer, feature) pairs in ``keep`` (all)."""
    if frame is None or frame.empty:
        return {}
    if keep is not None:
        pairs = pd.MultiIndex.from_arrays(
            [frame[layer_column].astype(int), frame["feature"].astype(int)]
        )
        frame = frame[pairs.isin(list(keep))]
        if frame.empty:
            return {}
    keys = [frame[layer_column].astype(int), frame["feature"].astype(int)]
    return {(int(k[0]), int(k[1])): part for k, part in frame.groupby(keys, sort=False)}


def _feature_keys(frames: Iterable[pd.DataFrame | None]) -> dict[int, set[int]]:
    keys: dict[int, set[int]] = {}
    for frame in frames:
        if frame is None or frame.empty or "feature" not in frame.columns:
            continue
        for layer, feature in zip(
            frame["layer"].astype(int).tolist(), frame["feature"].astype(int).tolist(), strict=True
        ):
            keys.setdefault(layer, set()).add(feature)
    return keys


def _llm_rows(explanations: pd.DataFrame | None) -> pd.DataFrame | None:
    """The explanation rows written by an LLM (the LLM-free variants may cover every feature)."""
    from circuit_insights.explain import LLM_VARIANTS

    if explanations is None or "variant" not in explanations.columns:
        return explanations
    return explanations[explanations["variant"].isin(LLM_VARIANTS)]


def _choose_features(
    keys: Mapping[int, set[int]],
    max_features: int | None,
    first: Mapping[int, set[int]] | None = None,
) -> tuple[dict[int, list[int]], dict[int, int]]:
    """Features with a page per layer and how many were left out.

    At most ``max_features`` per layer: the features of ``first`` (those with explanations or
    scores) always, then the lowest other ids; pages are listed by id.
    """
    chosen: dict[int, list[int]] = {}
    hidden: dict[int, int] = {}
    for layer in sorted(keys):
        features = sorted(keys[layer])
        if max_features is None:
            shown = features
        else:
            wanted = sorted((first or {}).get(layer, set()) & set(features))
            taken = set(wanted)
            rest = [feature for feature in features if feature not in taken]
            shown = sorted((wanted + rest)[: max(0, int(max_features))])
        chosen[layer] = shown
        hidden[layer] = len(features) - len(shown)
    return chosen, hidden


# --- contexts ------------------------------------------------------------------------------------


class _Corpus:
    """Token rows by context id, rendered as token spans."""

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


def _note_view(label: str, note: str) -> dict[str, Any]:
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
        return ("feature", _opt_int(layer), _opt_int(index))
    if kind == "head":
        return ("head", _opt_int(layer), _opt_int(index), _opt_int(delta))
    if kind == "token":
        return ("token", _opt_int(index), _opt_int(delta))
    return None


def _contribution_key(row: Mapping[str, Any]) -> tuple[Any, ...] | None:
    kind = row["kind"]
    if kind == "feature":
        return ("feature", _opt_int(row["layer"]), _opt_int(row["source_feature"]))
    if kind == "head":
        return ("head", _opt_int(row["layer"]), _opt_int(row["head"]), _opt_int(row["delta"]))
    if kind == "embedding":
        return ("token", _opt_int(row["token"]), _opt_int(row["delta"]))
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
            position = _opt_int(row.get("position"))
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


# --- view models ---------------------------------------------------------------------------------


def _token_items(
    ids: Sequence[Any],
    names: Sequence[Any],
    display: TokenDisplay | None,
    **numbers: Sequence[Any],
) -> list[dict[str, Any]]:
    """Token rows: ``text`` (from the ids when a tokenizer is given, else the stored strings)."""
    items = []
    for i, token in enumerate(ids):
        text = (
            display(int(token))
            if display is not None
            else (str(names[i]) if i < len(names) else f"<{int(token)}>")
        )
        item: dict[str, Any] = {"id": int(token), "text": text}
        for name, values in numbers.items():
            item[name] = values[i] if i < len(values) else None
        items.append(item)
    return items


def _weightlens_view(
    row: Mapping[str, Any] | None,
    display: TokenDisplay | None,
    page_exists: Collection[tuple[int, int]],
    link_prefix: str,
) -> dict[str, Any] | None:
    if row is None:
        return None
    validated = _token_items(
        _list(row.get("validated_token_ids")),
        _list(row.get("validated_tokens")),
        display,
        activation=_list(row.get("validated_activations")),
        source=_list(row.get("validated_sources")),
    )
    candidates = _token_items(
        _list(row.get("candidate_token_ids")),
        _list(row.get("candidate_tokens")),
        display,
        z=_list(row.get("candidate_z")),
        activation=_list(row.get("candidate_activations")),
        source=_list(row.get("candidate_sources")),
    )
    validated_ids = {item["id"] for item in validated}
    for item in candidates:
        item["validated"] = item["id"] in validated_ids
    promoted = _token_items(
        _list(row.get("promoted_token_ids")),
        _list(row.get("promoted_tokens")),
        display,
        z=_list(row.get("promoted_z")),
    )
    suppressed = _token_items(
        _list(row.get("suppressed_token_ids")),
        _list(row.get("suppressed_tokens")),
        display,
        z=_list(row.get("suppressed_z")),
    )
    upstream = []
    layers = _list(row.get("upstream_layers"))
    features = _list(row.get("upstream_features"))
    inherited = _list(row.get("upstream_inherited_token_ids"))
    has_result = _list(row.get("upstream_has_result"))
    z = _list(row.get("upstream_z"))
    relative = _list(row.get("upstream_relative_contributions"))
    contribution = _list(row.get("upstream_contributions"))
    for i, (layer, feature) in enumerate(zip(layers, features, strict=False)):
        key = (int(layer), int(feature))
        ids = [int(t) for t in _list(inherited[i])] if i < len(inherited) else []
        upstream.append(
            {
                "key": key,
                "label": f"L{key[0]}#{key[1]}",
                "href": link_prefix + f"layer{key[0]}/feature{key[1]:06d}.html"
                if key in page_exists
                else None,
                "z": z[i] if i < len(z) else None,
                "relative": relative[i] if i < len(relative) else None,
                "contribution": contribution[i] if i < len(contribution) else None,
                "has_result": bool(has_result[i]) if i < len(has_result) else None,
                "tokens": [display(t) if display is not None else f"<{t}>" for t in ids],
            }
        )
    return {
        "description": _text(row.get("description")),
        "classification": _text(row.get("classification")) or "unknown",
        "is_token_based": bool(row.get("is_token_based")),
        "classification_basis": _text(row.get("classification_basis")),
        "n_top_contexts": _opt_int(row.get("n_top_contexts")),
        "n_top_contexts_explained": _opt_int(row.get("n_top_contexts_explained")),
        "top_context_share": _float(row.get("top_context_share")),
        "min_token_share": _float(row.get("min_token_share")),
        "preset": _text(row.get("preset")),
        "projection": _text(row.get("projection")),
        "t_tok": _float(row.get("t_tok")),
        "t_up": _float(row.get("t_up")),
        "validated": validated,
        "validated_ids": sorted(validated_ids),
        "candidates": candidates,
        "n_candidates_total": _opt_int(row.get("n_candidate_tokens_total")),
        "promoted": promoted,
        "n_promoted_total": _opt_int(row.get("n_promoted_total")),
        "suppressed": suppressed,
        "n_suppressed_total": _opt_int(row.get("n_suppressed_total")),
        "upstream": upstream,
        "n_upstream_total": _opt_int(row.get("n_upstream_total")),
        "score": {
            "auroc": _float(row.get("auroc")),
            "precision": _float(row.get("precision")),
            "recall": _float(row.get("recall")),
            "n_positive": _opt_int(row.get("n_positive")),
            "n_predicted": _opt_int(row.get("n_predicted")),
            "n_true_positive": _opt_int(row.get("n_true_positive")),
            "n_scored_positions": _opt_int(row.get("n_scored_positions")),
            "reason": _text(row.get("score_reason")),
        },
    }


def _source_tokens(
    weightlens: pd.DataFrame | None, twera: pd.DataFrame | None, limit: int = 6
) -> dict[tuple[int, int], list[str]]:
    """(layer, feature) -> up to ``limit`` validated WeightLens tokens of each TWERA source."""
    if weightlens is None or twera is None or twera.empty:
        return {}
    sources = pd.MultiIndex.from_arrays(
        [twera["source_layer"].astype(int), twera["source_feature"].astype(int)]
    ).unique()
    keys = pd.MultiIndex.from_arrays(
        [weightlens["layer"].astype(int), weightlens["feature"].astype(int)]
    )
    rows = weightlens[keys.isin(sources)]
    return {
        (int(r["layer"]), int(r["feature"])): [str(t) for t in _list(r["validated_tokens"])][:limit]
        for r in rows[["layer", "feature", "validated_tokens"]].to_dict("records")
    }


def _rule_score_rows(rows: pd.DataFrame | None) -> list[dict[str, Any]]:
    """The feature's rule-rated scores (``rater`` = ``rule``), one row per rule variant in the
    comparison's order, each metric with the reason when it is missing."""
    if rows is None or rows.empty or "rater" not in rows.columns:
        return []
    rows = rows[rows["rater"] == "rule"]
    out = []
    rank = {name: i for i, name in enumerate(summ.RULE_METHODS)}
    variants = sorted({str(v) for v in rows["variant"]}, key=lambda v: (rank.get(v, len(rank)), v))
    for variant in variants:
        row = rows[rows["variant"] == variant].iloc[0].to_dict()
        out.append(
            {
                "variant": variant,
                "cells": [
                    {"value": _float(row.get(m)), "reason": _text(row.get(f"{m}_reason"))}
                    for m in summ.RULE_METRICS
                ],
            }
        )
    return out


def _twera_view(
    rows: pd.DataFrame | None,
    weightlens: Mapping[str, Any] | None,
    validated_tokens: Mapping[tuple[int, int], list[str]],
    page_exists: Collection[tuple[int, int]],
    link_prefix: str,
) -> list[dict[str, Any]]:
    """The feature's TWERA sources, largest |TWERA| first, each marked when WeightLens's
    weight-only ranking also keeps it as an upstream feature."""
    if rows is None or rows.empty:
        return []
    by_weights = {u["key"] for u in (weightlens or {}).get("upstream", [])}
    view = []
    for row in rows.sort_values("rank").to_dict("records"):
        key = (int(row["source_layer"]), int(row["source_feature"]))
        view.append(
            {
                "label": f"L{key[0]}#{key[1]}",
                "href": link_prefix + f"layer{key[0]}/feature{key[1]:06d}.html"
                if key in page_exists
                else None,
                "twera": _float(row.get("twera")),
                "coactivation": _float(row.get("coactivation")),
                "virtual_weight": _float(row.get("virtual_weight")),
                "n_coactive": _opt_int(row.get("n_coactive")),
                "in_weightlens": key in by_weights,
                "tokens": validated_tokens.get(key, []),
            }
        )
    return view


def _flags_text(flags: Sequence[str]) -> str:
    return "flags: " + ", ".join(flags) if flags else "no quality flag raised"


def _description_view(
    variants: Sequence[str],
    explanations: pd.DataFrame | None,
    evaluation: pd.DataFrame | None,
    weightlens: Mapping[str, Any] | None,
    flags: Mapping[str, Sequence[str]] | None = None,
) -> list[dict[str, Any]]:
    """The final description of every variant, or why there is none; ``flags``: variant -> the
    quality flags of its final description (``summary.description_flags``), shown in its status
    instead of a plain parse status."""
    final: dict[str, Mapping[str, Any]] = {}
    if explanations is not None and len(explanations):
        rows = explanations[explanations["cluster"].astype(int) < 0]
        if "is_final" in rows.columns:
            rows = rows[rows["is_final"].astype(bool)]
        final = {str(r["variant"]): r for r in rows.to_dict("records")}
    evaluated: dict[str, Mapping[str, Any]] = {}
    if evaluation is not None and len(evaluation):
        evaluated = {str(r["variant"]): r for r in evaluation.to_dict("records")}
    out = []
    for variant in variants:
        row = final.get(variant)
        description = _text(row.get("description")) if row is not None else None
        status = None
        own_flags = list((flags or {}).get(variant, ()))
        if row is not None:
            parse_status = _text(row.get("parse_status"))
            step = _text(row.get("step"))
            error = _text(row.get("error"))
            quality = _flags_text(own_flags) if description else None
            shown = parse_status if parse_status not in (None, "ok") else None
            parts = [p for p in (step, shown, quality, error) if p]
            status = ", ".join(parts) if parts else None
        if description is None and variant in evaluated:
            description = _text(evaluated[variant].get("description"))
            if description is not None:
                status = "from the evaluation table"
        if description is None and variant == summ.LLM_FREE_VARIANT and weightlens is not None:
            description = weightlens.get("description")
            if description is not None:
                status = "WeightLens table"
        if description is None and status is None:
            status = "no explanation row for this feature"
        out.append(
            {"variant": variant, "description": description, "status": status, "flags": own_flags}
        )
    return out


_METRIC_SHORT = {
    "clarity": "C",
    "responsiveness": "R",
    "purity": "P",
    "faithfulness": "F",
    "weightlens_auroc": "AUROC",
    "weightlens_precision": "prec",
}


def _scores_by_feature(
    summary: pd.DataFrame,
) -> dict[tuple[int, int], dict[str, dict[str, tuple[float | None, str | None]]]]:
    """(layer, feature) -> variant -> metric -> (value, reason)."""
    out: dict[tuple[int, int], dict[str, dict[str, tuple[float | None, str | None]]]] = {}
    for layer, feature, variant, metric, value, reason in zip(
        summary["layer"].tolist(),
        summary["feature"].tolist(),
        summary["variant"].tolist(),
        summary["metric"].tolist(),
        summary["value"].tolist(),
        summary["reason"].tolist(),
        strict=True,
    ):
        cell = (_float(value), _text(reason))
        out.setdefault((int(layer), int(feature)), {}).setdefault(str(variant), {})[str(metric)] = (
            cell
        )
    return out


def _score_rows(
    scores: Mapping[str, Mapping[str, tuple[float | None, str | None]]],
    variants: Sequence[str],
    evaluation: pd.DataFrame | None,
) -> list[dict[str, Any]]:
    """One row per variant: every metric as (value, reason), plus the rating counts."""
    counts: dict[str, Mapping[str, Any]] = {}
    if evaluation is not None and len(evaluation):
        counts = {str(r["variant"]): r for r in evaluation.to_dict("records")}
    rows = []
    names = summ.order_variants(set(variants) | set(scores))
    for variant in names:
        cells = []
        for metric in summ.METRICS:
            if metric in scores.get(variant, {}):
                value, reason = scores[variant][metric]
            elif metric in summ.FADE_METRICS:
                value, reason = None, "not evaluated"
            else:
                value, reason = None, None  # LLM-free scores exist for one variant only
            cells.append({"metric": metric, "value": value, "reason": reason})
        details = None
        record = counts.get(variant)
        if record is not None:
            details = (
                f"rated {_opt_int(record.get('n_rated')) or 0} natural samples "
                f"(0: {_opt_int(record.get('n_rated_0')) or 0}, "
                f"1: {_opt_int(record.get('n_rated_1')) or 0}, "
                f"2: {_opt_int(record.get('n_rated_2')) or 0}); "
                f"{_opt_int(record.get('n_synthetic_scored')) or 0} synthetic texts scored"
            )
        rows.append({"variant": variant, "cells": cells, "details": details})
    return rows


def _compact_scores(
    scores: Mapping[str, Mapping[str, tuple[float | None, str | None]]], variant: str
) -> list[dict[str, Any]]:
    """The index's per-variant cell: FADE metrics as short labels with values / reasons."""
    cells = []
    for metric in summ.FADE_METRICS:
        value, reason = scores.get(variant, {}).get(metric, (None, "not evaluated"))
        cells.append(
            {"short": _METRIC_SHORT[metric], "metric": metric, "value": value, "reason": reason}
        )
    return cells


def _cluster_views(
    clusters: pd.DataFrame | None,
    explanations: pd.DataFrame | None,
    samples: pd.DataFrame | None,
    contributions: pd.DataFrame | None,
    corpus: _Corpus,
    validated_ids: Collection[int],
    *,
    n_examples: int,
    before: int,
) -> list[dict[str, Any]]:
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
                    "description": _text(row.get("description")),
                    "status": _text(row.get("parse_status")),
                    "error": _text(row.get("error")),
                }
            )
    order = sorted(
        clusters.to_dict("records"), key=lambda r: (int(r["cluster"]) < 0, int(r["cluster"]))
    )
    views = []
    for row in order:
        kinds = [str(k) for k in _list(row.get("defining_kinds"))]
        labels = [str(x) for x in _list(row.get("defining_labels"))]
        layers = _list(row.get("defining_layers"))
        indices = _list(row.get("defining_indices"))
        deltas = _list(row.get("defining_deltas"))
        frequency = _list(row.get("defining_frequency"))
        lift = _list(row.get("defining_lift"))
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
                    "frequency": _float(frequency[i]) if i < len(frequency) else None,
                    "lift": _float(lift[i]) if i < len(lift) else None,
                }
            )
        examples = []
        for sample in [int(s) for s in _list(row.get("example_samples"))][:n_examples]:
            info = by_sample.get(sample)
            if info is None:
                examples.append(_note_view(f"sample {sample}", "sample not in the samples table"))
                continue
            target = int(info["target_position"])
            triggers = _trigger_positions(defining, target, contributions_of.get(sample))
            examples.append(
                corpus.view(
                    int(info["context"]),
                    target,
                    _float(info.get("activation")),
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
                "status": _text(row.get("status")),
                "method": _text(row.get("method")),
                "n_samples": _opt_int(row.get("n_samples")) or 0,
                "n_feature_samples": _opt_int(row.get("n_feature_samples")) or 0,
                "share": _float(row.get("share")),
                "mean_activation": _float(row.get("mean_activation")),
                "patterns": [str(p) for p in _list(row.get("trigger_patterns"))],
                "defining": defining_rows,
                "exact_triggers": bool(contributions_of),
                "promoted": _counted_tokens(row, "promoted"),
                "suppressed": _counted_tokens(row, "suppressed"),
                "next": _counted_tokens(row, "next"),
                "n_logit_samples": _opt_int(row.get("output_n_logit_samples")) or 0,
                "mean_logit": _float(row.get("output_mean_logit")),
                "descriptions": _by_variant(described.get(cluster, [])),
                "examples": examples,
            }
        )
    return views


def _by_variant(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    order = summ.order_variants(item["variant"] for item in items)
    return sorted(items, key=lambda item: order.index(item["variant"]))


def _counted_tokens(row: Mapping[str, Any], direction: str) -> list[dict[str, Any]]:
    names = [str(t) for t in _list(row.get(f"output_{direction}_tokens"))]
    counts = _list(row.get(f"output_{direction}_counts"))
    return [
        {"text": name, "count": _opt_int(counts[i]) if i < len(counts) else None}
        for i, name in enumerate(names)
    ]


# --- rendering -----------------------------------------------------------------------------------


def _format_number(value: Any, digits: int = 2) -> str:
    number = _float(value)
    return _DASH if number is None else f"{number:.{digits}f}"


def _format_general(value: Any, digits: int = 3) -> str:
    number = _float(value)
    return _DASH if number is None else f"{number:.{digits}g}"


def _format_percent(value: Any) -> str:
    number = _float(value)
    return _DASH if number is None else f"{100 * number:.1f}%"


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("circuit_insights.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["num"] = _format_number
    env.filters["gen"] = _format_general
    env.filters["pct"] = _format_percent
    return env


def _write_page(path: Path, template: str, context: Mapping[str, Any]) -> Path:
    html = _environment().get_template(template).render(**context)
    with atomic_path(path) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return path


@dataclass
class _ModelPlan:
    frames: ModelFrames
    slug: str
    chosen: dict[int, list[int]] = field(default_factory=dict)
    hidden: dict[int, int] = field(default_factory=dict)
    #: Every clusters row of the model (the coverage table), not only the features with a page.
    all_clusters: pd.DataFrame | None = None
    #: (layer, feature) -> variant -> quality flags of the final description.
    flags: dict[tuple[int, int], dict[str, tuple[str, ...]]] = field(default_factory=dict)
    #: (layer, feature) -> the WeightLens validated token strings of each TWERA source feature.
    validated_tokens: dict[tuple[int, int], list[str]] = field(default_factory=dict)


def _as_frames(source: Any) -> list[ModelFrames]:
    if isinstance(source, ModelFrames):
        return [source]
    if isinstance(source, Mapping):
        out = []
        for name, frames in source.items():
            if not isinstance(frames, ModelFrames):
                raise InputError(f"report source {name!r}: expected ModelFrames")
            out.append(frames if frames.model else replace(frames, model=str(name)))
        return out
    if isinstance(source, Sequence) and all(isinstance(f, ModelFrames) for f in source):
        return list(source)
    raise InputError(
        "report source: give a results folder, a ModelFrames, or a list / mapping of them"
    )


def _tokenizer_for(tokenizer: object | Mapping[str, object] | None, model: str) -> object | None:
    if isinstance(tokenizer, Mapping):
        return tokenizer.get(model)
    return tokenizer


def _model_variants(frames: ModelFrames) -> list[str]:
    variants: set[str] = set()
    for table in (frames.explanations, frames.evaluation):
        if table is not None and len(table) and "variant" in table.columns:
            variants.update(str(v) for v in table["variant"].unique())
    return summ.order_variants(variants)


def _feature_page(
    plan: _ModelPlan,
    layer: int,
    feature: int,
    *,
    tables: Mapping[str, dict[tuple[int, int], pd.DataFrame]],
    scores: Mapping[str, Mapping[str, tuple[float | None, str | None]]],
    variants: Sequence[str],
    corpus: _Corpus,
    display: TokenDisplay | None,
    page_exists: Collection[tuple[int, int]],
    n_top: int,
    n_examples: int,
    before: int,
) -> dict[str, Any]:
    key = (layer, feature)
    wl_rows = tables["weightlens"].get(key)
    wl_row = wl_rows.iloc[0].to_dict() if wl_rows is not None and len(wl_rows) else None
    wl = _weightlens_view(wl_row, display, page_exists, "../")
    twera = _twera_view(tables["twera"].get(key), wl, plan.validated_tokens, page_exists, "../")
    evaluation = tables["evaluation"].get(key)
    explanations = tables["explanations"].get(key)
    samples = tables["samples"].get(key)
    validated_ids = wl["validated_ids"] if wl else []
    top = []
    if samples is not None and len(samples) and "kind" in samples.columns:
        rows = samples[samples["kind"] == "top"].sort_values("rank").head(n_top)
        for r in rows.to_dict("records"):
            top.append(
                corpus.view(
                    int(r["context"]),
                    int(r["target_position"]),
                    _float(r.get("activation")),
                    before=before,
                    after=8,
                    validated=validated_ids,
                    label=f"top {int(r['rank']) + 1}",
                )
            )
    clusters_rows = tables["clusters"].get(key)
    clusters = _cluster_views(
        clusters_rows,
        explanations,
        samples,
        tables["contributions"].get(key),
        corpus,
        validated_ids,
        n_examples=n_examples,
        before=before,
    )
    if plan.frames.clusters is None:
        clusters_note: str | None = (
            "No clustering results for this model (the CircuitLens stages did not run)."
        )
    elif not clusters:
        clusters_note = "No clusters for this feature (it was not clustered)."
    else:
        statuses = {c["status"] for c in clusters if c["status"]}
        clusters_note = (
            f"Clustering status: {', '.join(sorted(statuses))}."
            if statuses - {"clustered"}
            else None
        )
    descriptions = _description_view(
        summ.order_variants(set(variants) | ({summ.LLM_FREE_VARIANT} if wl else set())),
        explanations,
        evaluation,
        wl,
        plan.flags.get(key, {}),
    )
    return {
        "root": "../../",
        "model": plan.frames.model,
        "model_slug": plan.slug,
        "layer": layer,
        "feature": feature,
        "title": f"{plan.frames.model} · layer {layer} · feature {feature}",
        "weightlens": wl,
        "twera": twera,
        "twera_ran": plan.frames.twera is not None,
        "descriptions": descriptions,
        "score_rows": _score_rows(scores, variants, evaluation),
        "rule_score_rows": _rule_score_rows(tables["rule_evaluation"].get(key)),
        "rule_metrics": list(summ.RULE_METRICS),
        "metrics": list(summ.METRICS),
        "clusters": clusters,
        "clusters_note": clusters_note,
        "top_contexts": top,
        "corpus_available": corpus.available,
        "samples_available": samples is not None and len(samples) > 0,
    }


def _index_rows(
    plan: _ModelPlan,
    layer: int,
    tables: Mapping[str, dict[tuple[int, int], pd.DataFrame]],
    scores: Mapping[tuple[int, int], Mapping[str, Mapping[str, tuple[float | None, str | None]]]],
    variants: Sequence[str],
) -> list[dict[str, Any]]:
    rows = []
    for feature in plan.chosen.get(layer, []):
        key = (layer, feature)
        wl_rows = tables["weightlens"].get(key)
        wl = wl_rows.iloc[0] if wl_rows is not None and len(wl_rows) else None
        feature_scores = scores.get(key, {})
        llm_free = feature_scores.get(summ.LLM_FREE_VARIANT, {})
        rows.append(
            {
                "feature": feature,
                "href": feature_page_path(plan.slug, layer, feature),
                "classification": _text(wl["classification"]) if wl is not None else None,
                "is_token_based": bool(wl["is_token_based"]) if wl is not None else False,
                "description": _text(wl["description"]) if wl is not None else None,
                "auroc": llm_free.get("weightlens_auroc", (None, "no WeightLens row")),
                "precision": llm_free.get("weightlens_precision", (None, "no WeightLens row")),
                "variants": {v: _compact_scores(feature_scores, v) for v in variants},
            }
        )
    return rows


def build_report(
    source: str
    | os.PathLike[str]
    | ModelFrames
    | Sequence[ModelFrames]
    | Mapping[str, ModelFrames],
    out_dir: str | os.PathLike[str],
    tokenizer: object | Mapping[str, object] | None = None,
    max_features: int | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    n_top_contexts: int = 8,
    n_cluster_examples: int = 5,
    context_tokens: int = 32,
    stage_dirs: Mapping[str, Sequence[str]] | None = None,
    title: str = "circuit-insights report",
    files: Collection[str | os.PathLike[str]] | None = None,
) -> Path:
    """Write the HTML report of a run into ``out_dir``; returns the path of ``index.html``.

    ``source``: a results folder (``results/{model}/layer{L}/{stage}/{shard}.parquet``; every
    model found, see :func:`discover_models` and :data:`STAGE_DIRS`) or explicit
    :class:`ModelFrames`. ``files``: with a results folder, read only these files (the report
    rule's declared inputs) and only the models they belong to. ``tokenizer``: one for every model, or model -> tokenizer (display
    only; without one tokens show as ``<id>`` or the tables' stored strings). ``max_features``:
    pages for at most this many features per (model, layer), the lowest ids (the summary still
    covers all). ``context_tokens``: tokens shown before a target.
    """
    out = Path(out_dir)
    from_disk = not isinstance(source, (ModelFrames, Mapping)) and not (
        isinstance(source, Sequence) and not isinstance(source, (str, bytes))
    )
    plans: list[_ModelPlan] = []
    used_slugs: set[str] = set()

    def new_plan(frames: ModelFrames) -> _ModelPlan:
        slug = _slug(frames.model)
        base, n = slug, 2
        while slug in used_slugs or slug in ("index.html",):
            slug, n = f"{base}-{n}", n + 1
        used_slugs.add(slug)
        return _ModelPlan(frames=frames, slug=slug)

    if from_disk:
        results = Path(source)  # type: ignore[arg-type]
        # files: the workflow's declared inputs; only these are read (no stale folder shows up)
        allowed = None if files is None else {Path(f).resolve() for f in files}
        models = discover_models(results)
        if allowed is not None:
            models = [
                m for m in models if any((results / m).resolve() in f.parents for f in allowed)
            ]
        for model in models:
            light = load_model_frames(
                results,
                model,
                stages=("weightlens", "evaluation", "explanations", "rule_evaluation"),
                stage_dirs=stage_dirs,
                files=allowed,
                tokenizer=_tokenizer_for(tokenizer, model),
            )
            keys = _feature_keys([light.weightlens, light.evaluation, light.explanations])
            if not keys:
                clusters = read_stage(
                    results, model, "clusters", stage_dirs=stage_dirs, files=allowed
                )
                keys = _feature_keys([clusters])
            explained = _feature_keys([light.evaluation, _llm_rows(light.explanations)])
            chosen, hidden = _choose_features(keys, max_features, first=explained)
            heavy = load_model_frames(
                results,
                model,
                features=chosen,
                stages=("clusters", "samples", "contributions", "twera"),
                stage_dirs=stage_dirs,
                files=allowed,
            )
            light.clusters, light.samples, light.contributions, light.twera = (
                heavy.clusters,
                heavy.samples,
                heavy.contributions,
                heavy.twera,
            )
            plan = new_plan(light)
            plan.chosen, plan.hidden = chosen, hidden
            plan.all_clusters = read_stage(
                results, model, "clusters", columns=_COVERAGE_COLUMNS, stage_dirs=stage_dirs
            )
            plans.append(plan)
        source_label = str(results)
    else:
        for frames in _as_frames(source):
            if frames.tokenizer is None and tokenizer is not None:
                frames = replace(frames, tokenizer=_tokenizer_for(tokenizer, frames.model))
            plan = new_plan(frames)
            keys = _feature_keys(
                [frames.weightlens, frames.evaluation, frames.explanations, frames.clusters]
            )
            if frames.samples is not None and "layer" in frames.samples.columns:
                for layer, features in _feature_keys([frames.samples]).items():
                    keys.setdefault(layer, set()).update(features)
            explained = _feature_keys([frames.evaluation, _llm_rows(frames.explanations)])
            plan.chosen, plan.hidden = _choose_features(keys, max_features, first=explained)
            plan.all_clusters = frames.clusters
            plans.append(plan)
        source_label = "frames given in memory"

    models_view = []
    for plan in plans:
        models_view.append(
            _render_model(
                plan,
                out,
                n_boot=n_boot,
                seed=seed,
                n_top=n_top_contexts,
                n_examples=n_cluster_examples,
                before=context_tokens,
            )
        )
    return _write_page(
        out / "index.html",
        "index.html",
        {"root": "", "title": title, "source": source_label, "models": models_view},
    )


def _descriptions_pages(
    plan: _ModelPlan, out: Path, page_exists: Collection[tuple[int, int]]
) -> dict[int, dict[str, Any]]:
    """One page per layer with the final description of every explained feature by every
    variant (the feature pages may cover fewer features: ``max_features``); layer -> link and
    counts for the index."""
    explanations = plan.frames.explanations
    if explanations is None or explanations.empty:
        return {}
    variants = summ.order_variants(str(v) for v in explanations["variant"].unique())
    by_key = _grouped(explanations)
    links: dict[int, dict[str, Any]] = {}
    for layer in sorted({layer for layer, _ in by_key}):
        rows: list[dict[str, Any]] = []
        for feature in sorted(f for lay, f in by_key if lay == layer):
            cells = _description_view(
                variants, by_key[(layer, feature)], None, None, plan.flags.get((layer, feature))
            )
            rows.append(
                {
                    "feature": feature,
                    "href": f"feature{feature:06d}.html"
                    if (layer, feature) in page_exists
                    else None,
                    "cells": cells,
                }
            )
        described = {
            v: sum(1 for row in rows if row["cells"][i]["description"])
            for i, v in enumerate(variants)
        }
        path = descriptions_page_path(plan.slug, layer)
        _write_page(
            out / path,
            "descriptions.html",
            {
                "title": f"{plan.frames.model} · layer {layer} · descriptions",
                "root": "../../",
                "model": plan.frames.model,
                "model_slug": plan.slug,
                "layer": layer,
                "variants": variants,
                "described": described,
                "rows": rows,
            },
        )
        links[layer] = {"href": path, "n_features": len(rows), "n_variants": len(variants)}
    return links


def _final_flags(
    explanations: pd.DataFrame | None,
) -> dict[tuple[int, int], dict[str, tuple[str, ...]]]:
    """(layer, feature) -> variant -> the quality flags of its final description, judged over
    every final description of the model (repeats count across all its features)."""
    if explanations is None or explanations.empty:
        return {}
    final = explanations[explanations["cluster"].astype(int) < 0]
    if "is_final" in final.columns:
        final = final[final["is_final"].astype(bool)]
    flags = summ.description_flags(final)
    out: dict[tuple[int, int], dict[str, tuple[str, ...]]] = {}
    for layer, feature, variant, own in zip(
        final["layer"].astype(int),
        final["feature"].astype(int),
        final["variant"].astype(str),
        flags,
        strict=True,
    ):
        out.setdefault((int(layer), int(feature)), {})[variant] = tuple(own)
    return out


def _llm_names(frame: pd.DataFrame | None) -> list[str]:
    if frame is None or frame.empty or "llm_model" not in frame.columns:
        return []
    names = {str(v) for v in frame["llm_model"].dropna().unique() if str(v).strip()}
    return sorted(names - {"rule"})


def _llm_view(frames: ModelFrames) -> dict[str, Any]:
    """The explainer (LLM-written explanation rows) and rater (evaluation rows) models, and
    whether either is the embedded SmolLM2-135M."""
    explainers = _llm_names(_llm_rows(frames.explanations))
    raters = _llm_names(frames.evaluation)
    return {
        "explainers": explainers,
        "raters": raters,
        "small": [
            n for n in sorted(set(explainers) | set(raters)) if summ.is_small_embedded_llm(n)
        ],
    }


def _coverage_view(plan: _ModelPlan) -> Any:
    """The cluster-coverage table of a model (None without clusters)."""
    clusters = plan.all_clusters
    if clusters is None or clusters.empty:
        return None
    coverage = summ.cluster_coverage(clusters)
    weightlens = plan.frames.weightlens
    n_features: dict[int, int] = {}
    if weightlens is not None and len(weightlens):
        n_features = {
            int(layer): int(part["feature"].nunique())
            for layer, part in weightlens.groupby("layer")
        }
    return summ.coverage_html(coverage, n_features)


def _render_model(
    plan: _ModelPlan,
    out: Path,
    *,
    n_boot: int,
    seed: int,
    n_top: int,
    n_examples: int,
    before: int,
) -> dict[str, Any]:
    frames = plan.frames
    summary_dir = out / plan.slug / "summary"
    written = summ.write_summary(
        frames.evaluation,
        frames.weightlens,
        summary_dir,
        model=frames.model,
        n_boot=n_boot,
        seed=seed,
        rule_evaluation_frames=frames.rule_evaluation,
    )
    summary = pd.read_parquet(written["summary"])
    stats = pd.read_parquet(written["metric_table"])
    shares = pd.read_parquet(written["token_based_shares"])
    missing = summ.missing_table(summary)
    variants = _model_variants(frames)
    plan.flags = _final_flags(frames.explanations)
    scores = _scores_by_feature(summary)
    display = TokenDisplay(frames.tokenizer) if frames.tokenizer is not None else None
    corpus = _Corpus(frames.context_ids, frames.tokens, display or TokenDisplay(None))
    page_exists = {(layer, f) for layer, features in plan.chosen.items() for f in features}
    tables = {
        "weightlens": _grouped(frames.weightlens, keep=page_exists),
        "evaluation": _grouped(frames.evaluation, keep=page_exists),
        "explanations": _grouped(frames.explanations, keep=page_exists),
        "clusters": _grouped(frames.clusters, keep=page_exists),
        "samples": _grouped(frames.samples, keep=page_exists),
        "contributions": _grouped(frames.contributions, "feature_layer", keep=page_exists),
        "twera": _grouped(frames.twera, keep=page_exists),
        "rule_evaluation": _grouped(frames.rule_evaluation, keep=page_exists),
    }
    plan.validated_tokens = _source_tokens(frames.weightlens, frames.twera)
    for layer, features in plan.chosen.items():
        for feature in features:
            context = _feature_page(
                plan,
                layer,
                feature,
                tables=tables,
                scores=scores.get((layer, feature), {}),
                variants=variants,
                corpus=corpus,
                display=display,
                page_exists=page_exists,
                n_top=n_top,
                n_examples=n_examples,
                before=before,
            )
            _write_page(out / feature_page_path(plan.slug, layer, feature), "feature.html", context)
    descriptions = _descriptions_pages(plan, out, page_exists)
    prefix = f"{plan.slug}/summary/"
    coverage = _coverage_view(plan)
    counts = summ.flag_counts(frames.explanations) if frames.explanations is not None else None
    return {
        "name": frames.model,
        "slug": plan.slug,
        "llm": _llm_view(frames),
        "coverage": coverage,
        "flag_counts": summ.flag_counts_html(counts)
        if counts is not None and len(counts)
        else None,
        "min_ci": summ.MIN_FEATURES_FOR_CI,
        "metric_grid": summ.metric_grid_html(stats),
        "rule_comparison": summ.rule_comparison_html(pd.read_parquet(written["rule_comparison"]))
        if "rule_comparison" in written
        else None,
        "claims": claims.claims_html(pd.read_parquet(written["paper_claims"]))
        if "paper_claims" in written
        else None,
        "claims_note": claims.CLAIMS_NOTE,
        "shares": summ.shares_html(shares) if len(shares) else None,
        "missing": summ.missing_html(missing) if len(missing) else None,
        "plots": [
            {"metric": name.removeprefix("plot_"), "src": prefix + "plots/" + path.name}
            for name, path in written.items()
            if name.startswith("plot_")
        ],
        "files": [
            {"name": path.name, "href": prefix + path.name}
            for name, path in written.items()
            if not name.startswith("plot_")
        ],
        "variants": variants,
        "layers": [
            {
                "layer": layer,
                "rows": _index_rows(plan, layer, tables, scores, variants),
                "hidden": plan.hidden.get(layer, 0),
                "descriptions": descriptions.get(layer),
            }
            for layer in sorted(plan.chosen)
        ],
        "n_features": sum(len(v) for v in plan.chosen.values()),
        "n_hidden": sum(plan.hidden.values()),
        "has_corpus": corpus.available,
    }
