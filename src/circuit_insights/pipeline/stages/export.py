"""Rule export: a model's explanations and scores in Neuronpedia's and delphi's formats."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

log = logging.getLogger(__name__)

#: Columns of the explanation tables an export reads.
_COLUMNS = ["layer", "feature", "variant", "description", "is_final", "llm_model"]


def run_export_stage(
    *,
    explanation_files: Sequence[str],
    summary_path: str,
    target_config: Mapping[str, Any],
    neuronpedia_path: str,
    delphi_dir: str,
) -> None:
    """Rule export: every variant's final descriptions of the model (``explanation_files``,
    ours) with their scores (the summary's long table: FADE and the LLM-free WeightLens scores)
    as Neuronpedia's explanation export (``neuronpedia_path``) and as delphi runs, one folder per
    variant (``delphi_dir``); the names are ``target_config``'s
    (:func:`circuit_insights.pipeline.interop.target_params`)."""
    from pathlib import Path

    import pandas as pd

    from circuit_insights.interop.delphi import write_delphi
    from circuit_insights.interop.neuronpedia import write_neuronpedia
    from circuit_insights.pipeline.interop import target_from_params

    target = target_from_params(target_config)
    explanations = pd.concat(
        [pd.read_parquet(path, columns=_COLUMNS) for path in explanation_files], ignore_index=True
    )
    scores = pd.read_parquet(
        summary_path, columns=["layer", "feature", "variant", "metric", "value"]
    )
    scores = scores[scores["variant"].isin(set(explanations["variant"]))]
    write_neuronpedia(explanations, neuronpedia_path, target=target, scores=scores)
    Path(delphi_dir).mkdir(parents=True, exist_ok=True)
    runs = write_delphi(explanations, delphi_dir, target=target, scores=scores)
    described = explanations[explanations["is_final"] & explanations["description"].notna()]
    log.info(
        "%d descriptions of %d variants with %d scores: %s and %d delphi runs in %s",
        len(described),
        described["variant"].nunique(),
        int(scores["value"].notna().sum()),
        neuronpedia_path,
        len(runs),
        delphi_dir,
    )
