"""Logging set-up for workflow scripts (into the rule's log file and to stderr)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from types import TracebackType


def configure_logging(log_file: str | Path | None, level: int = logging.INFO) -> None:
    """Send log records to ``log_file`` (created with its folder) and stderr; log uncaught errors."""
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

    def log_uncaught(
        kind: type[BaseException], error: BaseException, traceback: TracebackType | None
    ) -> None:
        logging.getLogger("circuit_insights").error(
            "job failed: %s", error, exc_info=(kind, error, traceback)
        )

    sys.excepthook = log_uncaught
