"""Explanations written elsewhere as rows of an imported variant, and where each came from.

An import (``models.<m>.imports.<name>``) is read by its format's reader into the tidy frame of
``interop.table`` (``IMPORTED_COLUMNS``: layer, feature, description, source, explainer_model,
source_id, method). :func:`import_rows` turns it into explanation rows
(``data.schemas.EXPLANATIONS_SCHEMA``) of the variant :func:`variants.imported_variant` makes,
through :func:`circuit_insights.explain.run.explain_shard` like every variant: one final row per
feature of every given layer, ``imported`` with the file's first explanation of the feature (in
file order; ``raw_text`` says how many there were), or ``missing_input`` saying that the file has
none. :func:`imported_sources` reads the provenance back from such rows (the summary and the
report mark imported variants with it).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

import pandas as pd

from circuit_insights.core.errors import InputError
from circuit_insights.data.schemas import EXPLANATIONS_SCHEMA
from circuit_insights.explain.facts import FeatureInputs, ImportedText
from circuit_insights.explain.kinds import Imported
from circuit_insights.explain.run import explain_shard
from circuit_insights.explain.variants import with_imports

__all__ = ["ImportedSource", "import_rows", "imported_inputs", "imported_sources"]

#: Columns of an imported-explanations frame that :func:`imported_inputs` reads.
_NEEDED = ("layer", "feature", "description", "source", "explainer_model", "source_id", "method")


def imported_inputs(
    frame: pd.DataFrame,
    *,
    variant: str,
    layer: int,
    features: Iterable[int],
    method: str | None = None,
) -> dict[int, FeatureInputs]:
    """:class:`FeatureInputs` of ``features`` of ``layer``, each holding ``variant``'s imported
    explanation where ``frame`` (an ``interop.table`` frame) has one: its first row of the
    feature (file order), with the number of rows; only rows whose ``method`` is ``method``
    when given."""
    missing = [c for c in _NEEDED if c not in frame.columns]
    if missing:
        raise InputError(f"imported explanations of {variant!r} lack the columns {missing}")
    rows = frame[frame["layer"].astype(int) == int(layer)]
    if method is not None:
        rows = rows[rows["method"].astype(str) == method]
    texts: dict[int, ImportedText] = {}
    counts = rows.groupby("feature").size().to_dict() if len(rows) else {}
    for row in rows.itertuples(index=False):
        feature = int(row.feature)
        if feature in texts:
            continue
        texts[feature] = ImportedText(
            description=str(row.description),
            source=str(row.source),
            explainer_model=str(row.explainer_model or ""),
            source_id=str(row.source_id or ""),
            method=str(row.method or ""),
            n_explanations=int(counts[row.feature]),
        )
    return {
        int(f): FeatureInputs(
            layer=int(layer),
            feature=int(f),
            imported=((variant, texts[int(f)]),) if int(f) in texts else (),
        )
        for f in features
    }


def import_rows(
    frame: pd.DataFrame,
    variant: Imported,
    *,
    layers: Iterable[int],
    width: int,
    method: str | None = None,
) -> pd.DataFrame:
    """``EXPLANATIONS_SCHEMA`` rows of ``variant`` for every feature ``[0, width)`` of every one
    of ``layers``: the imported explanation (``step`` ``imported``) or a ``missing_input`` row
    whose ``error`` names the file. Sorted by layer, then feature."""
    table = with_imports([variant])
    parts = []
    for layer in sorted(set(int(layer) for layer in layers)):
        inputs = imported_inputs(
            frame, variant=variant.name, layer=layer, features=range(width), method=method
        )
        parts.append(explain_shard(None, inputs, [variant.name], table=table))
    if not parts:
        return pd.DataFrame(columns=EXPLANATIONS_SCHEMA.names)
    return pd.concat(parts, ignore_index=True)


class ImportedSource(dict[str, str]):
    """Where an imported variant's explanations came from: ``source`` (the format), ``file``,
    ``explainer_model`` (the models named, comma-separated) and ``method``."""

    def label(self) -> str:
        """One line, e.g. ``neuronpedia: exports/gemma.json, by gpt-4o-mini``."""
        text = f"{self['source']}: {self['file']}" if self.get("file") else self["source"]
        return text + (f", by {self['explainer_model']}" if self.get("explainer_model") else "")


def imported_sources(explanations: pd.DataFrame | None) -> dict[str, ImportedSource]:
    """variant -> :class:`ImportedSource` of every imported variant among ``explanations``
    (rows of ``step`` ``imported``, their provenance in ``raw_text``); {} when none."""
    if explanations is None or not {"variant", "step", "raw_text"} <= set(explanations.columns):
        return {}
    rows = explanations[explanations["step"] == Imported.step]
    found: dict[str, ImportedSource] = {}
    for variant, group in rows.groupby("variant", sort=True):
        provenance: list[Mapping[str, object]] = []
        for text in group["raw_text"].dropna().unique():
            try:
                provenance.append(json.loads(text))
            except json.JSONDecodeError:
                continue
        if not provenance:
            continue
        models = sorted({str(p.get("explainer_model") or "") for p in provenance} - {""})
        methods = sorted({str(p.get("method") or "") for p in provenance} - {""})
        found[str(variant)] = ImportedSource(
            source=str(provenance[0].get("source") or ""),
            file=str(provenance[0].get("file") or ""),
            explainer_model=", ".join(models),
            method=", ".join(methods),
        )
    return found
