"""The descriptions rule delphi_llm hands the LLM: FADE's features, ours and the imported."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from circuit_insights.pipeline.stages.delphi_llm import descriptions_to_rate

LAYER = 3


def explanations(rows: list[tuple[int, str, str]], path: Path) -> str:
    """An explanations file of final rows ``(feature, variant, description)``, plus one
    non-final row per feature that must never be rated."""
    frame = pd.DataFrame(
        [(LAYER, f, v, d, True) for f, v, d in rows]
        + [(LAYER, f, v, "a cluster's text", False) for f, v, _ in rows],
        columns=["layer", "feature", "variant", "description", "is_final"],
    )
    frame.to_parquet(path)
    return str(path)


def selection(selected: dict[int, str], path: Path) -> str:
    """A selection file: feature -> reason ("named" or "drawn"), features 0-9 of the shard."""
    frame = pd.DataFrame(
        {
            "feature": list(range(10)),
            "selected": [f in selected for f in range(10)],
            "reason": [selected.get(f, "") for f in range(10)],
        }
    )
    frame.to_parquet(path)
    return str(path)


def test_ours_on_fades_features_and_the_imported_where_they_describe_them(tmp_path):
    ours = [
        (f, v, f"{v} of {f}")
        for f in (1, 2, 4, 7)
        for v in ("maxact", "cl_full")
        if (f, v) != (4, "cl_full")  # 4 lacks a compared variant: not compared
    ]
    theirs = pd.DataFrame(
        {
            "layer": [LAYER, LAYER, LAYER, LAYER, 8],
            "feature": [1, 2, 7, 9, 1],
            "variant": ["np"] * 5,
            "description": ["their 1", "", "their 7", "their 9", "layer 8"],
            "is_final": [True] * 5,
        }
    )
    theirs.to_parquet(tmp_path / "np.parquet")
    rows = descriptions_to_rate(
        layer=LAYER,
        explanations_path=explanations(ours, tmp_path / "e.parquet"),
        selection_path=selection(
            {1: "drawn", 2: "drawn", 4: "drawn", 7: "named"}, tmp_path / "s.parquet"
        ),
        variants=["maxact", "cl_full"],
        limit=1,  # one drawn feature (1) besides the named one (7)
        imported_paths=[str(tmp_path / "np.parquet")],
    )
    got = list(zip(rows["feature"], rows["variant"], rows["description"], strict=True))
    assert got == [
        (1, "maxact", "maxact of 1"),
        (1, "cl_full", "cl_full of 1"),
        (1, "np", "their 1"),
        (7, "maxact", "maxact of 7"),
        (7, "cl_full", "cl_full of 7"),
        (7, "np", "their 7"),
    ]  # 2: over the limit; 9: not compared; their empty 2 and layer 8's row: never


def test_without_imports_only_ours_and_no_feature_when_none_is_compared(tmp_path):
    rows = descriptions_to_rate(
        layer=LAYER,
        explanations_path=explanations([(5, "maxact", "m")], tmp_path / "e.parquet"),
        selection_path=selection({5: "drawn"}, tmp_path / "s.parquet"),
        variants=["maxact", "cl_full"],
        limit=None,
    )
    assert rows.empty and list(rows.columns) == ["layer", "feature", "variant", "description"]
