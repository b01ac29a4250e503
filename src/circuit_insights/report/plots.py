"""The summary's plots: one PNG per metric (mean by layer per variant, CI error bars from
:data:`~circuit_insights.report.stats.MIN_FEATURES_FOR_CI` features) and the rule-rated
comparison. matplotlib's Agg canvas (no display, no pyplot state); every file written
atomically."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from circuit_insights.core.io import atomic_path
from circuit_insights.report.delphi_table import DELPHI_HEADLINE, RATERS
from circuit_insights.report.paper import RULE_METHODS, RULE_METRICS, order_variants
from circuit_insights.report.scores import order_metrics
from circuit_insights.report.stats import MIN_FEATURES_FOR_CI
from circuit_insights.report.tables import row_label


def plot_metrics(
    stats: pd.DataFrame, out_dir: str | os.PathLike[str], *, metrics: Sequence[str] | None = None
) -> dict[str, Path]:
    """One PNG per metric, ``{out_dir}/{metric}.png``: the mean by layer of every variant (one
    series per (model, variant)) as points labelled with their ``n``; a filled point with its CI
    as an error bar where ``n`` >= :data:`MIN_FEATURES_FOR_CI`, a hollow point without one below
    it; no lines join the layers. Written atomically.

    ``metrics``: default every metric of ``stats``. A metric without any value still gets a plot
    that says so. Uses matplotlib's Agg canvas (no display, no pyplot state).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out_dir)
    metrics = list(metrics) if metrics is not None else order_metrics(stats["metric"])
    several = stats["model"].nunique() > 1 if len(stats) else False
    written: dict[str, Path] = {}
    for metric in metrics:
        cells = stats[(stats["metric"] == metric) & (stats["n"] > 0)] if len(stats) else stats
        figure = Figure(figsize=(7.0, 4.2), dpi=100)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot(1, 1, 1)
        series = list(cells.groupby(["model", "variant"], sort=False)) if len(cells) else []
        order = order_variants(cells["variant"]) if len(cells) else []
        series.sort(key=lambda item: (item[0][0], order.index(item[0][1])))
        width = 0.6 / max(1, len(series))
        for i, ((model, variant), part) in enumerate(series):
            part = part.sort_values("layer")
            x = part["layer"].to_numpy(dtype=float) + (i - (len(series) - 1) / 2) * width
            mean = part["mean"].to_numpy(dtype=float)
            n = part["n"].to_numpy(dtype=int)
            ci = (n >= MIN_FEATURES_FOR_CI) & np.isfinite(part["ci_low"].to_numpy(dtype=float))
            low = np.clip(mean - part["ci_low"].to_numpy(dtype=float), 0, None)
            high = np.clip(part["ci_high"].to_numpy(dtype=float) - mean, 0, None)
            color = f"C{i % 10}"
            label = row_label(str(model), str(variant), several)
            if ci.any():
                axes.errorbar(
                    x[ci],
                    mean[ci],
                    yerr=np.vstack([low[ci], high[ci]]),
                    marker="o",
                    linestyle="none",
                    capsize=3,
                    color=color,
                    label=label,
                )
            if (~ci).any():
                axes.plot(
                    x[~ci],
                    mean[~ci],
                    marker="o",
                    linestyle="none",
                    markerfacecolor="none",
                    color=color,
                    label=None if ci.any() else label,
                )
            for xi, yi, ni in zip(x, mean, n, strict=True):
                axes.annotate(
                    f"n={ni}", (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7
                )
        if series:
            layers = sorted(int(v) for v in cells["layer"].unique())
            axes.set_xticks(layers)
            axes.set_xlim(layers[0] - 0.7, layers[-1] + 0.7)
            axes.legend(fontsize=8, loc="best")
        else:
            axes.text(
                0.5, 0.5, f"no {metric} values", ha="center", va="center", transform=axes.transAxes
            )
        axes.set_ylim(-0.02, 1.05)
        axes.set_xlabel("layer")
        axes.set_ylabel(metric)
        axes.set_title(
            f"{metric}: mean by layer; bars: 95% bootstrap CI (n \u2265 {MIN_FEATURES_FOR_CI}); "
            f"hollow: n < {MIN_FEATURES_FOR_CI}, no CI",
            fontsize=9,
        )
        axes.grid(True, alpha=0.3)
        figure.tight_layout()
        path = out / f"{metric}.png"
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png")
        written[metric] = path
    return written


def plot_rule_comparison(table: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """One PNG: a panel per (feature class, metric), the mean by layer of each method with its CI;
    cells with fewer than :data:`MIN_FEATURES_FOR_CI` features are not drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    classes = [c for c in ("token_based", "context_dependent") if c in set(table["classification"])]
    classes = classes or ["all"]
    figure = Figure(figsize=(10.5, 3.4 * len(classes)), dpi=100)
    FigureCanvasAgg(figure)
    for row, classification in enumerate(classes):
        for col, metric in enumerate(RULE_METRICS):
            axes = figure.add_subplot(len(classes), len(RULE_METRICS), row * 3 + col + 1)
            cells = table[
                (table["classification"] == classification)
                & (table["metric"] == metric)
                & (table["n"] >= MIN_FEATURES_FOR_CI)
            ]
            methods = [m for m in RULE_METHODS if m in set(cells["variant"])]
            width = 0.6 / max(1, len(methods))
            for i, method in enumerate(methods):
                part = cells[cells["variant"] == method].sort_values("layer")
                x = part["layer"].to_numpy(float) + (i - (len(methods) - 1) / 2) * width
                mean = part["mean"].to_numpy(float)
                low = np.clip(mean - part["ci_low"].to_numpy(float), 0, None)
                high = np.clip(part["ci_high"].to_numpy(float) - mean, 0, None)
                axes.errorbar(
                    x,
                    mean,
                    yerr=np.vstack([low, high]),
                    marker="o",
                    capsize=3,
                    linewidth=1.2,
                    label=method,
                )
            if methods:
                layers = sorted(int(v) for v in cells["layer"].unique())
                axes.set_xticks(layers)
                axes.set_xlim(layers[0] - 0.7, layers[-1] + 0.7)
                if col == 0:
                    axes.legend(fontsize=7, loc="best")
            else:
                axes.text(
                    0.5,
                    0.5,
                    "fewer than 3 features",
                    ha="center",
                    va="center",
                    transform=axes.transAxes,
                )
            axes.set_ylim(-0.02, 1.05)
            axes.set_xlabel("layer")
            axes.set_title(f"{metric} · {classification.replace('_', '-')}", fontsize=9)
            axes.grid(True, alpha=0.3)
    figure.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        figure.savefig(tmp, format="png")
    return out


def plot_delphi_scores(table: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """One PNG: a panel per (rater, score), the headline figure's mean by layer of each variant
    with its CI (``DELPHI_TABLE_SCHEMA`` rows); cells with fewer than
    :data:`MIN_FEATURES_FOR_CI` features are drawn without a CI."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    raters = [r for r in RATERS if r in set(table["rater"])] or ["rule"]
    scores = [s for s in DELPHI_HEADLINE if s in set(table["score"])] or list(DELPHI_HEADLINE)
    figure = Figure(figsize=(3.6 * len(scores), 3.2 * len(raters)), dpi=100)
    FigureCanvasAgg(figure)
    for row, rater in enumerate(raters):
        for col, score in enumerate(scores):
            axes = figure.add_subplot(len(raters), len(scores), row * len(scores) + col + 1)
            cells = table[
                (table["rater"] == rater)
                & (table["score"] == score)
                & (table["figure"] == DELPHI_HEADLINE[score])
                & (table["n"] > 0)
            ]
            variants = list(dict.fromkeys(cells["variant"]))
            width = 0.6 / max(1, len(variants))
            for i, variant in enumerate(variants):
                part = cells[cells["variant"] == variant].sort_values("layer")
                x = part["layer"].to_numpy(float) + (i - (len(variants) - 1) / 2) * width
                mean = part["mean"].to_numpy(float)
                low = np.nan_to_num(np.clip(mean - part["ci_low"].to_numpy(float), 0, None))
                high = np.nan_to_num(np.clip(part["ci_high"].to_numpy(float) - mean, 0, None))
                axes.errorbar(
                    x, mean, yerr=np.vstack([low, high]), marker="o", capsize=3, label=variant
                )
            chance = 0.0 if score == "simulation" else 0.5
            axes.axhline(chance, color="grey", linewidth=0.8, linestyle=":")
            if variants and col == 0:
                axes.legend(fontsize=7, loc="best")
            axes.set_ylim(-1.05 if score == "simulation" else -0.02, 1.05)
            axes.set_title(f"{score}, {DELPHI_HEADLINE[score].replace('_', ' ')} ({rater})")
            axes.set_xlabel("layer")
    figure.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        figure.savefig(tmp, format="png")
    return out
