"""Logging set-up for workflow scripts (into the rule's log file and to stderr)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from types import TracebackType


def configure_logging(
    log_file: str | Path | None, level: int = logging.INFO, *, watch_snakemake: bool = True
) -> None:
    """Send log records to ``log_file`` (created with its folder) and stderr; log uncaught errors
    (an :class:`~circuit_insights.core.errors.InputError` as its one-line message, others with
    their traceback).

    ``watch_snakemake``: the job stops when the Snakemake process that started it is gone
    (:mod:`circuit_insights.pipeline.orphans`)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from circuit_insights.core.errors import InputError

    def log_uncaught(
        kind: type[BaseException], error: BaseException, traceback: TracebackType | None
    ) -> None:
        # Bad input: its message names the key and the file at fault, a traceback adds nothing.
        if isinstance(error, InputError):
            logging.getLogger("circuit_insights").error("job failed: %s", error)
            return
        logging.getLogger("circuit_insights").error(
            "job failed: %s", error, exc_info=(kind, error, traceback)
        )

    sys.excepthook = log_uncaught
    if watch_snakemake:
        from circuit_insights.pipeline.orphans import stop_when_snakemake_is_gone

        stop_when_snakemake_is_gone()
