"""Chat completions over HTTP from an OpenAI-compatible ``/v1/chat/completions`` server (a vLLM
server started by :mod:`circuit_insights.llm.server`, or one the user runs).

:class:`OpenAICompatibleBackend` keeps a bounded thread pool of requests in flight and retries a
request with exponential backoff (tenacity) on transport errors, timeouts, 429 and 5xx
(:data:`RETRY_STATUSES`). Structured output is requested as
``response_format={"type": "json_schema", "json_schema": {"name", "schema", "strict"}}``, which
vLLM turns into guided decoding; prompt log-probabilities as vLLM's ``prompt_logprobs`` field,
whose answer (the top-ranked log-probabilities at each prompt token) becomes the result's
``parsed`` (:func:`~circuit_insights.llm.client.compact_prompt_logprobs`); a server that answers
without them gives an error result. The failure policy is that of
:mod:`circuit_insights.llm.client`.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import functools
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any

import tenacity

from circuit_insights.core.errors import InputError
from circuit_insights.llm.client import (
    ChatRequest,
    ChatResult,
    LLMServerError,
    compact_prompt_logprobs,
    error_result,
    result_from_text,
)

__all__ = ["RETRY_STATUSES", "OpenAICompatibleBackend", "json_schema_response_format"]

log = logging.getLogger(__name__)

#: HTTP statuses worth retrying: the server is busy, restarting or timed out.
RETRY_STATUSES: frozenset[int] = frozenset({408, 425, 429, 500, 502, 503, 504})


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


def _sleep(seconds: float, *, abort: threading.Event | None) -> None:
    """Wait ``seconds`` before a retry; raise :class:`_Aborted` as soon as ``abort`` is set."""
    if abort is None:
        time.sleep(seconds)
    elif abort.wait(seconds):
        raise _Aborted


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

    def _retrying(
        self,
        retry_on: type[BaseException] | tuple[type[BaseException], ...],
        *,
        before_sleep: Callable[[tenacity.RetryCallState], None],
        abort: threading.Event | None = None,
    ) -> tenacity.Retrying:
        """At most ``max_retries + 1`` attempts, retried on ``retry_on`` only, waiting
        ``backoff_s * 2**n`` (capped at ``max_backoff_s``) before retry n + 1; the last error is
        re-raised as it is. ``abort`` set during a wait raises :class:`_Aborted`."""
        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.max_retries + 1),
            wait=tenacity.wait_exponential(multiplier=self.backoff_s, max=self.max_backoff_s),
            retry=tenacity.retry_if_exception_type(retry_on),
            sleep=functools.partial(_sleep, abort=abort),
            before_sleep=before_sleep,
            reraise=True,
        )

    def check_server(self) -> list[str]:
        """Check that the server answers ``GET /models``; return the model ids it serves.

        Raises :class:`InputError` naming the URL when it cannot be reached (after the retries),
        or naming the model when the server lists models but not this one.
        """
        import httpx

        client = self._http()

        def get_models() -> Any:
            response = client.get(f"{self.base_url}/models")
            if response.status_code in RETRY_STATUSES:
                raise LLMServerError(f"HTTP {response.status_code}")
            return response

        def log_retry(state: tenacity.RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome is not None else None
            log.info("LLM server at %s not answering (%s); retrying", self.base_url, error)

        try:
            response = self._retrying(
                (httpx.TransportError, LLMServerError), before_sleep=log_retry
            )(get_models)
        except (httpx.TransportError, LLMServerError) as last:
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
        if request.prompt_logprobs > 0:
            body["prompt_logprobs"] = request.prompt_logprobs  # a vLLM extension
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
        result = result_from_text(
            request,
            text,
            tokens_in=usage.get("prompt_tokens") or 0,
            tokens_out=usage.get("completion_tokens") or 0,
            latency_s=latency,
            finish_reason=finish_reason,
        )
        if request.prompt_logprobs <= 0:
            return result
        logprobs = compact_prompt_logprobs(
            data.get("prompt_logprobs"), request.prompt_logprobs_after
        )
        if logprobs is None:
            return error_result(
                "the answer has no prompt log-probabilities (vLLM's prompt_logprobs), which the "
                f"request asked for: {response.text[:300]}",
                latency,
            )
        return replace(result, parsed=logprobs, parse_status="ok", error=None)

    def chat_one(self, request: ChatRequest, abort: threading.Event | None = None) -> ChatResult:
        """Send one request with retries; raise :class:`LLMServerError` when they are spent."""
        body = self.payload(request)

        def send() -> ChatResult:
            if abort is not None and abort.is_set():
                raise _Aborted
            return self._send_once(request, body)

        def log_retry(state: tenacity.RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome is not None else None
            log.warning(
                "LLM request failed (%s); retry %d/%d",
                error,
                state.attempt_number,
                self.max_retries,
            )

        try:
            return self._retrying(_Transient, before_sleep=log_retry, abort=abort)(send)
        except _Transient as exc:
            raise LLMServerError(
                f"LLM server at {self.base_url} failed {self.max_retries + 1} times: {exc}"
            ) from exc

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
