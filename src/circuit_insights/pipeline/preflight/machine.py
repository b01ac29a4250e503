"""Preflight of this machine, when the command runs jobs here: the LLM server's Python has vLLM,
the configured CUDA devices exist; and how a command line launches (:class:`Launch`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from circuit_insights.core.errors import InputError

# --- this machine -------------------------------------------------------------------------------

LLM_VENV_PYTHON = ".venv-llm/bin/python"
"""The Python that starts the LLM server when ``llm.server_python`` is empty and it exists (else
the jobs' own Python), as ``circuit_insights.llm.backends.server_python`` picks it."""


@dataclass(frozen=True)
class Launch:
    """What a Snakemake command does with the jobs it plans, as its command line says
    (:func:`launch_of`): the checks of this machine depend on it."""

    dry_run: bool
    """``-n`` / ``--touch`` / the dryrun or touch executor: no job runs."""
    executor: str = "local"
    """Snakemake's executor: ``local`` runs the jobs on this machine, others elsewhere."""

    @property
    def runs_jobs(self) -> bool:
        """Whether jobs run at all (the LLM server's environment must then exist)."""
        return not self.dry_run

    @property
    def runs_jobs_here(self) -> bool:
        """Whether jobs run on this machine (its GPUs must then be there)."""
        return not self.dry_run and self.executor == "local"


_DRY_RUN = re.compile(r"--dry-?run|--touch|-[pkqFf]*[nt][pkqFf]*")
_NO_JOB_EXECUTORS = ("dryrun", "touch")


def _option(argv: Sequence[str], *names: str) -> str | None:
    """The value of the last of Snakemake's options ``names`` in ``argv`` (``--x v``, ``--x=v``)."""
    value = None
    for index, arg in enumerate(argv):
        for name in names:
            if arg == name and index + 1 < len(argv):
                value = argv[index + 1]
            elif arg.startswith(f"{name}="):
                value = arg.split("=", 1)[1]
    return value


def _profile_executor(profile: str | None, folders: Sequence[Path]) -> str | None:
    """The ``executor`` a Snakemake profile (a folder, or a name under ``folders``) sets."""
    import yaml

    if not profile or profile == "none":
        return None
    for folder in (Path(profile).expanduser(), *(base / profile for base in folders)):
        file = folder / "config.yaml"
        if file.is_file():
            try:
                settings = yaml.safe_load(file.read_text())
            except (OSError, yaml.YAMLError):
                return None
            executor = settings.get("executor") if isinstance(settings, dict) else None
            return str(executor) if executor else None
    return None


def launch_of(argv: Sequence[str], *, workflow_dir: str | Path = ".") -> Launch:
    """The :class:`Launch` of a Snakemake command line: a dry run, and the executor from
    ``--executor`` / ``-e``, else from the workflow profile (``profiles/default`` unless
    ``--workflow-profile`` names another or none), else from ``--profile`` / $SNAKEMAKE_PROFILE."""
    args = list(argv[1:])
    executor = _option(args, "--executor", "-e")
    if executor is None:
        workflow_profile = _option(args, "--workflow-profile") or "profiles/default"
        executor = _profile_executor(workflow_profile, [Path(workflow_dir)])
    if executor is None:
        profile = _option(args, "--profile") or os.environ.get("SNAKEMAKE_PROFILE")
        bases = [Path("~/.config/snakemake").expanduser(), Path("/etc/xdg/snakemake")]
        executor = _profile_executor(profile, bases)
    executor = executor or "local"
    dry_run = executor in _NO_JOB_EXECUTORS or any(_DRY_RUN.fullmatch(arg) for arg in args)
    return Launch(dry_run=dry_run, executor=executor)


def llm_server_needed(config: Mapping[str, Any]) -> bool:
    """Whether a job of the run starts the LLM server: no ``llm.url``, and FADE scores some
    variant or an explanation variant needs the LLM."""
    from circuit_insights.explain.variants import LLM_VARIANTS

    if config["llm"]["url"]:
        return False
    explained = set(config["explain"]["variants"])
    return bool(config["evaluate"]["variants"]) or bool(explained & set(LLM_VARIANTS))


def _has_vllm(python: Path) -> bool:
    """Whether ``python`` imports vLLM (its spec is found; nothing is imported)."""
    import importlib.util

    if python.absolute() == Path(sys.executable).absolute():
        return importlib.util.find_spec("vllm") is not None
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
    try:
        done = subprocess.run([str(python), "-c", probe], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def check_llm_environment(llm: Mapping[str, Any]) -> None:
    """The Python that starts the run's LLM server (``llm.server_python``; empty: .venv-llm's
    when it exists, else the jobs' own) exists and has vLLM."""
    fix = "create .venv-llm (`make run` does, README) or serve the model elsewhere (llm.url)"
    configured = llm["server_python"]
    if configured:
        python = Path(configured).expanduser()
        if not python.is_file():
            raise InputError(
                f"config key 'llm.server_python': {configured} does not exist (the Python with "
                "vLLM that starts the run's LLM server)"
            )
        if not _has_vllm(python):
            raise InputError(
                f"config key 'llm.server_python': {configured} has no vllm, so it cannot start "
                f"the run's LLM server; install vllm there, or {fix}"
            )
        return
    default = Path(LLM_VENV_PYTHON)
    python = default if default.exists() else Path(sys.executable)
    if not _has_vllm(python):
        why = (
            f"{default} has no vllm"
            if default.exists()
            else f"{default} does not exist and the jobs' Python {sys.executable} has no vllm"
        )
        raise InputError(
            f"config key 'llm.server_python' is empty and {why}: nothing can start the run's "
            f"LLM server; {fix}"
        )


def check_devices(config: Mapping[str, Any]) -> None:
    """Every GPU device of ``models.<name>.device`` exists on this machine (torch sees it)."""
    for name, block in config["models"].items():
        device = block["device"]
        if device == "cpu":
            continue
        import torch

        key = f"config key 'models.{name}.device'"
        hint = "use device: cpu, or run the jobs where the GPU is (a cluster executor)"
        if device == "mps":
            if not torch.backends.mps.is_available():
                raise InputError(f"{key}: 'mps', but torch sees no Apple GPU here; {hint}")
            continue
        if not torch.cuda.is_available():
            raise InputError(
                f"{key}: {device!r}, but torch sees no CUDA GPU on this machine "
                f"(torch.cuda.is_available() is false); {hint}"
            )
        index = int(device.partition(":")[2] or 0)
        count = torch.cuda.device_count()
        if index >= count:
            raise InputError(
                f"{key}: {device!r}, but this machine has {count} CUDA GPU(s), "
                f"cuda:0..cuda:{count - 1}"
            )
