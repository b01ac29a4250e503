"""Where a job finds its model and transcoders, from the files its rule declares.

Scripts hand a stage the job's input files as they are (``model_files``: the embedded model's
files, none for a hub id or a local folder; ``transcoder_files``: per layer, the trained
transcoder's files, none for a published set); the stage resolves them here, so the scripts
hold no logic and every resolution is reachable from a test.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from circuit_insights.pipeline.paths import job_model_location


def layer_files(
    inputs: Mapping[str, Any], prefix: str, layers: Iterable[int]
) -> dict[int, list[str]]:
    """``{layer: files}`` of the job's inputs named ``{prefix}_{layer}`` (``[]`` where the rule
    declares none, e.g. a published transcoder set that needs no local files)."""
    files: dict[int, list[str]] = {}
    for layer in layers:
        value = inputs.get(f"{prefix}_{layer}", [])
        files[int(layer)] = [value] if isinstance(value, str) else [str(item) for item in value]
    return files


def model_location(model_config: Mapping[str, Any], model_files: Sequence[str] | str) -> str:
    """The subject model's location: the embedded model's folder (from its files) or the source
    (a hub id or a local folder)."""
    return job_model_location(model_config["source"], model_files)


def llm_location(llm_config: Mapping[str, Any], llm_files: Sequence[str] | str) -> str:
    """The explainer / rater LLM's location, as :func:`model_location` for the ``llm`` block."""
    return job_model_location(llm_config["model"], llm_files)


def transcoder_locations(
    model_config: Mapping[str, Any], transcoder_files: Mapping[int, Sequence[str] | str]
) -> dict[int, str]:
    """``{layer: location}``: a trained transcoder's folder (from its files) or the configured
    path of a published set (an ``hf://`` path is downloaded: call this inside the job)."""
    from circuit_insights.transcoders.loading import transcoder_location

    return {
        int(layer): transcoder_location(
            model_config, [files] if isinstance(files, str) else list(files), int(layer)
        )
        for layer, files in transcoder_files.items()
    }
