"""Rule report: a static HTML report of a run that opens from disk (:func:`build_report`).

``build_report(models, out_dir)`` writes

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
- ``{model}/graph.html``: for a model with an attribution graph (``models.<m>.graph``), its
  features by layer with their labels (:mod:`~circuit_insights.report.graph`), each with a
  page;
- ``{model}/summary/``: :func:`circuit_insights.report.summary.write_summary`'s files.

The models come as their declared input files (:class:`~circuit_insights.report.inputs.
ModelInputs`, nothing else is read) or as frames in memory (:class:`~circuit_insights.report.
inputs.ModelFrames`). The pages are view models (:mod:`~circuit_insights.report.views`)
rendered by :mod:`~circuit_insights.report.render`; every file is written atomically. Missing
pieces (no clusters, no description, no corpus, missing scores) are shown as such, never an
error. Layout and choices: ``docs/report.md``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeGuard

import pandas as pd

from circuit_insights.core.errors import InputError
from circuit_insights.explain.imported import imported_sources
from circuit_insights.report.graph import graph_features, graph_page, graph_page_path
from circuit_insights.report.inputs import (
    CONTRIBUTION_COLUMNS,
    COVERAGE_COLUMNS,
    ModelFrames,
    ModelInputs,
    load_model_frames,
    read_table,
)
from circuit_insights.report.paper import llm_written
from circuit_insights.report.render import write_page
from circuit_insights.report.summary import write_summary
from circuit_insights.report.views import (
    ModelPlan,
    PageSettings,
    WrittenSummary,
    descriptions_page_path,
    descriptions_pages,
    feature_page,
    feature_page_path,
    index_entry,
    model_view,
)

__all__ = ["build_report", "choose_features"]

#: What a report is built from: the declared inputs of each model, or frames in memory.
ReportSource = (
    Sequence[ModelInputs] | ModelFrames | Sequence[ModelFrames] | Mapping[str, ModelFrames]
)


def build_report(
    source: ReportSource,
    out_dir: str | os.PathLike[str],
    *,
    tokenizer: object | Mapping[str, object] | None = None,
    max_features: int | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    n_top_contexts: int = 8,
    n_cluster_examples: int = 5,
    context_tokens: int = 32,
    title: str = "circuit-insights report",
    source_label: str | None = None,
) -> Path:
    """Write the HTML report of a run into ``out_dir``; returns the path of ``index.html``.

    ``source``: the declared input files of each model (:class:`ModelInputs`, the report rule's
    inputs; only these are read) or explicit :class:`ModelFrames` (one, a list, or a mapping
    model -> frames). ``tokenizer``: one for every model, or model -> tokenizer (display only;
    without one tokens show as ``<id>`` or the tables' stored strings). ``max_features``: pages
    for at most this many features per (model, layer), the explained ones first, then the lowest
    ids (the summary still covers all). ``context_tokens``: tokens shown before a target.
    ``source_label``: what the index names as the source (default: what kind of source it was).
    """
    out = Path(out_dir)
    if _is_inputs(source):
        inputs = list(source)
        slugs = _slugs(i.model for i in inputs)
        plans = [
            _plan_from_inputs(
                i, slug, tokenizer=_tokenizer_for(tokenizer, i.model), max_features=max_features
            )
            for i, slug in zip(inputs, slugs, strict=True)
        ]
        label = source_label if source_label is not None else "declared input files"
    else:
        frames_list = _as_frames(source)
        slugs = _slugs(frames.model for frames in frames_list)
        plans = [
            _plan_from_frames(frames, slug, tokenizer=tokenizer, max_features=max_features)
            for frames, slug in zip(frames_list, slugs, strict=True)
        ]
        label = source_label if source_label is not None else "frames given in memory"
    settings = PageSettings(
        n_top=n_top_contexts, n_examples=n_cluster_examples, before=context_tokens
    )
    models = [
        _write_model(plan, out, n_boot=n_boot, seed=seed, settings=settings) for plan in plans
    ]
    return write_page(
        out / "index.html",
        "index.html",
        {"root": "", "title": title, "source": label, "models": models},
    )


# --- which features get a page -------------------------------------------------------------------


def feature_keys(frames: Iterable[pd.DataFrame | None]) -> dict[int, set[int]]:
    """layer -> the features of any of the frames (those with a ``feature`` column)."""
    keys: dict[int, set[int]] = {}
    for frame in frames:
        if frame is None or frame.empty or "feature" not in frame.columns:
            continue
        for layer, feature in zip(
            frame["layer"].astype(int).tolist(), frame["feature"].astype(int).tolist(), strict=True
        ):
            keys.setdefault(layer, set()).add(feature)
    return keys


def choose_features(
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


def _plan_from_inputs(
    inputs: ModelInputs, slug: str, *, tokenizer: object | None, max_features: int | None
) -> ModelPlan:
    """Read the WeightLens, evaluation and explanation tables whole (the summary covers every
    feature), choose the features with a page, then read clusters, samples, contributions,
    TWERA and delphi scores of those features only."""
    frames = load_model_frames(
        inputs,
        tables=("weightlens", "evaluation", "explanations", "rule_evaluation"),
        tokenizer=tokenizer,
    )
    keys = feature_keys([frames.weightlens, frames.evaluation, frames.explanations])
    if not keys:
        keys = feature_keys([read_table(inputs, "clusters")])
    explained = feature_keys([frames.evaluation, llm_written(frames.explanations)])
    chosen, hidden = _with_graph(
        *choose_features(keys, max_features, first=explained), keys, frames
    )
    frames.clusters = read_table(inputs, "clusters", features=chosen)
    frames.samples = read_table(inputs, "samples", features=chosen)
    frames.contributions = read_table(
        inputs, "contributions", features=chosen, columns=CONTRIBUTION_COLUMNS
    )
    frames.twera = read_table(inputs, "twera", features=chosen)
    frames.delphi = read_table(inputs, "delphi", features=chosen)
    return ModelPlan(
        frames=frames,
        slug=slug,
        chosen=chosen,
        hidden=hidden,
        all_clusters=read_table(inputs, "clusters", columns=COVERAGE_COLUMNS),
    )


def _plan_from_frames(
    frames: ModelFrames,
    slug: str,
    *,
    tokenizer: object | Mapping[str, object] | None,
    max_features: int | None,
) -> ModelPlan:
    """A page for every feature of the tables (also of the samples), at most ``max_features``
    per layer."""
    if frames.tokenizer is None and tokenizer is not None:
        frames = replace(frames, tokenizer=_tokenizer_for(tokenizer, frames.model))
    keys = feature_keys(
        [frames.weightlens, frames.evaluation, frames.explanations, frames.clusters]
    )
    if frames.samples is not None and "layer" in frames.samples.columns:
        for layer, features in feature_keys([frames.samples]).items():
            keys.setdefault(layer, set()).update(features)
    explained = feature_keys([frames.evaluation, llm_written(frames.explanations)])
    chosen, hidden = _with_graph(
        *choose_features(keys, max_features, first=explained), keys, frames
    )
    return ModelPlan(
        frames=frames, slug=slug, chosen=chosen, hidden=hidden, all_clusters=frames.clusters
    )


def _with_graph(
    chosen: dict[int, list[int]],
    hidden: dict[int, int],
    keys: Mapping[int, set[int]],
    frames: ModelFrames,
) -> tuple[dict[int, list[int]], dict[int, int]]:
    """``chosen`` / ``hidden`` (:func:`choose_features`) with a page for every feature of the
    model's graph too, whatever ``max_features`` (the graph page links each)."""
    chosen, hidden = {k: list(v) for k, v in chosen.items()}, dict(hidden)
    for layer, features in graph_features(frames.graph).items():
        added = set(features) - set(chosen.get(layer, []))
        chosen[layer] = sorted(set(chosen.get(layer, [])) | added)
        hidden[layer] = max(0, hidden.get(layer, 0) - len(added & keys.get(layer, set())))
    return chosen, hidden


# --- writing -------------------------------------------------------------------------------------


def _write_model(
    plan: ModelPlan, out: Path, *, n_boot: int, seed: int, settings: PageSettings
) -> dict[str, Any]:
    """Write one model's summary, feature pages and descriptions pages; returns its part of the
    index."""
    frames = plan.frames
    written = write_summary(
        frames.evaluation,
        frames.weightlens,
        out / plan.slug / "summary",
        model=frames.model,
        n_boot=n_boot,
        seed=seed,
        rule_evaluation_frames=frames.rule_evaluation,
        explanation_frames=frames.explanations,
    )
    summary = WrittenSummary.read(written)
    view = model_view(plan, summary.summary)
    for layer, features in plan.chosen.items():
        for feature in features:
            write_page(
                out / feature_page_path(plan.slug, layer, feature),
                "feature.html",
                feature_page(view, layer, feature, settings),
            )
    graph = None
    if frames.graph is not None:
        context = graph_page(
            frames.graph,
            model=frames.model,
            model_slug=plan.slug,
            source=frames.graph_source,
            explanations=frames.explanations,
            label_variants=frames.label_variants,
            sources={v: s.label() for v, s in imported_sources(frames.explanations).items()},
            page_exists=view.page_exists,
        )
        write_page(out / graph_page_path(plan.slug), "graph.html", context)
        graph = {
            "href": graph_page_path(plan.slug),
            "slug": context["slug"],
            "n_features": context["n_features"],
            "n_labelled": context["n_labelled"],
        }
    links: dict[int, dict[str, Any]] = {}
    for layer, context in descriptions_pages(view).items():
        path = descriptions_page_path(plan.slug, layer)
        write_page(out / path, "descriptions.html", context)
        links[layer] = {
            "href": path,
            "n_features": len(context["rows"]),
            "n_variants": len(context["variants"]),
        }
    return {**index_entry(view, summary, links), "graph": graph}


# --- sources -------------------------------------------------------------------------------------


def _is_inputs(source: object) -> TypeGuard[Sequence[ModelInputs]]:
    return (
        isinstance(source, Sequence)
        and not isinstance(source, (str, bytes))
        and len(source) > 0
        and all(isinstance(item, ModelInputs) for item in source)
    )


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
    if (
        isinstance(source, Sequence)
        and not isinstance(source, (str, bytes))
        and all(isinstance(f, ModelFrames) for f in source)
    ):
        return list(source)
    raise InputError(
        "report source: give the declared inputs of each model (ModelInputs), a ModelFrames, "
        "or a list / mapping of ModelFrames"
    )


def _slug(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")
    return slug or "model"


def _slugs(models: Iterable[str]) -> list[str]:
    """Each model's folder in the report: its name with characters other than ``A-Za-z0-9._-``
    replaced by ``-``, made unique with ``-2``, ``-3``, ..."""
    used: set[str] = set()
    slugs = []
    for model in models:
        slug = _slug(model)
        base, n = slug, 2
        while slug in used or slug in ("index.html",):
            slug, n = f"{base}-{n}", n + 1
        used.add(slug)
        slugs.append(slug)
    return slugs


def _tokenizer_for(tokenizer: object | Mapping[str, object] | None, model: str) -> object | None:
    if isinstance(tokenizer, Mapping):
        return tokenizer.get(model)
    return tokenizer
