"""The LLM side of FADE: the requests that ask the judge LLM for synthetic texts and for ratings,
and the parsing of its answers.

- Clarity: :func:`generate_synthetic_texts` asks for varied texts expressing a description.
- Responsiveness, Purity and Faithfulness: :func:`rate_texts` / :func:`rate_text_groups` ask for
  ratings 0 / 1 / 2 of numbered texts, in batches, sending the texts left unrated again.

Prompts are the packaged templates ``prompts/{name}.txt`` (:func:`load_prompt`); what every call
cost is added up in an :class:`LLMUsage`. Nothing here touches the subject model.
"""

from __future__ import annotations

import functools
import json
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

from circuit_insights.llm.client import ChatRequest, ChatResult, LLMBackend

__all__ = [
    "GENERATION_SCHEMA",
    "PROMPT_VERSION",
    "RATING_SCHEMA",
    "LLMUsage",
    "generate_synthetic_texts",
    "load_prompt",
    "parse_ratings",
    "parse_texts",
    "rate_text_groups",
    "rate_texts",
    "rating_schema",
]

PROMPT_VERSION = "fade_v1"
"""Version of the prompt templates ``prompts/*_v1.txt``; recorded with every result."""


@dataclass
class LLMUsage:
    """What the LLM calls of one evaluation cost."""

    calls: int = 0
    failed_calls: int = 0
    """Calls whose answer could not be used (``parse_status`` other than ``ok``)."""
    error_calls: int = 0
    """Of those, the requests the server failed (``parse_status`` ``error``: no answer at all)."""
    cached_calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    latency_s: float = 0.0

    def add(self, results: Sequence[ChatResult]) -> None:
        for result in results:
            self.calls += 1
            self.failed_calls += int(result.parse_status != "ok")
            self.error_calls += int(result.parse_status == "error")
            self.cached_calls += int(bool(result.cached))
            self.tokens_in += int(result.tokens_in or 0)
            self.tokens_out += int(result.tokens_out or 0)
            self.latency_s += float(result.latency_s or 0.0)


def _chat(
    backend: LLMBackend, requests: Sequence[ChatRequest], usage: LLMUsage
) -> list[ChatResult]:
    if not requests:
        return []
    results = list(backend.chat_many(list(requests)))
    if len(results) != len(requests):
        raise RuntimeError(
            f"LLM backend {getattr(backend, 'model_name', '?')!r} answered {len(results)} of "
            f"{len(requests)} requests"
        )
    usage.add(results)
    return results


@functools.cache
def load_prompt(name: str) -> string.Template:
    """The packaged prompt template ``prompts/{name}.txt`` (``$``-placeholders)."""
    path = resources.files("circuit_insights.evaluation.fade").joinpath("prompts", f"{name}.txt")
    return string.Template(path.read_text(encoding="utf-8"))


def _answer(result: ChatResult) -> Any:
    """The parsed answer, or the text parsed as JSON when the backend could not; else None."""
    if result.parsed is not None:
        return result.parsed
    text = (result.text or "").strip()
    if not text:
        return None
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, flags=re.DOTALL)
    if fenced:
        text = fenced.group(1).strip()
    try:
        return json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return None


# --- synthetic texts -------------------------------------------------------------------------

# The list is bounded so that a small LLM that repeats itself still closes its JSON before
# max_tokens (vLLM's structured outputs honour maxItems).
GENERATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "texts": {
            "type": "array",
            "items": {"type": "string"},
            "minItems": 1,
            "maxItems": 10,
        }
    },
    "required": ["texts"],
    "additionalProperties": False,
}


def parse_texts(answer: Any) -> list[str]:
    """The non-empty strings of a generation answer (``{"texts": [...]}`` or a bare list)."""
    if isinstance(answer, Mapping):
        answer = answer.get("texts")
    if not isinstance(answer, list):
        return []
    return [text.strip() for text in answer if isinstance(text, str) and text.strip()]


def generate_synthetic_texts(
    backend: LLMBackend,
    description: str,
    *,
    n_calls: int = 15,
    temperature: float = 1.0,
    max_tokens: int = 1024,
    seed: int = 0,
    usage: LLMUsage | None = None,
) -> list[str]:
    """Ask the LLM ``n_calls`` times for a list of varied texts expressing ``description``.

    Each call has its own seed and index (so a caching backend does not answer them all
    alike). Returns the distinct texts in order of appearance; failed or unparseable calls add
    nothing.
    """
    usage = usage if usage is not None else LLMUsage()
    system = load_prompt("generation_system_v1").substitute()
    user = load_prompt("generation_user_v1")
    requests = [
        ChatRequest(
            messages=(
                ("system", system),
                (
                    "user",
                    user.substitute(description=description, call_index=i + 1, n_calls=n_calls),
                ),
            ),
            json_schema=GENERATION_SCHEMA,
            temperature=temperature,
            max_tokens=max_tokens,
            seed=(seed * 1000 + i) % (2**31 - 1),
        )
        for i in range(n_calls)
    ]
    texts: dict[str, None] = {}
    for result in _chat(backend, requests, usage):
        for text in parse_texts(_answer(result)):
            texts.setdefault(text, None)
    return list(texts)


# --- ratings ---------------------------------------------------------------------------------

