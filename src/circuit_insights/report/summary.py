"""Rule summarize: one model's summary as files (:func:`write_summary`).

The long table of scores (:mod:`~circuit_insights.report.scores`), the metric table with
bootstrap CIs (:mod:`~circuit_insights.report.stats`), the token-based shares
(:mod:`~circuit_insights.report.shares`), the rule-rated comparison
(:mod:`~circuit_insights.report.rule_comparison`) and the paper's claims
(:mod:`~circuit_insights.report.claims`), the cluster coverage; each as parquet, as markdown in
the paper's form (:mod:`~circuit_insights.report.tables`), some as HTML
(:mod:`~circuit_insights.report.render`), and plots (:mod:`~circuit_insights.report.plots`).
Definitions and choices: ``docs/report.md``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from circuit_insights.circuitlens.cluster_shard import cluster_coverage
from circuit_insights.core.io import atomic_path, write_parquet_atomic
from circuit_insights.data.schemas import (
    METRIC_TABLE_SCHEMA,
    RULE_COMPARISON_SCHEMA,
    SUMMARY_SCHEMA,
    TOKEN_SHARES_SCHEMA,
)
from circuit_insights.explain.imported import imported_sources
from circuit_insights.report import claims
from circuit_insights.report.delphi_table import (
    DELPHI_NOTE,
    DELPHI_TABLE_SCHEMA,
    delphi_table,
    delphi_table_markdown,
    delphi_table_views,
)
from circuit_insights.report.llm_requests import llm_request_counts, llm_requests_markdown
from circuit_insights.report.paper import PAPER_CLUSTERS_PER_FEATURE
from circuit_insights.report.plots import plot_delphi_scores, plot_metrics, plot_rule_comparison
from circuit_insights.report.render import write_page
from circuit_insights.report.rule_comparison import RULE_NOTE, rule_comparison_table
from circuit_insights.report.scores import concat_frames, summarize_model
from circuit_insights.report.shares import token_based_shares
from circuit_insights.report.stats import MIN_FEATURES_FOR_CI, metric_table, missing_table
from circuit_insights.report.tables import (
    PAPER_SCORES_CAPTION,
    coverage_markdown,
    metric_grid_markdown,
    metric_grid_view,
    missing_markdown,
    missing_view,
    paper_scores_markdown,
    paper_scores_view,
    rule_comparison_markdown,
    rule_comparison_views,
    shares_markdown,
    shares_view,
)

__all__ = ["write_summary"]


def _write_text(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_summary(
    evaluation_frames: pd.DataFrame | Iterable[pd.DataFrame] | None,
    weightlens_frames: pd.DataFrame | Iterable[pd.DataFrame] | None,
    out_dir: str | os.PathLike[str],
    *,
    model: str = "",
    family: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    rule_evaluation_frames: pd.DataFrame | Iterable[pd.DataFrame] | None = None,
    clusters_frames: pd.DataFrame | Iterable[pd.DataFrame] | None = None,
    explanation_frames: pd.DataFrame | Iterable[pd.DataFrame] | None = None,
    delphi_frames: pd.DataFrame | Iterable[pd.DataFrame] | None = None,
) -> dict[str, Path]:
    """Write the summary of one model into ``out_dir``, every file atomically.

    Files: ``summary.parquet`` (:func:`~circuit_insights.report.scores.summarize_model`),
    ``metric_table.parquet`` (:func:`~circuit_insights.report.stats.metric_table`),
    ``metric_table.md`` / ``.html`` (the paper-form table, the missing values by reason, the
    paper's figures), ``token_based_shares.parquet`` / ``.md`` / ``.html``,
    ``plots/{metric}.png``; with rule-rated evaluations (``rule_evaluation_frames``, or rows of
    the evaluation frames with ``rater`` = ``rule``): ``rule_comparison.parquet`` / ``.md`` /
    ``.html``, ``plots/rule_comparison.png`` and ``paper_claims.parquet`` / ``.md`` (paired
    differences between methods, :mod:`circuit_insights.report.claims`); with cluster tables
    (``clusters_frames``): ``cluster_coverage.parquet`` / ``.md`` (clusters per feature and
    noise share per layer); with explanation tables (``explanation_frames``) or LLM-rated
    evaluations: ``llm_requests.parquet`` / ``.md`` (requests, failed and unusable per stage and
    layer, :mod:`circuit_insights.report.llm_requests`); with delphi scores (``delphi_frames``,
    :mod:`circuit_insights.evaluation.delphi`): ``delphi_table.parquet`` / ``.md`` / ``.html``
    (:mod:`circuit_insights.report.delphi_table`) and ``delphi_scores.parquet`` (every row of
    the scores files). Returns name -> path (``plot_<metric>`` for plots).
    """
    out = Path(out_dir)
    evaluation = concat_frames(evaluation_frames, "evaluation frames")
    weightlens = concat_frames(weightlens_frames, "WeightLens frames")
    rule_rated = concat_frames(rule_evaluation_frames, "rule evaluation frames")
    if "rater" in evaluation.columns:
        by_rule = evaluation["rater"].astype(str) == "rule"
        rule_rated = concat_frames([rule_rated, evaluation[by_rule]], "rule evaluation frames")
        evaluation = evaluation[~by_rule]
    explanations = concat_frames(explanation_frames, "explanation frames")
    sources = {v: s.label() for v, s in imported_sources(explanations).items()}
    delphi = concat_frames(delphi_frames, "delphi scores frames")
    summary = summarize_model(evaluation, weightlens, model=model)
    stats = metric_table(summary, n_boot=n_boot, seed=seed)
    missing = missing_table(summary)
    shares = token_based_shares(weightlens, model=model, family=family)
    written: dict[str, Path] = {}

    written["summary"] = out / "summary.parquet"
    write_parquet_atomic(summary, written["summary"], schema=SUMMARY_SCHEMA)
    written["metric_table"] = out / "metric_table.parquet"
    write_parquet_atomic(stats, written["metric_table"], schema=METRIC_TABLE_SCHEMA)
    written["token_based_shares"] = out / "token_based_shares.parquet"
    write_parquet_atomic(shares, written["token_based_shares"], schema=TOKEN_SHARES_SCHEMA)

    title = f"Scores of {model}" if model else "Scores"
    note = (
        "Cells: mean over features [95% percentile-bootstrap CI] (n = features in the mean; "
        "a degenerate Clarity or Responsiveness, all compared activations equal, counts as 0 "
        "as in FADE's code and is counted as such; other missing values are excluded and "
        "counted). Cells resting on fewer than "
        f"{MIN_FEATURES_FOR_CI} features show their mean and n without a CI."
    )
    markdown = "\n".join(
        [
            f"# {title}",
            "",
            note,
            "",
            metric_grid_markdown(stats, sources=sources),
            "## Missing values",
            "",
            missing_markdown(missing),
            f"## {PAPER_SCORES_CAPTION}",
            "",
            paper_scores_markdown(),
        ]
    )
    written["metric_table_md"] = _write_text(out / "metric_table.md", markdown)
    written["metric_table_html"] = write_page(
        out / "metric_table.html",
        "summary_metric_table.html",
        {
            "title": title,
            "note": note,
            "grid": metric_grid_view(stats, sources=sources),
            "missing_values": missing_view(missing),
            "paper": paper_scores_view(),
        },
    )
    shares_title = f"Token-based features of {model}" if model else "Token-based features"
    written["token_based_shares_md"] = _write_text(
        out / "token_based_shares.md", f"# {shares_title}\n\n" + shares_markdown(shares)
    )
    written["token_based_shares_html"] = write_page(
        out / "token_based_shares.html",
        "summary_shares.html",
        {"title": shares_title, "shares": shares_view(shares)},
    )
    for metric, path in plot_metrics(stats, out / "plots").items():
        written[f"plot_{metric}"] = path
    if len(rule_rated):
        comparison = rule_comparison_table(
            rule_rated, weightlens, model=model, n_boot=n_boot, seed=seed
        )
        written["rule_comparison"] = out / "rule_comparison.parquet"
        write_parquet_atomic(comparison, written["rule_comparison"], schema=RULE_COMPARISON_SCHEMA)
        rule_title = (
            f"Executable explanations of {model}, rule-rated"
            if model
            else ("Executable explanations, rule-rated")
        )
        written["rule_comparison_md"] = _write_text(
            out / "rule_comparison.md",
            f"# {rule_title}\n\n{RULE_NOTE}\n\n" + rule_comparison_markdown(comparison),
        )
        written["rule_comparison_html"] = write_page(
            out / "rule_comparison.html",
            "summary_rule_comparison.html",
            {"title": rule_title, "note": RULE_NOTE, "grids": rule_comparison_views(comparison)},
        )
        written["plot_rule_comparison"] = plot_rule_comparison(
            comparison, out / "plots" / "rule_comparison.png"
        )
        checks = claims.claim_checks(
            rule_rated,
            weightlens,
            n_boot=n_boot,
            seed=seed,
            delphi_scores=delphi if len(delphi) else None,
        )
        written["paper_claims"] = out / "paper_claims.parquet"
        write_parquet_atomic(checks, written["paper_claims"])
        claims_title = f"The paper's claims on {model}" if model else "The paper's claims"
        written["paper_claims_md"] = _write_text(
            out / "paper_claims.md",
            f"# {claims_title}, rule-rated\n\n{claims.CLAIMS_NOTE}\n\n"
            + claims.claims_markdown(checks),
        )
    if len(delphi):
        written["delphi_scores"] = out / "delphi_scores.parquet"
        write_parquet_atomic(delphi, written["delphi_scores"])
        scored = delphi_table(delphi, model=model, n_boot=n_boot, seed=seed)
        written["delphi_table"] = out / "delphi_table.parquet"
        write_parquet_atomic(scored, written["delphi_table"], schema=DELPHI_TABLE_SCHEMA)
        delphi_title = (
            f"Detection, fuzzing and simulation of {model}"
            if model
            else "Detection, fuzzing and simulation"
        )
        written["delphi_table_md"] = _write_text(
            out / "delphi_table.md",
            f"# {delphi_title}\n\n{DELPHI_NOTE}\n\n" + delphi_table_markdown(scored),
        )
        written["delphi_table_html"] = write_page(
            out / "delphi_table.html",
            "summary_rule_comparison.html",
            {"title": delphi_title, "note": DELPHI_NOTE, "grids": delphi_table_views(scored)},
        )
        written["plot_delphi_scores"] = plot_delphi_scores(
            scored, out / "plots" / "delphi_scores.png"
        )
    requests = llm_request_counts(
        explanations if len(explanations) else None, evaluation, delphi if len(delphi) else None
    )
    if len(requests):
        written["llm_requests"] = out / "llm_requests.parquet"
        write_parquet_atomic(requests, written["llm_requests"])
        requests_title = f"LLM requests of {model}" if model else "LLM requests"
        written["llm_requests_md"] = _write_text(
            out / "llm_requests.md", f"# {requests_title}\n\n" + llm_requests_markdown(requests)
        )
    clusters = concat_frames(clusters_frames, "cluster frames")
    if len(clusters):
        coverage = cluster_coverage(clusters)
        written["cluster_coverage"] = out / "cluster_coverage.parquet"
        write_parquet_atomic(coverage, written["cluster_coverage"])
        n_features = (
            weightlens.groupby("layer")["feature"].nunique().astype(int).to_dict()
            if {"layer", "feature"} <= set(weightlens.columns)
            else None
        )
        coverage_title = f"Circuit clusters of {model}" if model else "Circuit clusters"
        written["cluster_coverage_md"] = _write_text(
            out / "cluster_coverage.md",
            f"# {coverage_title}\n\nPer layer: features clustered (the attributed draw), those "
            "with at least one cluster, clusters per feature (mean over the attributed features), the share of samples "
            f"labelled noise. Compare with {PAPER_CLUSTERS_PER_FEATURE}.\n\n"
            + coverage_markdown(coverage, n_features),
        )
    return written
