"""The report's vocabulary from the paper and the explain step: metrics, variant names, the
paper's figures and its claims.

Every explanation variant the report names is named here (the order of the variants and which of
them an LLM writes come from :mod:`circuit_insights.explain`); the other report modules import
them from this module. The paper's figures are secondhand (``docs/method.md``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

from circuit_insights.explain.variants import (
    CL_FULL,
    CL_INPUT,
    CL_RULE,
    EXECUTABLE_VARIANTS,
    LLM_VARIANTS,
    MAXACT,
    MAXACT_RULE,
    VARIANTS,
    WEIGHTLENS,
    WEIGHTLENS_RULE,
    WEIGHTLENS_SCORES_VARIANT,
    WL_CL_FULL,
    WL_CL_RULE,
)

#: FADE metrics, in the paper's order (columns of ``FADE_EVALUATION_SCHEMA``, each with a
#: ``<metric>_reason`` column).
FADE_METRICS: tuple[str, ...] = ("clarity", "responsiveness", "purity", "faithfulness")
#: The variant the LLM-free WeightLens scores are filed under: the WeightLens rule description.
LLM_FREE_VARIANT = WEIGHTLENS_SCORES_VARIANT
#: The executable explanation methods, in the paper's comparison order.
RULE_METHODS: tuple[str, ...] = EXECUTABLE_VARIANTS
#: The metrics a rule is rated on (no Faithfulness: it needs a judge of free text).
RULE_METRICS: tuple[str, ...] = ("clarity", "responsiveness", "purity")

#: Display order of the explanation variants: the paper's (``explain.VARIANTS``); others follow
#: alphabetically.
_VARIANT_ORDER: tuple[str, ...] = VARIANTS

#: Share of token-based features, as reported in the paper (secondhand; docs/method.md):
#: family -> (the paper's model, share).
PAPER_TOKEN_SHARES: dict[str, tuple[str, float]] = {
    "gemma": ("Gemma-2-2B", 0.327),
    "gpt2": ("GPT-2 small", 0.588),
    "llama": ("Llama-3.2-1B", 0.254),
}

#: FADE figures of the paper (secondhand; Gemma-2-2B transcoders; docs/method.md):
#: (method, setting, layer, metric, value). ``neuronpedia`` is not a variant of this project.
PAPER_SCORES: tuple[tuple[str, str, int, str, float], ...] = (
    (WEIGHTLENS.name, "", 18, "clarity", 0.80),
    (WEIGHTLENS.name, "", 18, "responsiveness", 0.85),
    ("neuronpedia", "", 18, "clarity", 0.58),
    (MAXACT.name, "", 18, "clarity", 0.62),
    ("neuronpedia", "", 21, "purity", 0.73),
    (CL_INPUT.name, "24M tokens", 15, "clarity", 0.56),
    (CL_INPUT.name, "24M tokens", 23, "clarity", 0.41),
    (CL_INPUT.name, "24M tokens", 15, "responsiveness", 0.77),
    (WL_CL_FULL.name, "24M tokens", 15, "clarity", 0.66),
    (WL_CL_FULL.name, "24M tokens", 23, "clarity", 0.65),
    (WL_CL_FULL.name, "24M tokens", 15, "responsiveness", 0.81),
    (CL_FULL.name, "2.3B tokens", 15, "clarity", 0.79),
    (CL_FULL.name, "2.3B tokens", 23, "clarity", 0.68),
    (CL_FULL.name, "2.3B tokens", 15, "responsiveness", 0.92),
    (MAXACT.name, "2.3B tokens", 15, "clarity", 0.49),
    (MAXACT.name, "2.3B tokens", 23, "clarity", 0.54),
    (MAXACT.name, "2.3B tokens", 15, "responsiveness", 0.78),
)

#: The paper's clusters per feature (Gemma-2-2B transcoders), for the coverage tables.
PAPER_CLUSTERS_PER_FEATURE = (
    "the paper: about 4.5 clusters per feature at layer 7 and 2.8 at layer 12 of Gemma-2-2B"
)


@dataclass(frozen=True)
class Claim:
    """``method`` against ``baseline`` on ``metrics``, on the features of ``classification``."""

    text: str
    classification: str
    method: str
    baseline: str
    metrics: tuple[str, ...]


#: The delphi scores a claim is also checked on, each by its headline figure (detection and
#: fuzzing: balanced accuracy; simulation: correlation), exact for the rules (rater = rule).
DELPHI_CLAIM_METRICS: tuple[str, ...] = ("detection", "fuzzing", "simulation")

#: The paper's claims, restated for the executable explanations (``docs/rules.md``); checked by
#: :func:`circuit_insights.report.claims.claim_checks`.
CLAIMS: tuple[Claim, ...] = (
    Claim(
        "WeightLens explains token-based features at least as clearly as MaxAct",
        "token_based",
        WEIGHTLENS_RULE.name,
        MAXACT_RULE.name,
        ("clarity",),
    ),
    Claim(
        "Adding CircuitLens to WeightLens helps on context-dependent features",
        "context_dependent",
        WL_CL_RULE.name,
        WEIGHTLENS_RULE.name,
        RULE_METRICS + DELPHI_CLAIM_METRICS,
    ),
    Claim(
        "CircuitLens beats MaxAct on context-dependent features",
        "context_dependent",
        CL_RULE.name,
        MAXACT_RULE.name,
        RULE_METRICS + DELPHI_CLAIM_METRICS,
    ),
)


def order_variants(variants: Iterable[str]) -> list[str]:
    """Variants in the paper's order (``explain.VARIANTS``), unknown ones after, by name."""
    unique = set(variants)
    known = [v for v in _VARIANT_ORDER if v in unique]
    return known + sorted(unique - set(_VARIANT_ORDER))


def llm_written(explanations: pd.DataFrame | None) -> pd.DataFrame | None:
    """The explanation rows written by an LLM (the LLM-free variants may cover every feature)."""
    if explanations is None or "variant" not in explanations.columns:
        return explanations
    return explanations[explanations["variant"].isin(LLM_VARIANTS)]


def paper_family(model: str) -> str | None:
    """The paper's model family a model name belongs to (``gemma``, ``gpt2``, ``llama``) or None."""
    name = re.sub(r"[^a-z0-9]", "", str(model).lower())
    for family in ("gemma", "gpt2", "llama"):
        if family in name:
            return family
    return None


def paper_scores_table() -> pd.DataFrame:
    """:data:`PAPER_SCORES` as a frame: method, setting, layer, metric, value."""
    return pd.DataFrame(PAPER_SCORES, columns=["method", "setting", "layer", "metric", "value"])
