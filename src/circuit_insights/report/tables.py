"""The summary's tables as text: the paper-form grid of the metric table, the token-based shares,
the missing values, the cluster coverage, the paper's figures, the description flags and the
rule-rated comparison.

Each table is built once as a :class:`Table` (header, rows of cells); :func:`markdown_table`
writes it as markdown, the ``table`` macro of ``templates/_tables.html`` as HTML
(:mod:`circuit_insights.report.render`). A cell is a string, or a mapping with a ``kind`` that
the macro draws (a metric cell with its CI and tooltip, a flagged count).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from circuit_insights.core.errors import InputError
from circuit_insights.report.paper import RULE_METHODS, RULE_METRICS, paper_scores_table
from circuit_insights.report.quality import DESCRIPTION_FLAGS
from circuit_insights.report.rule_comparison import CLASSIFICATIONS
from circuit_insights.report.scores import order_metrics
from circuit_insights.report.stats import MIN_FEATURES_FOR_CI
from circuit_insights.report.values import DASH, fixed, percent

#: Caption of the paper's figures under the metric table.
PAPER_SCORES_CAPTION = "Paper figures (Gemma-2-2B transcoders; secondhand, see docs/method.md)"


@dataclass(frozen=True)
class Table:
    """A table to show: ``header`` (one cell per column), ``rows`` (as many cells each),
    ``groups``: an extra header row above ``header`` of (label, column span) pairs; in HTML also
    its ``caption`` and ``css_class``."""

    header: list[str]
    rows: list[list[Any]]
    groups: list[tuple[str, int]] | None = None
    caption: str | None = None
    css_class: str = "table"

    def __post_init__(self) -> None:
        for row in self.rows:
            if len(row) != len(self.header):
                raise InputError(
                    f"table row {list(row)} has {len(row)} cells, not {len(self.header)}"
                )


def _escape_markdown(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(
    header: Sequence[Any], rows: Sequence[Sequence[Any]], align: Sequence[str] | None = None
) -> str:
    """A GitHub-flavoured markdown table; ``align`` per column: ``l``, ``r`` or ``c``."""
    marks = {"l": ":---", "r": "---:", "c": ":---:"}
    align = list(align) if align is not None else ["l"] * len(header)
    lines = [
        "| " + " | ".join(_escape_markdown(h) for h in header) + " |",
        "|" + "|".join(marks.get(a, "---") for a in align) + "|",
    ]
    for row in rows:
        if len(row) != len(header):
            raise InputError(
                f"markdown table row {list(row)} has {len(row)} cells, not {len(header)}"
            )
        lines.append("| " + " | ".join(_escape_markdown(str(c)) for c in row) + " |")
    return "\n".join(lines) + "\n"


# --- the metric table in the paper's form --------------------------------------------------------


def _has_ci(row: Mapping[str, Any]) -> bool:
    """Whether a cell rests on enough features for its CI to be shown."""
    return int(row["n"]) >= MIN_FEATURES_FOR_CI and math.isfinite(float(row["ci_low"]))


def _cell_text(row: Mapping[str, Any], digits: int) -> str:
    missing = f", {int(row['n_missing'])} missing" if int(row["n_missing"]) else ""
    degenerate = int(row.get("n_degenerate", 0) or 0)
    missing = (f", {degenerate} degenerate as 0" if degenerate else "") + missing
    if int(row["n"]) == 0:
        return f"{DASH} (n=0{missing})"
    if not _has_ci(row):
        return f"{fixed(row['mean'], digits)} (n={int(row['n'])}{missing}; too few for a CI)"
    ci = f"[{fixed(row['ci_low'], digits)}, {fixed(row['ci_high'], digits)}]"
    return f"{fixed(row['mean'], digits)} {ci} (n={int(row['n'])}{missing})"


def row_label(
    model: str,
    variant: str,
    several_models: bool,
    sources: Mapping[str, str] | None = None,
) -> str:
    """A variant's row label: ``model / variant`` when a table holds several models; an
    imported variant (``sources``: variant -> where its explanations came from) is marked
    ``variant (imported: source)``."""
    label = f"{model} / {variant}" if several_models else variant
    if sources and variant in sources:
        label += f" (imported: {sources[variant]})"
    return label


def metric_grid(
    stats: pd.DataFrame, *, digits: int = 2, sources: Mapping[str, str] | None = None
) -> pd.DataFrame:
    """:func:`~circuit_insights.report.stats.metric_table` in the paper's form: one row per
    variant (``model / variant`` when there are several models), columns a (layer, metric)
    MultiIndex, cells ``"mean [ci_low, ci_high] (n=N, M missing)"``, without the CI below
    :data:`MIN_FEATURES_FOR_CI` features; ``— (n=0)`` where a variant has no row; imported
    variants marked with their ``sources`` (:func:`row_label`)."""
    if stats.empty:
        return pd.DataFrame()
    several = stats["model"].nunique() > 1
    columns = sorted(
        {(int(r.layer), str(r.metric)) for r in stats.itertuples()},
        key=lambda c: (c[0], order_metrics(stats["metric"]).index(c[1])),
    )
    labels: list[str] = []
    cells: dict[str, dict[tuple[int, str], str]] = {}
    for row in stats.to_dict("records"):
        label = row_label(str(row["model"]), str(row["variant"]), several, sources)
        if label not in cells:
            labels.append(label)
            cells[label] = {}
        cells[label][(int(row["layer"]), str(row["metric"]))] = _cell_text(row, digits)
    index = pd.MultiIndex.from_tuples(columns, names=["layer", "metric"])
    data = [[cells[label].get(column, f"{DASH} (n=0)") for column in columns] for label in labels]
    return pd.DataFrame(data, index=pd.Index(labels, name="variant"), columns=index)


def metric_grid_markdown(
    stats: pd.DataFrame, *, digits: int = 2, sources: Mapping[str, str] | None = None
) -> str:
    """:func:`metric_grid` as a markdown table (column names ``L<layer> <metric>``)."""
    grid = metric_grid(stats, digits=digits, sources=sources)
    if grid.empty:
        return "_No scores._\n"
    columns = [(int(layer), str(metric)) for layer, metric in grid.columns]
    labels = [str(i) for i in grid.index]
    header = ["variant"] + [f"L{layer} {metric}" for layer, metric in columns]
    rows = [[label, *grid.loc[label].tolist()] for label in labels]
    return markdown_table(header, rows, ["l"] + ["r"] * len(columns))


def _metric_cell(row: Mapping[str, Any] | None, digits: int) -> dict[str, Any]:
    """One cell of the HTML grid, for the ``cell`` macro: ``unscored`` (the variant has no score
    of this metric at this layer), ``empty`` (n=0), ``few`` (no CI) or ``ci``; ``title``: the
    reasons of its missing values."""
    if row is None:
        return {"kind": "unscored"}
    n_missing = int(row["n_missing"])
    cell: dict[str, Any] = {
        "kind": "ci",
        "title": str(row["missing_reasons"]) if n_missing else "",
        "missing": f", {n_missing} missing" if n_missing else "",
        "n": int(row["n"]),
        "mean": fixed(row["mean"], digits),
    }
    if cell["n"] == 0:
        cell["kind"] = "empty"
    elif not _has_ci(row):
        cell.update(kind="few", min_ci=MIN_FEATURES_FOR_CI)
    else:
        cell.update(low=fixed(row["ci_low"], digits), high=fixed(row["ci_high"], digits))
    return cell


def metric_grid_view(
    stats: pd.DataFrame, *, digits: int = 2, sources: Mapping[str, str] | None = None
) -> Table | None:
    """:func:`metric_grid` for HTML: a layer header row over the metric columns, each cell
    a :func:`_metric_cell` (tooltip: the reasons of its missing values); None without scores;
    imported variants marked with their ``sources``."""
    if stats.empty:
        return None
    several = stats["model"].nunique() > 1
    by_key: dict[str, dict[tuple[int, str], Mapping[str, Any]]] = {}
    labels: list[str] = []
    for row in stats.to_dict("records"):
        label = row_label(str(row["model"]), str(row["variant"]), several, sources)
        if label not in by_key:
            labels.append(label)
            by_key[label] = {}
        by_key[label][(int(row["layer"]), str(row["metric"]))] = row
    metric_order = order_metrics(stats["metric"])
    columns = sorted(
        {key for cells in by_key.values() for key in cells},
        key=lambda c: (c[0], metric_order.index(c[1])),
    )
    layers = sorted({layer for layer, _ in columns})
    groups = [("", 1)] + [
        (f"layer {layer}", sum(1 for c in columns if c[0] == layer)) for layer in layers
    ]
    header = ["variant"] + [metric for _, metric in columns]
    rows: list[list[Any]] = [
        [label] + [_metric_cell(by_key[label].get(column), digits) for column in columns]
        for label in labels
    ]
    return Table(header, rows, groups=groups, css_class="table metric-table")


# --- the other tables ----------------------------------------------------------------------------


def shares_view(shares: pd.DataFrame) -> Table:
    """:func:`~circuit_insights.report.shares.token_based_shares` as a table."""
    header = [
        "model",
        "layer",
        "features",
        "validated",
        "validated share",
        "token-based",
        "token-based share",
        "paper (share token-based)",
    ]
    rows = []
    for row in shares.to_dict("records"):
        layer = row["layer"]
        paper = (
            f"{row['paper_model']}: {percent(row['paper_share'])}"
            if isinstance(row["paper_model"], str)
            else DASH
        )
        rows.append(
            [
                str(row["model"]),
                "all" if layer is None or pd.isna(layer) else str(int(layer)),
                str(int(row["n_features"])),
                str(int(row["n_validated"])),
                percent(row["validated_share"]),
                str(int(row["n_token_based"])),
                percent(row["token_based_share"]),
                paper,
            ]
        )
    return Table(header, rows, css_class="table shares-table")


def shares_markdown(shares: pd.DataFrame) -> str:
    """:func:`shares_view` as a markdown table."""
    table = shares_view(shares)
    return markdown_table(table.header, table.rows, ["l", "l", "r", "r", "r", "r", "r", "l"])


def missing_view(missing: pd.DataFrame) -> Table:
    """:func:`~circuit_insights.report.stats.missing_table` as a table."""
    header = ["model", "variant", "layer", "metric", "reason", "count"]
    rows = [
        [
            str(r.model),
            str(r.variant),
            str(int(r.layer)),
            str(r.metric),
            str(r.reason),
            str(r.count),
        ]
        for r in missing.itertuples()
    ]
    return Table(header, rows)


def missing_markdown(missing: pd.DataFrame) -> str:
    """:func:`missing_view` as a markdown table (``_None._`` when empty)."""
    table = missing_view(missing)
    return markdown_table(table.header, table.rows) if table.rows else "_None._\n"


def coverage_view(coverage: pd.DataFrame, n_features: Mapping[int, int] | None = None) -> Table:
    """:func:`circuit_insights.circuitlens.cluster_shard.cluster_coverage` as a table;
    ``n_features``: layer -> features of the layer (the WeightLens rows), to show how many of
    them were clustered at all."""
    header = [
        "layer",
        "features of the layer",
        "clustered (attributed)",
        "with a cluster",
        "clusters per feature",
        "samples",
        "noise share",
        "all noise",
    ]
    rows = []
    for row in coverage.to_dict("records"):
        layer = int(row["layer"])
        total = (n_features or {}).get(layer)
        clustered = int(row["n_features"])
        share_of_all = f" ({percent(clustered / total)})" if total else ""
        rows.append(
            [
                str(layer),
                str(total) if total is not None else DASH,
                f"{clustered}{share_of_all}",
                f"{int(row['n_features_clustered'])} ({percent(row['share_features_clustered'])})",
                fixed(row["clusters_per_feature"]),
                str(int(row["n_samples"])),
                percent(row["noise_share"]),
                percent(row["share_all_noise"]),
            ]
        )
    return Table(header, rows, css_class="table coverage-table")


def coverage_markdown(coverage: pd.DataFrame, n_features: Mapping[int, int] | None = None) -> str:
    """:func:`coverage_view` as a markdown table."""
    table = coverage_view(coverage, n_features)
    return markdown_table(table.header, table.rows, ["r"] * 8)


def paper_scores_view() -> Table:
    """The paper's FADE figures (:data:`~circuit_insights.report.paper.PAPER_SCORES`)."""
    rows = [
        [r.method, r.setting or DASH, str(r.layer), r.metric, f"{r.value:.2f}"]
        for r in paper_scores_table().itertuples()
    ]
    return Table(
        ["method", "setting", "layer", "metric", "value"], rows, caption=PAPER_SCORES_CAPTION
    )


