"""The tidy frame every explanation import returns, and the rows every export writes.

Imported explanations (:data:`IMPORTED_COLUMNS`), one row per explanation in the file:

- ``layer``, ``feature``: the transcoder feature (found from ``source_id`` by the format's
  explicit table, checked against the configured layers and width);
- ``description``: the explanation's text, as it came;
- ``source``: the format it came from (``neuronpedia``, ``delphi``);
- ``explainer_model``: the model that wrote it ("" when the file does not say);
- ``source_id``: where the format put it (Neuronpedia's source id such as
  ``12-gemmascope-transcoder-16k``, delphi's module such as ``layers.12.mlp``);
- ``method``: how it was made, where the format says (Neuronpedia's ``typeName``; "" otherwise).

Exports read our explanations (``data.schemas.EXPLANATIONS_SCHEMA`` rows: ``layer``,
``feature``, ``variant``, ``description``, and ``llm_model`` / ``is_final`` where present) and,
optionally, scores in the summary's long form (``layer``, ``feature``, ``variant``, ``metric``,
``value``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from circuit_insights.core.errors import InputError

#: Columns of an imported-explanations frame, in order.
IMPORTED_COLUMNS: tuple[str, ...] = (
    "layer",
    "feature",
    "description",
    "source",
    "explainer_model",
    "source_id",
    "method",
)
#: Columns an export needs of the explanations, and of the scores.
EXPLANATION_COLUMNS: tuple[str, ...] = ("layer", "feature", "variant", "description")
SCORE_COLUMNS: tuple[str, ...] = ("layer", "feature", "variant", "metric", "value")

#: (layer, feature, variant) -> [(metric, value), ...]
Scores = dict[tuple[int, int, str], list[tuple[str, float]]]


def imported_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """The tidy frame of ``rows`` (each a mapping with :data:`IMPORTED_COLUMNS`), sorted by
    (layer, feature) keeping the file order within a feature."""
    frame = pd.DataFrame(list(rows), columns=list(IMPORTED_COLUMNS))
    frame = frame.astype({"layer": "int64", "feature": "int64"})
    for column in IMPORTED_COLUMNS[2:]:
        frame[column] = frame[column].astype(object)
    return frame.sort_values(["layer", "feature"], kind="stable").reset_index(drop=True)


def exported_explanations(explanations: pd.DataFrame, *, what: str) -> pd.DataFrame:
    """The explanations an export writes: final rows (``is_final`` where the column exists) with
    a description, columns ``layer``, ``feature``, ``variant``, ``description``, ``llm_model``
    ("" where absent), sorted by (layer, feature, variant). ``what`` names the input in errors."""
    missing = [c for c in EXPLANATION_COLUMNS if c not in explanations.columns]
    if missing:
        raise InputError(f"{what}: explanations lack the columns {missing}")
    rows = explanations
    if "is_final" in rows.columns:
        rows = rows[rows["is_final"].astype(bool)]
    rows = rows[rows["description"].notna() & (rows["description"].astype(str) != "")]
    out = pd.DataFrame(
        {
            "layer": rows["layer"].astype("int64"),
            "feature": rows["feature"].astype("int64"),
            "variant": rows["variant"].astype(str),
            "description": rows["description"].astype(str),
            "llm_model": (
                rows["llm_model"].fillna("").astype(str) if "llm_model" in rows.columns else ""
            ),
        }
    )
    return out.sort_values(["layer", "feature", "variant"], kind="stable").reset_index(drop=True)


def score_table(scores: pd.DataFrame | None, *, what: str) -> Scores:
    """``scores`` by (layer, feature, variant): the (metric, value) pairs with a value, sorted
    by metric. ``None`` gives ``{}``."""
    if scores is None:
        return {}
    missing = [c for c in SCORE_COLUMNS if c not in scores.columns]
    if missing:
        raise InputError(f"{what}: scores lack the columns {missing}")
    table: Scores = {}
    for row in scores[scores["value"].notna()].itertuples(index=False):
        key = (int(row.layer), int(row.feature), str(row.variant))
        table.setdefault(key, []).append((str(row.metric), float(row.value)))
    return {key: sorted(values) for key, values in table.items()}


def chosen_descriptions(
    explanations: pd.DataFrame, order: Iterable[str]
) -> dict[tuple[int, int], tuple[str, str]]:
    """(layer, feature) -> (variant, description): for each feature, the final description of
    the first variant of ``order`` that has one (non-empty); features with none are absent.
    ``explanations``: rows with ``layer``, ``feature``, ``variant``, ``description`` (and
    ``is_final`` where present), ours or imported."""
    rows = exported_explanations(explanations, what="labels")
    rank = {variant: i for i, variant in enumerate(dict.fromkeys(order))}
    rows = rows[rows["variant"].isin(list(rank))]
    rows = rows.assign(_rank=rows["variant"].map(rank)).sort_values(
        ["layer", "feature", "_rank"], kind="stable"
    )
    first = rows.drop_duplicates(["layer", "feature"])
    return {
        (int(r.layer), int(r.feature)): (str(r.variant), str(r.description))
        for r in first.itertuples(index=False)
    }
