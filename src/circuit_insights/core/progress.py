""":class:`Progress`, the progress lines of long loops in a job's log (count, rate, ETA, heartbeat)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable


def _duration(seconds: float) -> str:
    """``75`` -> ``"1 min 15 s"``; ``4000`` -> ``"1 h 6 min"``."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


class Progress:
    """Progress of a long loop in the job's log: count, rate and ETA about every ``interval_s``.

    ``update(n, **counters)`` adds ``n`` to the main count (of ``total`` ``unit``) and to named
    counters (``features=1``, ``tokens=812``; ``totals`` gives a counter its total); a line is
    logged when ``interval_s`` has passed since the last one. While the loop waits (one long LLM
    batch), a heartbeat thread logs the same line, so the log never stays silent for longer than
    ``interval_s``. ``close()`` (or leaving the ``with`` block) stops the thread and logs the
    final line. ``clock`` and ``heartbeat=False`` are for tests.

    A line: ``explain layer 3: 40 / 120 requests (33%), 1.30 requests/s, ETA 1 min 2 s;
    features 10 / 30; tokens 5200 (173/s)``.
    """

    def __init__(
        self,
        what: str,
        total: int | None = None,
        *,
        unit: str = "items",
        totals: dict[str, int] | None = None,
        interval_s: float = 30.0,
        logger: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
        heartbeat: bool = True,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"progress interval_s must be > 0, got {interval_s}")
        self.what, self.total, self.unit = what, total, unit
        self.totals = dict(totals or {})
        self.interval_s = interval_s
        self.logger = logger or logging.getLogger("circuit_insights.progress")
        self.clock = clock
        self.done = 0
        self.counters: dict[str, float] = {name: 0 for name in self.totals}
        self.started = self.last_logged = clock()
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if heartbeat:
            self._thread = threading.Thread(target=self._beat, name=f"progress {what}", daemon=True)
            self._thread.start()

    def update(self, n: int = 1, **counters: float) -> None:
        """Count ``n`` more of the main unit and the named ``counters``; log when it is time."""
        with self._lock:
            self.done += n
            for name, value in counters.items():
                self.counters[name] = self.counters.get(name, 0) + value
        self.tick()

    def tick(self) -> bool:
        """Log a line when ``interval_s`` has passed since the last one; whether it did."""
        with self._lock:
            now = self.clock()
            if now - self.last_logged < self.interval_s:
                return False
            self.last_logged = now
        self._log()
        return True

    def message(self) -> str:
        """The progress line for now."""
        with self._lock:
            elapsed = max(self.clock() - self.started, 1e-9)
            done, counters = self.done, dict(self.counters)
        rate = done / elapsed
        if self.total is not None:
            share = f" ({100 * done / self.total:.0f}%)" if self.total else ""
            count = f"{done} / {self.total} {self.unit}{share}"
            eta = _duration((self.total - done) / rate) if rate > 0 else "unknown"
            eta_text = f", ETA {eta}"
        else:
            count, eta_text = f"{done} {self.unit}", ""
        parts = [f"{self.what}: {count}, {rate:.2f} {self.unit}/s{eta_text}"]
        for name, value in counters.items():
            if name in self.totals:
                parts.append(f"{name} {value:g} / {self.totals[name]}")
            else:
                parts.append(f"{name} {value:g} ({value / elapsed:.0f}/s)")
        return "; ".join(parts) + f" ({_duration(elapsed)} elapsed)"

    def close(self) -> None:
        """Stop the heartbeat and log the final line."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._log()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _log(self) -> None:
        line = self.message()
        self.lines.append(line)
        self.logger.info("%s", line)

    def _beat(self) -> None:
        while not self._stop.wait(min(self.interval_s, 5.0)):
            self.tick()