def paper_scores_markdown() -> str:
    """:func:`paper_scores_view` as a markdown table."""
    table = paper_scores_view()
    return markdown_table(table.header, table.rows, ["l", "l", "r", "l", "r"])


def flag_counts_view(counts: pd.DataFrame) -> Table:
    """:func:`~circuit_insights.report.quality.flag_counts` as a table (a count above 0 is
    drawn as a flag)."""
    header = ["variant", "descriptions", *DESCRIPTION_FLAGS]
    rows = []
    for row in counts.to_dict("records"):
        cells: list[Any] = [str(row["variant"]), str(int(row["n"]))]
        for flag in DESCRIPTION_FLAGS:
            count = int(row[flag])
            cells.append({"kind": "flag", "count": count} if count else "0")
        rows.append(cells)
    return Table(header, rows, css_class="table flag-table")


# --- the rule-rated comparison -------------------------------------------------------------------


def _rule_cell(row: Mapping[str, Any]) -> str:
    if int(row["n"]) == 0:
        return f"{DASH} (n=0)"
    mean = fixed(row["mean"])
    if int(row["n"]) < MIN_FEATURES_FOR_CI:
        return f"{mean} (n={int(row['n'])}, no CI)"
    return f"{mean} [{fixed(row['ci_low'])}, {fixed(row['ci_high'])}] (n={int(row['n'])})"


