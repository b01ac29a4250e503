"""A job stops when the Snakemake process that started it is gone.

After ``kill -9`` of Snakemake, its running jobs would go on writing for minutes; an ``--unlock``
and a rerun meanwhile would have two processes writing one output. So every job (its script calls
:func:`circuit_insights.pipeline.logs.configure_logging`) watches its nearest ancestor process
that runs ``snakemake`` (the main process on a workstation, the job step's own
Snakemake inside a SLURM allocation) and exits with status 1 when that process no longer runs.
Its outputs are written atomically, so what it leaves is at most a temporary ``.partial`` file.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

#: Seconds between two looks at the Snakemake process.
WATCH_INTERVAL_S = 2.0


def runs_program(cmdline: list[str], program: str) -> bool:
    """Whether a command line runs ``program`` (``.../bin/snakemake ...``, ``python -m snakemake``),
    not merely names a file under a ``.snakemake/`` folder."""
    for position, part in enumerate(cmdline[:3]):
        if os.path.basename(part) == program:
            return True
        if part == "-m" and position + 1 < len(cmdline) and cmdline[position + 1] == program:
            return True
    return False


def snakemake_ancestor(marker: str = "snakemake") -> object | None:
    """The nearest ancestor process that runs the program ``marker`` (a ``psutil.Process``), or
    None (not started by Snakemake, or psutil cannot tell)."""
    try:
        import psutil

        for parent in psutil.Process().parents():
            try:
                if runs_program(parent.cmdline(), marker):
                    return parent
            except (psutil.AccessDenied, psutil.ZombieProcess):
                continue
    except Exception:  # noqa: BLE001 - a platform without /proc: no watch
        return None
    return None


def _exit_now(status: int) -> None:
    logging.shutdown()
    os._exit(status)


def stop_when_snakemake_is_gone(
    *,
    marker: str = "snakemake",
    interval_s: float = WATCH_INTERVAL_S,
    exit_process: Callable[[int], None] = _exit_now,
) -> threading.Thread | None:
    """Start a daemon thread that ends this process when its Snakemake ancestor stops running.

    Returns the thread (None when no such ancestor was found: nothing to watch).
    """
    ancestor = snakemake_ancestor(marker)
    if ancestor is None:
        return None
    pid = getattr(ancestor, "pid", None)

    def watch() -> None:
        while True:
            threading.Event().wait(interval_s)
            if not ancestor.is_running():  # type: ignore[attr-defined]  # a psutil.Process
                log.error(
                    "the Snakemake process that started this job (pid %s) is gone: stopping the "
                    "job so that a rerun is the only writer of its outputs",
                    pid,
                )
                exit_process(1)
                return

    thread = threading.Thread(target=watch, name="snakemake watch", daemon=True)
    thread.start()
    return thread
