"""The checks of a run's config made at start, before Snakemake runs any job (the preflight).

Each check raises :class:`InputError` with one message naming the config key and the file, folder,
hub id or URL at fault, so that a problem a job would meet an hour into the run stops it at once:

- ``results_dir`` / ``resources_dir``: a folder (or nothing yet), not a file;
- ``corpus.paths``: every text corpus file (``.txt``, ``.jsonl``) is UTF-8 text, not binary;
- ``models.<name>.source``: an embedded model, a local folder with a ``config.json`` that is JSON
  and weights, or a hub id (``gpt2`` or ``org/name``) whose ``config.json`` is cached or fetched;
  the configured layers are within the model's layer count;
- ``models.<name>.transcoders.path``: a local pretrained transcoder file or folder exists for every
  configured layer and holds the files its format reads;
- ``llm``: a configured ``llm.url`` answers ``GET /v1/models`` and serves ``llm.model``; without a
  URL, the model the run would start a server for is embedded or a local folder (a hub id needs a
  server of its own: ``llm.url``).

``preflight.network: false`` skips what needs the network (the hub, ``llm.url``): an offline dry
run of a preset. :func:`start_checks` is the workflow's entry point: validation and preflight,
and on bad input one line on stderr and exit status 1 (no traceback). Commands that run no job
(``--unlock``, ``--lint``, ...) and the processes of single jobs get the validation only.
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from circuit_insights.core.errors import InputError

TEXT_SUFFIXES = (".txt", ".jsonl")
"""Corpus files read as UTF-8 text (their first bytes are checked at start)."""

LLM_CHECK_TIMEOUT_S = 10.0
"""Seconds the start-time ``GET /v1/models`` of ``llm.url`` may take."""


# --- folders and corpus files ------------------------------------------------------------------


def check_output_folder(key: str, path: str | Path) -> None:
    """``path`` (config key ``key``) is a folder or does not exist yet; no ancestor is a file."""
    path = Path(path).expanduser()
    for candidate in (path, *path.parents):
        if candidate.exists() and not candidate.is_dir():
            what = "it is a file" if candidate == path else f"{candidate} is a file"
            raise InputError(f"config key {key!r}: {path} must be a folder, but {what}")


def check_corpus_files(corpus: Mapping[str, Any]) -> None:
    """Every text file of ``corpus.paths`` (folders: the text files inside) is UTF-8 text."""
    from circuit_insights.data.corpus import check_text_file

    if corpus["source"] != "files":
        return
    for raw in corpus["paths"]:
        path = Path(raw)
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        for file in files:
            if file.is_file() and file.suffix in TEXT_SUFFIXES:
                try:
                    check_text_file(file)
                except InputError as error:
                    raise InputError(f"config key 'corpus.paths': {error}") from None


# --- subject models ----------------------------------------------------------------------------


def model_n_layers(key: str, source: str, *, network: bool) -> int | None:
    """Layer count of model ``source`` (config key ``key``): embedded, local folder or hub id.

    None when it cannot be known without the network and ``network`` is False.
    """
    from circuit_insights.models.hub import check_model_folder, hub_config, is_hub_id, n_layers_of
    from circuit_insights.pipeline.paths import (
        EMBEDDED_MODELS,
        EMBEDDED_N_LAYERS,
        EMBEDDED_PREFIX,
        is_embedded,
    )

    if is_embedded(source):
        embedded = source.removeprefix(EMBEDDED_PREFIX)
        if embedded not in EMBEDDED_MODELS:
            raise InputError(
                f"config key {key!r}: unknown model {source!r} "
                f"(embedded models: {', '.join(EMBEDDED_MODELS)})"
            )
        return EMBEDDED_N_LAYERS[embedded]
    if Path(source).expanduser().exists() or source.startswith((".", "/", "~")):
        try:
            return n_layers_of(check_model_folder(source))
        except InputError as error:
            raise InputError(f"config key {key!r}: unknown model {source!r}: {error}") from None
    if not is_hub_id(source):
        raise InputError(
            f"config key {key!r}: unknown model {source!r} (neither a folder, a Hugging Face "
            "id like gpt2 or org/name, nor embedded:gemma-3-270m)"
        )
    try:
        config = hub_config(source, network=network)
    except InputError as error:
        raise InputError(f"config key {key!r}: {error}") from None
    return None if config is None else n_layers_of(config)


def check_layers(key: str, source: str, layers: list[int], n_layers: int | None) -> None:
    """Every configured layer is below the model's layer count (when it is known)."""
    if n_layers is None:
        return
    for layer in layers:
        if layer >= n_layers:
            raise InputError(
                f"config key {key!r}: layer {layer} is out of range "
                f"(model {source!r} has layers 0..{n_layers - 1})"
            )


