"""The thresholds of the rule derivation (config key ``rules``; docs/rules.md)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from circuit_insights.core.config import from_block
from circuit_insights.core.errors import InputError

__all__ = ["RuleConfig"]


@dataclass(frozen=True)
class RuleConfig:
    """Thresholds of the rule derivation (config key ``rules``; docs/rules.md)."""

    maxact_top_k: int = 20
    """Top contexts a MaxAct rule reads (the first ``k`` by activation)."""
    maxact_min_share: float = 0.1
    """A max-position token enters maxact_rule when it is the max token of at least this share of
    the top contexts read (and of at least one)."""
    cl_min_frequency: float = 0.5
    """A cluster's defining contributor enters its conjunction when at least this share of the
    cluster's samples contains it (``defining_frequency``)."""
    cl_min_token_share: float = 0.5
    """A token enters a condition of cl_rule (the target token, the source token of a head at
    offset delta) when it is at that place in at least this share of the cluster's samples."""
    cl_max_conditions: int = 4
    """At most this many conditions per cluster (the most frequent contributors first; the target
    token condition always counts as one)."""

    def __post_init__(self) -> None:
        for name in ("maxact_min_share", "cl_min_frequency", "cl_min_token_share"):
            value = float(getattr(self, name))
            if not 0.0 <= value <= 1.0:
                raise InputError(f"rules.{name} must be in [0, 1], got {value}")
        for name in ("maxact_top_k", "cl_max_conditions"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"rules.{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> RuleConfig:
        """From the workflow config's ``rules`` block (:func:`~circuit_insights.core.config.from_block`)."""
        return from_block(cls, values, "rules")
