"""How many LLM requests each stage sent and how many the server failed, per layer.

A *failed* request got no answer (``parse_status`` ``error``: the server answered with an error
after the retries); an *unusable* one got an answer that could not be used (empty or
unparseable). With ``llm.max_failed_share`` 0 (the default) a job with a failed request fails,
so a finished run shows failures only where a tolerance was configured. The workflow's last lines
repeat the failures (:func:`failure_lines`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from circuit_insights.explain.variants import LLM_VARIANTS
from circuit_insights.report.tables import Table

COLUMNS = ["stage", "layer", "requests", "failed", "unusable"]
#: ``parse_status`` values of explanation rows that are LLM requests.
_ASKED = ("ok", "empty", "unparseable", "error")


def llm_request_counts(
    explanations: pd.DataFrame | None,
    evaluations: pd.DataFrame | None,
    delphi_scores: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per (stage, layer): ``explain`` from the explanation rows of the LLM variants
    (a row per request), ``evaluate`` from the LLM-rated FADE rows (``llm_calls``,
    ``llm_error_calls``, and the unusable rest of ``llm_failed_calls``), ``delphi`` from the
    LLM-rated delphi scores rows of the ``all`` group (the usage of a (feature, variant, score)
    repeats on its per-quantile rows)."""
    rows = []
    if explanations is not None and len(explanations):
        asked = explanations[
            explanations["variant"].isin(LLM_VARIANTS) & explanations["parse_status"].isin(_ASKED)
        ]
        for layer, part in asked.groupby("layer"):
            status = part["parse_status"]
            rows.append(
                {
                    "stage": "explain",
                    "layer": int(layer),
                    "requests": len(part),
                    "failed": int((status == "error").sum()),
                    "unusable": int(status.isin(("empty", "unparseable")).sum()),
                }
            )
    if (
        evaluations is not None
        and len(evaluations)
        and {"llm_calls", "llm_failed_calls"} <= set(evaluations.columns)
    ):
        rated = evaluations[evaluations["rater"] != "rule"]
        for layer, part in rated.groupby("layer"):
            errors = part["llm_error_calls"] if "llm_error_calls" in part else 0 * part["llm_calls"]
            rows.append(
                {
                    "stage": "evaluate",
                    "layer": int(layer),
                    "requests": int(part["llm_calls"].sum()),
                    "failed": int(errors.sum()),
                    "unusable": int((part["llm_failed_calls"] - errors).sum()),
                }
            )
    if (
        delphi_scores is not None
        and len(delphi_scores)
        and {"llm_calls", "llm_failed_calls", "group", "rater"} <= set(delphi_scores.columns)
    ):
        rated = delphi_scores[(delphi_scores["rater"] == "llm") & (delphi_scores["group"] == "all")]
        for layer, part in rated.groupby("layer"):
            errors = part["llm_error_calls"] if "llm_error_calls" in part else 0 * part["llm_calls"]
            rows.append(
                {
                    "stage": "delphi",
                    "layer": int(layer),
                    "requests": int(part["llm_calls"].sum()),
                    "failed": int(errors.sum()),
                    "unusable": int((part["llm_failed_calls"] - errors).sum()),
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS)


def llm_requests_markdown(counts: pd.DataFrame) -> str:
    """The counts as a markdown table, with a line saying whether any request failed."""
    if counts.empty:
        return "No LLM requests.\n"
    failed = int(counts["failed"].sum())
    lines = [
        f"{failed} of {int(counts['requests'].sum())} LLM requests failed "
        "(no answer from the server); unusable: an answer that could not be parsed.",
        "",
        "| stage | layer | requests | failed | unusable |",
        "|:---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r.stage} | {r.layer} | {r.requests} | {r.failed} | {r.unusable} |"
        for r in counts.itertuples()
    ]
    return "\n".join(lines) + "\n"


def llm_requests_view(counts: pd.DataFrame) -> Table:
    """The counts as a report table (a failed count above 0 drawn as a flag)."""
    rows: list[list[Any]] = [
        [
            str(r.stage),
            str(int(r.layer)),
            str(int(r.requests)),
            {"kind": "flag", "count": int(r.failed)} if r.failed else "0",
            str(int(r.unusable)),
        ]
        for r in counts.itertuples()
    ]
    return Table(COLUMNS, rows, css_class="table flag-table")


def failure_lines(model: str, counts: pd.DataFrame) -> list[str]:
    """Lines for the end of a run: each (stage, layer) of ``model`` with failed requests."""
    return [
        f"{model}: {r.failed} of {r.requests} LLM requests of {r.stage} layer {r.layer} failed "
        "(their rows are missing or marked error; see the job logs)"
        for r in counts.itertuples()
        if r.failed
    ]


def run_end_lines(summaries: Sequence[tuple[str, str]]) -> list[str]:
    """The last lines of a run from each model's ``llm_requests.parquet`` (``(model, path)``;
    missing files are skipped): the failures, or one line saying none failed."""
    from pathlib import Path

    lines: list[str] = []
    total = 0
    for model, path in summaries:
        if not Path(path).is_file():
            continue
        counts = pd.read_parquet(path)
        total += int(counts["requests"].sum())
        lines += failure_lines(model, counts)
    if lines:
        return ["WARNING: LLM requests failed in this run:", *lines]
    return [f"LLM requests: none failed ({total} sent or read from the cache)"] if total else []
