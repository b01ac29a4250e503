"""The report reads the files its rule declares: a stale folder under results/ does not show up."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.test_report import MODEL, write_fixture_run


def test_only_declared_files_and_their_models_are_reported(tmp_path: Path) -> None:
    from circuit_insights.report.html import build_report

    results = tmp_path / "results"
    write_fixture_run(results)
    shutil.copytree(results / MODEL, results / "stale-model")  # left over from an earlier run
    declared = [str(p) for p in (results / MODEL).rglob("*.parquet") if "corpus" not in p.parts]

    index = build_report(results, tmp_path / "declared", files=declared, n_boot=20)
    pages = {p.relative_to(index.parent).parts[0] for p in index.parent.rglob("*.html")}
    assert "stale-model" not in index.read_text() and not any("stale" in p for p in pages)

    every = build_report(results, tmp_path / "globbed", n_boot=20)  # no files: the whole folder
    assert "stale-model" in every.read_text()

    without_layer1 = [f for f in declared if "layer1" not in Path(f).parts]
    partial = build_report(results, tmp_path / "partial", files=without_layer1, n_boot=20)
    feature_pages = {p.parent.name for p in partial.parent.rglob("feature*.html")}
    assert feature_pages == {"layer0"}  # layer 1's tables were not declared, so not read
