"""The report reads the files its rule declares: a stale folder under results/ does not show up,
and no folder is listed to find more."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from circuit_insights.core.errors import InputError
from tests.test_report import MODEL, declared, write_fixture_run


def test_only_declared_files_and_their_models_are_reported(tmp_path: Path) -> None:
    from circuit_insights.report.html import build_report

    results = tmp_path / "results"
    write_fixture_run(results)
    shutil.copytree(results / MODEL, results / "stale-model")  # left over from an earlier run
    files = sorted((results / MODEL).glob("layer*/**/*.parquet"))

    index = build_report(declared(results, files), tmp_path / "declared", n_boot=20)
    pages = {p.relative_to(index.parent).parts[0] for p in index.parent.rglob("*.html")}
    assert "stale-model" not in index.read_text() and not any("stale" in p for p in pages)

    both = declared(results, sorted(results.glob("*/layer*/**/*.parquet")))
    assert [inputs.model for inputs in both] == [MODEL, "stale-model"]  # declared: reported
    every = build_report(both, tmp_path / "both", n_boot=20)
    assert "stale-model" in every.read_text()

    without_layer1 = [f for f in files if "layer1" not in f.parts]
    partial = build_report(declared(results, without_layer1), tmp_path / "partial", n_boot=20)
    feature_pages = {p.parent.name for p in partial.parent.rglob("feature*.html")}
    assert feature_pages == {"layer0"}  # layer 1's tables were not declared, so not read


def test_a_results_folder_is_not_a_report_source(tmp_path: Path) -> None:
    from circuit_insights.report.html import build_report

    write_fixture_run(tmp_path / "results")
    with pytest.raises(InputError, match="declared inputs"):
        build_report(tmp_path / "results", tmp_path / "report")  # type: ignore[arg-type]
