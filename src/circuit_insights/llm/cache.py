"""The response cache: answered requests are never sent again.

:class:`ResponseCache` keeps answers by :func:`cache_key` in an sqlite3 file in WAL mode, which
several processes (the jobs of a workflow) may share; :class:`CachedBackend` puts any
:class:`~circuit_insights.llm.client.LLMBackend` behind it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import tenacity

from circuit_insights.core.errors import InputError
from circuit_insights.llm.client import ChatRequest, ChatResult, LLMBackend, iter_results

__all__ = ["CachedBackend", "ResponseCache", "cache_key"]


def cache_key(model_name: str, request: ChatRequest) -> str:
    """sha256 (hex) of the model name and the request's canonical JSON."""
    payload = json.dumps(
        {"model": model_name, "request": request.as_dict()},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


_CACHE_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    request TEXT NOT NULL,
    text TEXT NOT NULL,
    parsed TEXT,
    parse_status TEXT NOT NULL,
    error TEXT,
    finish_reason TEXT,
    tokens_in INTEGER NOT NULL,
    tokens_out INTEGER NOT NULL,
    latency_s REAL NOT NULL,
    created_at REAL NOT NULL
)
"""


def _is_locked(error: BaseException) -> bool:
    return isinstance(error, sqlite3.OperationalError) and "locked" in str(error)


class ResponseCache:
    """Answers by :func:`cache_key`, in an sqlite3 file in WAL mode.

    Several processes (the jobs of a workflow) may read and write the same file at once; each
    :meth:`put` is its own transaction, committed before it returns. Results with
    ``parse_status="error"`` are not stored.
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_s: float = 60.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = self._open(busy_timeout_s)
        self._lock = threading.Lock()

    def _open(self, busy_timeout_s: float) -> sqlite3.Connection:
        """Connect, switch to WAL and create the table. Jobs that start together race for a new
        file: switching its journal mode can fail with "database is locked" at once, without
        waiting for the busy timeout, so that case is retried until the timeout."""
        deadline = time.monotonic() + busy_timeout_s

        def connect() -> sqlite3.Connection:
            db = None
            try:
                db = sqlite3.connect(
                    self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
                )
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute(_CACHE_SCHEMA)
                return db
            except sqlite3.DatabaseError:
                if db is not None:
                    db.close()
                raise

        def past_deadline(state: tenacity.RetryCallState) -> bool:
            return time.monotonic() + state.upcoming_sleep > deadline

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(_is_locked),
            wait=tenacity.wait_exponential(multiplier=0.05, max=1.0),  # 0.05, 0.1, ... 1 s
            stop=past_deadline,
            reraise=True,
        )
        try:
            return retrying(connect)
        except sqlite3.DatabaseError as exc:
            raise InputError(f"LLM response cache {self.path} is not usable: {exc}") from exc

    def get_many(self, keys: Sequence[str]) -> dict[str, ChatResult]:
        """The cached results among ``keys`` (``cached=True``)."""
        found: dict[str, ChatResult] = {}
        unique = list(dict.fromkeys(keys))
        with self._lock:
            for start in range(0, len(unique), 500):
                chunk = unique[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    "SELECT key, text, parsed, parse_status, error, finish_reason, tokens_in,"
                    f" tokens_out, latency_s FROM responses WHERE key IN ({marks})",
                    chunk,
                ).fetchall()
                for key, text, parsed, status, error, finish, t_in, t_out, latency in rows:
                    found[key] = ChatResult(
                        text=text,
                        parsed=json.loads(parsed) if parsed is not None else None,
                        parse_status=status,
                        tokens_in=t_in,
                        tokens_out=t_out,
                        latency_s=latency,
                        cached=True,
                        error=error,
                        finish_reason=finish,
                    )
        return found

    def get(self, key: str) -> ChatResult | None:
        """The cached result for ``key``, or None."""
        return self.get_many([key]).get(key)

    def put(self, key: str, model_name: str, request: ChatRequest, result: ChatResult) -> bool:
        """Store ``result`` under ``key`` (not when it is an error); True when stored."""
        if result.parse_status == "error":
            return False
        parsed = None if result.parsed is None else json.dumps(result.parsed, ensure_ascii=False)
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO responses VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    key,
                    model_name,
                    request.canonical_json(),
                    result.text,
                    parsed,
                    result.parse_status,
                    result.error,
                    result.finish_reason,
                    result.tokens_in,
                    result.tokens_out,
                    result.latency_s,
                    time.time(),
                ),
            )
        return True

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


@dataclass
class CachedBackend:
    """``inner`` behind a :class:`ResponseCache`: a request already answered is not sent again.

    Identical requests in one batch are sent once. Each answer is stored as soon as ``inner``
    hands it over, so a job killed (or failing) half-way keeps what it received. ``model_id``
    names the model in the cache key (default: ``inner.model_name``); give a value that changes
    when the weights change if several models are served under one name.
    """

    inner: LLMBackend
    cache: ResponseCache
    model_id: str | None = None
    sent: int = field(default=0, init=False)
    hits: int = field(default=0, init=False)

    @property
    def model_name(self) -> str:
        return self.inner.model_name

    def _key(self, request: ChatRequest) -> str:
        return cache_key(self.model_id or self.inner.model_name, request)

    def iter_chat(self, requests: Sequence[ChatRequest]) -> Iterator[tuple[int, ChatResult]]:
        """Cached answers first, then the others as they arrive (each stored on arrival)."""
        keys = [self._key(request) for request in requests]
        cached = self.cache.get_many(keys)
        positions: dict[str, list[int]] = {}
        for index, key in enumerate(keys):
            if key in cached:
                self.hits += 1
                yield index, cached[key]
            else:
                positions.setdefault(key, []).append(index)
        if not positions:
            return
        todo = list(positions)
        to_send = [requests[positions[key][0]] for key in todo]
        self.sent += len(to_send)
        model = self.model_id or self.inner.model_name
        for sent_index, result in iter_results(self.inner, to_send):
            key = todo[sent_index]
            self.cache.put(key, model, to_send[sent_index], result)
            for index in positions[key]:
                yield index, result

    def chat_many(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        """One result per request, in order."""
        results: list[ChatResult | None] = [None] * len(requests)
        for index, result in self.iter_chat(requests):
            results[index] = result
        return [result for result in results if result is not None]
