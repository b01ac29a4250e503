"""The kinds of explanation variant, the inputs they read, and the table type that lists them.

A variant (one entry of the table in :mod:`circuit_insights.explain.variants`) is one small
frozen object: its ``name`` (the ``variant`` column, FADE's variant name, and the name of its
template ``templates/explain_{name}_v2.txt``), what it ``reads`` of a feature (:class:`Reads`,
each saying why a feature lacks it), whether it ``needs_llm``, whether it is ``per_cluster``,
and how it describes a feature:

- :class:`FeaturePrompt`: one LLM request per feature, its template filled by ``sections``.
- :class:`ClusterPrompt`: one LLM request per described cluster (template filled by the cluster's
  trigger patterns and contexts plus ``cluster_sections`` and ``sections``), then one merge
  request combining the cluster descriptions.
- :class:`TokenTemplate`: LLM-free, its template filled with the WeightLens token lists.
- :class:`ExecutableVariant`: LLM-free, an executable rule derived from the corpus
  (:mod:`circuit_insights.explain.executable`): :class:`MaxTokenRule`, :class:`WeightLensRule`,
  :class:`CircuitRule`, :class:`UnionRule`. Its description is the rule's readable text
  (WeightLens's own text for :class:`WeightLensRule`), its row's ``raw_text`` the rule as JSON.
- :class:`Imported`: an explanation written elsewhere (Neuronpedia, delphi), brought in from
  a file; its name comes from the config (``models.<m>.imports``), so it is not in the table
  but added to a copy of it (``variants.with_imports``). Its row keeps the explainer model
  (``llm_model``) and, as JSON in ``raw_text``, the source, file, source id and method.

Nothing outside the table names a variant: code asks the variant object (``TABLE[name]``).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from circuit_insights.explain.config import ExplainConfig
from circuit_insights.explain.executable.config import RuleConfig
from circuit_insights.explain.executable.derive import (
    circuit_rule,
    max_token_rule,
    union,
    validated_token_rule,
)
from circuit_insights.explain.executable.evidence import ClusterEvidence, FeatureEvidence
from circuit_insights.explain.executable.rule import Rule
from circuit_insights.explain.facts import ClusterFacts, FeatureInputs
from circuit_insights.explain.prompts import (
    ClusterSection,
    FeatureSection,
    cluster_values,
    template,
    token_list,
)
from circuit_insights.explain.requests import FINAL, RequestKey, chat_request
from circuit_insights.llm.client import ChatRequest

__all__ = [
    "CLUSTERS",
    "DERIVED_RULE",
    "TOP_CONTEXTS",
    "WEIGHTLENS_DESCRIPTION",
    "WEIGHTLENS_TOKENS",
    "CircuitRule",
    "ClusterPrompt",
    "ExecutableVariant",
    "FeaturePrompt",
    "IMPORTED_EXPLANATION",
    "Imported",
    "LLMFreeVariant",
    "LLMVariant",
    "MaxTokenRule",
    "Reads",
    "TokenTemplate",
    "UnionRule",
    "Variant",
    "VariantTable",
    "WeightLensRule",
]


# --- what a variant reads ----------------------------------------------------------------------


class Reads(ABC):
    """One input a variant reads of a feature's :class:`FeatureInputs`."""

    what: ClassVar[str]
    """The input, in words."""

    @abstractmethod
    def missing(self, inputs: FeatureInputs, variant: str, config: ExplainConfig) -> str | None:
        """Why ``inputs`` lacks this input for ``variant`` (the row's ``error``); None when it
        has it."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class TopContexts(Reads):
    what = "the feature's top contexts, marked at the max-activation token"

    def missing(self, inputs: FeatureInputs, variant: str, config: ExplainConfig) -> str | None:
        return None if inputs.top_contexts else "no top contexts"


class WeightLensTokens(Reads):
    what = "the feature's WeightLens result with at least one validated token"

    def missing(self, inputs: FeatureInputs, variant: str, config: ExplainConfig) -> str | None:
        if inputs.weightlens is None:
            return "no WeightLens result"
        if not inputs.weightlens.validated_tokens:
            return "no validated WeightLens tokens"
        return None


class WeightLensDescription(Reads):
    what = "the WeightLens table's own (LLM-free) description of the feature"

    def missing(self, inputs: FeatureInputs, variant: str, config: ExplainConfig) -> str | None:
        if inputs.weightlens is None:
            return "no WeightLens result"
        if not inputs.weightlens.rule_description.strip():
            return "empty WeightLens description"
        return None


class Clusters(Reads):
    what = "the feature's circuit clusters (the largest real ones, else its noise group)"

    def missing(self, inputs: FeatureInputs, variant: str, config: ExplainConfig) -> str | None:
        return None if inputs.described_clusters(config.max_clusters) else "no clusters"


class DerivedRule(Reads):
    what = "the variant's executable rule, derived from the corpus contexts"

    def missing(self, inputs: FeatureInputs, variant: str, config: ExplainConfig) -> str | None:
        found = inputs.rule(variant)
        if found is None:
            return "no corpus contexts to derive the rule from"
        if found[1].is_missing:
            return found[1].missing or "rule has no clause"
        return None


class ImportedExplanation(Reads):
    what = "the feature's explanation in the imported file"

    def missing(self, inputs: FeatureInputs, variant: str, config: ExplainConfig) -> str | None:
        text = inputs.imported_text(variant)
        if text is None:
            return "no explanation of this feature in the imported file"
        if not text.description.strip():
            return "the imported explanation is empty"
        return None


TOP_CONTEXTS = TopContexts()
WEIGHTLENS_TOKENS = WeightLensTokens()
WEIGHTLENS_DESCRIPTION = WeightLensDescription()
CLUSTERS = Clusters()
DERIVED_RULE = DerivedRule()
IMPORTED_EXPLANATION = ImportedExplanation()


# --- variants ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant(ABC):
    """One explanation variant (see the module docstring)."""

    name: str
    """The ``variant`` column; also the name of the variant's template, if it has one."""
    reads: tuple[Reads, ...]
    """What it reads of a feature, in the order checked: the first input a feature lacks gives
    its ``missing_input`` row."""

    needs_llm: ClassVar[bool]
    """Whether an LLM writes the description (else the variant is LLM-free, a "rule" variant)."""
    per_cluster: ClassVar[bool] = False
    """Whether it describes each cluster, then merges (the ``cluster`` rows of a feature)."""
    executable: ClassVar[bool] = False
    """Whether its description comes with an executable rule (scored by the rule rater)."""

    def missing(self, inputs: FeatureInputs, config: ExplainConfig) -> str | None:
        """Why this variant cannot describe the feature (None when it can)."""
        for needed in self.reads:
            reason = needed.missing(inputs, self.name, config)
            if reason is not None:
                return reason
        return None


