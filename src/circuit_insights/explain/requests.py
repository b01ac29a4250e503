"""The explainer's LLM requests: the answer schema, the key of the row a request answers, the
system message, the merge request of the per-cluster variants, and the prompt hash.

Every answer is requested as JSON ``{"description": str}`` (:data:`ANSWER_SCHEMA`, structured
output) at temperature 0.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, NamedTuple

from circuit_insights.explain.config import ExplainConfig
from circuit_insights.explain.facts import ClusterFacts, FeatureInputs
from circuit_insights.explain.prompts import template
from circuit_insights.llm.client import ChatRequest

__all__ = ["ANSWER_SCHEMA", "FINAL", "RequestKey", "chat_request", "merge_request", "prompt_hash"]

#: The answer every explainer request asks for (structured output).
ANSWER_SCHEMA: dict[str, Any] = {
    "title": "feature_description",
    "type": "object",
    # maxLength: a small explainer that repeats itself is cut at a closed string (vLLM's
    # structured outputs honour it), instead of running into max_tokens with unparseable JSON.
    "properties": {"description": {"type": "string", "minLength": 1, "maxLength": 400}},
    "required": ["description"],
    "additionalProperties": False,
}

#: ``cluster`` of a feature's final description (one per (feature, variant)).
FINAL = -1


class RequestKey(NamedTuple):
    """Which row an LLM request answers: ``step`` is ``describe`` or ``merge``."""

    feature: int
    variant: str
    cluster: int
    step: str


def chat_request(user: str, config: ExplainConfig) -> ChatRequest:
    """The request of one user prompt: the system message, :data:`ANSWER_SCHEMA`, and the
    sampling settings of ``config``."""
    system = template("system").substitute()
    return ChatRequest.simple(
        user.strip() + "\n",
        system=system.strip(),
        json_schema=ANSWER_SCHEMA,
        temperature=config.temperature,
        max_tokens=config.max_answer_tokens,
        seed=config.seed,
        repetition_penalty=config.repetition_penalty,
    )


def prompt_hash(request: ChatRequest) -> str:
    """sha256 (hex) of the request's canonical JSON: equal prompts, equal hashes."""
    return hashlib.sha256(request.canonical_json().encode("utf-8")).hexdigest()


def merge_request(
    inputs: FeatureInputs,
    descriptions: Sequence[tuple[ClusterFacts, str]],
    config: ExplainConfig,
) -> ChatRequest:
    """The request combining cluster descriptions (largest cluster first) into one."""
    ordered = sorted(descriptions, key=lambda item: (-item[0].n_samples, item[0].cluster))
    lines = [
        f"{i}. ({cluster.share:.0%} of samples) {text}"
        for i, (cluster, text) in enumerate(ordered, start=1)
    ]
    user = template("merge").substitute(
        feature=inputs.feature, layer=inputs.layer, descriptions="\n".join(lines)
    )
    return chat_request(user, config)
