"""Synthetic contexts: a rule's triggers written into held-out text (FADE Clarity of
:mod:`circuit_insights.evaluation.rule_rater`)."""

from __future__ import annotations

import numpy as np

from circuit_insights.explain.executable.rule import Rule

__all__ = ["synthetic_contexts"]


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
    For context ``i`` the clause ``i mod n_clauses`` is written in (clauses that can hold nowhere
    are skipped): a base context and a target position ``p`` inside its silent prefix are drawn
    (seeded), and at each offset a token allowed by every condition there (drawn among the
    intersection of their tokens) is placed at ``p + offset``; the context is cut after ``p`` (so
    the trigger is its last token, as in CircuitLens's truncated samples). Empty when the rule has
    no satisfiable clause or no silent prefix is long enough. (``n_contexts`` lists of ids.)
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
    # Per clause, the tokens allowed at each offset (the intersection of its conditions there);
    # a clause that can hold nowhere (a rule derived before derive.py intersected) is skipped.
    writable = [c.tokens_at() for c in rule.clauses]
    writable = [at for at in writable if all(at.values())]
    out: list[list[int]] = []
    for i in range(int(n_contexts) if writable else 0):
        at = writable[i % len(writable)]
        low = first_position - min(min(at), 0)
        # The last position p may be: inside the length cap, inside the silent prefix.
        tops = np.minimum(length, silent) - 1 - max(max(at), 0)
        usable = np.flatnonzero(tops >= low)
        if len(usable) == 0:
            continue
        row = int(rng.choice(usable))
        context = base[row].copy()
        position = int(rng.integers(low, int(tops[row]) + 1))
        for offset, allowed in at.items():
            context[position + offset] = int(rng.choice(allowed))
        stop = position + 1 + max(max(at), 0)
        out.append([int(t) for t in context[:stop]])
    return out
