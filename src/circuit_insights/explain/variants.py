"""The explanation variants of the paper: the one table (and the only place naming them).

Each entry is one small object (:mod:`circuit_insights.explain.kinds`): its name (the ``variant``
column, FADE's variant name, its template ``templates/explain_{name}_v2.txt``), what it reads
of a feature (each input gives the ``missing_input`` reason when a feature lacks it), and how it
describes a feature. In the paper's order:

- ``maxact`` (MaxAct*): the LLM sees the feature's top contexts with the max token marked
  ``<<like this>>``.
- ``weightlens``, ``weightlens_out``: LLM-free, rendered from the WeightLens facts (validated
  tokens; plus promoted / suppressed output tokens), as in the paper, where WeightLens needs no
  LLM.
- ``weightlens_rule``: LLM-free, the WeightLens table's own ``description`` verbatim; its rule:
  the validated tokens.
- ``weightlens_out_llm`` (WeightLens+Out+LLM): the LLM turns the WeightLens+Out facts into a
  description.
- ``cl_input``, ``cl_full``, ``wl_cl_full`` (CircuitLens): one LLM description per cluster from
  its trigger patterns and a few short contexts truncated at the target (``cl_full``: plus the
  cluster's output influence; ``wl_cl_full``: plus the WeightLens facts), then one merge call
  combining the cluster descriptions. Each prompt starts with the one before's evidence, so a
  server with prefix caching reuses it (they are sent in this order).
- ``maxact_rule``, ``cl_rule``, ``wl_cl_rule``: LLM-free, the readable text of executable rules
  (the MaxAct tokens; the clusters' trigger conjunctions; weightlens_rule OR cl_rule). For these
  and ``weightlens_rule``, ``raw_text`` holds the rule as JSON, which the rule rater scores.

Adding a variant is adding its object to :data:`TABLE` (and its template file): every list
below is derived from the table.

Imported variants (explanations written elsewhere, :class:`~circuit_insights.explain.kinds.Imported`)
are named by the config (``models.<m>.imports``), not here: :func:`imported_variant` makes one,
:func:`with_imports` a copy of the table that holds them; a name of the table is refused.
"""

from __future__ import annotations

from collections.abc import Sequence

from circuit_insights.core.errors import InputError
from circuit_insights.explain.kinds import (
    CLUSTERS,
    DERIVED_RULE,
    IMPORTED_EXPLANATION,
    TOP_CONTEXTS,
    WEIGHTLENS_DESCRIPTION,
    WEIGHTLENS_TOKENS,
    CircuitRule,
    ClusterPrompt,
    FeaturePrompt,
    Imported,
    MaxTokenRule,
    TokenTemplate,
    UnionRule,
    VariantTable,
    WeightLensRule,
)
from circuit_insights.explain.prompts import output_values, top_contexts_values, weightlens_values

__all__ = [
    "CL_FULL",
    "CL_INPUT",
    "CL_RULE",
    "MAXACT",
    "MAXACT_RULE",
    "WEIGHTLENS",
    "WEIGHTLENS_OUT",
    "WEIGHTLENS_OUT_LLM",
    "WEIGHTLENS_RULE",
    "WEIGHTLENS_SCORES_VARIANT",
    "WL_CL_FULL",
    "WL_CL_RULE",
    "CLUSTER_VARIANTS",
    "EXECUTABLE_VARIANTS",
    "LLM_VARIANTS",
    "RULE_VARIANTS",
    "TABLE",
    "VARIANTS",
    "cl_rule",
    "imported_variant",
    "maxact_rule",
    "union",
    "weightlens_rule",
    "with_imports",
]

# The executable variants the others and the functions below refer to.
MAXACT_RULE = MaxTokenRule(name="maxact_rule", reads=(DERIVED_RULE,), rule_rank=0)
WEIGHTLENS_RULE = WeightLensRule(
    name="weightlens_rule", reads=(WEIGHTLENS_DESCRIPTION,), rule_rank=1
)
CL_RULE = CircuitRule(name="cl_rule", reads=(DERIVED_RULE,), rule_rank=2)
WL_CL_RULE = UnionRule(
    name="wl_cl_rule", reads=(DERIVED_RULE,), rule_rank=3, first=WEIGHTLENS_RULE, second=CL_RULE
)

# Every variant as a constant (the report refers to them, e.g. for the paper's figures).
MAXACT = FeaturePrompt(name="maxact", reads=(TOP_CONTEXTS,), sections=(top_contexts_values,))
WEIGHTLENS = TokenTemplate(name="weightlens", reads=(WEIGHTLENS_TOKENS,))
WEIGHTLENS_OUT = TokenTemplate(name="weightlens_out", reads=(WEIGHTLENS_TOKENS,))
WEIGHTLENS_OUT_LLM = FeaturePrompt(
    name="weightlens_out_llm", reads=(WEIGHTLENS_TOKENS,), sections=(weightlens_values,)
)
CL_INPUT = ClusterPrompt(name="cl_input", reads=(CLUSTERS,))
CL_FULL = ClusterPrompt(name="cl_full", reads=(CLUSTERS,), cluster_sections=(output_values,))
WL_CL_FULL = ClusterPrompt(
    name="wl_cl_full",
    reads=(CLUSTERS,),
    cluster_sections=(output_values,),
    sections=(weightlens_values,),
)

#: Every variant, in the paper's order.
TABLE = VariantTable(
    (
        MAXACT,
        WEIGHTLENS,
        WEIGHTLENS_OUT,
        WEIGHTLENS_RULE,
        WEIGHTLENS_OUT_LLM,
        CL_INPUT,
        CL_FULL,
        WL_CL_FULL,
        MAXACT_RULE,
        CL_RULE,
        WL_CL_RULE,
    )
)

#: The variant the LLM-free WeightLens scores (held-out AUROC, precision) are filed under: the
#: WeightLens rule, whose description is the WeightLens table's own.
WEIGHTLENS_SCORES_VARIANT: str = WEIGHTLENS_RULE.name

#: Every variant, in the paper's order.
VARIANTS: tuple[str, ...] = TABLE.names
#: Variants the LLM writes (the first round sends their requests in this order).
LLM_VARIANTS: tuple[str, ...] = TABLE.llm_names
#: Variants rendered without an LLM.
RULE_VARIANTS: tuple[str, ...] = TABLE.llm_free_names
#: Variants described per cluster, then merged.
CLUSTER_VARIANTS: tuple[str, ...] = TABLE.cluster_names
#: The executable variants, in the order of the paper's comparison.
EXECUTABLE_VARIANTS: tuple[str, ...] = TABLE.executable_names

#: The rule derivations as functions of their evidence (what tests and notebooks call).
maxact_rule = MAXACT_RULE.rule
weightlens_rule = WEIGHTLENS_RULE.rule
cl_rule = CL_RULE.rule
union = WL_CL_RULE.rule


def imported_variant(name: str, *, source: str, path: str) -> Imported:
    """The imported variant ``name`` (a config's name for it) of the explanations in ``path``,
    format ``source``; :class:`InputError` when ``name`` is a variant of the table."""
    if name in TABLE:
        raise InputError(
            f"imported variant {name!r}: the name is a variant of this project "
            f"({', '.join(TABLE.names)}); give the import another name"
        )
    return Imported(name=name, reads=(IMPORTED_EXPLANATION,), source=source, path=path)


def with_imports(imported: Sequence[Imported]) -> VariantTable:
    """:data:`TABLE` with the ``imported`` variants after its own."""
    return TABLE.extended(imported)