@dataclass(frozen=True)
class LLMVariant(Variant):
    """A variant the LLM writes."""

    needs_llm: ClassVar[bool] = True

    @abstractmethod
    def requests(
        self, inputs: FeatureInputs, config: ExplainConfig
    ) -> list[tuple[RequestKey, ChatRequest]]:
        """The first-round requests of a feature that has every input the variant reads."""


@dataclass(frozen=True)
class FeaturePrompt(LLMVariant):
    """One ``describe`` request per feature (its final row): the variant's template filled with
    ``$feature``, ``$layer`` and the values of ``sections``."""

    sections: tuple[FeatureSection, ...] = ()

    def requests(
        self, inputs: FeatureInputs, config: ExplainConfig
    ) -> list[tuple[RequestKey, ChatRequest]]:
        values: dict[str, object] = {"feature": inputs.feature, "layer": inputs.layer}
        for section in self.sections:
            values.update(section(inputs, config))
        user = template(self.name).substitute(values)
        key = RequestKey(inputs.feature, self.name, FINAL, "describe")
        return [(key, chat_request(user, config))]


@dataclass(frozen=True)
class ClusterPrompt(LLMVariant):
    """One ``describe`` request per described cluster; the descriptions of two or more clusters
    are combined by a ``merge`` request (:func:`circuit_insights.explain.requests.merge_request`).

    The template is filled with ``$feature``, ``$layer``, the cluster's ``$group``,
    ``$patterns`` and ``$contexts`` (:func:`circuit_insights.explain.prompts.cluster_values`),
    and the values of ``cluster_sections`` (of the cluster) and ``sections`` (of the feature).
    """

    per_cluster: ClassVar[bool] = True
    cluster_sections: tuple[ClusterSection, ...] = ()
    sections: tuple[FeatureSection, ...] = ()

    def requests(
        self, inputs: FeatureInputs, config: ExplainConfig
    ) -> list[tuple[RequestKey, ChatRequest]]:
        out = []
        for cluster in inputs.described_clusters(config.max_clusters):
            # A feature without a real cluster describes its noise group as its final row.
            key_cluster = FINAL if cluster.is_noise else cluster.cluster
            key = RequestKey(inputs.feature, self.name, key_cluster, "describe")
            out.append((key, self.cluster_request(inputs, cluster, config)))
        return out

    def cluster_request(
        self, inputs: FeatureInputs, cluster: ClusterFacts, config: ExplainConfig
    ) -> ChatRequest:
        """The request describing one cluster."""
        values: dict[str, object] = {"feature": inputs.feature, "layer": inputs.layer}
        values.update(cluster_values(cluster, config))
        for cluster_section in self.cluster_sections:
            values.update(cluster_section(cluster, config))
        for section in self.sections:
            values.update(section(inputs, config))
        return chat_request(template(self.name).substitute(values), config)


