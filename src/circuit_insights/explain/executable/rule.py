"""Executable explanations: a feature description as a predicate over (context tokens, position).

A :class:`Rule` is an OR over :class:`Clause` s; a clause is an AND over :class:`Condition` s; a
condition says "the token at ``position + offset`` is one of ``token_ids``". :meth:`Rule.holds`
applies a rule to a (n_contexts, context_length) token matrix at every position at once. A rule
without clauses is a ``missing_input`` rule whose ``missing`` says why. Rules round-trip through
JSON (:meth:`Rule.to_json`, :meth:`Rule.from_json`) so the explain stage can hand them to
evaluation (``raw_text`` of the explanations table).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from circuit_insights.core.errors import InputError

__all__ = ["Clause", "Condition", "Rule", "TokenDisplayFn", "missing_rule"]

TokenDisplayFn = Callable[[int], str]


def _default_display(token_id: int) -> str:
    return f"<{int(token_id)}>"


@dataclass(frozen=True)
class Condition:
    """The token at ``position + offset`` is one of ``token_ids``.

    ``weights`` (parallel to ``token_ids``, optional): a strength per token, used as the rule's
    graded score (WeightLens: the token's single-token activation). ``source`` says where the
    condition comes from (``target``, ``head L1.H3``, ``feature L2#17``, ``token``).
    """

    offset: int
    token_ids: tuple[int, ...]
    source: str = "target"
    weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not self.token_ids:
            raise InputError(f"rule condition at offset {self.offset} has no tokens")
        if self.weights is not None and len(self.weights) != len(self.token_ids):
            raise InputError("rule condition: weights and token_ids differ in length")

    def matches(self, tokens: np.ndarray) -> np.ndarray:
        """(n, L) bool: position p holds when ``tokens[:, p + offset]`` is one of the tokens
        (False where ``p + offset`` is outside the context)."""
        hit = np.isin(tokens, np.asarray(self.token_ids, dtype=np.int64))  # (n, L)
        return _shift(hit, self.offset, False)

    def strength(self, tokens: np.ndarray) -> np.ndarray:
        """(n, L) float: the weight of the token at ``p + offset`` (1 without weights), else 0."""
        ids = np.asarray(self.token_ids, dtype=np.int64)
        weights = (
            np.ones(len(ids)) if self.weights is None else np.asarray(self.weights, np.float64)
        )
        order = np.argsort(ids)
        ids, weights = ids[order], weights[order]
        slot = np.clip(np.searchsorted(ids, tokens), 0, len(ids) - 1)
        value = np.where(ids[slot] == tokens, weights[slot], 0.0)  # (n, L)
        return _shift(value, self.offset, 0.0)

    def text(self, display: TokenDisplayFn) -> str:
        shown = ", ".join(repr(display(t)) for t in self.token_ids[:8])
        if len(self.token_ids) > 8:
            shown += f" (+{len(self.token_ids) - 8} more)"
        many = len(self.token_ids) > 1
        via = "" if self.source in ("target", "token") else f" ({self.source})"
        if self.offset == 0:
            return f"the token is {'one of ' if many else ''}{shown}{via}"
        what = f"one of {shown}" if many else shown
        return f"{what} is {_offset_words(self.offset)}{via}"


def _offset_words(offset: int) -> str:
    n = abs(int(offset))
    unit = "token" if n == 1 else "tokens"
    return f"{n} {unit} before" if offset < 0 else f"{n} {unit} after"


def _shift(values: np.ndarray, offset: int, fill: Any) -> np.ndarray:
    """``out[:, p] = values[:, p + offset]`` where that index exists, else ``fill``."""
    out = np.full(values.shape, fill, dtype=values.dtype)
    length = values.shape[1]
    if offset == 0:
        return values.copy()
    if abs(offset) >= length:
        return out
    if offset < 0:
        out[:, -offset:] = values[:, : length + offset]
    else:
        out[:, : length - offset] = values[:, offset:]
    return out


@dataclass(frozen=True)
class Clause:
    """A conjunction of conditions (``label``: e.g. ``cluster 0``)."""

    conditions: tuple[Condition, ...]
    label: str = ""

    def tokens_at(self) -> dict[int, tuple[int, ...]]:
        """Per offset, the tokens that satisfy every condition there (the intersection of their
        token sets, in the first condition's order); empty at an offset where they contradict."""
        out: dict[int, tuple[int, ...]] = {}
        for condition in self.conditions:
            if condition.offset in out:
                allowed = set(condition.token_ids)
                out[condition.offset] = tuple(t for t in out[condition.offset] if t in allowed)
            else:
                out[condition.offset] = tuple(dict.fromkeys(condition.token_ids))
        return out

    @property
    def satisfiable(self) -> bool:
        """Whether some token sequence makes the clause hold: conditions at different offsets
        are independent, so this is every offset's intersection being non-empty."""
        return all(self.tokens_at().values())

    def holds(self, tokens: np.ndarray) -> np.ndarray:
        """(n, L) bool: every condition holds at the position."""
        out = np.ones(tokens.shape, dtype=bool)
        for condition in self.conditions:
            out &= condition.matches(tokens)
        return out

    def strength(self, tokens: np.ndarray) -> np.ndarray:
        """(n, L) float: the smallest condition strength (0 where a condition fails)."""
        out = np.full(tokens.shape, np.inf)
        for condition in self.conditions:
            out = np.minimum(out, condition.strength(tokens))
        return np.where(np.isfinite(out), out, 0.0)

    def text(self, display: TokenDisplayFn) -> str:
        body = " AND ".join(c.text(display) for c in self.conditions)
        return f"{self.label}: {body}" if self.label else body


@dataclass(frozen=True)
class Rule:
    """One feature's executable explanation: OR over ``clauses``.

    A rule without clauses is a ``missing_input`` rule; ``missing`` says why.
    """

    layer: int
    feature: int
    variant: str
    clauses: tuple[Clause, ...] = ()
    missing: str | None = None
    notes: tuple[str, ...] = field(default=())
    """What the derivation left out (e.g. an upstream feature without WeightLens tokens)."""

    @property
    def is_missing(self) -> bool:
        return not self.clauses

    def _matrix(self, tokens: np.ndarray) -> np.ndarray:
        matrix = np.asarray(tokens, dtype=np.int64)
        if matrix.ndim != 2:
            raise InputError(f"rule {self.variant} of feature {self.feature}: tokens must be 2-D")
        return matrix

    def holds(self, tokens: np.ndarray) -> np.ndarray:
        """(n, L) bool: the rule holds at (context, position), for every position at once."""
        matrix = self._matrix(tokens)
        out = np.zeros(matrix.shape, dtype=bool)
        for clause in self.clauses:
            out |= clause.holds(matrix)
        return out

    def strength(self, tokens: np.ndarray) -> np.ndarray:
        """(n, L) float: the largest clause strength, 0 where the rule does not hold."""
        matrix = self._matrix(tokens)
        out = np.zeros(matrix.shape)
        for clause in self.clauses:
            out = np.maximum(out, clause.strength(matrix))
        return out

    def text(self, display: TokenDisplayFn = _default_display) -> str:
        """The readable form: ``the feature fires where: ...``; None-like text when missing."""
        if self.is_missing:
            return ""
        if len(self.clauses) == 1:
            return f"Fires where {self.clauses[0].text(display)}."
        parts = [f"({c.text(display)})" for c in self.clauses]
        return "Fires where " + " OR ".join(parts) + "."

    def to_json(self) -> str:
        return json.dumps(
            {
                "layer": int(self.layer),
                "feature": int(self.feature),
                "variant": self.variant,
                "missing": self.missing,
                "notes": list(self.notes),
                "clauses": [
                    {
                        "label": c.label,
                        "conditions": [
                            {
                                "offset": int(d.offset),
                                "token_ids": [int(t) for t in d.token_ids],
                                "source": d.source,
                                "weights": None
                                if d.weights is None
                                else [float(w) for w in d.weights],
                            }
                            for d in c.conditions
                        ],
                    }
                    for c in self.clauses
                ],
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Rule:
        try:
            data = json.loads(text)
            clauses = tuple(
                Clause(
                    tuple(
                        Condition(
                            int(d["offset"]),
                            tuple(int(t) for t in d["token_ids"]),
                            str(d.get("source", "target")),
                            None if d.get("weights") is None else tuple(d["weights"]),
                        )
                        for d in c["conditions"]
                    ),
                    str(c.get("label", "")),
                )
                for c in data["clauses"]
            )
            return cls(
                int(data["layer"]),
                int(data["feature"]),
                str(data["variant"]),
                clauses,
                data.get("missing"),
                tuple(data.get("notes", ())),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise InputError(f"not a rule in JSON form: {error}") from error

    @property
    def offsets(self) -> tuple[int, int]:
        """(smallest, largest) offset over all conditions (0, 0 without clauses)."""
        offsets = [d.offset for c in self.clauses for d in c.conditions] or [0]
        return min(min(offsets), 0), max(max(offsets), 0)


def missing_rule(layer: int, feature: int, variant: str, reason: str) -> Rule:
    """The ``missing_input`` rule of a feature that lacks the variant's input."""
    return Rule(int(layer), int(feature), variant, (), reason)
