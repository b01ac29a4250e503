"""The LLM-free description of a feature from its validated, promoted and suppressed tokens."""

from __future__ import annotations

from collections.abc import Sequence


def _quote(text: str) -> str:
    return '"' + text.replace('"', '\\"') + '"'


def _token_list(strings: Sequence[str], limit: int) -> str:
    shown = ", ".join(_quote(s) for s in strings[:limit])
    more = len(strings) - limit
    return f"{shown}, +{more} more" if more > 0 else shown


def describe(
    validated: Sequence[str],
    promoted: Sequence[str] = (),
    suppressed: Sequence[str] = (),
    upstream: Sequence[tuple[int, int, Sequence[str]]] = (),
    *,
    limit: int = 8,
    upstream_limit: int = 3,
) -> str:
    """The LLM-free description of one feature.

    ``tokens: "a", "b" | promotes: ... | suppresses: ... | via upstream L3#12 ("Paris")``; the
    ``tokens`` section is always present (``none`` without validated tokens), the others only
    when non-empty. ``upstream``: (layer, feature, tokens inherited and validated here).
    """
    parts = [f"tokens: {_token_list(validated, limit) if validated else 'none'}"]
    if promoted:
        parts.append(f"promotes: {_token_list(promoted, limit)}")
    if suppressed:
        parts.append(f"suppresses: {_token_list(suppressed, limit)}")
    shown = [
        f"L{layer}#{feature} ({_token_list(tokens, limit)})"
        for layer, feature, tokens in upstream[:upstream_limit]
    ]
    if shown:
        more = len(upstream) - upstream_limit
        parts.append("via upstream " + ", ".join(shown) + (f", +{more} more" if more > 0 else ""))
    return " | ".join(parts)
