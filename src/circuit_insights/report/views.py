"""View models of the HTML report: plain data (dicts, lists, :class:`~circuit_insights.report.
tables.Table`) that the templates render, one function per page or section.

:class:`ModelPlan` says which feature pages a model gets; :class:`ModelView` holds what every
page of the model is built from (its tables by feature, scores, corpus); :func:`feature_page`,
:func:`descriptions_pages` and :func:`index_entry` give the template contexts. Links are relative
to the report root (:func:`feature_page_path`). Layout and choices: ``docs/report.md``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from circuit_insights.circuitlens.cluster_shard import cluster_coverage
from circuit_insights.core.tokens import TokenDisplay
from circuit_insights.explain.imported import imported_sources
from circuit_insights.report.claims import CLAIMS_NOTE, claims_view
from circuit_insights.report.contexts import CorpusView, cluster_views, top_context_views
from circuit_insights.report.inputs import ModelFrames
from circuit_insights.report.llm_requests import llm_request_counts, llm_requests_view
from circuit_insights.report.paper import (
    LLM_FREE_VARIANT,
    RULE_METRICS,
    llm_written,
    order_variants,
)
from circuit_insights.report.quality import (
    final_description_flags,
    flag_counts,
    is_small_embedded_llm,
)
from circuit_insights.report.scores import METRICS
from circuit_insights.report.sections import (
    FeatureScores,
    compact_scores,
    delphi_score_rows,
    description_view,
    rule_score_rows,
    score_rows,
    scores_by_feature,
    source_tokens,
    twera_view,
    weightlens_view,
)
from circuit_insights.report.stats import MIN_FEATURES_FOR_CI, missing_table
from circuit_insights.report.tables import (
    Table,
    coverage_view,
    flag_counts_view,
    metric_grid_view,
    missing_view,
    rule_comparison_views,
    shares_view,
)
from circuit_insights.report.values import text


@dataclass
class ModelPlan:
    """Which pages one model gets: ``chosen`` layer -> features with a page, ``hidden`` layer ->
    how many were left out (``max_features``); ``slug``: the model's folder in the report."""

    frames: ModelFrames
    slug: str
    chosen: dict[int, list[int]] = field(default_factory=dict)
    hidden: dict[int, int] = field(default_factory=dict)
    #: Every clusters row of the model (the coverage table), not only the features with a page.
    all_clusters: pd.DataFrame | None = None


@dataclass(frozen=True)
class PageSettings:
    """How much a feature page shows: ``n_top`` top contexts, ``n_examples`` example contexts
    per cluster, ``before`` tokens before a target."""

    n_top: int = 8
    n_examples: int = 5
    before: int = 32


@dataclass(frozen=True)
class ModelView:
    """What every page of one model is built from (:func:`model_view`)."""

    plan: ModelPlan
    #: table (``weightlens``, ``evaluation``, ...) -> (layer, feature) -> its rows, for the
    #: features with a page.
    tables: Mapping[str, dict[tuple[int, int], pd.DataFrame]]
    scores: Mapping[tuple[int, int], FeatureScores]
    variants: list[str]
    corpus: CorpusView
    display: TokenDisplay | None
    page_exists: frozenset[tuple[int, int]]
    #: (layer, feature) -> variant -> quality flags of the final description.
    flags: Mapping[tuple[int, int], Mapping[str, tuple[str, ...]]]
    #: (layer, feature) -> the WeightLens validated token strings of each TWERA source feature.
    validated_tokens: Mapping[tuple[int, int], list[str]]


@dataclass(frozen=True)
class WrittenSummary:
    """A model's summary files (``write_summary``'s name -> path) and the tables the index
    shows, read back from them."""

    files: Mapping[str, Path]
    summary: pd.DataFrame
    stats: pd.DataFrame
    shares: pd.DataFrame
    rule_comparison: pd.DataFrame | None
    claims: pd.DataFrame | None

    @classmethod
    def read(cls, files: Mapping[str, Path]) -> WrittenSummary:
        """Read the summary, metric table, shares and, when written, the rule comparison and
        the claims."""
        return cls(
            files=files,
            summary=pd.read_parquet(files["summary"]),
            stats=pd.read_parquet(files["metric_table"]),
            shares=pd.read_parquet(files["token_based_shares"]),
            rule_comparison=pd.read_parquet(files["rule_comparison"])
            if "rule_comparison" in files
            else None,
            claims=pd.read_parquet(files["paper_claims"]) if "paper_claims" in files else None,
        )


def descriptions_page_path(model_slug: str, layer: int) -> str:
    """Path of a layer's page of every feature's descriptions, relative to the report root."""
    return f"{model_slug}/layer{int(layer)}/descriptions.html"


def feature_page_path(model_slug: str, layer: int, feature: int) -> str:
    """A feature page's path relative to the report root."""
    return f"{model_slug}/layer{int(layer)}/feature{int(feature):06d}.html"


