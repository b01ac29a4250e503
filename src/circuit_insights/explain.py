"""Feature descriptions, every variant of the paper from the same inputs (docs/method.md).

Variants (the ``variant`` column, also the FADE variant names):

- ``maxact`` (MaxAct*): the LLM sees the feature's top contexts with the max token marked
  ``<<like this>>``.
- ``weightlens``, ``weightlens_out``: LLM-free, rendered from the WeightLens facts with the
  templates ``explain_weightlens_v2.txt`` / ``explain_weightlens_out_v2.txt`` (validated tokens;
  plus promoted / suppressed output tokens), as in the paper, where WeightLens needs no LLM.
- ``weightlens_rule``: LLM-free, the WeightLens table's own ``description`` column verbatim.
- ``maxact_rule``, ``cl_rule``, ``wl_cl_rule``: LLM-free, the readable text of the executable
  rules of :mod:`circuit_insights.rules` (the MaxAct tokens; the clusters' trigger conjunctions;
  weightlens_rule OR cl_rule). For these and ``weightlens_rule``, ``raw_text`` holds the rule as
  JSON (:meth:`circuit_insights.rules.Rule.to_json`), which the rule rater scores.
- ``weightlens_out_llm`` (WeightLens+Out+LLM): the LLM turns the WeightLens+Out facts into a
  description.
- ``cl_input``, ``cl_full``, ``wl_cl_full`` (CircuitLens): one LLM description per cluster from
  its trigger patterns and a few short contexts truncated at the target (``cl_full``: plus the
  cluster's output influence; ``wl_cl_full``: plus the WeightLens facts), then one merge call
  combining the cluster descriptions.

Every answer is requested as JSON ``{"description": str}`` (:data:`ANSWER_SCHEMA`, structured
output) at temperature 0. Prompts are versioned templates ``prompts/explain_*_v2.txt``
(:data:`PROMPT_VERSION`). An empty or unparseable answer is a row with its raw text and
``parse_status``, never an exception. Conventions (``cluster`` -1 is the final row, ...) are in
``docs/clustering_and_explanations.md``.
"""

from __future__ import annotations

import hashlib
import math
import os
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from functools import cache
from importlib import resources
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from circuit_insights.core.config import from_block
from circuit_insights.core.errors import InputError
from circuit_insights.core.io import write_parquet_atomic
from circuit_insights.core.progress import Progress
from circuit_insights.core.tokens import TokenDisplay
from circuit_insights.data.schemas import EXPLANATIONS_SCHEMA
from circuit_insights.llm.client import ChatRequest, ChatResult, LLMBackend, iter_results
from circuit_insights.rules import EXECUTABLE_VARIANTS, Rule, RuleConfig, derive_rules

__all__ = [
    "ANSWER_SCHEMA",
    "CLUSTER_VARIANTS",
    "LLM_VARIANTS",
    "PROMPT_VERSION",
    "RULE_VARIANTS",
    "VARIANTS",
    "ClusterFacts",
    "ExplainConfig",
    "FeatureInputs",
    "MarkedContext",
    "RequestKey",
    "WeightLensFacts",
    "build_feature_inputs",
    "build_merge_requests",
    "build_requests",
    "cluster_request",
    "explain_shard",
    "final_descriptions",
    "load_template",
    "merge_request",
    "prompt_hash",
    "rule_description",
    "sample_table",
    "unexplained_rows",
    "write_explanations",
]

#: Version of the templates ``prompts/explain_*_v2.txt``; recorded with every row.
PROMPT_VERSION = "explain_v2"
_TEMPLATE_VERSION = "v2"

#: Variants the LLM writes.
LLM_VARIANTS: tuple[str, ...] = (
    "maxact",
    "weightlens_out_llm",
    "cl_input",
    "cl_full",
    "wl_cl_full",
)
#: Variants rendered without an LLM.
RULE_VARIANTS: tuple[str, ...] = (
    "weightlens",
    "weightlens_out",
    "weightlens_rule",
    "maxact_rule",
    "cl_rule",
    "wl_cl_rule",
)
#: Variants described per cluster, then merged.
CLUSTER_VARIANTS: tuple[str, ...] = ("cl_input", "cl_full", "wl_cl_full")
VARIANTS: tuple[str, ...] = (
    "maxact",
    "weightlens",
    "weightlens_out",
    "weightlens_rule",
    "weightlens_out_llm",
    "cl_input",
    "cl_full",
    "wl_cl_full",
    "maxact_rule",
    "cl_rule",
    "wl_cl_rule",
)

#: The answer every explainer request asks for (structured output).
ANSWER_SCHEMA: dict[str, Any] = {
    "title": "feature_description",
    "type": "object",
    # maxLength: a small explainer that repeats itself is cut at a closed string (vLLM's
    # structured outputs honour it), instead of running into max_tokens with unparseable JSON.
    "properties": {"description": {"type": "string", "minLength": 1, "maxLength": 400}},
    "required": ["description"],
    "additionalProperties": False,
}

