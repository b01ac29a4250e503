"""From the stage tables to what the variants read: :class:`FeatureInputs` per feature
(:func:`build_feature_inputs`) and the executable rules per (feature, variant)
(:func:`derive_rules`)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from circuit_insights.core.errors import InputError
from circuit_insights.core.tokens import TokenDisplay
from circuit_insights.explain.config import ExplainConfig
from circuit_insights.explain.executable.config import RuleConfig
from circuit_insights.explain.executable.evidence import feature_evidence, ints
from circuit_insights.explain.executable.rule import Rule
from circuit_insights.explain.facts import (
    ClusterFacts,
    FeatureInputs,
    MarkedContext,
    WeightLensFacts,
)
from circuit_insights.explain.variants import EXECUTABLE_VARIANTS, TABLE

__all__ = ["build_feature_inputs", "derive_rules", "sample_table", "weightlens_facts"]


def _strings(values: Any) -> tuple[str, ...]:
    if values is None or (isinstance(values, float) and math.isnan(values)):
        return ()
    return tuple(str(v) for v in values)


def weightlens_facts(row: Mapping[str, Any], display: TokenDisplay) -> WeightLensFacts:
    """The facts of one ``WEIGHTLENS_SCHEMA`` row."""
    inherited = row.get("upstream_inherited_token_ids")
    inherited = list(inherited) if inherited is not None else []
    layers = ints(row.get("upstream_layers"))
    features = ints(row.get("upstream_features"))
    upstream = tuple(
        (layer, feature, tuple(display.many(ints(ids))))
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
    (:func:`derive_rules` with ``rule_config``).
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
                for sample in ints(record.get("example_samples"))[: config.n_cluster_contexts]:
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


def derive_rules(
    *,
    layer: int,
    features: Iterable[int],
    tokens: np.ndarray,
    context_ids: np.ndarray,
    weightlens_df: pd.DataFrame | None = None,
    clusters_df: pd.DataFrame | None = None,
    samples_df: pd.DataFrame | None = None,
    assignments_df: pd.DataFrame | None = None,
    config: RuleConfig | None = None,
    variants: Sequence[str] = EXECUTABLE_VARIANTS,
    exclude_token_ids: Sequence[int] = (),
) -> dict[tuple[int, str], Rule]:
    """Every requested variant's rule for every feature of one layer: (feature, variant) -> Rule.

    The tables and contexts as :func:`circuit_insights.explain.executable.evidence.feature_evidence`
    reads them; each executable variant of the table derives its rule from a feature's evidence
    (in ``rule_rank`` order). ``exclude_token_ids`` (the model's BOS): never a token of a circuit
    rule's condition.
    """
    config = config or RuleConfig()
    unknown = [v for v in variants if v not in EXECUTABLE_VARIANTS]
    if unknown:
        raise InputError(f"rule variants {unknown}: choose from {list(EXECUTABLE_VARIANTS)}")
    evidence_of = feature_evidence(
        layer=layer,
        features=features,
        tokens=tokens,
        context_ids=context_ids,
        weightlens_df=weightlens_df,
        clusters_df=clusters_df,
        samples_df=samples_df,
        assignments_df=assignments_df,
        exclude_token_ids=exclude_token_ids,
    )
    out: dict[tuple[int, str], Rule] = {}
    for feature, evidence in evidence_of.items():
        derived: dict[str, Rule] = {}
        for executable in TABLE.executables():
            derived[executable.name] = executable.derive(evidence, config, derived)
        for variant in variants:
            out[(feature, variant)] = derived[variant]
    return out
