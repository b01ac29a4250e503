"""Preflight of the ``llm`` block: the model the run serves, and ``llm.url`` as an
OpenAI-compatible server listing the configured model."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from circuit_insights.core.errors import InputError

# --- the explainer LLM -------------------------------------------------------------------------

LLM_CHECK_TIMEOUT_S = 10.0
"""Seconds the start-time ``GET {llm.url}/models`` may take (asked twice at most)."""

ANSWER_EXCERPT_CHARS = 200
"""Characters of a bad answer of ``llm.url`` quoted in the message."""


def check_llm(llm: Mapping[str, Any], *, network: bool) -> None:
    """``llm.url`` serves ``llm.model`` (:func:`check_llm_url`); without a URL, the run can
    serve the model itself (embedded or a local folder, not a hub id)."""
    from circuit_insights.models.hub import is_hub_id
    from circuit_insights.pipeline.paths import is_embedded

    model = llm["model"]
    if not llm["url"]:
        if not is_embedded(model) and not Path(model).expanduser().is_dir() and is_hub_id(model):
            raise InputError(
                f"config key 'llm.url' must be set: llm.model {model!r} is a hub model, which "
                "the workflow does not serve itself; serve it on a GPU (e.g. `vllm serve "
                f'{model}`) and pass --config \'llm={{"url": "http://HOST:8000/v1"}}\' '
                "(docs/scale-out.md)"
            )
        return
    if network:
        check_llm_url(llm)


def _excerpt(text: str) -> str:
    """The first :data:`ANSWER_EXCERPT_CHARS` characters of an answer, on one line (an HTML
    page's text, without its tags)."""
    if text.lstrip().startswith("<"):
        text = re.sub(r"<[^>]*>", " ", text)
    flat = " ".join(text.split())
    cut = flat[:ANSWER_EXCERPT_CHARS]
    return repr(cut + ("..." if len(flat) > len(cut) else ""))


def _get_models(url: str, headers: Mapping[str, str]) -> Any:
    """``GET url``: the response, or the transport error; asked again after a second on a
    transport error or HTTP 502/503/504 (a server still starting)."""
    import httpx

    local = (httpx.URL(url).host or "") in ("127.0.0.1", "localhost", "::1")
    answer: Any = None
    with httpx.Client(timeout=LLM_CHECK_TIMEOUT_S, trust_env=not local) as client:
        for attempt in range(2):
            if attempt:
                time.sleep(1.0)
            try:
                answer = client.get(url, headers=dict(headers))
            except httpx.TransportError as error:
                answer = error
                continue
            if answer.status_code not in (502, 503, 504):
                break
    return answer


def check_llm_url(llm: Mapping[str, Any]) -> None:
    """``GET {llm.url}/models`` answers HTTP 200 with an OpenAI-compatible model list, JSON
    ``{"data": [{"id": ...}, ...]}``, that names ``llm.model`` (the name the jobs ask for).

    Anything else is refused in one line naming ``llm.url``, the URL asked, the HTTP status and
    the first characters of the answer: a web server that is not the API (a URL without
    ``/v1``: 404), a server without the endpoint (501), an HTML or empty page, JSON of another
    shape, or a list without the model.
    """
    import httpx

    base = llm["url"].rstrip("/")
    if not re.match(r"^https?://", base):
        raise InputError(f"config key 'llm.url': {base!r} must start with http:// or https://")
    headers = {}
    if llm["api_key_env"]:
        key = os.environ.get(llm["api_key_env"])
        if not key:
            raise InputError(
                f"config key 'llm.api_key_env': environment variable {llm['api_key_env']} "
                "(the API key of llm.url) is not set"
            )
        headers["Authorization"] = f"Bearer {key}"
    asked = f"{base}/models"
    answer = _get_models(asked, headers)
    where = f"config key 'llm.url': GET {asked}"
    if isinstance(answer, httpx.TransportError):
        raise InputError(
            f"config key 'llm.url': LLM server at {base} is unreachable (GET {asked}: "
            f"{type(answer).__name__}: {' '.join(str(answer).split())})"
        )
    status, text = answer.status_code, answer.text
    if status in (401, 403):
        raise InputError(
            f"{where} answered HTTP {status}: the server refused the API key (from "
            f"{llm['api_key_env'] or 'no variable: llm.api_key_env is empty'}): {_excerpt(text)}"
        )
    if status != 200:
        raise InputError(
            f"{where} answered HTTP {status}, not an OpenAI-compatible model list (does the URL "
            f"end with /v1?): {_excerpt(text)}"
        )
    try:
        listing = json.loads(text)
    except ValueError:
        raise InputError(
            f"{where} answered HTTP 200 but not JSON, so it is no OpenAI-compatible server: "
            f"{_excerpt(text)}"
        ) from None
    data = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(data, list) or not all(
        isinstance(entry, dict) and "id" in entry for entry in data
    ):
        raise InputError(
            f"{where} answered HTTP 200 with JSON that is no OpenAI-compatible model list (a "
            f"'data' list of models with an 'id'): {_excerpt(text)}"
        )
    served = [str(entry["id"]) for entry in data]
    if llm["model"] not in served:
        raise InputError(
            f"{where} answered HTTP 200 without llm.model {llm['model']!r}: the server serves "
            f"{served} (llm.model is the name the jobs ask for): {_excerpt(text)}"
        )
