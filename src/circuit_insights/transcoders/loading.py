"""Where a layer's transcoder is, loading it with its config checked, and saving trained files."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from circuit_insights.core.errors import InputError
from circuit_insights.core.io import atomic_path
from circuit_insights.models.subject import SubjectModel
from circuit_insights.transcoders.base import Transcoder


def transcoder_location(model_config: Mapping[str, Any], inputs: Sequence[str], layer: int) -> str:
    """Where a layer's transcoder is: the trained files' folder (job inputs) or the configured path.

    A configured ``hf://`` path is downloaded here (call it inside the job that loads the
    transcoder, never while the DAG is built); a local template is only formatted.
    """
    from circuit_insights.transcoders.registry import resolve_transcoder_path

    settings = model_config["transcoders"]
    if settings["kind"] == "train":
        return str(Path(inputs[0]).parent)
    return str(resolve_transcoder_path(settings["path"], layer, fmt=settings["format"]))


def load_layer_transcoder(
    model_config: Mapping[str, Any], model: SubjectModel, layer: int, path: str, model_name: str
) -> Transcoder:
    """The transcoder of ``layer`` at ``path``: trained here (native) or in a published format."""
    from circuit_insights.transcoders.formats import load_transcoder
    from circuit_insights.transcoders.registry import fallback_hooks

    settings = model_config["transcoders"]
    fmt: Any = "native" if settings["kind"] == "train" else settings["format"]  # a format name
    # A published layer file without its own config.yaml takes the registry's hooks.
    fallback: Any = None if settings["kind"] == "train" else fallback_hooks(settings)  # hook names
    transcoder = load_transcoder(
        path, fmt, layer=layer, d_model=model.d_model, fallback_hooks=fallback
    )
    if transcoder.n_features != settings["n_features"]:
        raise InputError(
            f"transcoder {path} has {transcoder.n_features} features but config key "
            f"'models.{model_name}.transcoders.n_features' says {settings['n_features']}"
        )
    for key in ("input_hook", "output_hook"):
        if settings.get(key) and settings[key] != getattr(transcoder, key):
            raise InputError(
                f"transcoder {path} is attached at {getattr(transcoder, key)} but config key "
                f"'models.{model_name}.transcoders.{key}' says {settings[key]} "
                "(leave it null to take the file's hook)"
            )
    return transcoder.to(model.device)


def load_transcoders(
    model_config: Mapping[str, Any],
    model: SubjectModel,
    locations: Mapping[int, str],
    model_name: str,
) -> dict[int, Transcoder]:
    """The transcoders of several layers: layer -> location (folder of trained files or template)."""
    return {
        layer: load_layer_transcoder(model_config, model, layer, location, model_name)
        for layer, location in sorted(locations.items())
    }


def save_transcoder_files(transcoder: Transcoder, weights_path: str) -> None:
    """Save a transcoder in the native format; each file appears by an atomic rename."""
    folder = Path(weights_path).parent
    staging = folder / ".staging"
    transcoder.save(staging)
    for file in sorted(staging.iterdir(), key=lambda f: f.suffix != ".safetensors"):
        with atomic_path(folder / file.name) as tmp:
            tmp.write_bytes(file.read_bytes())
        file.unlink()
    staging.rmdir()
