"""The LLM interface of the explainer and the FADE evaluator: requests, results, the backend
protocol and the parsing of answers. The backends are :mod:`circuit_insights.llm.http_backend`
(an OpenAI-compatible server over HTTP) and :mod:`circuit_insights.llm.cache` (any backend
behind a response cache); :mod:`circuit_insights.llm.server` starts vLLM.

- :class:`ChatRequest` / :class:`ChatResult`: a chat completion request (messages, optional JSON
  schema for structured output, sampling parameters, optional prompt log-probabilities) and its
  answer. A request is immutable,
  hashable and has one canonical JSON form (:meth:`ChatRequest.canonical_json`), from which the
  cache key is derived (:func:`circuit_insights.llm.cache.cache_key`).
- :class:`LLMBackend`: the protocol every backend implements, ``chat_many(requests)``: one
  result per request, in order. Backends that can hand results over as they arrive also offer
  ``iter_chat(requests)`` (yields ``(index, result)`` pairs in completion order), which
  :class:`~circuit_insights.llm.cache.CachedBackend` uses to store each answer as soon as it
  exists (:func:`iter_results` takes either).

Failure policy. An answer that is empty or does not parse (or does not match the schema) is a
result with ``parse_status`` ``"empty"`` / ``"unparseable"`` and its raw ``text`` kept: never an
exception (:func:`parse_answer`, :func:`result_from_text`). A request the server rejects (HTTP
4xx other than 408/429, e.g. a prompt longer than the context) is a result with
``parse_status="error"`` and the server's message (:func:`error_result`); such results are not
cached. A server that cannot be reached at the first request raises
:class:`~circuit_insights.core.errors.InputError` naming the URL; a server that stops answering
later raises :class:`LLMServerError` once the retries are spent, after every answer received so
far has been handed over (and, through the cache, stored).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from circuit_insights.core.errors import InputError

#: Roles of the OpenAI chat format.
ROLES: frozenset[str] = frozenset({"system", "user", "assistant", "developer", "tool"})

#: Bumped when the canonical form of a request changes: old cache entries then no longer match.
REQUEST_FORMAT_VERSION = 1

ParseStatus = Literal["ok", "empty", "unparseable", "error"]


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
    ``prompt_logprobs`` > 0 asks for the top that many log-probabilities at every prompt position
    (vLLM's ``prompt_logprobs``, an extension of the OpenAI API); the answer's ``parsed`` then
    holds them (:func:`compact_prompt_logprobs`), kept only at the positions right after a prompt
    token whose text is ``prompt_logprobs_after`` (None: every position). Both are sent and
    keyed only when ``prompt_logprobs`` > 0. Requests compare and hash by their canonical JSON
    form.
    """

    messages: tuple[tuple[str, str], ...]
    json_schema: Mapping[str, Any] | None = None
    temperature: float = 0.0
    max_tokens: int = 256
    seed: int = 0
    repetition_penalty: float = 1.0
    prompt_logprobs: int = 0
    prompt_logprobs_after: str | None = None

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
        if int(self.prompt_logprobs) < 0:
            raise InputError(
                f"ChatRequest.prompt_logprobs must be >= 0, got {self.prompt_logprobs}"
            )
        if self.json_schema is not None and int(self.prompt_logprobs) > 0:
            raise InputError("ChatRequest: prompt_logprobs and json_schema do not go together")
        object.__setattr__(self, "prompt_logprobs", int(self.prompt_logprobs))
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

        ``repetition_penalty`` appears only when it is not 1, and ``prompt_logprobs`` (with
        ``prompt_logprobs_after``) only when it is > 0, so the cache keys of requests without
        them are those they had before the fields existed.
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
        if self.prompt_logprobs > 0:
            data["prompt_logprobs"] = self.prompt_logprobs
            data["prompt_logprobs_after"] = self.prompt_logprobs_after
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


def compact_prompt_logprobs(prompt_logprobs: Any, after: str | None) -> list[dict[str, Any]] | None:
    """vLLM's ``prompt_logprobs`` (one entry per prompt token: None for the first, else a
    mapping token id -> ``{"logprob", "rank", "decoded_token"}`` whose first entry is the prompt
    token itself, then the top ones) as a list of ``{"position", "token", "top"}``: the prompt
    token's text and ``top`` its position's log-probabilities by token text (tokens of the same
    text summed), only at the positions whose previous prompt token's text is ``after`` (None:
    all). None when the data does not have that shape."""
    if not isinstance(prompt_logprobs, list):
        return None
    texts: list[str | None] = []
    tops: list[dict[str, float] | None] = []
    try:
        for entry in prompt_logprobs:
            if entry is None:
                texts.append(None)
                tops.append(None)
                continue
            items = list(entry.values())
            if not items:
                return None
            top: dict[str, float] = {}
            for item in items:
                text, value = str(item["decoded_token"]), float(item["logprob"])
                top[text] = float(np.logaddexp(top[text], value)) if text in top else value
            texts.append(str(items[0]["decoded_token"]))
            tops.append(top)
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    kept = []
    for position in range(1, len(texts)):
        here = tops[position]
        if here is None or (after is not None and texts[position - 1] != after):
            continue
        kept.append({"position": position, "token": texts[position], "top": here})
    return kept


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
