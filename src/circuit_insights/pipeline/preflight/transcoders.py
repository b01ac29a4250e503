"""Preflight of ``models.<name>.transcoders.path``: local files per format, ``hf://`` files in the
hub cache or on the hub."""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from circuit_insights.core.errors import InputError
from circuit_insights.pipeline.preflight.hub import OFFLINE_HINT, hub_offline, hub_unreachable

# --- pretrained transcoders --------------------------------------------------------------------


FOLDER_FILES = {
    "native": [["config.json", "transcoder.safetensors"]],
    "dunefsky": [["*blocks.{layer}.*.pt"]],
    "gemmascope": [["params.npz"], ["layer_{layer}/width_*/average_l0_*/params.npz"]],
}
"""Per format, the alternatives of what a local transcoder folder holds for a layer (each one a
list of file patterns that must all be there); circuit_tracer folders are read by their loader's
own rules (``config.yaml`` naming the layer's file, or ``layer_{layer}.safetensors``)."""


def _folder_problem(folder: Path, fmt: str, layer: int) -> str | None:
    """What a transcoder folder of format ``fmt`` lacks for ``layer``, or None."""
    if fmt == "circuit_tracer":
        from circuit_insights.transcoders.formats.circuit_tracer import (
            circuit_tracer_layer_file,
            read_circuit_tracer_config,
        )

        config = folder / "config.yaml"
        try:
            circuit_tracer_layer_file(
                folder, read_circuit_tracer_config(config) if config.is_file() else None, layer
            )
        except InputError as error:
            return f"has no file for it (format circuit_tracer): {error}"
        return None
    alternatives = [
        [pattern.replace("{layer}", str(layer)) for pattern in files]
        for files in FOLDER_FILES.get(fmt, [["*"]])
    ]
    missing = [
        [pattern for pattern in files if next(folder.glob(pattern), None) is None]
        for files in alternatives
    ]
    if any(not lacks for lacks in missing):
        return None
    for files, lacks in zip(alternatives, missing, strict=True):
        if len(lacks) < len(files):  # some of its files are there: name the ones missing
            have = [pattern for pattern in files if pattern not in lacks]
            return f"has {', '.join(have)} but no {', '.join(lacks)} (format {fmt})"
    every = [pattern for files in alternatives for pattern in files]
    return f"has none of {', '.join(every)} (format {fmt})"


def check_transcoder_paths(config: Mapping[str, Any]) -> None:
    """A local pretrained transcoder path exists for every configured layer and holds the files
    of its format (``hf://`` ones: :func:`check_hub_transcoders`; trained ones are built)."""
    from circuit_insights.transcoders.registry import is_hf_reference

    for name, block in config["models"].items():
        transcoders = block["transcoders"]
        template = transcoders["path"]
        if transcoders["kind"] != "pretrained" or is_hf_reference(template):
            continue
        key = f"models.{name}.transcoders.path"
        for layer in block["layers"]:
            path = os.path.expanduser(template.replace("{layer}", str(layer)))
            matches = sorted(glob.glob(path)) if "*" in path else [path]
            if not matches or not Path(matches[0]).exists():
                raise InputError(
                    f"config key {key!r}: transcoder of layer {layer}: {path} does not exist"
                )
            folder = Path(matches[0])
            problem = folder.is_dir() and _folder_problem(folder, transcoders["format"], layer)
            if problem:
                raise InputError(
                    f"config key {key!r}: transcoder folder {folder} of layer {layer} {problem}"
                )


def _hub_repo_files(key: str, repo_id: str, revision: str | None) -> list[str]:
    """The files of hub repository ``repo_id``: of its cached snapshot when offline, else the
    hub's list. InputError naming ``key`` when neither can be had."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_id} (revision {revision or 'main'})"
    if hub_offline():
        try:
            folder = Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
        except Exception:  # noqa: BLE001 - any failure means: not in the cache
            raise InputError(
                f"config key {key!r}: the transcoders of {where} are not in the local hub cache "
                "and the hub is offline (HF_HUB_OFFLINE=1): run once online to fetch them"
            ) from None
        return [str(file.relative_to(folder)) for file in folder.rglob("*") if file.is_file()]
    problem = hub_unreachable()
    if problem:
        raise InputError(
            f"config key {key!r}: cannot reach the hub to find the transcoders of {where} "
            f"({problem}; {OFFLINE_HINT})"
        )
    try:
        return list(HfApi().list_repo_files(repo_id, revision=revision))
    except GatedRepoError:
        raise InputError(
            f"config key {key!r}: {repo_id} is gated on the hub: accept its licence on "
            "huggingface.co and set HF_TOKEN"
        ) from None
    except RepositoryNotFoundError:
        raise InputError(f"config key {key!r}: the hub has no repository {repo_id}") from None
    except RevisionNotFoundError:
        raise InputError(f"config key {key!r}: {repo_id} has no revision {revision}") from None
    except (HfHubHTTPError, OSError) as error:
        raise InputError(
            f"config key {key!r}: cannot list the files of {where} on the hub ({error})"
        ) from None


def check_hub_transcoders(config: Mapping[str, Any], *, network: bool) -> None:
    """Every layer's ``hf://`` pretrained transcoder is a file of its repository (a ``*`` in
    the path: some file matches): in the local hub cache when offline (``HF_HUB_OFFLINE=1``),
    else on the hub, which is asked for the repository's file list once."""
    from circuit_insights.transcoders.registry import (
        is_hf_reference,
        lowest_numbered_match,
        parse_hf_reference,
    )

    if not network:
        return
    listings: dict[tuple[str, str | None], list[str]] = {}
    for name, block in config["models"].items():
        transcoders = block["transcoders"]
        template = transcoders["path"]
        if transcoders["kind"] != "pretrained" or not is_hf_reference(template):
            continue
        key = f"models.{name}.transcoders.path"
        for layer in block["layers"]:
            formatted = template.replace("{layer}", str(layer))
            try:
                reference = parse_hf_reference(formatted)
            except InputError as error:
                raise InputError(f"config key {key!r}: {error}") from None
            repo = (reference.repo_id, reference.revision)
            if repo not in listings:
                listings[repo] = _hub_repo_files(key, *repo)
            files = listings[repo]
            wanted = reference.path
            if "*" in wanted:
                found = lowest_numbered_match(wanted, files) is not None
            else:
                found = wanted in files
            if not found:
                where = (
                    "is not in the local hub cache (HF_HUB_OFFLINE=1)"
                    if hub_offline()
                    else f"is not on the hub: {reference.repo_id} has no file {wanted!r}"
                )
                raise InputError(
                    f"config key {key!r}: transcoder of layer {layer}: {formatted} {where}"
                )
