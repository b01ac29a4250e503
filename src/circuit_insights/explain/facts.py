"""What the variants read about one feature: :class:`FeatureInputs` (its WeightLens facts, top
contexts, circuit clusters, executable rules and imported explanations), as display strings and
rules. Built from the stage tables by :func:`circuit_insights.explain.inputs.build_feature_inputs`
(imported explanations: :func:`circuit_insights.explain.imported.imported_inputs`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from circuit_insights.explain.executable.rule import Rule

__all__ = ["ClusterFacts", "FeatureInputs", "ImportedText", "MarkedContext", "WeightLensFacts"]


@dataclass(frozen=True)
class MarkedContext:
    """A context shown with its target token marked: ``before<<target>>after``."""

    before: str
    target: str
    after: str = ""
    activation: float | None = None

    def render(self, *, with_activation: bool = False) -> str:
        text = f"{self.before}<<{self.target}>>{self.after}"
        if with_activation and self.activation is not None and math.isfinite(self.activation):
            text += f" [{self.activation:.3g}]"
        return text


@dataclass(frozen=True)
class WeightLensFacts:
    """One feature's WeightLens results, as display strings.

    ``upstream``: (layer, feature, its validated tokens inherited here) per kept upstream
    feature; ``rule_description``: the table's LLM-free description.
    """

    validated_tokens: tuple[str, ...] = ()
    promoted_tokens: tuple[str, ...] = ()
    suppressed_tokens: tuple[str, ...] = ()
    upstream: tuple[tuple[int, int, tuple[str, ...]], ...] = ()
    rule_description: str = ""


@dataclass(frozen=True)
class ClusterFacts:
    """What the explainer learns about one cluster (``circuit_insights.circuitlens.clustering``).

    ``cluster`` -1 with ``is_noise``: the feature's samples in no cluster, described only when
    the feature has no cluster at all.
    """

    cluster: int
    n_samples: int
    share: float
    trigger_patterns: tuple[str, ...] = ()
    promoted_tokens: tuple[str, ...] = ()
    suppressed_tokens: tuple[str, ...] = ()
    next_tokens: tuple[str, ...] = ()
    mean_logit: float | None = None
    contexts: tuple[MarkedContext, ...] = ()
    n_feature_samples: int = 0
    is_noise: bool = False


@dataclass(frozen=True)
class ImportedText:
    """One feature's explanation from another tool (a row of ``interop.table.IMPORTED_COLUMNS``):
    the first of the file's explanations of the feature, in file order."""

    description: str
    source: str
    """The format it came from (``neuronpedia``, ``delphi``)."""
    explainer_model: str = ""
    source_id: str = ""
    """Neuronpedia's source id, or delphi's module."""
    method: str = ""
    """Neuronpedia's ``typeName``, or delphi's run name."""
    n_explanations: int = 1
    """The file's explanations of the feature (only the first is used)."""


@dataclass(frozen=True)
class FeatureInputs:
    """Everything any variant needs to describe one feature."""

    layer: int
    feature: int
    weightlens: WeightLensFacts | None = None
    top_contexts: tuple[MarkedContext, ...] = ()
    clusters: tuple[ClusterFacts, ...] = ()
    rules: tuple[tuple[str, str, Rule], ...] = ()
    """(variant, readable text, rule) of the executable variants
    (:mod:`circuit_insights.explain.executable`)."""
    imported: tuple[tuple[str, ImportedText], ...] = ()
    """(variant, explanation) of the imported variants that have one for this feature."""

    def rule(self, variant: str) -> tuple[str, Rule] | None:
        """The readable text and rule of an executable variant (None when not derived)."""
        for name, text, rule in self.rules:
            if name == variant:
                return text, rule
        return None

    def imported_text(self, variant: str) -> ImportedText | None:
        """The imported explanation of ``variant`` (None when the file has none)."""
        for name, text in self.imported:
            if name == variant:
                return text
        return None

    def described_clusters(self, max_clusters: int) -> list[ClusterFacts]:
        """The clusters the per-cluster variants describe: the largest real clusters, else the
        noise."""
        real = sorted(
            (c for c in self.clusters if not c.is_noise), key=lambda c: (-c.n_samples, c.cluster)
        )
        if real:
            return real[:max_clusters]
        return [c for c in self.clusters if c.is_noise and c.n_samples > 0][:1]