RATING_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "ratings": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer"},
                    "rating": {"type": "integer", "enum": [0, 1, 2]},
                },
                "required": ["id", "rating"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["ratings"],
    "additionalProperties": False,
}


def rating_schema(n_texts: int) -> dict[str, Any]:
    """:data:`RATING_SCHEMA` for exactly ``n_texts`` texts numbered 1..n (ids and count bounded,
    so the answer cannot run on past the batch)."""
    schema = json.loads(json.dumps(RATING_SCHEMA))
    ratings = schema["properties"]["ratings"]
    ratings["minItems"] = ratings["maxItems"] = n_texts
    ratings["items"]["properties"]["id"].update(minimum=1, maximum=n_texts)
    return schema


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def parse_ratings(answer: Any, n_texts: int) -> dict[int, int]:
    """Valid ratings of a rating answer: 1-based text id -> rating in {0, 1, 2}.

    Accepts ``{"ratings": [{"id", "rating"}, ...]}``, a bare list of such items, or a mapping
    ``{"id": rating}``. Ids outside ``1..n_texts`` and ratings outside {0, 1, 2} are dropped; the
    first valid rating of an id wins.
    """
    if isinstance(answer, Mapping) and "ratings" in answer:
        answer = answer["ratings"]
    pairs: list[tuple[Any, Any]] = []
    if isinstance(answer, list):
        pairs = [
            (item.get("id"), item.get("rating")) for item in answer if isinstance(item, Mapping)
        ]
    elif isinstance(answer, Mapping):
        pairs = list(answer.items())
    ratings: dict[int, int] = {}
    for raw_id, raw_rating in pairs:
        text_id, rating = _as_int(raw_id), _as_int(raw_rating)
        if text_id is None or rating is None or not 1 <= text_id <= n_texts:
            continue
        if rating in (0, 1, 2):
            ratings.setdefault(text_id, rating)
    return ratings


def _shown(text: str, max_chars: int | None) -> str:
    if max_chars is not None and len(text) > max_chars:
        text = text[:max_chars] + "..."
    return json.dumps(text, ensure_ascii=False)


def _rating_request(
    description: str,
    texts: Sequence[str],
    *,
    seed: int,
    max_tokens: int | None,
    max_chars: int | None,
) -> ChatRequest:
    """One rating request: ``texts`` numbered from 1."""
    listing = "\n".join(
        f"{number}. {_shown(text, max_chars)}" for number, text in enumerate(texts, start=1)
    )
    return ChatRequest(
        messages=(
            ("system", load_prompt("rating_system_v1").substitute()),
            (
                "user",
                load_prompt("rating_user_v1").substitute(description=description, texts=listing),
            ),
        ),
        json_schema=rating_schema(len(texts)),
        temperature=0.0,
        # ~18 tokens per pretty-printed {"id", "rating"} entry (the server may indent its JSON)
        max_tokens=max_tokens if max_tokens is not None else 64 + 24 * len(texts),
        seed=seed,
    )


def rate_texts(
    backend: LLMBackend,
    description: str,
    texts: Sequence[str],
    *,
    batch_size: int = 15,
    failed_retries: int = 1,
    seed: int = 0,
    max_tokens: int | None = None,
    max_chars: int | None = None,
    usage: LLMUsage | None = None,
) -> np.ndarray:
    """Ratings 0 / 1 / 2 of ``texts`` for ``description``, in batches; NaN where missing.

    Texts are numbered 1..k within each batch. Texts the LLM did not rate validly (missing ids,
    invalid ratings, failed or unparseable answers) are sent again, in new batches, up to
    ``failed_retries`` times (with the next seed); what is still missing stays NaN. (n,) float64.
    """
    return rate_text_groups(
        backend,
        description,
        [texts],
        batch_size=batch_size,
        failed_retries=failed_retries,
        seed=seed,
        max_tokens=max_tokens,
        max_chars=max_chars,
        usage=usage,
    )[0]


def rate_text_groups(
    backend: LLMBackend,
    description: str,
    groups: Sequence[Sequence[str]],
    *,
    batch_size: int = 15,
    failed_retries: int = 1,
    seed: int = 0,
    max_tokens: int | None = None,
    max_chars: int | None = None,
    usage: LLMUsage | None = None,
) -> list[np.ndarray]:
    """:func:`rate_texts` for several groups of texts at once (one ``chat_many`` per attempt).

    A batch never mixes groups (FADE rates the continuations of each steering factor apart).
    """
    usage = usage if usage is not None else LLMUsage()
    ratings = [np.full(len(texts), np.nan) for texts in groups]
    pending = [np.arange(len(texts)) for texts in groups]
    for attempt in range(max(int(failed_retries), 0) + 1):
        batches = [
            (group, indices[i : i + batch_size])
            for group, indices in enumerate(pending)
            for i in range(0, len(indices), batch_size)
        ]
        if not batches:
            break
        requests = [
            _rating_request(
                description,
                [groups[group][index] for index in batch],
                seed=seed + attempt,
                max_tokens=max_tokens,
                max_chars=max_chars,
            )
            for group, batch in batches
        ]
        for (group, batch), result in zip(batches, _chat(backend, requests, usage), strict=True):
            for text_id, rating in parse_ratings(_answer(result), len(batch)).items():
                ratings[group][batch[text_id - 1]] = rating
        pending = [np.flatnonzero(np.isnan(values)) for values in ratings]
    return ratings