def check_models(config: Mapping[str, Any], *, network: bool) -> None:
    """Each model's source resolves and its layers are in range (see :func:`model_n_layers`)."""
    for name, block in config["models"].items():
        source = block["source"]
        n_layers = model_n_layers(f"models.{name}.source", source, network=network)
        check_layers(f"models.{name}.layers", source, block["layers"], n_layers)


# --- pretrained transcoders --------------------------------------------------------------------


def _folder_problem(folder: Path, fmt: str, layer: int) -> str | None:
    """What a transcoder folder of format ``fmt`` lacks for ``layer``, or None."""
    expected = {
        "native": ["config.json"],
        "dunefsky": [f"*blocks.{layer}.*.pt"],
        "gemmascope": ["params.npz", f"layer_{layer}/width_*/average_l0_*/params.npz"],
        "circuit_tracer": ["config.yaml", f"layer_{layer}.safetensors"],
    }.get(fmt, ["*"])
    if any(next(folder.glob(pattern), None) is not None for pattern in expected):
        return None
    return f"has none of {', '.join(expected)} (format {fmt}, layer {layer})"


def check_transcoder_paths(config: Mapping[str, Any]) -> None:
    """A local pretrained transcoder path exists for every configured layer and holds the files
    of its format (``hf://`` references are fetched by the jobs; trained ones are built)."""
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


# --- the explainer LLM -------------------------------------------------------------------------


def check_llm(llm: Mapping[str, Any], *, network: bool) -> None:
    """``llm.url`` answers and serves ``llm.model``; without one, the run can serve the model."""
    from circuit_insights.models.hub import is_hub_id
    from circuit_insights.pipeline.paths import is_embedded

    model = llm["model"]
    if not llm["url"]:
        if not is_embedded(model) and not Path(model).expanduser().is_dir() and is_hub_id(model):
            raise InputError(
                f"config key 'llm.url' must be set: llm.model {model!r} is a hub model, which "
                "the workflow does not serve itself; serve it on a GPU (e.g. `vllm serve "
                f'{model}`) and pass --config \'llm={{"url": "http://HOST:8000/v1"}}\' '
                "(docs/scale-out.md)"
            )
        return
    if not network:
        return
    from circuit_insights.llm.client import OpenAICompatibleBackend

    try:
        with OpenAICompatibleBackend(
            llm["url"],
            model,
            api_key_env=llm["api_key_env"] or None,
            timeout_s=LLM_CHECK_TIMEOUT_S,
            max_retries=1,
            backoff_s=1.0,
        ) as backend:
            backend.check_server()
    except InputError as error:
        raise InputError(f"config key 'llm.url': {error}") from None


# --- entry points ------------------------------------------------------------------------------


def preflight(config: Mapping[str, Any], *, network: bool | None = None) -> None:
    """Every start-time check of a validated config; ``network`` defaults to
    ``preflight.network``. Raises :class:`InputError` at the first problem."""
    network = config["preflight"]["network"] if network is None else network
    check_output_folder("results_dir", config["results_dir"])
    check_output_folder("resources_dir", config["resources_dir"])
    check_corpus_files(config["corpus"])
    check_models(config, network=network)
    check_transcoder_paths(config)
    check_llm(config["llm"], network=network)


def fail(error: InputError) -> NoReturn:
    """End the process with the error's one-line message on stderr and exit status 1."""
    print(f"Error: {error}", file=sys.stderr)
    raise SystemExit(1)


MAINTENANCE_OPTIONS = frozenset(
    {
        "--unlock",
        "--lint",
        "--cleanup-metadata",
        "--cm",
        "--summary",
        "-S",
        "--detailed-summary",
        "-D",
        "--list-rules",
        "--list",
        "-l",
        "--list-target-rules",
        "--lt",
        "--dag",
        "--rulegraph",
        "--filegraph",
        "--delete-all-output",
        "--delete-temp-output",
    }
)
"""Snakemake options of commands that run no job: the preflight is skipped for them, so that
``--unlock`` after a crash works while, say, the LLM server is down."""


def runs_jobs(argv: Sequence[str], *, main_process: bool) -> bool:
    """Whether this Snakemake process plans jobs: the main process, not running one of the
    :data:`MAINTENANCE_OPTIONS` (a job's own process re-reads the workflow after the check)."""
    return main_process and not MAINTENANCE_OPTIONS.intersection(argv)


def start_checks(
    config: Mapping[str, Any],
    schema_path: str | Path,
    *,
    argv: Sequence[str] = (),
    main_process: bool = True,
) -> dict[str, Any]:
    """The workflow's start: validate ``config`` against the schema (defaults filled in) and run
    :func:`preflight` when this process plans jobs (:func:`runs_jobs` of Snakemake's ``argv``).
    On bad input, one message and exit status 1, before any job runs."""
    from circuit_insights.pipeline.config import load_schema, validate_config

    try:
        validated = validate_config(config, load_schema(schema_path))
        if runs_jobs(argv, main_process=main_process):
            preflight(validated)
    except InputError as error:
        fail(error)
    return validated