def grouped(
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


def model_variants(frames: ModelFrames) -> list[str]:
    """The variants of a model's explanation and evaluation tables, in the paper's order."""
    variants: set[str] = set()
    for table in (frames.explanations, frames.evaluation):
        if table is not None and len(table) and "variant" in table.columns:
            variants.update(str(v) for v in table["variant"].unique())
    return order_variants(variants)


def model_view(plan: ModelPlan, summary: pd.DataFrame) -> ModelView:
    """The tables of the features with a page, the summary's scores (``SUMMARY_SCHEMA``) by
    feature, the corpus and the quality flags of one model."""
    frames = plan.frames
    display = TokenDisplay(frames.tokenizer) if frames.tokenizer is not None else None
    page_exists = frozenset((layer, f) for layer, features in plan.chosen.items() for f in features)
    return ModelView(
        plan=plan,
        tables={
            "weightlens": grouped(frames.weightlens, keep=page_exists),
            "evaluation": grouped(frames.evaluation, keep=page_exists),
            "explanations": grouped(frames.explanations, keep=page_exists),
            "clusters": grouped(frames.clusters, keep=page_exists),
            "samples": grouped(frames.samples, keep=page_exists),
            "contributions": grouped(frames.contributions, "feature_layer", keep=page_exists),
            "twera": grouped(frames.twera, keep=page_exists),
            "rule_evaluation": grouped(frames.rule_evaluation, keep=page_exists),
            "delphi": grouped(frames.delphi, keep=page_exists),
        },
        scores=scores_by_feature(summary),
        variants=model_variants(frames),
        corpus=CorpusView(frames.context_ids, frames.tokens, display or TokenDisplay(None)),
        display=display,
        page_exists=page_exists,
        flags=final_description_flags(frames.explanations),
        validated_tokens=source_tokens(frames.weightlens, frames.twera),
    )


def feature_page(
    view: ModelView, layer: int, feature: int, settings: PageSettings
) -> dict[str, Any]:
    """The context of ``feature.html``: descriptions, scores, WeightLens, TWERA, clusters and top
    contexts of one feature."""
    plan = view.plan
    key = (layer, feature)
    tables = view.tables
    wl_rows = tables["weightlens"].get(key)
    wl_row = wl_rows.iloc[0].to_dict() if wl_rows is not None and len(wl_rows) else None
    wl = weightlens_view(wl_row, view.display, view.page_exists, "../")
    twera = twera_view(
        tables["twera"].get(key),
        weightlens=wl,
        validated_tokens=view.validated_tokens,
        page_exists=view.page_exists,
        link_prefix="../",
    )
    evaluation = tables["evaluation"].get(key)
    explanations = tables["explanations"].get(key)
    samples = tables["samples"].get(key)
    validated_ids = wl["validated_ids"] if wl else []
    top = top_context_views(
        samples,
        view.corpus,
        validated_ids=validated_ids,
        n_top=settings.n_top,
        before=settings.before,
    )
    clusters = cluster_views(
        tables["clusters"].get(key),
        explanations=explanations,
        samples=samples,
        contributions=tables["contributions"].get(key),
        corpus=view.corpus,
        validated_ids=validated_ids,
        n_examples=settings.n_examples,
        before=settings.before,
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
    descriptions = description_view(
        order_variants(set(view.variants) | ({LLM_FREE_VARIANT} if wl else set())),
        explanations=explanations,
        evaluation=evaluation,
        weightlens=wl,
        flags=view.flags.get(key, {}),
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
        "score_rows": score_rows(view.scores.get(key, {}), view.variants, evaluation),
        "rule_score_rows": rule_score_rows(tables["rule_evaluation"].get(key)),
        "delphi_rows": delphi_score_rows(tables["delphi"].get(key)),
        "rule_metrics": list(RULE_METRICS),
        "metrics": list(METRICS),
        "clusters": clusters,
        "clusters_note": clusters_note,
        "top_contexts": top,
        "corpus_available": view.corpus.available,
        "samples_available": samples is not None and len(samples) > 0,
    }


def descriptions_pages(view: ModelView) -> dict[int, dict[str, Any]]:
    """layer -> the context of its ``descriptions.html``: the final description of every
    explained feature (the feature pages may cover fewer: ``max_features``) by every variant."""
    plan = view.plan
    explanations = plan.frames.explanations
    if explanations is None or explanations.empty:
        return {}
    variants = order_variants(str(v) for v in explanations["variant"].unique())
    by_key = grouped(explanations)
    pages: dict[int, dict[str, Any]] = {}
    for layer in sorted({layer for layer, _ in by_key}):
        rows: list[dict[str, Any]] = []
        for feature in sorted(f for lay, f in by_key if lay == layer):
            cells = description_view(
                variants,
                explanations=by_key[(layer, feature)],
                evaluation=None,
                weightlens=None,
                flags=view.flags.get((layer, feature)),
            )
            rows.append(
                {
                    "feature": feature,
                    "href": f"feature{feature:06d}.html"
                    if (layer, feature) in view.page_exists
                    else None,
                    "cells": cells,
                }
            )
        described = {
            v: sum(1 for row in rows if row["cells"][i]["description"])
            for i, v in enumerate(variants)
        }
        pages[layer] = {
            "title": f"{plan.frames.model} · layer {layer} · descriptions",
            "root": "../../",
            "model": plan.frames.model,
            "model_slug": plan.slug,
            "layer": layer,
            "variants": variants,
            "described": described,
            "rows": rows,
        }
    return pages


def index_rows(view: ModelView, layer: int) -> list[dict[str, Any]]:
    """The index's table of the features of a layer that have a page."""
    plan = view.plan
    rows = []
    for feature in plan.chosen.get(layer, []):
        key = (layer, feature)
        wl_rows = view.tables["weightlens"].get(key)
        wl = wl_rows.iloc[0] if wl_rows is not None and len(wl_rows) else None
        feature_scores = view.scores.get(key, {})
        llm_free = feature_scores.get(LLM_FREE_VARIANT, {})
        rows.append(
            {
                "feature": feature,
                "href": feature_page_path(plan.slug, layer, feature),
                "classification": text(wl["classification"]) if wl is not None else None,
                "is_token_based": bool(wl["is_token_based"]) if wl is not None else False,
                "description": text(wl["description"]) if wl is not None else None,
                "auroc": llm_free.get("weightlens_auroc", (None, "no WeightLens row")),
                "precision": llm_free.get("weightlens_precision", (None, "no WeightLens row")),
                "variants": {v: compact_scores(feature_scores, v) for v in view.variants},
            }
        )
    return rows


def index_entry(
    view: ModelView,
    summary: WrittenSummary,
    descriptions: Mapping[int, Mapping[str, Any]],
) -> dict[str, Any]:
    """A model's part of ``index.html``: the summary's tables and plots, its LLMs, description
    quality, cluster coverage and per layer the features with a page; ``descriptions``: layer ->
    link and counts of its descriptions page."""
    plan = view.plan
    frames = plan.frames
    prefix = f"{plan.slug}/summary/"
    missing = missing_table(summary.summary)
    counts = flag_counts(frames.explanations) if frames.explanations is not None else None
    requests = llm_request_counts(frames.explanations, frames.evaluation)
    sources = {v: s.label() for v, s in imported_sources(frames.explanations).items()}
    return {
        "name": frames.model,
        "slug": plan.slug,
        "llm": llm_view(frames),
        "coverage": model_coverage(plan),
        "flag_counts": flag_counts_view(counts) if counts is not None and len(counts) else None,
        "llm_requests": llm_requests_view(requests) if len(requests) else None,
        "llm_failed": int(requests["failed"].sum()) if len(requests) else 0,
        "min_ci": MIN_FEATURES_FOR_CI,
        "metric_grid": metric_grid_view(summary.stats, sources=sources),
        "imported": [{"variant": v, "source": label} for v, label in sorted(sources.items())],
        "rule_comparison": rule_comparison_views(summary.rule_comparison)
        if summary.rule_comparison is not None
        else None,
        "claims": claims_view(summary.claims) if summary.claims is not None else None,
        "claims_note": CLAIMS_NOTE,
        "shares": shares_view(summary.shares) if len(summary.shares) else None,
        "missing": missing_view(missing) if len(missing) else None,
        "plots": [
            {"metric": name.removeprefix("plot_"), "src": prefix + "plots/" + path.name}
            for name, path in summary.files.items()
            if name.startswith("plot_")
        ],
        "files": [
            {"name": path.name, "href": prefix + path.name}
            for name, path in summary.files.items()
            if not name.startswith("plot_")
        ],
        "variants": view.variants,
        "layers": [
            {
                "layer": layer,
                "rows": index_rows(view, layer),
                "hidden": plan.hidden.get(layer, 0),
                "descriptions": descriptions.get(layer),
            }
            for layer in sorted(plan.chosen)
        ],
        "n_features": sum(len(v) for v in plan.chosen.values()),
        "n_hidden": sum(plan.hidden.values()),
        "has_corpus": view.corpus.available,
    }


def _llm_names(frame: pd.DataFrame | None) -> list[str]:
    if frame is None or frame.empty or "llm_model" not in frame.columns:
        return []
    names = {str(v) for v in frame["llm_model"].dropna().unique() if str(v).strip()}
    return sorted(names - {"rule"})


def llm_view(frames: ModelFrames) -> dict[str, Any]:
    """The explainer (LLM-written explanation rows) and rater (evaluation rows) models, and
    whether either is the embedded SmolLM2-135M."""
    explainers = _llm_names(llm_written(frames.explanations))
    raters = _llm_names(frames.evaluation)
    return {
        "explainers": explainers,
        "raters": raters,
        "small": [n for n in sorted(set(explainers) | set(raters)) if is_small_embedded_llm(n)],
    }


def model_coverage(plan: ModelPlan) -> Table | None:
    """The cluster-coverage table of a model (None without clusters)."""
    clusters = plan.all_clusters
    if clusters is None or clusters.empty:
        return None
    coverage = cluster_coverage(clusters)
    weightlens = plan.frames.weightlens
    n_features: dict[int, int] = {}
    if weightlens is not None and len(weightlens):
        n_features = {
            int(layer): int(part["feature"].nunique())
            for layer, part in weightlens.groupby("layer")
        }
    return coverage_view(coverage, n_features)
