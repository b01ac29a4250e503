"""The explainer's prompt templates (``explain/templates/explain_*_v2.txt``, ``$``-placeholders)
and the sections the variants fill them with: token lists, the WeightLens facts, a cluster's
output influence, marked contexts.

A section function of a whole feature (``(FeatureInputs, ExplainConfig) -> values``) or of one
cluster (``(ClusterFacts, ExplainConfig) -> values``) gives the placeholders it fills; a variant of
the table (:mod:`circuit_insights.explain.variants`) lists the sections its template needs.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from importlib import resources

from circuit_insights.core.errors import InputError
from circuit_insights.explain.config import ExplainConfig
from circuit_insights.explain.facts import (
    ClusterFacts,
    FeatureInputs,
    MarkedContext,
    WeightLensFacts,
)

__all__ = [
    "PROMPT_VERSION",
    "TEMPLATE_VERSION",
    "ClusterSection",
    "bullets",
    "cluster_values",
    "FeatureSection",
    "contexts_section",
    "group_sentence",
    "load_template",
    "output_section",
    "output_values",
    "template",
    "token_list",
    "top_contexts_values",
    "weightlens_section",
    "weightlens_values",
]

#: Version of the templates ``explain/templates/explain_*_v2.txt``; recorded with every row.
PROMPT_VERSION = "explain_v2"
#: The templates' file name suffix: ``explain_{name}_{TEMPLATE_VERSION}.txt``.
TEMPLATE_VERSION = "v2"

#: Placeholder values of a template, from a whole feature.
FeatureSection = Callable[[FeatureInputs, ExplainConfig], Mapping[str, object]]
#: Placeholder values of a template, from one cluster.
ClusterSection = Callable[[ClusterFacts, ExplainConfig], Mapping[str, object]]


@cache
def load_template(name: str) -> string.Template:
    """The packaged template ``explain/templates/{name}.txt`` (``$``-placeholders)."""
    path = resources.files("circuit_insights.explain").joinpath("templates", f"{name}.txt")
    if not path.is_file():
        raise InputError(f"prompt template explain/templates/{name}.txt is not packaged")
    return string.Template(path.read_text(encoding="utf-8"))


def template(name: str) -> string.Template:
    """The current version of template ``name`` (``explain_{name}_v2``): a variant's name, or
    ``system`` / ``merge``."""
    return load_template(f"explain_{name}_{TEMPLATE_VERSION}")


def _quote(text: str) -> str:
    return '"' + text.replace('"', '\\"') + '"'


def token_list(tokens: Sequence[str], limit: int, *, empty: str = "none") -> str:
    """``"a", "b", "c", +4 more`` (``empty`` when there are none)."""
    if not tokens:
        return empty
    shown = ", ".join(_quote(t) for t in tokens[:limit])
    more = len(tokens) - limit
    return shown + (f", +{more} more" if more > 0 else "")


def bullets(lines: Sequence[str], empty: str) -> str:
    """``- line`` per line (``- {empty}`` when there are none)."""
    return "\n".join(f"- {line}" for line in lines) if lines else f"- {empty}"


def weightlens_section(facts: WeightLensFacts, config: ExplainConfig) -> str:
    """The WeightLens+Out facts as a bulleted list."""
    k = config.max_tokens_listed
    lines = [
        "Input tokens that make the feature fire on their own (validated), strongest first: "
        + token_list(facts.validated_tokens, k),
    ]
    if facts.upstream:
        parts = [
            f"L{layer}#{feature} ({token_list(tokens, k, empty='no validated tokens')})"
            for layer, feature, tokens in facts.upstream[:3]
        ]
        lines.append("Upstream features it reads from, with their tokens: " + "; ".join(parts))
    lines.append(
        "Output tokens it promotes (weights only): " + token_list(facts.promoted_tokens, k)
    )
    lines.append(
        "Output tokens it suppresses (weights only): " + token_list(facts.suppressed_tokens, k)
    )
    return bullets(lines, "")


def output_section(cluster: ClusterFacts, config: ExplainConfig) -> str:
    """A cluster's output influence as a bulleted list."""
    k = config.max_tokens_listed
    lines = [
        "promotes as the next token: " + token_list(cluster.promoted_tokens, k),
        "suppresses as the next token: " + token_list(cluster.suppressed_tokens, k),
    ]
    if cluster.next_tokens or cluster.mean_logit is not None:
        line = "actual next tokens in these samples: " + token_list(cluster.next_tokens, k)
        if cluster.mean_logit is not None:
            line += f"; mean effect of the feature on their logit: {cluster.mean_logit:+.3g}"
        lines.append(line)
    return bullets(lines, "")


def group_sentence(cluster: ClusterFacts) -> str:
    """Which samples a cluster prompt is about."""
    total = cluster.n_feature_samples or cluster.n_samples
    if cluster.is_noise:
        return (
            f"The feature's samples form no distinct circuit cluster; the evidence below comes "
            f"from {cluster.n_samples} of its {total} samples."
        )
    return (
        f"The samples below form one cluster ({cluster.n_samples} of the feature's {total} "
        f"samples, {cluster.share:.0%}) in which the same circuit makes the feature fire."
    )


def contexts_section(
    contexts: Sequence[MarkedContext], *, with_activation: bool, numbered: bool = True
) -> str:
    if not contexts:
        return "(none available)"
    lines = []
    for i, context in enumerate(contexts, start=1):
        text = context.render(with_activation=with_activation)
        lines.append(f"{i}. {text}" if numbered else f"- {text}")
    return "\n".join(lines)


def top_contexts_values(inputs: FeatureInputs, config: ExplainConfig) -> dict[str, object]:
    """``$n_contexts`` and ``$contexts``: the feature's top contexts with their activations."""
    return {
        "n_contexts": len(inputs.top_contexts),
        "contexts": contexts_section(inputs.top_contexts, with_activation=True),
    }


def weightlens_values(inputs: FeatureInputs, config: ExplainConfig) -> dict[str, object]:
    """``$weightlens``: the feature's WeightLens+Out facts (a placeholder line without them)."""
    return {
        "weightlens": weightlens_section(inputs.weightlens, config)
        if inputs.weightlens is not None
        else "- (no WeightLens results for this feature)"
    }


def cluster_values(cluster: ClusterFacts, config: ExplainConfig) -> dict[str, object]:
    """``$group``, ``$patterns`` and ``$contexts``: what every cluster prompt shows of its
    cluster (which samples, their trigger patterns, short contexts ending at the target)."""
    return {
        "group": group_sentence(cluster),
        "patterns": bullets(
            cluster.trigger_patterns[: config.max_patterns], "no contributor common to the group"
        ),
        "contexts": contexts_section(cluster.contexts, with_activation=False),
    }


def output_values(cluster: ClusterFacts, config: ExplainConfig) -> dict[str, object]:
    """``$output``: the cluster's output influence."""
    return {"output": output_section(cluster, config)}
