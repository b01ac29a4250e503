"""Neuronpedia's explanation export: read into the tidy frame, write ours in its shape.

An export is a list of explanation objects, one per explanation, with the fields of
Neuronpedia's ``Explanation`` table that its export returns (hijohnnylin/neuronpedia:
``apps/webapp/lib/db/explanation.ts`` ``exportExplanations``, the ``Explanation`` model of
``apps/webapp/prisma/schema.prisma``, the ``Explanation`` schema of ``apps/webapp/lib/swagger.ts``):
``modelId``, ``layer`` (the *source id*, e.g. ``12-gemmascope-transcoder-16k``), ``index`` (the
feature, a string), ``description``, ``typeName`` (the explanation method) and
``explanationModelName`` (the explainer). Read from a ``.json`` array (the export endpoint's
answer), or from ``.jsonl`` / ``.jsonl.gz`` files with one object a line (the dataset exports,
``<model>/<source>/explanations/batch-<n>.jsonl.gz``, written by
``utils/neuronpedia-utils/neuronpedia_utils/export-data.py``), or a folder of those.

A source id is ``{layer}-{source set}`` (``getLayerNumFromSource`` / ``getSourceSetNameFromSource``
in ``apps/webapp/lib/utils/source.ts``); the layer is looked up in the explicit table
``TranscoderSet.source_ids`` (one id per configured layer), so a source of another set, of a layer
not configured, or with a ``__`` suffix is refused, naming the entry.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from circuit_insights.core.errors import InputError
from circuit_insights.core.io import atomic_path
from circuit_insights.interop.table import exported_explanations, imported_frame, score_table
from circuit_insights.interop.target import TranscoderSet

NAME = "neuronpedia"
#: Where a Neuronpedia feature page lives (``apps/webapp/app/[modelId]/[layer]/[index]``).
FEATURE_URL = "https://www.neuronpedia.org/{model}/{source_id}/{index}"


def feature_url(model: str, source_id: str, index: int) -> str:
    """The Neuronpedia page of feature ``index`` of source ``source_id`` of ``model``."""
    return FEATURE_URL.format(model=model, source_id=source_id, index=index)


def source_layer(source_id: str, *, target: TranscoderSet, where: str) -> int:
    """The configured layer of Neuronpedia source ``source_id``; :class:`InputError` (prefixed
    with ``where``) saying which part is wrong when ``target.source_ids`` has no such id."""
    table = target.source_ids
    if source_id in table:
        return table[source_id]
    head, _, rest = source_id.partition("-")
    known = ", ".join(table)
    if not head.isdigit() or not rest:
        problem = "is not a source id of the form '{layer}-{source set}'"
    elif rest != target.source_set:
        problem = f"is of source set {rest!r}, not {target.source_set!r}"
    else:
        problem = f"is layer {int(head)}, not a configured layer"
    raise InputError(f"{where}: source {source_id!r} {problem} (known sources: {known})")


def read_neuronpedia(path: str | os.PathLike[str], *, target: TranscoderSet) -> pd.DataFrame:
    """The explanations of the export at ``path`` as the tidy frame (``interop.table``).

    Every entry must be an object with ``modelId`` (``target``'s model or an alias), ``layer``
    (a source of ``target.source_ids``), ``index`` (a feature below ``target.width``) and a
    string ``description``; anything else raises :class:`InputError` naming the file and the
    entry. ``explainer_model`` is ``explanationModelName`` and ``method`` ``typeName`` ("" when
    null).
    """
    rows: list[dict[str, Any]] = []
    for where, entry in _entries(Path(path)):
        if not isinstance(entry, dict):
            raise InputError(f"{where}: not an explanation object")
        missing = [k for k in ("modelId", "layer", "index", "description") if k not in entry]
        if missing:
            raise InputError(f"{where}: not a Neuronpedia explanation (no {', '.join(missing)})")
        if entry["modelId"] not in target.model_names:
            raise InputError(
                f"{where}: modelId {entry['modelId']!r} is not the configured model "
                f"{target.model!r}"
            )
        source_id = str(entry["layer"])
        layer = source_layer(source_id, target=target, where=where)
        index = str(entry["index"]).strip()
        if not index.isdigit():
            raise InputError(f"{where}: index {entry['index']!r} is not a feature index")
        target.check_feature(layer, int(index), where)
        if not isinstance(entry["description"], str):
            raise InputError(f"{where}: description {entry['description']!r} is not a string")
        rows.append(
            {
                "layer": layer,
                "feature": int(index),
                "description": entry["description"],
                "source": NAME,
                "explainer_model": entry.get("explanationModelName") or "",
                "source_id": source_id,
                "method": entry.get("typeName") or "",
            }
        )
    return imported_frame(rows)


def neuronpedia_entries(
    explanations: pd.DataFrame,
    *,
    target: TranscoderSet,
    scores: pd.DataFrame | None = None,
    score_model: str = "",
) -> list[dict[str, Any]]:
    """Our explanations as Neuronpedia explanation objects, one per (feature, variant) with a
    final description: ``modelId`` ``target.model``, ``layer`` the source id, ``index``,
    ``description``, ``typeName`` the variant, ``explanationModelName`` the LLM (null for the
    LLM-free variants). With ``scores``, each object also has ``scores``: objects of
    Neuronpedia's ``ExplanationScore`` fields ``value``, ``explanationScoreTypeName`` (the
    metric) and ``explanationScoreModelName`` (``score_model``, null when "")."""
    rows = exported_explanations(explanations, what="Neuronpedia export")
    table = score_table(scores, what="Neuronpedia export")
    entries: list[dict[str, Any]] = []
    for row in rows.itertuples(index=False):
        layer, feature, variant = int(row.layer), int(row.feature), str(row.variant)
        target.check_feature(layer, feature, "Neuronpedia export")
        entry: dict[str, Any] = {
            "modelId": target.model,
            "layer": target.source_id(layer),
            "index": str(feature),
            "description": str(row.description),
            "typeName": variant,
            "explanationModelName": str(row.llm_model) or None,
        }
        if scores is not None:
            entry["scores"] = [
                {
                    "value": value,
                    "explanationScoreTypeName": metric,
                    "explanationScoreModelName": score_model or None,
                }
                for metric, value in table.get((layer, feature, variant), [])
            ]
        entries.append(entry)
    return entries


def write_neuronpedia(
    explanations: pd.DataFrame,
    path: str | os.PathLike[str],
    *,
    target: TranscoderSet,
    scores: pd.DataFrame | None = None,
    score_model: str = "",
) -> None:
    """Write :func:`neuronpedia_entries` as a JSON array at ``path`` (atomically)."""
    entries = neuronpedia_entries(
        explanations, target=target, scores=scores, score_model=score_model
    )
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(entries, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _entries(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, entry) of every explanation object in the file or folder at ``path``."""
    if path.is_dir():
        files = sorted(
            p for p in path.iterdir() if p.name.endswith((".json", ".jsonl", ".jsonl.gz"))
        )
        if not files:
            raise InputError(f"Neuronpedia export {path}: the folder has no .json / .jsonl files")
        for file in files:
            yield from _entries(file)
        return
    where = f"Neuronpedia export {path}"
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        text = raw.decode("utf-8")
    except FileNotFoundError as exc:
        raise InputError(f"{where}: no such file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{where}: not a text or gzip file ({exc})") from exc
    if path.name.endswith((".jsonl", ".jsonl.gz")):
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                yield f"{where}, line {number}", _json(line, f"{where}, line {number}")
        return
    data = _json(text, where)
    if not isinstance(data, list):
        raise InputError(f"{where}: not an explanation export (the JSON is not a list)")
    for number, entry in enumerate(data):
        yield f"{where}, entry {number}", entry


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: not JSON ({exc})") from exc
