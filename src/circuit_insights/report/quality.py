"""Quality flags of descriptions: checks that fire on texts that are no description at all
(unparseable, a placeholder, repeated across features, runaway output), and which LLM names are
the embedded SmolLM2-135M (``docs/report.md``)."""

from __future__ import annotations

import re
from typing import Any

import pandas as pd

from circuit_insights.report.paper import order_variants
from circuit_insights.report.scores import require_columns

#: Quality flags of a description (:func:`description_flags`), in display order.
DESCRIPTION_FLAGS: tuple[str, ...] = ("unparseable", "placeholder", "repeated", "degenerate")

#: Texts that are a stand-in, not a description: a code-like name (``feature_fire(s)``), an
#: ellipsis, a bracketed slot (``<description>``, ``[concept]``), the answer format echoed back
#: (``{"description": ...}``), or a bare "description" / "n/a" / "todo" / "unknown" / "none".
_PLACEHOLDERS: tuple[re.Pattern[str], ...] = (
    re.compile(r"^\W*[a-z0-9]+(?:_[a-z0-9]+)+(?:\(s\))?\W*$", re.IGNORECASE),
    re.compile(r"\bfeature_fires?\b|\w\(s\)_|_\w+\(s\)", re.IGNORECASE),
    re.compile(r"^\W*(?:\.\.\.|…)\W*$"),
    re.compile(
        r"[<\[{]\s*(?:description|concept|feature|pattern|token|text|word|\.\.\.)s?\s*[>\]}]",
        re.IGNORECASE,
    ),
    re.compile(r"[\"']description[\"']\s*:", re.IGNORECASE),
    re.compile(r"^\W*(?:description|n/?a|todo|tbd|unknown|none|null)\W*$", re.IGNORECASE),
)
#: One character 12+ times, or one word 6+ times separated only by spaces: a small model's
#: runaway output. Quoted text (tokens a description lists) is left out before the check.
_RUNAWAY = re.compile(r"(.)\1{11,}|\b(\w+)(?:\s+\2\b){5,}")
_QUOTED = re.compile(r"\"[^\"]*\"|“[^”]*”")
#: ``parse_status`` values of an answer that gave no usable description.
_UNPARSED = {"unparseable", "empty", "error"}


def normalized_description(text: str) -> str:
    """A description as compared for repeats: lower case, runs of spaces and outer punctuation
    dropped."""
    return re.sub(r"\s+", " ", str(text)).strip().strip(".!;:,").strip().lower()


def description_flags(explanations: pd.DataFrame) -> pd.Series:
    """Quality flags of each row of an explanations table (``variant``, ``feature``,
    ``description``; ``layer`` and ``parse_status`` used when present): a Series of tuples, in
    :data:`DESCRIPTION_FLAGS` order, aligned with the rows.

    - ``unparseable``: the answer was unparseable, empty or an error (no description);
    - ``placeholder``: the text matches a stand-in pattern (``feature_fire(s)``, ``...``,
      ``<description>``, the answer format echoed back);
    - ``repeated``: the same text (:func:`normalized_description`) describes two or more features
      of the same variant in the table (rule variants included: their template says the same
      thing about features with the same tokens);
    - ``degenerate``: one character or word repeated many times (outside quoted tokens).

    An empty tuple means no check fired; it says nothing about whether the description is right.
    """
    require_columns(explanations, ["variant", "feature", "description"], "explanations")
    texts = explanations["description"].astype(object)
    status = (
        explanations["parse_status"].astype(object)
        if "parse_status" in explanations.columns
        else pd.Series([None] * len(explanations), index=explanations.index)
    )
    has_text = texts.map(lambda v: isinstance(v, str) and bool(v.strip()))
    normal = texts.where(has_text, None).map(
        lambda v: normalized_description(v) if isinstance(v, str) else None
    )
    feature_key = explanations["feature"].astype(int).astype(str)
    if "layer" in explanations.columns:
        feature_key = explanations["layer"].astype(int).astype(str) + ":" + feature_key
    keyed = pd.DataFrame(
        {"variant": explanations["variant"].astype(str), "text": normal, "feature": feature_key}
    )
    spread = keyed.dropna(subset=["text"]).groupby(["variant", "text"])["feature"].nunique()
    repeated = {key for key, count in spread.items() if count >= 2}
    flags = []
    for variant, text, raw, state, ok in zip(
        keyed["variant"], normal, texts, status, has_text, strict=True
    ):
        row: list[str] = []
        if not ok and str(state) in _UNPARSED:
            row.append("unparseable")
        if ok and any(p.search(str(raw)) for p in _PLACEHOLDERS):
            row.append("placeholder")
        if ok and (variant, text) in repeated:
            row.append("repeated")
        if ok and _RUNAWAY.search(_QUOTED.sub('""', str(raw))):
            row.append("degenerate")
        flags.append(tuple(row))
    return pd.Series(flags, index=explanations.index, dtype=object)


def flag_counts(explanations: pd.DataFrame) -> pd.DataFrame:
    """Per variant: final descriptions (``n``, rows with text) and how many carry each flag of
    :func:`description_flags` (one column per flag); final rows only when ``is_final`` exists."""
    columns = ["variant", "n", *DESCRIPTION_FLAGS]
    if explanations is None or explanations.empty:
        return pd.DataFrame({name: [] for name in columns})
    final = explanations
    if "is_final" in final.columns:
        final = final[final["is_final"].astype(bool)]
    elif "cluster" in final.columns:
        final = final[final["cluster"].astype(int) < 0]
    flags = description_flags(final)
    rows = []
    for variant in order_variants(final["variant"].astype(str).unique()):
        mask = (final["variant"].astype(str) == variant).to_numpy()
        own = flags[mask]
        texts = final.loc[mask, "description"].map(lambda v: isinstance(v, str) and bool(v.strip()))
        row: dict[str, Any] = {"variant": variant, "n": int(texts.sum())}
        for flag in DESCRIPTION_FLAGS:
            row[flag] = int(sum(flag in f for f in own))
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


#: Served names of the embedded SmolLM2-135M explainer / rater (``llm.served_model_name``
#: default ``smollm2``; the model folder name).
_SMALL_EMBEDDED_LLM = re.compile(r"^smollm2$|smollm2?[-_ ]?135m", re.IGNORECASE)


def is_small_embedded_llm(name: str | None) -> bool:
    """Whether an LLM name (``llm_model`` of the tables) is the embedded SmolLM2-135M."""
    return bool(name) and bool(_SMALL_EMBEDDED_LLM.search(str(name)))


def final_description_flags(
    explanations: pd.DataFrame | None,
) -> dict[tuple[int, int], dict[str, tuple[str, ...]]]:
    """(layer, feature) -> variant -> the quality flags of its final description, judged over
    every final description of the model (repeats count across all its features)."""
    if explanations is None or explanations.empty:
        return {}
    final = explanations[explanations["cluster"].astype(int) < 0]
    if "is_final" in final.columns:
        final = final[final["is_final"].astype(bool)]
    flags = description_flags(final)
    out: dict[tuple[int, int], dict[str, tuple[str, ...]]] = {}
    for layer, feature, variant, own in zip(
        final["layer"].astype(int),
        final["feature"].astype(int),
        final["variant"].astype(str),
        flags,
        strict=True,
    ):
        out.setdefault((int(layer), int(feature)), {})[variant] = tuple(own)
    return out
