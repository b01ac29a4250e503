"""Failed LLM requests are counted, and a job whose requests failed beyond a tolerance fails.

A request *fails* when the server answers it with an error after the retries (a non-retried
status such as 404 or 501, or a body that is not a chat completion): its result has
``parse_status == "error"``. An answer that arrives but cannot be parsed is not a failure of the
request (the explainer said something unusable; that is recorded in the outputs). Transient
errors (connection errors, timeouts, 5xx) are retried by the backend and, once the retries are
spent, already stop the job with :class:`~circuit_insights.llm.client.LLMServerError`.

:class:`FailureCounter` wraps a backend (outermost, around the response cache) and counts; the
stage calls :meth:`FailureCounter.raise_if_failed` before it writes anything, so a failing job
leaves no output that looks complete, while the answers already received stay in the response
cache (errors are never cached): a rerun sends only what failed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from circuit_insights.llm.client import ChatRequest, ChatResult, LLMBackend, iter_results
from circuit_insights.llm.client import LLMServerError as _LLMServerError

FAILED_STATUS = "error"
"""The ``parse_status`` of a request the server failed."""


class LLMRequestsFailed(_LLMServerError):
    """More of a job's LLM requests failed than ``llm.max_failed_share`` allows."""


@dataclass
class FailureCounter:
    """``inner`` with its failed requests counted (``requests``, ``failed``, ``first_error``)."""

    inner: LLMBackend
    url: str = ""
    requests: int = field(default=0, init=False)
    failed: int = field(default=0, init=False)
    first_error: str | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def model_name(self) -> str:
        return self.inner.model_name

    def _count(self, result: ChatResult) -> None:
        with self._lock:
            self.requests += 1
            if result.parse_status == FAILED_STATUS:
                self.failed += 1
                if self.first_error is None:
                    self.first_error = result.error or "(no error text)"

    def iter_chat(self, requests: Sequence[ChatRequest]) -> Iterator[tuple[int, ChatResult]]:
        """The inner backend's ``(index, result)`` pairs, each counted as it passes."""
        for index, result in iter_results(self.inner, requests):
            self._count(result)
            yield index, result

    def chat_many(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        """One result per request, in order (each counted)."""
        results: list[ChatResult | None] = [None] * len(requests)
        for index, result in self.iter_chat(requests):
            results[index] = result
        return [result for result in results if result is not None]

    def failed_share(self) -> float:
        return self.failed / self.requests if self.requests else 0.0

    def raise_if_failed(self, *, what: str, max_failed_share: float) -> None:
        """Raise :class:`LLMRequestsFailed` when the failed share exceeds ``max_failed_share``.

        The message names the job (``what``), the counts, the URL and the first error (status
        and the first characters of the server's answer), and what to do.
        """
        if self.failed == 0 or self.failed_share() <= max_failed_share:
            return
        raise LLMRequestsFailed(
            f"{what}: {self.failed} of {self.requests} LLM requests to {self.url or 'the server'} "
            f"failed (llm.max_failed_share {max_failed_share:g}); first: "
            f"{(self.first_error or '')[:300]}. Check that llm.url is an OpenAI-compatible "
            "server serving llm.model, then rerun: answered requests are not sent again."
        )


def counted(backend: LLMBackend, url: str = "") -> FailureCounter:
    """``backend`` behind a :class:`FailureCounter` (the URL is named in its message)."""
    return FailureCounter(backend, url=url)