#: ``cluster`` of a feature's final description (one per (feature, variant)).
FINAL = -1


@dataclass(frozen=True)
class ExplainConfig:
    """How much evidence goes into each prompt, and the LLM sampling settings."""

    n_maxact: int = 20
    """Top contexts shown to MaxAct*."""
    maxact_before: int = 32
    """Tokens shown before the max token in a MaxAct* context."""
    maxact_after: int = 8
    """Tokens shown after it."""
    n_cluster_contexts: int = 5
    """Short contexts per cluster (the cluster's most central samples first)."""
    cluster_context_tokens: int = 24
    """Tokens of a cluster context, the target (last) token included."""
    max_clusters: int = 8
    """Clusters described per feature (the largest); the rest are left out of the merge."""
    max_patterns: int = 8
    """Trigger patterns listed per cluster."""
    max_tokens_listed: int = 10
    """Tokens named in one list (validated, promoted, ...)."""
    max_answer_tokens: int = 256
    temperature: float = 0.0
    repetition_penalty: float = 1.0
    """vLLM's repetition penalty of the explainer's requests (1 = none; see llm.repetition_penalty)."""
    retry_max_tokens: int = 0
    """An answer cut at ``max_answer_tokens`` before its JSON closed is asked once more with this
    many tokens (0, or not above ``max_answer_tokens``: never)."""
    seed: int = 0
    drop_bos: bool = True
    """Leave a BOS token at position 0 out of displayed contexts."""

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, int) and not isinstance(value, bool) and value < 0:
                raise InputError(f"explain.{item.name} must be >= 0, got {value}")
        if self.cluster_context_tokens < 1:
            raise InputError("explain.cluster_context_tokens must be >= 1")
        if self.max_answer_tokens < 1:
            raise InputError("explain.max_answer_tokens must be >= 1")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> ExplainConfig:
        """From the workflow config's ``explain`` block (:func:`~circuit_insights.core.config.from_block`)."""
        return from_block(cls, values, "explain")


# --- inputs ------------------------------------------------------------------------------------


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
class FeatureInputs:
    """Everything any variant needs to describe one feature."""

    layer: int
    feature: int
    weightlens: WeightLensFacts | None = None
    top_contexts: tuple[MarkedContext, ...] = ()
    clusters: tuple[ClusterFacts, ...] = ()
    rules: tuple[tuple[str, str, Rule], ...] = ()
    """(variant, readable text, rule) of the executable variants (:mod:`circuit_insights.rules`)."""

    def rule(self, variant: str) -> tuple[str, Rule] | None:
        """The readable text and rule of an executable variant (None when not derived)."""
        for name, text, rule in self.rules:
            if name == variant:
                return text, rule
        return None

    def described_clusters(self, max_clusters: int) -> list[ClusterFacts]:
        """The clusters the CL variants describe: the largest real clusters, else the noise."""
        real = sorted(
            (c for c in self.clusters if not c.is_noise), key=lambda c: (-c.n_samples, c.cluster)
        )
        if real:
            return real[:max_clusters]
        return [c for c in self.clusters if c.is_noise and c.n_samples > 0][:1]


def _strings(values: Any) -> tuple[str, ...]:
    if values is None or (isinstance(values, float) and math.isnan(values)):
        return ()
    return tuple(str(v) for v in values)


def _ints(values: Any) -> list[int]:
    if values is None or (isinstance(values, float) and math.isnan(values)):
        return []
    return [int(v) for v in values]


def weightlens_facts(row: Mapping[str, Any], display: TokenDisplay) -> WeightLensFacts:
    """The facts of one ``WEIGHTLENS_SCHEMA`` row."""
    inherited = row.get("upstream_inherited_token_ids")
    inherited = list(inherited) if inherited is not None else []
    layers = _ints(row.get("upstream_layers"))
    features = _ints(row.get("upstream_features"))
    upstream = tuple(
        (layer, feature, tuple(display.many(_ints(ids))))
        for layer, feature, ids in zip(layers, features, inherited, strict=False)
    )
    return WeightLensFacts(
        validated_tokens=_strings(row.get("validated_tokens")),
        promoted_tokens=_strings(row.get("promoted_tokens")),
        suppressed_tokens=_strings(row.get("suppressed_tokens")),
        upstream=upstream,
        rule_description=str(row.get("description") or ""),
    )


def sample_table(samples_df: pd.DataFrame, *, kind: str = "quantile") -> pd.DataFrame:
    """Samples keyed like the attribution stage: ``feature, sample, context, target_position,
    activation``.

    The attribution ``sample`` id of a sample is its ``rank`` among the feature's ``kind`` rows
    of the samples table (``SAMPLES_SCHEMA``); a table that already has a ``sample`` column is
    used as it is.
    """
    if "sample" in samples_df.columns:
        table = samples_df
    else:
        for name in ("feature", "kind", "rank", "context", "target_position"):
            if name not in samples_df.columns:
                raise InputError(f"samples table lacks column {name!r}")
        table = samples_df[samples_df["kind"] == kind].rename(columns={"rank": "sample"})
    columns = ["feature", "sample", "context", "target_position"]
    if "activation" in table.columns:
        columns.append("activation")
    return table[columns].reset_index(drop=True)