def rule_comparison_views(table: pd.DataFrame) -> list[tuple[str, Table]]:
    """:func:`~circuit_insights.report.rule_comparison.rule_comparison_table` as one table per
    feature class: (title, table), rows method, columns (metric, layer)."""
    out = []
    for classification in CLASSIFICATIONS:
        part = table[table["classification"] == classification]
        if len(part) == 0:
            continue
        columns = sorted(
            {(str(m), int(layer)) for m, layer in zip(part["metric"], part["layer"], strict=True)},
            key=lambda c: (RULE_METRICS.index(c[0]), c[1]),
        )
        cells = {
            (str(r["variant"]), str(r["metric"]), int(r["layer"])): _rule_cell(r)
            for r in part.to_dict("records")
        }
        methods = [m for m in RULE_METHODS if m in set(part["variant"])]
        header = ["method"] + [f"{m.capitalize()} L{layer}" for m, layer in columns]
        rows: list[list[Any]] = [
            [method] + [cells.get((method, m, layer), DASH) for m, layer in columns]
            for method in methods
        ]
        out.append((classification.replace("_", "-") + " features", Table(header, rows)))
    return out


def rule_comparison_markdown(table: pd.DataFrame) -> str:
    """:func:`rule_comparison_views` as markdown: one table per feature class."""
    if len(table) == 0:
        return "No rule-rated scores.\n"
    parts = []
    for title, view in rule_comparison_views(table):
        parts += [
            f"## {title}",
            "",
            markdown_table(view.header, view.rows, ["l"] + ["r"] * (len(view.header) - 1)),
        ]
    return "\n".join(parts) + "\n"
