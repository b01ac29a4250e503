"""Executable explanations: feature descriptions as predicates over (context tokens, position).

A :class:`Rule` is an OR over :class:`Clause` s; a clause is an AND over :class:`Condition` s; a
condition says "the token at ``position + offset`` is one of ``token_ids``". Four variants are
derived per feature (every threshold and limit in ``docs/rules.md``):

- ``weightlens_rule`` (:func:`weightlens_rule`): the token at the position is one of the
  feature's validated WeightLens tokens (own or inherited from upstream features).
- ``maxact_rule`` (:func:`maxact_rule`): the token at the position is one of the tokens found at
  the max-activation position of at least ``maxact_min_share`` of the feature's top contexts.
- ``cl_rule`` (:func:`cl_rule`): per circuit cluster, the conjunction of its defining
  contributors that name tokens (the target token, source tokens at offset delta through heads,
  upstream features named by their WeightLens tokens); OR over the clusters.
- ``wl_cl_rule`` (:func:`union`): weightlens_rule OR cl_rule.

A feature that lacks a variant's input gets a rule without clauses and a ``missing`` reason.
:meth:`Rule.holds` applies a rule to a (n_contexts, context_length) token matrix at every
position at once; :func:`synthetic_contexts` writes a rule's triggers into contexts (FADE Clarity
of :mod:`circuit_insights.evaluation.rule_rater`). Rules round-trip through JSON
(:meth:`Rule.to_json`, :meth:`Rule.from_json`) so the explain stage can hand them to evaluation.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from circuit_insights.circuitlens.clustering import FIRST_POSITION
from circuit_insights.core.config import from_block
from circuit_insights.core.errors import InputError

__all__ = [
    "EXECUTABLE_VARIANTS",
    "Clause",
    "Condition",
    "Rule",
    "RuleConfig",
    "cl_rule",
    "derive_rules",
    "maxact_rule",
    "missing_rule",
    "synthetic_contexts",
    "union",
    "weightlens_rule",
]

#: The executable variants, in the order of the paper's comparison.
EXECUTABLE_VARIANTS: tuple[str, ...] = ("maxact_rule", "weightlens_rule", "cl_rule", "wl_cl_rule")

TokenDisplayFn = Callable[[int], str]


def _default_display(token_id: int) -> str:
    return f"<{int(token_id)}>"


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


def _ints(values: Any) -> list[int]:
    if values is None or (isinstance(values, float) and math.isnan(values)):
        return []
    return [int(v) for v in values]


def _floats(values: Any) -> list[float]:
    if values is None or (isinstance(values, float) and math.isnan(values)):
        return []
    return [float(v) for v in values]


# --- derivation -------------------------------------------------------------------------------


def weightlens_rule(layer: int, feature: int, weightlens_row: Mapping[str, Any] | None) -> Rule:
    """The token at the position is a validated WeightLens token (own or inherited).

    ``weightlens_row``: the feature's ``WEIGHTLENS_SCHEMA`` row (None: no result). The weights are
    the tokens' single-token activations (``validated_activations``).
    """
    variant = "weightlens_rule"
    if weightlens_row is None:
        return missing_rule(layer, feature, variant, "no WeightLens result")
    ids = _ints(weightlens_row.get("validated_token_ids"))
    if not ids:
        return missing_rule(layer, feature, variant, "no validated WeightLens tokens")
    weights = _floats(weightlens_row.get("validated_activations"))
    best: dict[int, float] = {}
    for i, token in enumerate(ids):
        weight = weights[i] if i < len(weights) else 1.0
        best[token] = max(best.get(token, -np.inf), weight)
    condition = Condition(0, tuple(best), "target", tuple(best.values()))
    return Rule(int(layer), int(feature), variant, (Clause((condition,)),))


def maxact_rule(
    layer: int,
    feature: int,
    max_tokens: Sequence[int],
    config: RuleConfig | None = None,
) -> Rule:
    """The token at the position is one of the frequent max-activation tokens of the top contexts.

    ``max_tokens``: the token at the max-activation position of each top context, by rank. The
    first ``maxact_top_k`` are read; a token enters when it is the max token of at least
    ``max(1, ceil(maxact_min_share * k))`` of them.
    """
    config = config or RuleConfig()
    variant = "maxact_rule"
    read = [int(t) for t in list(max_tokens)[: config.maxact_top_k]]
    if not read:
        return missing_rule(layer, feature, variant, "no top contexts")
    need = max(1, math.ceil(config.maxact_min_share * len(read) - 1e-9))
    counts = Counter(read)
    kept = [t for t, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= need]
    if not kept:
        return missing_rule(
            layer, feature, variant, f"no max-activation token in >= {need} of {len(read)} contexts"
        )
    return Rule(int(layer), int(feature), variant, (Clause((Condition(0, tuple(kept)),)),))


@dataclass(frozen=True)
class ClusterEvidence:
    """What cl_rule needs of one cluster: its defining contributors (``CLUSTERS_SCHEMA`` lists)
    and the tokens of its member samples (``member_tokens`` (m, L), ``member_targets`` (m,))."""

    cluster: int
    kinds: tuple[str, ...]
    layers: tuple[int | None, ...]
    indices: tuple[int, ...]
    deltas: tuple[int | None, ...]
    frequency: tuple[float, ...]
    member_tokens: np.ndarray
    member_targets: np.ndarray
    exclude_token_ids: tuple[int, ...] = ()
    """Tokens that never name a condition (BOS: a head reading it is the attention sink, whose
    offset only encodes the absolute position)."""


def _frequent_tokens(values: np.ndarray, min_share: float) -> tuple[int, ...]:
    """Tokens that make up at least ``min_share`` of ``values`` (most frequent first)."""
    values = values[values >= 0]
    if len(values) == 0:
        return ()
    counts = Counter(int(v) for v in values)
    need = max(1, math.ceil(min_share * len(values) - 1e-9))
    return tuple(t for t, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= need)


def _tokens_at(evidence: ClusterEvidence, delta: int) -> np.ndarray:
    """The token at ``target + delta`` of each member sample (-1 outside the context)."""
    positions = evidence.member_targets.astype(np.int64) + int(delta)
    length = evidence.member_tokens.shape[1] if evidence.member_tokens.ndim == 2 else 0
    inside = (positions >= 0) & (positions < length)
    out = np.full(len(positions), -1, dtype=np.int64)
    rows = np.flatnonzero(inside)
    out[rows] = evidence.member_tokens[rows, positions[rows]]
    if evidence.exclude_token_ids:
        out[np.isin(out, np.asarray(evidence.exclude_token_ids, dtype=np.int64))] = -1
    return out


def _cluster_clause(
    evidence: ClusterEvidence,
    upstream_tokens: Mapping[tuple[int, int], Sequence[int]],
    config: RuleConfig,
    notes: list[str],
) -> Clause | None:
    conditions: list[Condition] = []
    target = _frequent_tokens(_tokens_at(evidence, 0), config.cl_min_token_share)
    if target:
        conditions.append(Condition(0, target, "target"))
    order = np.argsort(-np.asarray(evidence.frequency, dtype=np.float64), kind="stable")
    for i in order:
        if len(conditions) >= config.cl_max_conditions:
            break
        if evidence.frequency[i] < config.cl_min_frequency:
            continue
        kind, layer, index, delta = (
            evidence.kinds[i],
            evidence.layers[i],
            evidence.indices[i],
            evidence.deltas[i],
        )
        offset = 0 if delta is None else int(delta)
        if offset == FIRST_POSITION:
            # A head reading position 0 (the BOS / attention sink): no token to name.
            notes.append(f"cluster {evidence.cluster}: head L{layer}.H{index} reads position 0")
            continue
        if kind == "head":
            tokens = _frequent_tokens(_tokens_at(evidence, offset), config.cl_min_token_share)
            source = f"head L{layer}.H{index}"
            if not tokens:
                notes.append(
                    f"cluster {evidence.cluster}: {source} at {offset} has no common token"
                )
                continue
        elif kind == "token":
            tokens, source = (int(index),), "token"
        elif kind == "feature":
            tokens = tuple(int(t) for t in upstream_tokens.get((int(layer or 0), int(index)), ()))
            source = f"feature L{layer}#{index}"
            if not tokens:
                notes.append(f"cluster {evidence.cluster}: {source} has no WeightLens tokens")
                continue
        else:
            continue
        condition = Condition(offset, tokens, source)
        if any(c.offset == condition.offset and c.token_ids == tokens for c in conditions):
            continue
        conditions.append(condition)
    if not conditions:
        return None
    return Clause(tuple(conditions), f"cluster {evidence.cluster}")


def cl_rule(
    layer: int,
    feature: int,
    clusters: Sequence[ClusterEvidence],
    upstream_tokens: Mapping[tuple[int, int], Sequence[int]] | None = None,
    config: RuleConfig | None = None,
    *,
    status: str | None = None,
) -> Rule:
    """OR over the feature's clusters of the conjunction of their defining contributors.

    Per cluster: the target token(s) common to its samples; for each defining contributor present
    in at least ``cl_min_frequency`` of its samples (most frequent first, at most
    ``cl_max_conditions`` conditions in all): a head at offset delta -> the source token(s) common
    at ``target + delta``; an upstream feature -> "one of its validated WeightLens tokens" at
    ``target + delta`` (delta 0 when the contribution set has none); a token embedding -> that
    token at its offset. ``upstream_tokens``: (layer, feature) -> validated token ids.
    ``status``: the feature's clustering status (named in the missing reason).
    """
    config = config or RuleConfig()
    variant = "cl_rule"
    if not clusters:
        why = "no clusters" + (f" (clustering status {status})" if status else "")
        return missing_rule(layer, feature, variant, why)
    notes: list[str] = []
    clauses = []
    for evidence in clusters:
        clause = _cluster_clause(evidence, upstream_tokens or {}, config, notes)
        if clause is not None:
            clauses.append(clause)
    if not clauses:
        return Rule(
            int(layer),
            int(feature),
            variant,
            (),
            "no cluster has a contributor that names tokens",
            tuple(notes),
        )
    return Rule(int(layer), int(feature), variant, tuple(clauses), None, tuple(notes))


def union(first: Rule, second: Rule, variant: str = "wl_cl_rule") -> Rule:
    """``first OR second`` (missing only when both are, with both reasons)."""
    clauses = first.clauses + second.clauses
    if not clauses:
        reason = f"{first.variant}: {first.missing}; {second.variant}: {second.missing}"
        return Rule(first.layer, first.feature, variant, (), reason)
    return Rule(first.layer, first.feature, variant, clauses, None, first.notes + second.notes)


# --- from the stage tables --------------------------------------------------------------------


def _optional_int(value: Any) -> int | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return int(value)


def _list(values: Any) -> list[Any]:
    if values is None or (isinstance(values, float) and math.isnan(values)):
        return []
    return list(values)


def _context_rows(context_ids: np.ndarray) -> dict[int, int]:
    return {int(c): i for i, c in enumerate(np.asarray(context_ids))}


def derive_rules(
    *,
    layer: int,
    features: Iterable[int],
    tokens: np.ndarray,
    context_ids: np.ndarray,
    weightlens_df: pd.DataFrame | None = None,
    clusters_df: pd.DataFrame | None = None,
    samples_df: pd.DataFrame | None = None,
    assignments_df: pd.DataFrame | None = None,
    config: RuleConfig | None = None,
    variants: Sequence[str] = EXECUTABLE_VARIANTS,
    exclude_token_ids: Sequence[int] = (),
) -> dict[tuple[int, str], Rule]:
    """Every requested variant's rule for every feature of one layer: (feature, variant) -> Rule.

    Tables as the stages write them: ``weightlens_df`` (``WEIGHTLENS_SCHEMA``), ``clusters_df``
    (``CLUSTERS_SCHEMA``), ``samples_df`` (``SAMPLES_SCHEMA``: ``top`` rows for maxact_rule, the
    ``quantile`` rows keyed by ``rank`` = attribution sample id for the clusters' members),
    ``assignments_df`` (``CLUSTER_ASSIGNMENTS_SCHEMA``, optional: without it a cluster's members
    are its ``example_samples``). ``tokens`` (n, L) / ``context_ids`` (n,): the cached contexts.
    ``exclude_token_ids`` (the model's BOS): never a token of a cl_rule condition.
    """
    config = config or RuleConfig()
    unknown = [v for v in variants if v not in EXECUTABLE_VARIANTS]
    if unknown:
        raise InputError(f"rule variants {unknown}: choose from {list(EXECUTABLE_VARIANTS)}")
    tokens = np.asarray(tokens, dtype=np.int64)
    row_of = _context_rows(context_ids)

    def of_layer(frame: pd.DataFrame | None) -> pd.DataFrame:
        if frame is None:
            return pd.DataFrame(columns=["feature"])
        if "layer" in frame.columns:
            frame = frame[frame["layer"].astype(int) == int(layer)]
        return frame

    wl = {int(r["feature"]): r for r in of_layer(weightlens_df).to_dict("records")}
    samples = samples_df if samples_df is not None else pd.DataFrame(columns=["feature", "kind"])
    top = (
        samples[samples["kind"] == "top"].sort_values(["feature", "rank"])
        if len(samples)
        else samples
    )
    top_by_feature = {int(f): g for f, g in top.groupby("feature")} if len(top) else {}
    quantile = samples[samples["kind"] == "quantile"] if len(samples) else samples
    sample_at: dict[tuple[int, int], tuple[int, int]] = {
        (int(f), int(r)): (int(c), int(p))
        for f, r, c, p in zip(
            quantile.get("feature", []),
            quantile.get("rank", []),
            quantile.get("context", []),
            quantile.get("target_position", []),
            strict=False,
        )
    }
    clusters = of_layer(clusters_df)
    clusters_by_feature = (
        {int(f): g for f, g in clusters.groupby("feature")} if len(clusters) else {}
    )
    members_by_cluster: dict[tuple[int, int], list[int]] = {}
    if assignments_df is not None and len(assignments_df):
        assigned = of_layer(assignments_df)
        for f, s, c in zip(
            assigned["feature"], assigned["sample"], assigned["cluster"], strict=True
        ):
            if int(c) >= 0:
                members_by_cluster.setdefault((int(f), int(c)), []).append(int(s))

    def member_tokens(feature: int, samples_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        rows, targets = [], []
        for sample in samples_ids:
            found = sample_at.get((feature, int(sample)))
            if found is None or found[0] not in row_of:
                continue
            rows.append(row_of[found[0]])
            targets.append(found[1])
        width = tokens.shape[1] if tokens.ndim == 2 else 0
        if not rows:
            return np.zeros((0, width), np.int64), np.zeros(0, np.int64)
        return tokens[np.asarray(rows)], np.asarray(targets, dtype=np.int64)

    out: dict[tuple[int, str], Rule] = {}
    for feature in sorted({int(f) for f in features}):
        row = wl.get(feature)
        wl_rule = weightlens_rule(layer, feature, row)
        # maxact_rule: the token at the max position of each top context.
        top_rows = top_by_feature.get(feature)
        max_tokens: list[int] = []
        if top_rows is not None:
            for context, position in zip(
                top_rows["context"], top_rows["target_position"], strict=True
            ):
                if int(context) in row_of and 0 <= int(position) < tokens.shape[1]:
                    max_tokens.append(int(tokens[row_of[int(context)], int(position)]))
        ma_rule = maxact_rule(layer, feature, max_tokens, config)
        # cl_rule: the feature's real clusters.
        upstream: dict[tuple[int, int], list[int]] = {}
        if row is not None:
            for up_layer, up_feature, ids in zip(
                _ints(row.get("upstream_layers")),
                _ints(row.get("upstream_features")),
                _list(row.get("upstream_inherited_token_ids")),
                strict=False,
            ):
                upstream[(up_layer, up_feature)] = _ints(ids)
        evidence: list[ClusterEvidence] = []
        status = None
        frame = clusters_by_feature.get(feature)
        if frame is not None:
            for record in frame.sort_values("cluster").to_dict("records"):
                status = str(record.get("status") or "") or status
                if int(record["cluster"]) < 0 or bool(record.get("is_noise", False)):
                    continue
                members = members_by_cluster.get(
                    (feature, int(record["cluster"])), _ints(record.get("example_samples"))
                )
                member_ctx, member_targets = member_tokens(feature, members)
                evidence.append(
                    ClusterEvidence(
                        cluster=int(record["cluster"]),
                        kinds=tuple(str(k) for k in _list(record.get("defining_kinds"))),
                        layers=tuple(
                            _optional_int(v) for v in _list(record.get("defining_layers"))
                        ),
                        indices=tuple(int(v) for v in _list(record.get("defining_indices"))),
                        deltas=tuple(
                            _optional_int(v) for v in _list(record.get("defining_deltas"))
                        ),
                        frequency=tuple(_floats(record.get("defining_frequency"))),
                        member_tokens=member_ctx,
                        member_targets=member_targets,
                        exclude_token_ids=tuple(int(t) for t in exclude_token_ids),
                    )
                )
        circuit_rule = cl_rule(
            layer, feature, evidence, upstream, config, status=status or "not clustered"
        )
        by_variant = {
            "maxact_rule": ma_rule,
            "weightlens_rule": wl_rule,
            "cl_rule": circuit_rule,
            "wl_cl_rule": union(wl_rule, circuit_rule),
        }
        for variant in variants:
            out[(feature, variant)] = by_variant[variant]
    return out


# --- synthetic contexts (Clarity) -------------------------------------------------------------


def synthetic_contexts(
    rule: Rule,
    tokens: np.ndarray,
    n_contexts: int,
    *,
    seed: int = 0,
    first_position: int = 1,
    max_length: int | None = None,
    silent_length: np.ndarray | None = None,
) -> list[list[int]]:
    """Contexts in which the rule holds at their last position, made from ``tokens``.

    ``tokens`` (m, L): held-out contexts (BOS first when the model uses one; ``first_position``
    keeps it); ``silent_length`` (m,): how many leading positions of each are silent (the
    feature's first firing position; L where it never fires; None: all silent). Only silent
    prefixes are used, so whatever fires in a synthetic context is due to what the rule wrote.
    For context ``i`` the clause ``i mod n_clauses`` is written in: a base context and a target
    position ``p`` inside its silent prefix are drawn (seeded), and each condition's token (drawn
    among its tokens) is placed at ``p + offset``; the context is cut after ``p`` (so the trigger
    is its last token, as in CircuitLens's truncated samples). Empty when the rule has no
    clauses or no silent prefix is long enough. (``n_contexts`` lists of ids.)
    """
    base = np.asarray(tokens, dtype=np.int64)
    if rule.is_missing or n_contexts <= 0 or base.ndim != 2 or len(base) == 0:
        return []
    rng = np.random.default_rng([int(seed), int(rule.feature)])
    length = base.shape[1] if max_length is None else min(base.shape[1], int(max_length))
    silent = (
        np.full(len(base), base.shape[1], dtype=np.int64)
        if silent_length is None
        else np.asarray(silent_length, dtype=np.int64)
    )
    out: list[list[int]] = []
    for i in range(int(n_contexts)):
        clause = rule.clauses[i % len(rule.clauses)]
        low = first_position - min(min(d.offset for d in clause.conditions), 0)
        # The last position p may be: inside the length cap, inside the silent prefix.
        tops = np.minimum(length, silent) - 1 - max(max(d.offset for d in clause.conditions), 0)
        usable = np.flatnonzero(tops >= low)
        if len(usable) == 0:
            continue
        row = int(rng.choice(usable))
        context = base[row].copy()
        position = int(rng.integers(low, int(tops[row]) + 1))
        for condition in clause.conditions:
            context[position + condition.offset] = int(rng.choice(condition.token_ids))
        stop = position + 1 + max(max(d.offset for d in clause.conditions), 0)
        out.append([int(t) for t in context[:stop]])
    return out
