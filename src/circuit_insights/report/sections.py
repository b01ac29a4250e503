"""The sections of a feature page as view models: WeightLens (tokens, upstream features,
its LLM-free score), TWERA, the descriptions of every variant with their quality flags, and the
scores (FADE, LLM-free, rule-rated) with the reason of every missing value."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import pandas as pd

from circuit_insights.core.tokens import TokenDisplay
from circuit_insights.report.delphi_table import DELPHI_HEADLINE, RATERS
from circuit_insights.report.paper import (
    FADE_METRICS,
    LLM_FREE_VARIANT,
    RULE_METHODS,
    RULE_METRICS,
    order_variants,
)
from circuit_insights.report.scores import METRICS
from circuit_insights.report.values import as_float, as_list, opt_int, text

#: variant -> metric -> (value, reason): the summary's scores of one feature.
FeatureScores = Mapping[str, Mapping[str, tuple[float | None, str | None]]]


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


def weightlens_view(
    row: Mapping[str, Any] | None,
    display: TokenDisplay | None,
    page_exists: Collection[tuple[int, int]],
    link_prefix: str,
) -> dict[str, Any] | None:
    if row is None:
        return None
    validated = _token_items(
        as_list(row.get("validated_token_ids")),
        as_list(row.get("validated_tokens")),
        display,
        activation=as_list(row.get("validated_activations")),
        source=as_list(row.get("validated_sources")),
    )
    candidates = _token_items(
        as_list(row.get("candidate_token_ids")),
        as_list(row.get("candidate_tokens")),
        display,
        z=as_list(row.get("candidate_z")),
        activation=as_list(row.get("candidate_activations")),
        source=as_list(row.get("candidate_sources")),
    )
    validated_ids = {item["id"] for item in validated}
    for item in candidates:
        item["validated"] = item["id"] in validated_ids
    promoted = _token_items(
        as_list(row.get("promoted_token_ids")),
        as_list(row.get("promoted_tokens")),
        display,
        z=as_list(row.get("promoted_z")),
    )
    suppressed = _token_items(
        as_list(row.get("suppressed_token_ids")),
        as_list(row.get("suppressed_tokens")),
        display,
        z=as_list(row.get("suppressed_z")),
    )
    upstream = []
    layers = as_list(row.get("upstream_layers"))
    features = as_list(row.get("upstream_features"))
    inherited = as_list(row.get("upstream_inherited_token_ids"))
    has_result = as_list(row.get("upstream_has_result"))
    z = as_list(row.get("upstream_z"))
    relative = as_list(row.get("upstream_relative_contributions"))
    contribution = as_list(row.get("upstream_contributions"))
    for i, (layer, feature) in enumerate(zip(layers, features, strict=False)):
        key = (int(layer), int(feature))
        ids = [int(t) for t in as_list(inherited[i])] if i < len(inherited) else []
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
        "description": text(row.get("description")),
        "classification": text(row.get("classification")) or "unknown",
        "is_token_based": bool(row.get("is_token_based")),
        "classification_basis": text(row.get("classification_basis")),
        "n_top_contexts": opt_int(row.get("n_top_contexts")),
        "n_top_contexts_explained": opt_int(row.get("n_top_contexts_explained")),
        "top_context_share": as_float(row.get("top_context_share")),
        "min_token_share": as_float(row.get("min_token_share")),
        "preset": text(row.get("preset")),
        "projection": text(row.get("projection")),
        "t_tok": as_float(row.get("t_tok")),
        "t_up": as_float(row.get("t_up")),
        "validated": validated,
        "validated_ids": sorted(validated_ids),
        "candidates": candidates,
        "n_candidates_total": opt_int(row.get("n_candidate_tokens_total")),
        "promoted": promoted,
        "n_promoted_total": opt_int(row.get("n_promoted_total")),
        "suppressed": suppressed,
        "n_suppressed_total": opt_int(row.get("n_suppressed_total")),
        "upstream": upstream,
        "n_upstream_total": opt_int(row.get("n_upstream_total")),
        "score": {
            "auroc": as_float(row.get("auroc")),
            "precision": as_float(row.get("precision")),
            "recall": as_float(row.get("recall")),
            "n_positive": opt_int(row.get("n_positive")),
            "n_predicted": opt_int(row.get("n_predicted")),
            "n_true_positive": opt_int(row.get("n_true_positive")),
            "n_scored_positions": opt_int(row.get("n_scored_positions")),
            "reason": text(row.get("score_reason")),
        },
    }


def source_tokens(
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
        (int(r["layer"]), int(r["feature"])): [str(t) for t in as_list(r["validated_tokens"])][
            :limit
        ]
        for r in rows[["layer", "feature", "validated_tokens"]].to_dict("records")
    }


def rule_score_rows(rows: pd.DataFrame | None) -> list[dict[str, Any]]:
    """The feature's rule-rated scores (``rater`` = ``rule``), one row per rule variant in the
    comparison's order, each metric with the reason when it is missing."""
    if rows is None or rows.empty or "rater" not in rows.columns:
        return []
    rows = rows[rows["rater"] == "rule"]
    out = []
    rank = {name: i for i, name in enumerate(RULE_METHODS)}
    variants = sorted({str(v) for v in rows["variant"]}, key=lambda v: (rank.get(v, len(rank)), v))
    for variant in variants:
        row = rows[rows["variant"] == variant].iloc[0].to_dict()
        out.append(
            {
                "variant": variant,
                "cells": [
                    {"value": as_float(row.get(m)), "reason": text(row.get(f"{m}_reason"))}
                    for m in RULE_METRICS
                ],
            }
        )
    return out