@dataclass(frozen=True)
class LLMFreeVariant(Variant):
    """A variant rendered without an LLM (a "rule" variant): one ``rule`` row per feature."""

    needs_llm: ClassVar[bool] = False
    step: ClassVar[str] = "rule"
    """The ``step`` of its rows."""

    @abstractmethod
    def description(self, inputs: FeatureInputs, config: ExplainConfig) -> str:
        """The description of a feature that has every input the variant reads."""

    def rule_json(self, inputs: FeatureInputs) -> str | None:
        """The executable rule as JSON (None for variants without)."""
        return None

    def raw_text(self, inputs: FeatureInputs) -> str | None:
        """The row's ``raw_text``: :meth:`rule_json` unless the kind keeps something else."""
        return self.rule_json(inputs)

    def author(self, inputs: FeatureInputs) -> str:
        """The row's ``llm_model``: the model that wrote the description ("" for none)."""
        return ""


@dataclass(frozen=True)
class TokenTemplate(LLMFreeVariant):
    """The variant's template filled with the WeightLens token lists: ``$tokens`` (validated),
    ``$promoted`` and ``$suppressed``."""

    def description(self, inputs: FeatureInputs, config: ExplainConfig) -> str:
        facts = inputs.weightlens
        assert facts is not None
        k = config.max_tokens_listed
        values = {
            "tokens": token_list(facts.validated_tokens, k),
            "promoted": token_list(facts.promoted_tokens, k, empty="no particular tokens"),
            "suppressed": token_list(facts.suppressed_tokens, k, empty="no particular tokens"),
        }
        return template(self.name).substitute(values).strip()