class _Contexts:
    """Token rows by context id, rendered as marked display strings."""

    def __init__(
        self,
        context_ids: np.ndarray,
        tokens: np.ndarray,
        display: TokenDisplay,
        bos_token_id: int | None,
    ) -> None:
        self.row_of = {int(c): i for i, c in enumerate(np.asarray(context_ids))}
        self.tokens = np.asarray(tokens)
        self.display = display
        self.bos = bos_token_id

    def marked(
        self, context: int, target: int, before: int, after: int, activation: float | None
    ) -> MarkedContext:
        row = self.row_of.get(int(context))
        if row is None:
            raise InputError(f"context {context} is not in the corpus contexts given")
        ids = self.tokens[row]  # (context_length,)
        if not 0 <= target < len(ids):
            raise InputError(f"context {context}: target position {target} is out of range")
        first = 1 if self.bos is not None and len(ids) and int(ids[0]) == self.bos else 0
        start = max(first, target - before) if target >= first else target
        stop = min(len(ids), target + 1 + after)
        prefix = "..." if start > first else ""
        suffix = "..." if stop < len(ids) and after > 0 else ""
        return MarkedContext(
            before=prefix + "".join(self.display.many(ids[start:target])),
            target=self.display(int(ids[target])),
            after="".join(self.display.many(ids[target + 1 : stop])) + suffix,
            activation=None if activation is None else float(activation),
        )


