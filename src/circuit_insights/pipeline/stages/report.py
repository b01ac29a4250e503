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


def report_inputs(results: str, tables: Sequence[str]) -> list[ModelInputs]:
    """The declared per-shard ``tables`` grouped by model (sorted by name), report table and
    layer, each model with its corpus file (also declared by the rule)."""
    grouped: dict[str, dict[str, dict[int, list[str]]]] = {}
    for file in tables:
        parts = Path(file).relative_to(results).parts if Path(file).is_relative_to(results) else ()
        match = _LAYER_DIR.match(parts[1]) if len(parts) > 3 else None
        if match is None or parts[2] not in REPORT_TABLES:
            raise InputError(
                f"{file}: not a table the report reads (expected {results}/MODEL/layerL/"
                f"{{{','.join(REPORT_TABLES)}}}/...)"
            )
        by_table = grouped.setdefault(parts[0], {}).setdefault(REPORT_TABLES[parts[2]], {})
        by_table.setdefault(int(match.group(1)), []).append(file)
    return [
        ModelInputs(model=model, tables=grouped[model], tokens=paths.tokens_file(results, model))
        for model in sorted(grouped)
    ]


def run_report_stage(
    *,
    results: str,
    model_locations: Mapping[str, str],
    out_index: str,
    max_features: int | None,
    tables: Sequence[str],
) -> None:
    """Rule report: the static HTML report of the run (opens from disk, no server), from the
    per-shard ``tables`` the rule declares and each model's corpus (nothing else under
    ``results`` is read)."""
    from transformers import AutoTokenizer

    tokenizers = {
        name: AutoTokenizer.from_pretrained(location) for name, location in model_locations.items()
    }
    index = build_report(
        report_inputs(results, tables),
        Path(out_index).parent,
        tokenizer=tokenizers,
        max_features=max_features,
        source_label=results,
    )
    log.info("report written from %d tables: %s", len(tables), index)