@dataclass(frozen=True)
class Imported(LLMFreeVariant):
    """An explanation written elsewhere, read from ``path`` in format ``source`` (a format of
    ``interop.formats.FORMATS``): its description as it came, its row's ``llm_model`` the
    explainer model the file names, ``raw_text`` the provenance as JSON (``source``, ``file``,
    ``source_id``, ``method``, ``explainer_model``, ``n_explanations``). A feature without an
    explanation in the file gets a ``missing_input`` row naming the file."""

    step: ClassVar[str] = "imported"
    source: str = ""
    path: str = ""

    def missing(self, inputs: FeatureInputs, config: ExplainConfig) -> str | None:
        reason = super().missing(inputs, config)
        return None if reason is None else f"{reason} ({self.source}: {self.path})"

    def description(self, inputs: FeatureInputs, config: ExplainConfig) -> str:
        text = inputs.imported_text(self.name)
        assert text is not None
        return text.description

    def author(self, inputs: FeatureInputs) -> str:
        text = inputs.imported_text(self.name)
        return text.explainer_model if text is not None else ""

    def raw_text(self, inputs: FeatureInputs) -> str | None:
        text = inputs.imported_text(self.name)
        if text is None:
            return None
        return json.dumps(
            {
                "source": self.source,
                "file": self.path,
                "source_id": text.source_id,
                "method": text.method,
                "explainer_model": text.explainer_model,
                "n_explanations": text.n_explanations,
            },
            ensure_ascii=False,
        )


@dataclass(frozen=True)
class ExecutableVariant(LLMFreeVariant):
    """An executable rule derived per feature (:meth:`derive`); described by its readable text."""

    executable: ClassVar[bool] = True
    rule_rank: int
    """Its place in the paper's rule comparison (the order of ``EXECUTABLE_VARIANTS``, in which
    the rules are derived and rated)."""

    def description(self, inputs: FeatureInputs, config: ExplainConfig) -> str:
        found = inputs.rule(self.name)
        assert found is not None
        return found[0]

    def rule_json(self, inputs: FeatureInputs) -> str | None:
        found = inputs.rule(self.name)
        return None if found is None else found[1].to_json()

    @abstractmethod
    def derive(
        self, evidence: FeatureEvidence, config: RuleConfig, derived: Mapping[str, Rule]
    ) -> Rule:
        """The feature's rule; ``derived``: the rules of the variants ranked before it."""


@dataclass(frozen=True)
class MaxTokenRule(ExecutableVariant):
    """The token at the position is one of the frequent max-activation tokens of the top
    contexts (:func:`circuit_insights.explain.executable.derive.max_token_rule`)."""

    def rule(
        self,
        layer: int,
        feature: int,
        max_tokens: Sequence[int],
        config: RuleConfig | None = None,
    ) -> Rule:
        return max_token_rule(layer, feature, max_tokens, config, variant=self.name)

    def derive(
        self, evidence: FeatureEvidence, config: RuleConfig, derived: Mapping[str, Rule]
    ) -> Rule:
        return self.rule(evidence.layer, evidence.feature, evidence.max_tokens, config)


@dataclass(frozen=True)
class WeightLensRule(ExecutableVariant):
    """Described by the WeightLens table's own text; its rule: the token at the position is a
    validated WeightLens token
    (:func:`circuit_insights.explain.executable.derive.validated_token_rule`)."""

    def description(self, inputs: FeatureInputs, config: ExplainConfig) -> str:
        assert inputs.weightlens is not None
        return inputs.weightlens.rule_description.strip()

    def rule(self, layer: int, feature: int, weightlens_row: Mapping[str, object] | None) -> Rule:
        return validated_token_rule(layer, feature, weightlens_row, variant=self.name)

    def derive(
        self, evidence: FeatureEvidence, config: RuleConfig, derived: Mapping[str, Rule]
    ) -> Rule:
        return self.rule(evidence.layer, evidence.feature, evidence.weightlens_row)


