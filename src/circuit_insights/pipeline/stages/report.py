"""Rule report: the static HTML report of the run."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from circuit_insights.core.errors import InputError
from circuit_insights.pipeline import paths
from circuit_insights.report.html import build_report
from circuit_insights.report.inputs import ModelInputs

log = logging.getLogger(__name__)

#: Folder of each per-shard table under ``{results}/{model}/layer{L}/`` (``pipeline.paths``) ->
#: the report's name for it (``circuit_insights.report.inputs.TABLES``).
REPORT_TABLES: dict[str, str] = {
    "weightlens": "weightlens",
    "evaluation": "evaluation",
    "evaluation-rules": "rule_evaluation",
    "explanations": "explanations",
    "clusters": "clusters",
    "samples": "samples",
    "contributions": "contributions",
    "twera": "twera",
    "delphi-rule": "delphi",
    "delphi-llm": "delphi",
}
_LAYER_DIR = re.compile(r"^layer(\d+)$")


def report_inputs(
    results: str,
    tables: Sequence[str],
    *,
    graphs: Mapping[str, str] | None = None,
    label_variants: Mapping[str, Sequence[str]] | None = None,
) -> list[ModelInputs]:
    """The declared per-shard ``tables`` grouped by model (sorted by name), report table and
    layer, each model with its corpus file (also declared by the rule); an imported variant's
    rows (``{results}/{model}/imported/{name}.parquet``, every layer's) are an ``explanations``
    file of each of the model's layers; ``graphs``: model -> its attribution graph, labelled by
    ``label_variants`` (model -> variants in fallback order)."""
    grouped: dict[str, dict[str, dict[int, list[str]]]] = {}
    imported: dict[str, list[str]] = {}
    for file in tables:
        parts = Path(file).relative_to(results).parts if Path(file).is_relative_to(results) else ()
        if len(parts) == 3 and parts[1] == "imported":
            imported.setdefault(parts[0], []).append(file)
            continue
        match = _LAYER_DIR.match(parts[1]) if len(parts) > 3 else None
        if match is None or parts[2] not in REPORT_TABLES:
            raise InputError(
                f"{file}: not a table the report reads (expected {results}/MODEL/layerL/"
                f"{{{','.join(REPORT_TABLES)}}}/...)"
            )
        by_table = grouped.setdefault(parts[0], {}).setdefault(REPORT_TABLES[parts[2]], {})
        by_table.setdefault(int(match.group(1)), []).append(file)
    for model, files in imported.items():
        by_layer = grouped.setdefault(model, {}).setdefault("explanations", {})
        layers = {layer for table in grouped[model].values() for layer in table}
        for layer in sorted(layers):
            by_layer.setdefault(layer, []).extend(files)
    return [
        ModelInputs(
            model=model,
            tables=grouped[model],
            tokens=paths.tokens_file(results, model),
            graph=(graphs or {}).get(model) or None,
            label_variants=tuple((label_variants or {}).get(model, ())),
        )
        for model in sorted(grouped)
    ]


def run_report_stage(
    *,
    results: str,
    model_locations: Mapping[str, str],
    out_index: str,
    max_features: int | None,
    tables: Sequence[str],
    graphs: Mapping[str, str] | None = None,
    label_variants: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """Rule report: the static HTML report of the run (opens from disk, no server), from the
    per-shard ``tables`` the rule declares, each model's corpus and its attribution graph
    (``graphs``, also declared; labelled by ``label_variants``); nothing else is read."""
    from transformers import AutoTokenizer

    tokenizers = {
        name: AutoTokenizer.from_pretrained(location) for name, location in model_locations.items()
    }
    index = build_report(
        report_inputs(results, tables, graphs=graphs, label_variants=label_variants),
        Path(out_index).parent,
        tokenizer=tokenizers,
        max_features=max_features,
        source_label=results,
    )
    log.info("report written from %d tables: %s", len(tables), index)