def delphi_score_rows(rows: pd.DataFrame | None) -> list[dict[str, Any]]:
    """The feature's delphi scores (``group`` all): one row per (rater, variant), exact rule
    scores first, each score's headline figure (detection and fuzzing balanced accuracy,
    simulation correlation) with its reason when missing."""
    if rows is None or rows.empty or "group" not in rows.columns:
        return []
    rows = rows[rows["group"] == "all"]
    out = []
    raters = {name: i for i, name in enumerate(RATERS)}
    keys = sorted(
        {(str(r), str(v)) for r, v in zip(rows["rater"], rows["variant"], strict=True)},
        key=lambda k: (raters.get(k[0], len(raters)), k[1]),
    )
    for rater, variant in keys:
        part = rows[(rows["rater"] == rater) & (rows["variant"] == variant)]
        cells = []
        for score, figure in DELPHI_HEADLINE.items():
            row = part[part["score"] == score]
            record = row.iloc[0].to_dict() if len(row) else {}
            cells.append(
                {
                    "value": as_float(record.get(figure)),
                    "reason": text(record.get("reason")) if record else "not scored",
                }
            )
        out.append({"rater": rater, "variant": variant, "cells": cells})
    return out


def twera_view(
    rows: pd.DataFrame | None,
    *,
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
                "twera": as_float(row.get("twera")),
                "coactivation": as_float(row.get("coactivation")),
                "virtual_weight": as_float(row.get("virtual_weight")),
                "n_coactive": opt_int(row.get("n_coactive")),
                "in_weightlens": key in by_weights,
                "tokens": validated_tokens.get(key, []),
            }
        )
    return view


def _flags_text(flags: Sequence[str]) -> str:
    return "flags: " + ", ".join(flags) if flags else "no quality flag raised"


def description_view(
    variants: Sequence[str],
    *,
    explanations: pd.DataFrame | None,
    evaluation: pd.DataFrame | None,
    weightlens: Mapping[str, Any] | None,
    flags: Mapping[str, Sequence[str]] | None = None,
) -> list[dict[str, Any]]:
    """The final description of every variant, or why there is none; ``flags``: variant -> the
    quality flags of its final description (``quality.description_flags``), shown in its status
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
        description = text(row.get("description")) if row is not None else None
        status = None
        own_flags = list((flags or {}).get(variant, ()))
        if row is not None:
            parse_status = text(row.get("parse_status"))
            step = text(row.get("step"))
            error = text(row.get("error"))
            quality = _flags_text(own_flags) if description else None
            shown = parse_status if parse_status not in (None, "ok") else None
            parts = [p for p in (step, shown, quality, error) if p]
            status = ", ".join(parts) if parts else None
        if description is None and variant in evaluated:
            description = text(evaluated[variant].get("description"))
            if description is not None:
                status = "from the evaluation table"
        if description is None and variant == LLM_FREE_VARIANT and weightlens is not None:
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


def scores_by_feature(
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
        cell = (as_float(value), text(reason))
        out.setdefault((int(layer), int(feature)), {}).setdefault(str(variant), {})[str(metric)] = (
            cell
        )
    return out


def score_rows(
    scores: Mapping[str, Mapping[str, tuple[float | None, str | None]]],
    variants: Sequence[str],
    evaluation: pd.DataFrame | None,
) -> list[dict[str, Any]]:
    """One row per variant: every metric as (value, reason), plus the rating counts."""
    counts: dict[str, Mapping[str, Any]] = {}
    if evaluation is not None and len(evaluation):
        counts = {str(r["variant"]): r for r in evaluation.to_dict("records")}
    rows = []
    names = order_variants(set(variants) | set(scores))
    for variant in names:
        cells = []
        for metric in METRICS:
            if metric in scores.get(variant, {}):
                value, reason = scores[variant][metric]
            elif metric in FADE_METRICS:
                value, reason = None, "not evaluated"
            else:
                value, reason = None, None  # LLM-free scores exist for one variant only
            cells.append({"metric": metric, "value": value, "reason": reason})
        details = None
        record = counts.get(variant)
        if record is not None:
            details = (
                f"rated {opt_int(record.get('n_rated')) or 0} natural samples "
                f"(0: {opt_int(record.get('n_rated_0')) or 0}, "
                f"1: {opt_int(record.get('n_rated_1')) or 0}, "
                f"2: {opt_int(record.get('n_rated_2')) or 0}); "
                f"{opt_int(record.get('n_synthetic_scored')) or 0} synthetic texts scored"
            )
        rows.append({"variant": variant, "cells": cells, "details": details})
    return rows


def compact_scores(
    scores: Mapping[str, Mapping[str, tuple[float | None, str | None]]], variant: str
) -> list[dict[str, Any]]:
    """The index's per-variant cell: FADE metrics as short labels with values / reasons."""
    cells = []
    for metric in FADE_METRICS:
        value, reason = scores.get(variant, {}).get(metric, (None, "not evaluated"))
        cells.append(
            {"short": _METRIC_SHORT[metric], "metric": metric, "value": value, "reason": reason}
        )
    return cells