@dataclass(frozen=True)
class CircuitRule(ExecutableVariant):
    """OR over the feature's circuit clusters of their defining contributors that name tokens
    (:func:`circuit_insights.explain.executable.derive.circuit_rule`)."""

    def rule(
        self,
        layer: int,
        feature: int,
        clusters: Sequence[ClusterEvidence],
        upstream_tokens: Mapping[tuple[int, int], Sequence[int]] | None = None,
        config: RuleConfig | None = None,
        *,
        status: str | None = None,
    ) -> Rule:
        return circuit_rule(
            layer, feature, clusters, upstream_tokens, config, status=status, variant=self.name
        )

    def derive(
        self, evidence: FeatureEvidence, config: RuleConfig, derived: Mapping[str, Rule]
    ) -> Rule:
        return self.rule(
            evidence.layer,
            evidence.feature,
            evidence.clusters,
            evidence.upstream_tokens,
            config,
            status=evidence.clustering_status,
        )


@dataclass(frozen=True)
class UnionRule(ExecutableVariant):
    """``first``'s rule OR ``second``'s
    (:func:`circuit_insights.explain.executable.derive.union`)."""

    first: ExecutableVariant
    second: ExecutableVariant

    def rule(self, first: Rule, second: Rule) -> Rule:
        return union(first, second, variant=self.name)

    def derive(
        self, evidence: FeatureEvidence, config: RuleConfig, derived: Mapping[str, Rule]
    ) -> Rule:
        parts = []
        for part in (self.first, self.second):
            found = derived.get(part.name)
            parts.append(part.derive(evidence, config, derived) if found is None else found)
        return self.rule(*parts)


# --- the table type ------------------------------------------------------------------------------


@dataclass(frozen=True)
class VariantTable:
    """The variants, in the paper's order (the default order of rows and comparisons); every
    list of variant names is derived from it."""

    variants: tuple[Variant, ...]

    def __post_init__(self) -> None:
        names = [v.name for v in self.variants]
        doubled = sorted({n for n in names if names.count(n) > 1})
        if doubled:
            raise ValueError(f"variant table: names {doubled} appear more than once")
        ranks = [v.rule_rank for v in self.variants if isinstance(v, ExecutableVariant)]
        if len(set(ranks)) != len(ranks):
            raise ValueError(f"variant table: executable variants share a rule_rank {ranks}")

    def __iter__(self) -> Iterator[Variant]:
        return iter(self.variants)

    def extended(self, variants: Sequence[Variant]) -> VariantTable:
        """This table with ``variants`` after its own (a name already in it is refused)."""
        return VariantTable((*self.variants, *variants))

    def __contains__(self, name: object) -> bool:
        return any(v.name == name for v in self.variants)

    def __getitem__(self, name: str) -> Variant:
        variant = self.get(name)
        if variant is None:
            raise KeyError(name)
        return variant

    def get(self, name: str) -> Variant | None:
        """The variant called ``name`` (None when there is none)."""
        return next((v for v in self.variants if v.name == name), None)

    @property
    def names(self) -> tuple[str, ...]:
        """Every variant."""
        return tuple(v.name for v in self.variants)

    @property
    def llm_names(self) -> tuple[str, ...]:
        """The variants the LLM writes."""
        return tuple(v.name for v in self.variants if v.needs_llm)

    @property
    def llm_free_names(self) -> tuple[str, ...]:
        """The variants rendered without an LLM."""
        return tuple(v.name for v in self.variants if not v.needs_llm)

    @property
    def cluster_names(self) -> tuple[str, ...]:
        """The variants described per cluster, then merged."""
        return tuple(v.name for v in self.variants if v.per_cluster)

    def executables(self) -> tuple[ExecutableVariant, ...]:
        """The executable variants by ``rule_rank``."""
        found = [v for v in self.variants if isinstance(v, ExecutableVariant)]
        return tuple(sorted(found, key=lambda v: v.rule_rank))

    @property
    def executable_names(self) -> tuple[str, ...]:
        """The executable variants, in the order of the paper's comparison."""
        return tuple(v.name for v in self.executables())
