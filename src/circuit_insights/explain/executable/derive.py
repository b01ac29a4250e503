"""The derivations of the executable rules, one per kind of evidence (thresholds in
``docs/rules.md``). Each takes the variant name its rule is recorded under; the variant table
(:mod:`circuit_insights.explain.variants`) says which variant derives its rule how.

- :func:`validated_token_rule`: the token at the position is one of the feature's validated
  WeightLens tokens (own or inherited from upstream features).
- :func:`max_token_rule`: the token at the position is one of the tokens found at the
  max-activation position of at least ``maxact_min_share`` of the feature's top contexts.
- :func:`circuit_rule`: per circuit cluster, the conjunction of its defining contributors that
  name tokens (the target token, source tokens at offset delta through heads, upstream features
  named by their WeightLens tokens), one condition per offset: conditions at the same offset
  are intersected and one that shares no token with the clause there is left out, so every
  clause can hold; OR over the clusters.
- :func:`union`: one rule OR another.

A feature that lacks a derivation's input gets a rule without clauses and a ``missing`` reason.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from circuit_insights.circuitlens.clustering import FIRST_POSITION
from circuit_insights.explain.executable.config import RuleConfig
from circuit_insights.explain.executable.evidence import ClusterEvidence, floats, ints
from circuit_insights.explain.executable.rule import Clause, Condition, Rule, missing_rule

__all__ = ["circuit_rule", "max_token_rule", "union", "validated_token_rule"]


def validated_token_rule(
    layer: int, feature: int, weightlens_row: Mapping[str, Any] | None, *, variant: str
) -> Rule:
    """The token at the position is a validated WeightLens token (own or inherited).

    ``weightlens_row``: the feature's ``WEIGHTLENS_SCHEMA`` row (None: no result). The weights are
    the tokens' single-token activations (``validated_activations``).
    """
    if weightlens_row is None:
        return missing_rule(layer, feature, variant, "no WeightLens result")
    ids = ints(weightlens_row.get("validated_token_ids"))
    if not ids:
        return missing_rule(layer, feature, variant, "no validated WeightLens tokens")
    weights = floats(weightlens_row.get("validated_activations"))
    best: dict[int, float] = {}
    for i, token in enumerate(ids):
        weight = weights[i] if i < len(weights) else 1.0
        best[token] = max(best.get(token, -np.inf), weight)
    condition = Condition(0, tuple(best), "target", tuple(best.values()))
    return Rule(int(layer), int(feature), variant, (Clause((condition,)),))


def max_token_rule(
    layer: int,
    feature: int,
    max_tokens: Sequence[int],
    config: RuleConfig | None = None,
    *,
    variant: str,
) -> Rule:
    """The token at the position is one of the frequent max-activation tokens of the top contexts.

    ``max_tokens``: the token at the max-activation position of each top context, by rank. The
    first ``maxact_top_k`` are read; a token enters when it is the max token of at least
    ``max(1, ceil(maxact_min_share * k))`` of them.
    """
    config = config or RuleConfig()
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
        _add_condition(conditions, Condition(offset, tokens, source), evidence.cluster, notes)
    if not conditions:
        return None
    return Clause(tuple(conditions), f"cluster {evidence.cluster}")


def _add_condition(
    conditions: list[Condition], candidate: Condition, cluster: int, notes: list[str]
) -> None:
    """Add ``candidate`` to a clause's ``conditions`` so that the clause stays satisfiable.

    A clause keeps one condition per offset. A candidate at a new offset is appended; one at an
    offset the clause already constrains is intersected with it: the intersection replaces the
    condition there (sources joined by ``&``; the same tokens when the candidate only agrees), and
    an empty intersection leaves the candidate out with a note, since "the token is one of S AND
    one of T" with disjoint S, T can hold nowhere. The earlier condition wins: the target token is
    what the members share, the contributors come most frequent first.
    """
    for i, existing in enumerate(conditions):
        if existing.offset != candidate.offset:
            continue
        allowed = set(candidate.token_ids)
        keep = [j for j, t in enumerate(existing.token_ids) if t in allowed]
        if not keep:
            notes.append(
                f"cluster {cluster}: {candidate.source} at {candidate.offset} "
                f"(tokens {list(candidate.token_ids[:8])}) shares no token with "
                f"{existing.source}: left out"
            )
            return
        sources = existing.source.split(" & ")
        source = " & ".join(sources + [candidate.source] * (candidate.source not in sources))
        weights = None if existing.weights is None else tuple(existing.weights[j] for j in keep)
        tokens = tuple(existing.token_ids[j] for j in keep)
        conditions[i] = Condition(existing.offset, tokens, source, weights)
        return
    conditions.append(candidate)


def circuit_rule(
    layer: int,
    feature: int,
    clusters: Sequence[ClusterEvidence],
    upstream_tokens: Mapping[tuple[int, int], Sequence[int]] | None = None,
    config: RuleConfig | None = None,
    *,
    status: str | None = None,
    variant: str,
) -> Rule:
    """OR over the feature's clusters of the conjunction of their defining contributors.

    Per cluster: the target token(s) common to its samples; for each defining contributor present
    in at least ``cl_min_frequency`` of its samples (most frequent first, at most
    ``cl_max_conditions`` conditions in all): a head at offset delta -> the source token(s) common
    at ``target + delta``; an upstream feature -> "one of its validated WeightLens tokens" at
    ``target + delta`` (delta 0 when the contribution set has none); a token embedding -> that
    token at its offset. A condition at an offset the clause already constrains narrows the
    condition there to the tokens both allow, or is left out (and noted) when they share none:
    no clause is emitted that can hold nowhere (docs/rules.md, "Rules that can hold").
    ``upstream_tokens``: (layer, feature) -> validated token ids.
    ``status``: the feature's clustering status (named in the missing reason).
    """
    config = config or RuleConfig()
    if not clusters:
        why = "no clusters" + (f" (clustering status {status})" if status else "")
        return missing_rule(layer, feature, variant, why)
    notes: list[str] = []
    clauses = []
    for evidence in clusters:
        clause = _cluster_clause(evidence, upstream_tokens or {}, config, notes)
        if clause is not None and clause.satisfiable:
            clauses.append(clause)
        elif clause is not None:  # cannot happen (_add_condition); never emit a dead clause
            notes.append(f"cluster {evidence.cluster}: contradictory conditions, left out")
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


def union(first: Rule, second: Rule, *, variant: str) -> Rule:
    """``first OR second`` (missing only when both are, with both reasons)."""
    clauses = first.clauses + second.clauses
    if not clauses:
        reason = f"{first.variant}: {first.missing}; {second.variant}: {second.missing}"
        return Rule(first.layer, first.feature, variant, (), reason)
    return Rule(first.layer, first.feature, variant, clauses, None, first.notes + second.notes)
