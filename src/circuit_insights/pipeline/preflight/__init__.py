"""The checks of a run's config made at start, before Snakemake runs any job (the preflight).

Each check raises :class:`InputError` with one message naming the config key and the file, folder,
hub id or URL at fault, so that a problem a job would meet an hour into the run stops it at once:

- ``results_dir`` / ``resources_dir``: a folder (or nothing yet, in a folder that can hold it);
- ``corpus.paths``: every file or folder exists, a folder holds corpus files, every file has a
  known suffix, every text file (``.txt``, ``.jsonl``) is UTF-8 text, every ``.parquet`` is one;
- ``models.<name>.source``: an embedded model, a local folder with a ``config.json`` that is JSON
  and weights, or a hub id (``gpt2`` or ``org/name``) whose ``config.json`` is cached or fetched
  (a hub that cannot be reached is said at once, not after the download's retries); the
  configured layers are within the model's layer count;
- ``models.<name>.transcoders.path``: a local pretrained transcoder file or folder exists for every
  configured layer and holds the files its format reads; an ``hf://`` one is in the hub cache
  (offline) or on the hub;
- ``models.<name>.imports``: every imported explanation file is read in full by its format's
  reader (docs/formats.md; the names, formats and paths are checked with the config);
- ``llm.url``: answers ``GET {url}/models`` with an OpenAI-compatible model list (JSON with a
  ``data`` list) naming ``llm.model``; without a URL, the model the run would start a server for
  is embedded or a local folder (a hub id needs a server of its own: ``llm.url``);
- this machine, when the command runs the jobs for real (:class:`Launch`): the Python that starts
  the LLM server has vLLM (``llm.server_python``, ``.venv-llm``), and a ``cuda`` device of
  ``models.<name>.device`` exists (only for jobs run here, not by a cluster executor).

``preflight.network: false`` skips what needs the network (the hub, ``llm.url``): an offline dry
run of a preset. :func:`start_checks` is the workflow's entry point: validation and preflight,
and on bad input one line on stderr and exit status 1 (no traceback). Commands that run no job
(``--unlock``, ``--lint``, ...) and the processes of single jobs get the validation only."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from circuit_insights.core.errors import InputError
from circuit_insights.pipeline.interop import check_imports
from circuit_insights.pipeline.preflight.files import check_corpus_files, check_output_folder
from circuit_insights.pipeline.preflight.llm import check_llm
from circuit_insights.pipeline.preflight.machine import (
    Launch,
    check_devices,
    check_llm_environment,
    launch_of,
    llm_server_needed,
)
from circuit_insights.pipeline.preflight.models import check_models
from circuit_insights.pipeline.preflight.transcoders import (
    check_hub_transcoders,
    check_transcoder_paths,
)

# --- entry points ------------------------------------------------------------------------------


def preflight(
    config: Mapping[str, Any], *, network: bool | None = None, launch: Launch | None = None
) -> None:
    """Every start-time check of a validated config; ``network`` defaults to
    ``preflight.network``; the checks of this machine (the LLM server's Python, the GPUs) only
    with a ``launch`` that runs jobs (here). Raises :class:`InputError` at the first problem."""
    network = config["preflight"]["network"] if network is None else network
    check_output_folder("results_dir", config["results_dir"])
    check_output_folder("resources_dir", config["resources_dir"])
    check_corpus_files(config["corpus"])
    check_models(config, network=network)
    check_transcoder_paths(config)
    check_hub_transcoders(config, network=network)
    check_llm(config["llm"], network=network)
    check_imports(config)  # every imported explanation file, read in full
    if launch is not None and launch.runs_jobs and llm_server_needed(config):
        check_llm_environment(config["llm"])
    if launch is not None and launch.runs_jobs_here:
        check_devices(config)


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
    command_line: Mapping[str, Any] | None = None,
    workflow_dir: str | Path = ".",
) -> dict[str, Any]:
    """The workflow's start: type the values of Snakemake's ``--config`` (``command_line``, see
    :func:`~circuit_insights.pipeline.config.coerce_command_line`), validate ``config`` against
    the schema (defaults filled in) and run :func:`preflight` when this process plans jobs
    (:func:`runs_jobs` of Snakemake's ``argv``; the :class:`Launch` from :func:`launch_of`).
    On bad input, one message and exit status 1, before any job runs."""
    from circuit_insights.pipeline.config import coerce_command_line, load_schema, validate_config

    try:
        schema = load_schema(schema_path)
        if command_line:
            config = coerce_command_line(config, command_line, schema)
        validated = validate_config(config, schema)
        if runs_jobs(argv, main_process=main_process):
            preflight(validated, launch=launch_of(argv, workflow_dir=workflow_dir))
    except InputError as error:
        fail(error)
    return validated
