"""The explain settings: how much evidence goes into each prompt, and the LLM sampling settings
(config key ``explain.prompt``, plus the ``llm`` keys the stage passes on)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from circuit_insights.core.config import from_block
from circuit_insights.core.errors import InputError

__all__ = ["ExplainConfig"]


@dataclass(frozen=True)
class ExplainConfig:
    """How much evidence goes into each prompt, and the LLM sampling settings."""

    n_maxact: int = 20
    """Top contexts shown to MaxAct*."""
    maxact_before: int = 32
    """Tokens shown before the max token in a MaxAct* context."""
    maxact_after: int = 8
    """Tokens shown after it."""
    n_cluster_contexts: int = 5
    """Short contexts per cluster (the cluster's most central samples first)."""
    cluster_context_tokens: int = 24
    """Tokens of a cluster context, the target (last) token included."""
    max_clusters: int = 8
    """Clusters described per feature (the largest); the rest are left out of the merge."""
    max_patterns: int = 8
    """Trigger patterns listed per cluster."""
    max_tokens_listed: int = 10
    """Tokens named in one list (validated, promoted, ...)."""
    max_answer_tokens: int = 256
    temperature: float = 0.0
    repetition_penalty: float = 1.0
    """vLLM's repetition penalty of the explainer's requests (1 = none; see llm.repetition_penalty)."""
    retry_max_tokens: int = 0
    """An answer cut at ``max_answer_tokens`` before its JSON closed is asked once more with this
    many tokens (0, or not above ``max_answer_tokens``: never)."""
    seed: int = 0
    drop_bos: bool = True
    """Leave a BOS token at position 0 out of displayed contexts."""

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, int) and not isinstance(value, bool) and value < 0:
                raise InputError(f"explain.{item.name} must be >= 0, got {value}")
        if self.cluster_context_tokens < 1:
            raise InputError("explain.cluster_context_tokens must be >= 1")
        if self.max_answer_tokens < 1:
            raise InputError("explain.max_answer_tokens must be >= 1")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> ExplainConfig:
        """From the workflow config's ``explain`` block (:func:`~circuit_insights.core.config.from_block`)."""
        return from_block(cls, values, "explain")
