"""One LLM interface for the explainer and the FADE evaluator, with three ways to reach vLLM.

- :class:`ChatRequest` / :class:`ChatResult`: a chat completion request (messages, optional JSON
  schema for structured output, sampling parameters) and its answer. A request is immutable,
  hashable and has one canonical JSON form (:meth:`ChatRequest.canonical_json`), from which the
  cache key is derived (:func:`cache_key`).
- :class:`LLMBackend`: the protocol every backend implements, ``chat_many(requests)``: one
  result per request, in order. Backends that can hand results over as they arrive also offer
  ``iter_chat(requests)`` (yields ``(index, result)`` pairs in completion order), which
  :class:`CachedBackend` uses to store each answer as soon as it exists.
- :class:`OpenAICompatibleBackend`: HTTP to any OpenAI-compatible ``/v1/chat/completions``
  server (a vLLM server started by :mod:`circuit_insights.llm.server`, or one the user runs),
  a bounded thread pool, retries with exponential backoff on transport errors, timeouts, 429
  and 5xx. Structured output is requested as
  ``response_format={"type": "json_schema", "json_schema": {"name", "schema", "strict"}}``,
  which vLLM turns into guided decoding.
- :class:`ResponseCache` (sqlite3 in WAL mode, several processes may share it) and
  :class:`CachedBackend`: answered requests are never sent again.

Failure policy. An answer that is empty or does not parse (or does not match the schema) is a
result with ``parse_status`` ``"empty"`` / ``"unparseable"`` and its raw ``text`` kept: never an
exception. A request the server rejects (HTTP 4xx other than 408/429, e.g. a prompt longer than
the context) is a result with ``parse_status="error"`` and the server's message; such results are
not cached. A server that cannot be reached at the first request raises
:class:`~circuit_insights.core.errors.InputError` naming the URL; a server that stops answering
later raises :class:`LLMServerError` once the retries are spent, after every answer received so
far has been handed over (and, through :class:`CachedBackend`, stored).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import json
import logging
import math
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol, runtime_checkable

from circuit_insights.core.errors import InputError

log = logging.getLogger(__name__)

#: Roles of the OpenAI chat format.
ROLES: frozenset[str] = frozenset({"system", "user", "assistant", "developer", "tool"})

#: Bumped when the canonical form of a request changes: old cache entries then no longer match.
REQUEST_FORMAT_VERSION = 1

ParseStatus = Literal["ok", "empty", "unparseable", "error"]

#: HTTP statuses worth retrying: the server is busy, restarting or timed out.
RETRY_STATUSES: frozenset[int] = frozenset({408, 425, 429, 500, 502, 503, 504})


class LLMServerError(RuntimeError):
    """The LLM server stopped answering (after retries) or could not be started."""


# --------------------------------------------------------------------------------------------
# Requests and results


def _frozen_json(value: Any, what: str) -> Any:
    """A deep copy of a JSON value (so the caller's later edits do not change a request)."""
    try:
        return json.loads(json.dumps(value, sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what} is not plain JSON: {exc}") from exc


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion request.

    ``messages`` are ``(role, content)`` pairs with OpenAI chat roles. ``json_schema``, when
    given, asks for structured output matching that JSON schema (guided decoding in vLLM); the
    answer is then parsed into :attr:`ChatResult.parsed`. Temperature 0 is greedy decoding.
    ``repetition_penalty`` (vLLM's, 1 = none) divides the logits of tokens already in the prompt
    or the answer; it is sent only when it is not 1, so servers without it see no unknown field.
    Requests compare and hash by their canonical JSON form.
    """

    messages: tuple[tuple[str, str], ...]
    json_schema: Mapping[str, Any] | None = None
    temperature: float = 0.0
    max_tokens: int = 256
    seed: int = 0
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        try:
            messages = tuple((role, content) for role, content in self.messages)
        except (TypeError, ValueError) as exc:
            raise InputError("ChatRequest.messages must be (role, content) pairs") from exc
        if not messages:
            raise InputError("ChatRequest.messages is empty")
        for role, content in messages:
            if role not in ROLES:
                raise InputError(f"ChatRequest message role {role!r} is not one of {sorted(ROLES)}")
            if not isinstance(content, str):
                raise InputError(f"ChatRequest message content for role {role!r} is not a string")
        object.__setattr__(self, "messages", messages)
        if self.json_schema is not None:
            if not isinstance(self.json_schema, Mapping):
                raise InputError("ChatRequest.json_schema must be a mapping (a JSON schema)")
            object.__setattr__(
                self, "json_schema", _frozen_json(dict(self.json_schema), "json_schema")
            )
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise InputError(f"ChatRequest.temperature must be >= 0, got {self.temperature}")
        if int(self.max_tokens) < 1:
            raise InputError(f"ChatRequest.max_tokens must be >= 1, got {self.max_tokens}")
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            raise InputError(
                f"ChatRequest.repetition_penalty must be > 0, got {self.repetition_penalty}"
            )
        object.__setattr__(self, "repetition_penalty", float(self.repetition_penalty))
        object.__setattr__(self, "temperature", float(self.temperature))
        object.__setattr__(self, "max_tokens", int(self.max_tokens))
        object.__setattr__(self, "seed", int(self.seed))

    @classmethod
    def simple(
        cls,
        user: str,
        *,
        system: str | None = None,
        json_schema: Mapping[str, Any] | None = None,
        **sampling: Any,
    ) -> ChatRequest:
        """A request of one user message, after an optional system message."""
        messages = ((("system", system),) if system is not None else ()) + (("user", user),)
        return cls(messages=messages, json_schema=json_schema, **sampling)

    def as_dict(self) -> dict[str, Any]:
        """The request as plain JSON-ready data (the canonical form, before serialisation).

        ``repetition_penalty`` appears only when it is not 1, so the cache keys of requests
        without one are those they had before the field existed.
        """
        data = {
            "format": REQUEST_FORMAT_VERSION,
            "messages": [[role, content] for role, content in self.messages],
            "json_schema": self.json_schema,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
        }
        if self.repetition_penalty != 1.0:
            data["repetition_penalty"] = self.repetition_penalty
        return data

    def canonical_json(self) -> str:
        """Canonical JSON (sorted keys, no whitespace, UTF-8 kept): equal requests, equal text."""
        return json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def openai_messages(self) -> list[dict[str, str]]:
        """The messages in the OpenAI wire format."""
        return [{"role": role, "content": content} for role, content in self.messages]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ChatRequest):
            return NotImplemented
        return self.canonical_json() == other.canonical_json()

    def __hash__(self) -> int:
        return hash(self.canonical_json())


def cache_key(model_name: str, request: ChatRequest) -> str:
    """sha256 (hex) of the model name and the request's canonical JSON."""
    payload = json.dumps(
        {"model": model_name, "request": request.as_dict()},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ChatResult:
    """The answer to one :class:`ChatRequest`.

    ``parse_status``: ``"ok"`` (non-empty text; with a schema, it parsed and matched),
    ``"empty"`` (no text), ``"unparseable"`` (a schema was given and the text is not JSON, or
    is JSON that does not match the schema: then ``parsed`` holds the JSON and ``error`` says
    why), ``"error"`` (the request failed; ``error`` says how; ``text`` is empty). Token counts
    come from the server's ``usage`` (0 when unknown). ``latency_s`` is the time of the call that
    produced the answer (kept as it was when the answer comes from the cache, ``cached=True``).
    """

    text: str
    parsed: Any | None
    parse_status: ParseStatus
    tokens_in: int
    tokens_out: int
    latency_s: float
    cached: bool = False
    error: str | None = None
    finish_reason: str | None = None


@runtime_checkable
class LLMBackend(Protocol):
    """What the explainer and the evaluator need from an LLM."""

    @property
    def model_name(self) -> str:
        """The model the requests go to (the served name)."""
        ...

    def chat_many(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        """One result per request, in the order of ``requests``."""
        ...


# --------------------------------------------------------------------------------------------
# Parsing answers

_FENCE = re.compile(r"^```[a-zA-Z0-9_-]*\s*\n?(.*?)\n?```\s*$", re.DOTALL)


def _first_json_value(text: str) -> tuple[bool, Any]:
    """The first JSON object or array embedded in ``text`` (``(False, None)`` when none)."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"[\[{]", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        return True, value
    return False, None


def parse_answer(
    text: str, json_schema: Mapping[str, Any] | None
) -> tuple[Any | None, ParseStatus, str | None]:
    """Parse an answer: ``(parsed, parse_status, error)``; never raises.

    Without a schema the text is the answer (``parsed`` None, status ``ok`` unless empty). With a
    schema: the whole text as JSON, else inside a Markdown code fence, else the first JSON
    object or array in it; then it is validated against the schema.
    """
    stripped = text.strip()
    if not stripped:
        return None, "empty", None
    if json_schema is None:
        return None, "ok", None
    found = False
    value: Any = None
    candidates = [stripped]
    fence = _FENCE.match(stripped)
    if fence:
        candidates.append(fence.group(1).strip())
    for candidate in candidates:
        try:
            value, found = json.loads(candidate), True
            break
        except ValueError:
            continue
    if not found:
        found, value = _first_json_value(stripped)
    if not found:
        return None, "unparseable", "the answer is not JSON"
    problem = schema_problem(value, json_schema)
    if problem is not None:
        return value, "unparseable", f"the answer does not match the schema: {problem}"
    return value, "ok", None


def schema_problem(value: Any, json_schema: Mapping[str, Any]) -> str | None:
    """Why ``value`` does not match ``json_schema`` (None when it does, or cannot be checked)."""
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - jsonschema is a dependency
        return None
    try:
        validator_cls = jsonschema.validators.validator_for(json_schema)
        error = jsonschema.exceptions.best_match(validator_cls(json_schema).iter_errors(value))
    except jsonschema.exceptions.SchemaError as exc:
        return f"invalid schema: {exc.message}"
    if error is None:
        return None
    where = "/".join(str(part) for part in error.absolute_path) or "(root)"
    return f"{where}: {error.message}"


def result_from_text(
    request: ChatRequest,
    text: str | None,
    *,
    tokens_in: int,
    tokens_out: int,
    latency_s: float,
    finish_reason: str | None = None,
) -> ChatResult:
    """Build the result of an answered request, parsing ``text`` as the request asks."""
    text = text or ""
    parsed, status, error = parse_answer(text, request.json_schema)
    if status == "unparseable" and finish_reason == "length":
        error = f"{error} (the answer was cut at max_tokens={request.max_tokens})"
    return ChatResult(
        text=text,
        parsed=parsed,
        parse_status=status,
        tokens_in=int(tokens_in),
        tokens_out=int(tokens_out),
        latency_s=float(latency_s),
        cached=False,
        error=error,
        finish_reason=finish_reason,
    )


def error_result(message: str, latency_s: float = 0.0) -> ChatResult:
    """The result of a request the server rejected."""
    return ChatResult(
        text="",
        parsed=None,
        parse_status="error",
        tokens_in=0,
        tokens_out=0,
        latency_s=latency_s,
        cached=False,
        error=message,
    )


def iter_results(
    backend: LLMBackend, requests: Sequence[ChatRequest]
) -> Iterator[tuple[int, ChatResult]]:
    """``(index, result)`` pairs as ``backend`` produces them (in order when it cannot stream)."""
    iter_chat = getattr(backend, "iter_chat", None)
    if callable(iter_chat):
        yield from iter_chat(requests)
        return
    yield from enumerate(backend.chat_many(requests))


# --------------------------------------------------------------------------------------------
# HTTP backend


def json_schema_response_format(json_schema: Mapping[str, Any]) -> dict[str, Any]:
    """The OpenAI ``response_format`` asking for output matching ``json_schema``."""
    title = str(json_schema.get("title") or "answer")
    name = re.sub(r"[^a-zA-Z0-9_-]", "_", title)[:64] or "answer"
    return {
        "type": "json_schema",
        "json_schema": {"name": name, "schema": dict(json_schema), "strict": True},
    }


def _is_local(url: str) -> bool:
    from urllib.parse import urlsplit

    return (urlsplit(url).hostname or "") in ("127.0.0.1", "localhost", "::1")


class _Transient(Exception):
    """A failure worth retrying (transport error, timeout, 429, 5xx)."""


class _Aborted(Exception):
    """Another request of the batch already gave up: stop retrying."""


@dataclass
class OpenAICompatibleBackend:
    """Chat completions over HTTP from an OpenAI-compatible server (vLLM's, or another).

    ``base_url`` ends with the API version, e.g. ``http://127.0.0.1:8000/v1``. At most
    ``concurrency`` requests are in flight at once. A request that fails with a transport error,
    a timeout (``timeout_s`` for the whole answer), HTTP 408/425/429 or 5xx is retried up to
    ``max_retries`` times, waiting ``backoff_s * 2**attempt`` (capped at ``max_backoff_s``).
    ``api_key_env`` names the environment variable holding an API key (None: no key). The
    first call checks that the server answers ``GET /models`` and serves ``model``.
    """

    base_url: str
    model: str
    api_key_env: str | None = None
    concurrency: int = 8
    timeout_s: float = 600.0
    max_retries: int = 4
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    connect_timeout_s: float = 10.0
    extra_body: Mapping[str, Any] = field(default_factory=dict)
    _client: Any = field(default=None, init=False, repr=False)
    _checked: bool = field(default=False, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        if not re.match(r"^https?://", self.base_url):
            raise InputError(f"LLM base_url {self.base_url!r} must start with http:// or https://")
        if self.concurrency < 1:
            raise InputError(f"LLM concurrency must be >= 1, got {self.concurrency}")
        if self.max_retries < 0:
            raise InputError(f"LLM max_retries must be >= 0, got {self.max_retries}")

    @property
    def model_name(self) -> str:
        return self.model

    # -- connection -------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise InputError(
                    f"environment variable {self.api_key_env} (the LLM API key) is not set"
                )
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _http(self) -> Any:
        import httpx

        with self._lock:
            if self._client is None:
                self._client = httpx.Client(
                    headers=self._headers(),
                    timeout=httpx.Timeout(
                        self.timeout_s, connect=min(self.connect_timeout_s, self.timeout_s)
                    ),
                    limits=httpx.Limits(
                        max_connections=self.concurrency,
                        max_keepalive_connections=self.concurrency,
                    ),
                    # proxies from the environment apply to remote servers, never to local ones
                    trust_env=not _is_local(self.base_url),
                )
            return self._client

    def close(self) -> None:
        """Close the HTTP connections."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def __enter__(self) -> OpenAICompatibleBackend:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _sleep_before_retry(self, attempt: int, abort: threading.Event | None) -> None:
        delay = min(self.backoff_s * (2**attempt), self.max_backoff_s)
        if abort is not None:
            if abort.wait(delay):
                raise _Aborted
        else:
            time.sleep(delay)

    def check_server(self) -> list[str]:
        """Check that the server answers ``GET /models``; return the model ids it serves.

        Raises :class:`InputError` naming the URL when it cannot be reached (after the retries),
        or naming the model when the server lists models but not this one.
        """
        import httpx

        client = self._http()
        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            try:
                response = client.get(f"{self.base_url}/models")
            except httpx.TransportError as exc:
                last = exc
            else:
                if response.status_code in RETRY_STATUSES:
                    last = LLMServerError(f"HTTP {response.status_code}")
                else:
                    break
            if attempt < self.max_retries:
                log.info("LLM server at %s not answering (%s); retrying", self.base_url, last)
                self._sleep_before_retry(attempt, None)
        else:
            raise InputError(
                f"LLM server at {self.base_url} is unreachable: {type(last).__name__}: {last}"
            ) from last
        if response.status_code in (401, 403):
            raise InputError(
                f"LLM server at {self.base_url} refused the API key "
                f"(HTTP {response.status_code}; key from {self.api_key_env or 'no variable'})"
            )
        served: list[str] = []
        if response.status_code == 200:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                served = [str(entry["id"]) for entry in response.json().get("data", [])]
        if served and self.model not in served:
            raise InputError(
                f"LLM server at {self.base_url} does not serve model {self.model!r} "
                f"(it serves {served})"
            )
        return served

    def _ensure_checked(self) -> None:
        if not self._checked:
            self.check_server()
            self._checked = True

    # -- one request ------------------------------------------------------------------------

    def payload(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body of ``POST /chat/completions`` for ``request``."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": request.openai_messages(),
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
            "seed": request.seed,
        }
        if request.json_schema is not None:
            body["response_format"] = json_schema_response_format(request.json_schema)
        if request.repetition_penalty != 1.0:
            body["repetition_penalty"] = request.repetition_penalty  # a vLLM extension
        body.update(self.extra_body)
        return body

    def _send_once(self, request: ChatRequest, body: dict[str, Any]) -> ChatResult:
        import httpx

        start = time.perf_counter()
        try:
            response = self._http().post(f"{self.base_url}/chat/completions", json=body)
        except httpx.TransportError as exc:  # connect errors, timeouts, dropped connections
            raise _Transient(f"{type(exc).__name__}: {exc}") from exc
        latency = time.perf_counter() - start
        if response.status_code in RETRY_STATUSES:
            raise _Transient(f"HTTP {response.status_code}: {response.text[:300]}")
        if response.status_code != 200:
            return error_result(f"HTTP {response.status_code}: {response.text[:1000]}", latency)
        try:
            data = response.json()
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
            finish_reason = choice.get("finish_reason")
            usage = data.get("usage") or {}
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            return error_result(f"malformed answer ({exc!r}): {response.text[:1000]}", latency)
        return result_from_text(
            request,
            text,
            tokens_in=usage.get("prompt_tokens") or 0,
            tokens_out=usage.get("completion_tokens") or 0,
            latency_s=latency,
            finish_reason=finish_reason,
        )

    def chat_one(self, request: ChatRequest, abort: threading.Event | None = None) -> ChatResult:
        """Send one request with retries; raise :class:`LLMServerError` when they are spent."""
        body = self.payload(request)
        for attempt in range(self.max_retries + 1):
            if abort is not None and abort.is_set():
                raise _Aborted
            try:
                return self._send_once(request, body)
            except _Transient as exc:
                if attempt == self.max_retries:
                    raise LLMServerError(
                        f"LLM server at {self.base_url} failed {attempt + 1} times: {exc}"
                    ) from exc
                log.warning(
                    "LLM request failed (%s); retry %d/%d", exc, attempt + 1, self.max_retries
                )
                self._sleep_before_retry(attempt, abort)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- many requests ----------------------------------------------------------------------

    def iter_chat(self, requests: Sequence[ChatRequest]) -> Iterator[tuple[int, ChatResult]]:
        """``(index, result)`` pairs as the answers arrive, ``concurrency`` requests at a time.

        When one request has spent its retries, the requests not yet sent are dropped, those in
        flight stop retrying, every answer already received is yielded, and then
        :class:`LLMServerError` is raised.
        """
        if not requests:
            return
        self._ensure_checked()
        abort = threading.Event()
        failure: BaseException | None = None
        pool = cf.ThreadPoolExecutor(self.concurrency, thread_name_prefix="llm")
        futures = {
            pool.submit(self.chat_one, request, abort): index
            for index, request in enumerate(requests)
        }
        try:
            for future in cf.as_completed(futures):
                try:
                    result = future.result()
                except (_Aborted, cf.CancelledError):
                    continue
                except Exception as exc:  # re-raised below, after the answers in flight
                    if failure is None:
                        failure = exc
                        abort.set()
                        for other in futures:
                            other.cancel()
                    continue
                yield futures[future], result
        except BaseException:
            # Interrupted, or the caller stopped iterating: do not wait for answers in flight.
            abort.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        if failure is not None:
            raise failure

    def chat_many(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        """One result per request, in order."""
        results: list[ChatResult | None] = [None] * len(requests)
        for index, result in self.iter_chat(requests):
            results[index] = result
        return [result for result in results if result is not None]


# --------------------------------------------------------------------------------------------
# Response cache

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
        delay = 0.05
        while True:
            db = None
            try:
                db = sqlite3.connect(
                    self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
                )
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute(_CACHE_SCHEMA)
                return db
            except sqlite3.OperationalError as exc:
                if db is not None:
                    db.close()
                if "locked" not in str(exc) or time.monotonic() + delay > deadline:
                    raise InputError(
                        f"LLM response cache {self.path} is not usable: {exc}"
                    ) from exc
                time.sleep(delay)
                delay = min(2 * delay, 1.0)
            except sqlite3.DatabaseError as exc:
                if db is not None:
                    db.close()
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
