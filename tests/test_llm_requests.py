"""LLM requests per stage in the summary, and the run's last lines about failed requests."""

from __future__ import annotations

import pandas as pd

from circuit_insights.report.llm_requests import (
    failure_lines,
    llm_request_counts,
    llm_requests_markdown,
    run_end_lines,
)


def _explanations() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "layer": [3, 3, 3, 3, 3, 3, 8],
            "variant": [
                "maxact",
                "cl_full",
                "cl_full",
                "weightlens_rule",
                "maxact",
                "cl_input",
                "maxact",
            ],
            "parse_status": ["ok", "error", "unparseable", "ok", "missing_input", "empty", "ok"],
        }
    )


def _evaluations() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "layer": [3, 3, 3],
            "rater": ["llm", "llm", "rule"],
            "llm_calls": [20, 10, 0],
            "llm_failed_calls": [3, 0, 0],
            "llm_error_calls": [1, 0, 0],
        }
    )


def test_counts_take_requests_of_llm_variants_and_split_failed_from_unusable():
    counts = llm_request_counts(_explanations(), _evaluations())
    rows = {(r.stage, r.layer): (r.requests, r.failed, r.unusable) for r in counts.itertuples()}
    # explain layer 3: maxact ok, cl_full error, cl_full unparseable, cl_input empty (the rule
    # variant and the missing input are no requests)
    assert rows == {
        ("explain", 3): (4, 1, 2),
        ("explain", 8): (1, 0, 0),
        ("evaluate", 3): (30, 1, 2),
    }
    markdown = llm_requests_markdown(counts)
    assert markdown.startswith("2 of 35 LLM requests failed")
    assert "| explain | 3 | 4 | 1 | 2 |" in markdown


def test_the_run_ends_with_the_failures_or_a_line_that_none_failed(tmp_path):
    counts = llm_request_counts(_explanations(), _evaluations())
    failing = tmp_path / "a.parquet"
    counts.to_parquet(failing)
    lines = run_end_lines([("m", str(failing)), ("absent", str(tmp_path / "none.parquet"))])
    assert lines[0] == "WARNING: LLM requests failed in this run:"
    assert lines[1:] == failure_lines("m", counts)
    assert lines[1].startswith("m: 1 of 4 LLM requests of explain layer 3 failed")
    clean = tmp_path / "b.parquet"
    counts.assign(failed=0).to_parquet(clean)
    assert run_end_lines([("m", str(clean))]) == [
        "LLM requests: none failed (35 sent or read from the cache)"
    ]
    assert run_end_lines([]) == []