def _float_or_none(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def build_feature_inputs(
    *,
    layer: int,
    features: Sequence[int] | None = None,
    weightlens_df: pd.DataFrame | None = None,
    clusters_df: pd.DataFrame | None = None,
    samples_df: pd.DataFrame | None = None,
    context_ids: np.ndarray | None = None,
    tokens: np.ndarray | None = None,
    tokenizer: object | None = None,
    bos_token_id: int | None = None,
    config: ExplainConfig | None = None,
    cluster_samples_kind: str = "quantile",
    rule_config: RuleConfig | None = None,
) -> dict[int, FeatureInputs]:
    """:class:`FeatureInputs` per feature of one layer from the stage tables.

    ``weightlens_df`` (``WEIGHTLENS_SCHEMA``), ``clusters_df`` (``CLUSTERS_SCHEMA``), ``samples_df``
    (``SAMPLES_SCHEMA``: ``top`` rows feed MaxAct*; the ``cluster_samples_kind`` rows, keyed as in
    :func:`sample_table`, give the clusters' example contexts) and the corpus contexts
    (``context_ids`` (n,), ``tokens`` (n, context_length), from ``corpus.load_contexts``). Any
    table may be missing: the variants that need it then get ``missing_input`` rows.
    ``features``: default, every feature of any table (rows of other layers are ignored).
    With the corpus contexts, the executable rules of every feature are derived
    (:func:`circuit_insights.rules.derive_rules` with ``rule_config``).
    """
    config = config or ExplainConfig()
    display = TokenDisplay(tokenizer)
    model_bos = (
        bos_token_id if bos_token_id is not None else getattr(tokenizer, "bos_token_id", None)
    )
    if bos_token_id is None and config.drop_bos and tokenizer is not None:
        bos_token_id = getattr(tokenizer, "bos_token_id", None)
    if not config.drop_bos:
        bos_token_id = None
    contexts = (
        _Contexts(context_ids, tokens, display, bos_token_id)
        if context_ids is not None and tokens is not None
        else None
    )

    def of_layer(frame: pd.DataFrame | None) -> pd.DataFrame | None:
        if frame is None:
            return None
        if "layer" in frame.columns:
            frame = frame[frame["layer"].astype(int) == int(layer)]
        return frame

    weightlens_df = of_layer(weightlens_df)
    clusters_df = of_layer(clusters_df)
    found: set[int] = set()
    for frame in (weightlens_df, clusters_df, samples_df):
        if frame is not None and "feature" in frame.columns:
            found.update(int(f) for f in frame["feature"].unique())
    wanted = sorted(found) if features is None else [int(f) for f in features]

    wl_rows: dict[int, Mapping[str, Any]] = {}
    if weightlens_df is not None:
        for record in weightlens_df.to_dict("records"):
            wl_rows[int(record["feature"])] = record
    top_by_feature: dict[int, pd.DataFrame] = {}
    samples_by_key: dict[tuple[int, int], Mapping[str, Any]] = {}
    if samples_df is not None and len(samples_df):
        if "kind" in samples_df.columns:
            top = samples_df[samples_df["kind"] == "top"].sort_values(["feature", "rank"])
            top_by_feature = {int(f): g for f, g in top.groupby("feature", sort=False)}
        for record in sample_table(samples_df, kind=cluster_samples_kind).to_dict("records"):
            samples_by_key[(int(record["feature"]), int(record["sample"]))] = record
    clusters_by_feature: dict[int, pd.DataFrame] = {}
    if clusters_df is not None and len(clusters_df):
        clusters_by_feature = {
            int(f): g.sort_values("cluster") for f, g in clusters_df.groupby("feature", sort=False)
        }

    rules: dict[tuple[int, str], Rule] = {}
    if context_ids is not None and tokens is not None:
        rules = derive_rules(
            layer=layer,
            features=wanted,
            tokens=tokens,
            context_ids=context_ids,
            weightlens_df=weightlens_df,
            clusters_df=clusters_df,
            samples_df=samples_df,
            config=rule_config,
            exclude_token_ids=() if model_bos is None else (int(model_bos),),
        )
    out: dict[int, FeatureInputs] = {}
    for feature in wanted:
        facts = weightlens_facts(wl_rows[feature], display) if feature in wl_rows else None
        top_contexts: list[MarkedContext] = []
        if contexts is not None and feature in top_by_feature:
            for record in top_by_feature[feature].head(config.n_maxact).to_dict("records"):
                marked = contexts.marked(
                    record["context"],
                    int(record["target_position"]),
                    config.maxact_before,
                    config.maxact_after,
                    _float_or_none(record.get("activation")),
                )
                top_contexts.append(marked)
        cluster_facts: list[ClusterFacts] = []
        for record in (
            clusters_by_feature[feature].to_dict("records")
            if feature in clusters_by_feature
            else []
        ):
            shown: list[MarkedContext] = []
            if contexts is not None:
                for sample in _ints(record.get("example_samples"))[: config.n_cluster_contexts]:
                    info = samples_by_key.get((feature, sample))
                    if info is None:
                        continue
                    marked = contexts.marked(
                        info["context"],
                        int(info["target_position"]),
                        config.cluster_context_tokens - 1,
                        0,
                        _float_or_none(info.get("activation")),
                    )
                    shown.append(marked)
            cluster_facts.append(
                ClusterFacts(
                    cluster=int(record["cluster"]),
                    n_samples=int(record["n_samples"]),
                    share=float(record["share"]),
                    trigger_patterns=_strings(record.get("trigger_patterns")),
                    promoted_tokens=_strings(record.get("output_promoted_tokens")),
                    suppressed_tokens=_strings(record.get("output_suppressed_tokens")),
                    next_tokens=_strings(record.get("output_next_tokens")),
                    mean_logit=_float_or_none(record.get("output_mean_logit")),
                    contexts=tuple(shown),
                    n_feature_samples=int(record.get("n_feature_samples") or 0),
                    is_noise=bool(record.get("is_noise", int(record["cluster"]) < 0)),
                )
            )
        out[feature] = FeatureInputs(
            layer=int(layer),
            feature=feature,
            weightlens=facts,
            top_contexts=tuple(top_contexts),
            clusters=tuple(cluster_facts),
            rules=tuple(
                (variant, rules[(feature, variant)].text(display), rules[(feature, variant)])
                for variant in EXECUTABLE_VARIANTS
                if (feature, variant) in rules
            ),
        )
    return out


# --- templates and prompt sections -------------------------------------------------------------


@cache
def load_template(name: str) -> string.Template:
    """The packaged template ``prompts/{name}.txt`` (``$``-placeholders)."""
    path = resources.files("circuit_insights").joinpath("prompts", f"{name}.txt")
    if not path.is_file():
        raise InputError(f"prompt template prompts/{name}.txt is not packaged")
    return string.Template(path.read_text(encoding="utf-8"))


def _template(variant: str) -> string.Template:
    return load_template(f"explain_{variant}_{_TEMPLATE_VERSION}")


def _quote(text: str) -> str:
    return '"' + text.replace('"', '\\"') + '"'


def token_list(tokens: Sequence[str], limit: int, *, empty: str = "none") -> str:
    """``"a", "b", "c", +4 more`` (``empty`` when there are none)."""
    if not tokens:
        return empty
    shown = ", ".join(_quote(t) for t in tokens[:limit])
    more = len(tokens) - limit
    return shown + (f", +{more} more" if more > 0 else "")


def _bullets(lines: Sequence[str], empty: str) -> str:
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
    return _bullets(lines, "")


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
    return _bullets(lines, "")


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


# --- requests ----------------------------------------------------------------------------------


class RequestKey(NamedTuple):
    """Which row an LLM request answers: ``step`` is ``describe`` or ``merge``."""

    feature: int
    variant: str
    cluster: int
    step: str


def _request(user: str, config: ExplainConfig) -> ChatRequest:
    system = load_template(f"explain_system_{_TEMPLATE_VERSION}").substitute()
    return ChatRequest.simple(
        user.strip() + "\n",
        system=system.strip(),
        json_schema=ANSWER_SCHEMA,
        temperature=config.temperature,
        max_tokens=config.max_answer_tokens,
        seed=config.seed,
        repetition_penalty=config.repetition_penalty,
    )


def prompt_hash(request: ChatRequest) -> str:
    """sha256 (hex) of the request's canonical JSON: equal prompts, equal hashes."""
    return hashlib.sha256(request.canonical_json().encode("utf-8")).hexdigest()


def cluster_request(
    inputs: FeatureInputs, cluster: ClusterFacts, variant: str, config: ExplainConfig
) -> ChatRequest:
    """The request describing one cluster for ``cl_input`` / ``cl_full`` / ``wl_cl_full``."""
    if variant not in CLUSTER_VARIANTS:
        raise InputError(f"variant {variant!r} is not a cluster variant {list(CLUSTER_VARIANTS)}")
    values = {
        "feature": inputs.feature,
        "layer": inputs.layer,
        "group": group_sentence(cluster),
        "patterns": _bullets(
            cluster.trigger_patterns[: config.max_patterns], "no contributor common to the group"
        ),
        "contexts": contexts_section(cluster.contexts, with_activation=False),
    }
    if variant in ("cl_full", "wl_cl_full"):
        values["output"] = output_section(cluster, config)
    if variant == "wl_cl_full":
        values["weightlens"] = (
            weightlens_section(inputs.weightlens, config)
            if inputs.weightlens is not None
            else "- (no WeightLens results for this feature)"
        )
    return _request(_template(variant).substitute(values), config)


def merge_request(
    inputs: FeatureInputs,
    descriptions: Sequence[tuple[ClusterFacts, str]],
    config: ExplainConfig,
) -> ChatRequest:
    """The request combining cluster descriptions (largest cluster first) into one."""
    ordered = sorted(descriptions, key=lambda item: (-item[0].n_samples, item[0].cluster))
    lines = [
        f"{i}. ({cluster.share:.0%} of samples) {text}"
        for i, (cluster, text) in enumerate(ordered, start=1)
    ]
    user = _template("merge").substitute(
        feature=inputs.feature, layer=inputs.layer, descriptions="\n".join(lines)
    )
    return _request(user, config)


def _missing(inputs: FeatureInputs, variant: str, config: ExplainConfig) -> str | None:
    """Why ``variant`` cannot describe this feature (None when it can)."""
    if variant == "maxact" and not inputs.top_contexts:
        return "no top contexts"
    if variant in ("weightlens", "weightlens_out", "weightlens_out_llm", "weightlens_rule"):
        if inputs.weightlens is None:
            return "no WeightLens result"
        if variant == "weightlens_rule" and not inputs.weightlens.rule_description.strip():
            return "empty WeightLens description"
        if variant != "weightlens_rule" and not inputs.weightlens.validated_tokens:
            return "no validated WeightLens tokens"
    if variant in CLUSTER_VARIANTS and not inputs.described_clusters(config.max_clusters):
        return "no clusters"
    if variant in EXECUTABLE_VARIANTS and variant != "weightlens_rule":
        found = inputs.rule(variant)
        if found is None:
            return "no corpus contexts to derive the rule from"
        if found[1].is_missing:
            return found[1].missing or "rule has no clause"
    return None


def build_requests(
    feature_inputs: Mapping[int, FeatureInputs] | Sequence[FeatureInputs],
    variant: str,
    config: ExplainConfig | None = None,
) -> list[tuple[RequestKey, ChatRequest]]:
    """The first-round LLM requests of ``variant`` for every feature, in feature order.

    MaxAct* and WeightLens+Out+LLM: one ``describe`` request per feature (``cluster`` -1, the
    final row). CL variants: one ``describe`` request per described cluster (merge requests
    come after the answers, :func:`build_merge_requests`). Rule variants and features that lack
    the variant's inputs: none.
    """
    config = config or ExplainConfig()
    if variant not in VARIANTS:
        raise InputError(f"explanation variant {variant!r}: choose from {list(VARIANTS)}")
    items = feature_inputs.values() if isinstance(feature_inputs, Mapping) else feature_inputs
    out: list[tuple[RequestKey, ChatRequest]] = []
    if variant in RULE_VARIANTS:
        return out
    for inputs in sorted(items, key=lambda x: x.feature):
        if _missing(inputs, variant, config) is not None:
            continue
        if variant == "maxact":
            user = _template("maxact").substitute(
                feature=inputs.feature,
                layer=inputs.layer,
                n_contexts=len(inputs.top_contexts),
                contexts=contexts_section(inputs.top_contexts, with_activation=True),
            )
            out.append(
                (RequestKey(inputs.feature, variant, FINAL, "describe"), _request(user, config))
            )
        elif variant == "weightlens_out_llm":
            assert inputs.weightlens is not None
            user = _template("weightlens_out_llm").substitute(
                feature=inputs.feature,
                layer=inputs.layer,
                weightlens=weightlens_section(inputs.weightlens, config),
            )
            out.append(
                (RequestKey(inputs.feature, variant, FINAL, "describe"), _request(user, config))
            )
        else:
            clusters = inputs.described_clusters(config.max_clusters)
            for cluster in clusters:
                # A feature without a real cluster describes its noise group as its final row.
                key_cluster = FINAL if cluster.is_noise else cluster.cluster
                out.append(
                    (
                        RequestKey(inputs.feature, variant, key_cluster, "describe"),
                        cluster_request(inputs, cluster, variant, config),
                    )
                )
    return out


def build_merge_requests(
    feature_inputs: Mapping[int, FeatureInputs],
    variant: str,
    cluster_descriptions: Mapping[int, Mapping[int, str]],
    config: ExplainConfig | None = None,
) -> list[tuple[RequestKey, ChatRequest]]:
    """Merge requests of a CL variant: for each feature with >= 2 cluster descriptions
    (``cluster_descriptions[feature][cluster]``), one request combining them."""
    config = config or ExplainConfig()
    out = []
    for feature in sorted(cluster_descriptions):
        described = cluster_descriptions[feature]
        if len(described) < 2:
            continue
        inputs = feature_inputs[feature]
        by_id = {c.cluster: c for c in inputs.clusters}
        pairs = [(by_id[cluster], text) for cluster, text in described.items()]
        out.append(
            (RequestKey(feature, variant, FINAL, "merge"), merge_request(inputs, pairs, config))
        )
    return out


def rule_description(
    inputs: FeatureInputs, variant: str, config: ExplainConfig | None = None
) -> str | None:
    """The LLM-free description of a rule variant (None when the feature lacks its inputs)."""
    config = config or ExplainConfig()
    if variant not in RULE_VARIANTS:
        raise InputError(f"variant {variant!r} is not LLM-free {list(RULE_VARIANTS)}")
    if _missing(inputs, variant, config) is not None:
        return None
    if variant in EXECUTABLE_VARIANTS and variant != "weightlens_rule":
        found = inputs.rule(variant)
        assert found is not None
        return found[0]
    facts = inputs.weightlens
    assert facts is not None
    if variant == "weightlens_rule":
        return facts.rule_description.strip()
    k = config.max_tokens_listed
    values = {
        "tokens": token_list(facts.validated_tokens, k),
        "promoted": token_list(facts.promoted_tokens, k, empty="no particular tokens"),
        "suppressed": token_list(facts.suppressed_tokens, k, empty="no particular tokens"),
    }
    return _template(variant).substitute(values).strip()


# --- running -----------------------------------------------------------------------------------


def _rule_json(inputs: FeatureInputs, variant: str) -> str | None:
    """The executable rule of a rule row as JSON (None for variants without one)."""
    found = inputs.rule(variant) if variant in EXECUTABLE_VARIANTS else None
    return None if found is None else found[1].to_json()


def _answer(result: ChatResult) -> tuple[str | None, str, str | None]:
    """``(description, parse_status, error)`` of one answer; never raises."""
    status, error = result.parse_status, result.error
    if status != "ok":
        return None, status, error
    parsed = result.parsed
    if not isinstance(parsed, Mapping) or not isinstance(parsed.get("description"), str):
        return None, "unparseable", error or "the answer has no 'description' string"
    text = " ".join(parsed["description"].split())
    if not text:
        return None, "empty", "the description is blank"
    return text, "ok", None


def _row(
    inputs: FeatureInputs,
    variant: str,
    cluster: int,
    step: str,
    n_clusters: int,
    *,
    description: str | None = None,
    request: ChatRequest | None = None,
    result: ChatResult | None = None,
    llm_model: str = "",
    parse_status: str = "ok",
    error: str | None = None,
    raw_text: str | None = None,
    count_usage: bool = True,
) -> dict[str, Any]:
    usage = result is not None and count_usage
    return {
        "layer": inputs.layer,
        "feature": inputs.feature,
        "variant": variant,
        "cluster": int(cluster),
        "is_final": cluster == FINAL,
        "step": step,
        "n_clusters": n_clusters,
        "description": description,
        "prompt_version": PROMPT_VERSION,
        "prompt_hash": prompt_hash(request) if request is not None else None,
        "llm_model": llm_model,
        "tokens_in": result.tokens_in if usage and result is not None else 0,
        "tokens_out": result.tokens_out if usage and result is not None else 0,
        "latency_s": float(result.latency_s) if usage and result is not None else 0.0,
        "cached": bool(result.cached) if result is not None else False,
        "parse_status": parse_status,
        "error": error,
        "raw_text": raw_text,
    }


def _answered_row(
    inputs: FeatureInputs,
    key: RequestKey,
    request: ChatRequest,
    result: ChatResult,
    n_clusters: int,
    model: str,
) -> dict[str, Any]:
    description, status, error = _answer(result)
    return _row(
        inputs,
        key.variant,
        key.cluster,
        key.step,
        n_clusters,
        description=description,
        request=request,
        result=result,
        llm_model=model,
        parse_status=status,
        error=error,
        raw_text=result.text,
    )


def unexplained_rows(
    feature_inputs: Mapping[int, FeatureInputs], variants: Sequence[str], reasons: Mapping[int, str]
) -> pd.DataFrame:
    """One ``missing_input`` final row per (feature, variant) for features left out before any
    prompt was built (e.g. too few quantile samples); ``reasons[feature]`` goes to ``error``."""
    rows = [
        _row(
            feature_inputs[feature],
            variant,
            FINAL,
            "missing_input",
            0,
            parse_status="missing_input",
            error=reasons[feature],
        )
        for feature in sorted(reasons)
        for variant in dict.fromkeys(variants)
    ]
    return pd.DataFrame(rows, columns=EXPLANATIONS_SCHEMA.names)


def _ask(
    backend: LLMBackend | None,
    keyed: Sequence[tuple[RequestKey, ChatRequest]],
    config: ExplainConfig,
    model: str,
    step: str = "describe",
) -> list[tuple[RequestKey, ChatRequest, ChatResult]]:
    """Send the requests; an answer that ``max_tokens`` cut before its JSON closed is asked once
    more with ``config.retry_max_tokens`` (when larger), and the second answer is kept with its
    request. Small explainers sometimes fill a description with one repeated character; the
    answer schema's ``maxLength`` closes the string, but only after more tokens than usual."""
    if not keyed or backend is None:
        return []

    def send(requests: list[ChatRequest], features: list[int], what: str) -> list[ChatResult]:
        """Results in request order; a progress line about every 30 s (requests and features
        done, the server's prompt and completion tokens per second)."""
        left = {f: features.count(f) for f in features}
        got: dict[int, ChatResult] = {}
        with Progress(
            f"explain {what} ({model})",
            len(requests),
            unit="requests",
            totals={"features": len(left)},
        ) as progress:
            for index, result in iter_results(backend, requests):
                got[index] = result
                left[features[index]] -= 1
                progress.update(
                    1,
                    features=int(left[features[index]] == 0),
                    prompt_tokens=int(result.tokens_in or 0),
                    completion_tokens=int(result.tokens_out or 0),
                )
        results = [got[i] for i in sorted(got)]
        if len(results) != len(requests) or sorted(got) != list(range(len(requests))):
            raise InputError(
                f"LLM backend {model!r} returned {len(results)} results for {len(requests)} requests"
            )
        return results

    requests = [r for _, r in keyed]
    features = [key.feature for key, _ in keyed]
    results = send(requests, features, f"{step} requests")
    cut = [
        i
        for i, (request, result) in enumerate(zip(requests, results, strict=True))
        if result.parse_status == "unparseable"
        and result.finish_reason == "length"
        and config.retry_max_tokens > request.max_tokens
    ]
    if cut:
        again = [replace(requests[i], max_tokens=config.retry_max_tokens) for i in cut]
        retried = send(again, [features[i] for i in cut], f"{step} retries")
        for i, request, result in zip(cut, again, retried, strict=True):
            requests[i], results[i] = request, result
    return [(key, r, res) for (key, _), r, res in zip(keyed, requests, results, strict=True)]


def explain_shard(
    backend: LLMBackend | None,
    feature_inputs: Mapping[int, FeatureInputs],
    variants: Sequence[str],
    config: ExplainConfig | None = None,
) -> pd.DataFrame:
    """Descriptions of every feature by every variant: :data:`EXPLANATIONS_SCHEMA` rows.

    Per (feature, variant) exactly one final row (``cluster`` -1, ``is_final``); CL variants also
    one row per described cluster. All first-round requests go to ``backend.chat_many`` in one
    batch, then the merge requests in a second. ``step``: ``describe``, ``merge``, ``copy`` (the
    final row of a feature with one described cluster repeats it; no tokens counted),
    ``rule``, ``missing_input`` (``error`` says what is missing) or ``skipped`` (no cluster
    description parsed, so nothing to merge). ``backend`` may be None when only rule variants
    are asked for.
    """
    config = config or ExplainConfig()
    variants = list(dict.fromkeys(variants))
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise InputError(f"explanation variants {unknown}: choose from {list(VARIANTS)}")
    needs_llm = [v for v in variants if v in LLM_VARIANTS]
    if needs_llm and backend is None:
        raise InputError(f"explanation variants {needs_llm} need an LLM backend (none configured)")
    model = backend.model_name if backend is not None else ""
    features = [feature_inputs[f] for f in sorted(feature_inputs)]
    rows: list[dict[str, Any]] = []

    def n_described(inputs: FeatureInputs, variant: str) -> int:
        if variant not in CLUSTER_VARIANTS:
            return 0
        return len([c for c in inputs.described_clusters(config.max_clusters) if not c.is_noise])

    # Rule variants and missing inputs.
    for inputs in features:
        for variant in variants:
            reason = _missing(inputs, variant, config)
            if reason is not None:
                rows.append(
                    _row(
                        inputs,
                        variant,
                        FINAL,
                        "missing_input",
                        0,
                        parse_status="missing_input",
                        error=reason,
                    )
                )
            elif variant in RULE_VARIANTS:
                rows.append(
                    _row(
                        inputs,
                        variant,
                        FINAL,
                        "rule",
                        0,
                        description=rule_description(inputs, variant, config),
                        parse_status="ok",
                        raw_text=_rule_json(inputs, variant),
                    )
                )

    # First round: every describe request of every LLM variant.
    # In LLM_VARIANTS order, whatever the caller's: cl_input's prompts before cl_full's before
    # wl_cl_full's, each starting with the one before's evidence, so that a server with prefix
    # caching has the shared part cached when the longer prompt arrives.
    first: list[tuple[RequestKey, ChatRequest]] = []
    for variant in sorted(needs_llm, key=LLM_VARIANTS.index):
        first.extend(build_requests(feature_inputs, variant, config))
    answers: dict[tuple[int, str], dict[int, tuple[ChatRequest, ChatResult, str | None]]] = {}
    for key, request, result in _ask(backend, first, config, model):
        inputs = feature_inputs[key.feature]
        row = _answered_row(inputs, key, request, result, n_described(inputs, key.variant), model)
        rows.append(row)
        answers.setdefault((key.feature, key.variant), {})[key.cluster] = (
            request,
            result,
            row["description"],
        )

    # Second round: merge (or copy) the cluster descriptions.
    merge: list[tuple[RequestKey, ChatRequest]] = []
    for variant in [v for v in needs_llm if v in CLUSTER_VARIANTS]:
        ok: dict[int, dict[int, str]] = {}
        for inputs in features:
            got = answers.get((inputs.feature, variant))
            if not got or FINAL in got:  # missing input, or the noise group was the final row
                continue
            described = {c: d for c, (_, _, d) in got.items() if d is not None}
            n_clusters = n_described(inputs, variant)
            if len(described) >= 2:
                ok[inputs.feature] = described
            elif len(described) == 1:
                ((cluster, text),) = described.items()
                request, result, _ = got[cluster]
                rows.append(
                    _row(
                        inputs,
                        variant,
                        FINAL,
                        "copy",
                        n_clusters,
                        description=text,
                        request=request,
                        result=result,
                        llm_model=model,
                        count_usage=False,
                        error=None
                        if n_clusters == 1
                        else f"only cluster {cluster} of {n_clusters} has a description",
                    )
                )
            else:
                rows.append(
                    _row(
                        inputs,
                        variant,
                        FINAL,
                        "skipped",
                        n_clusters,
                        llm_model=model,
                        parse_status="skipped",
                        error="no cluster description parsed; nothing to merge",
                    )
                )
        merge.extend(build_merge_requests(feature_inputs, variant, ok, config))
    for key, request, result in _ask(backend, merge, config, model, "merge"):
        inputs = feature_inputs[key.feature]
        rows.append(
            _answered_row(inputs, key, request, result, n_described(inputs, key.variant), model)
        )

    frame = pd.DataFrame(rows, columns=EXPLANATIONS_SCHEMA.names)
    for name in ("description", "prompt_hash", "error", "raw_text"):
        column = frame[name].astype(object)
        frame[name] = column.where(column.notna(), None)
    if frame.empty:
        return frame
    order = {v: i for i, v in enumerate(variants)}
    frame = frame.assign(
        _v=frame["variant"].map(order), _final=frame["is_final"].astype(int)
    ).sort_values(["feature", "_v", "_final", "cluster"], kind="mergesort")
    return frame.drop(columns=["_v", "_final"]).reset_index(drop=True)


def features_with_every_variant(
    final: pd.DataFrame, variants: Sequence[str], limit: int | None = None
) -> list[int]:
    """Features (ascending) that have a final row for every one of ``variants``: the features
    on which variants are compared. At most ``limit`` (the lowest ids).

    ``final``: :func:`final_descriptions` rows. The LLM-free variants may cover every feature while
    the LLM ones cover a draw; scoring each variant on its own first features would then compare
    variants on different features. A row without a description (``missing_input``, an
    unparseable answer) does not count: the variant has nothing to score there.
    """
    if "description" in final:
        text = final["description"].astype("string").str.strip()
        final = final[text.notna() & (text != "")]
    covered = None
    for variant in dict.fromkeys(variants):
        features = set(final.loc[final["variant"] == variant, "feature"].astype(int))
        covered = features if covered is None else covered & features
    chosen = sorted(covered or ())
    return chosen if limit is None else chosen[:limit]


def final_descriptions(explanations_df: pd.DataFrame) -> pd.DataFrame:
    """``feature, variant, description`` of the final rows: the input of FADE evaluation."""
    final = explanations_df[explanations_df["is_final"].astype(bool)]
    return final[["layer", "feature", "variant", "description"]].reset_index(drop=True)


def write_explanations(frame: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write the explanations table atomically with :data:`EXPLANATIONS_SCHEMA`."""
    write_parquet_atomic(frame[EXPLANATIONS_SCHEMA.names], path, schema=EXPLANATIONS_SCHEMA)
