"""Running the variants over a shard: request building, the LLM calls (with one retry of cut
answers), the rows of the explanations table, and reading its final descriptions back.

An empty or unparseable answer is a row with its raw text and ``parse_status``, never an
exception. Conventions (``cluster`` -1 is the final row, ...) are in
``docs/clustering_and_explanations.md``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import pandas as pd

from circuit_insights.core.errors import InputError
from circuit_insights.core.io import write_parquet_atomic
from circuit_insights.core.progress import Progress
from circuit_insights.data.schemas import EXPLANATIONS_SCHEMA
from circuit_insights.explain.config import ExplainConfig
from circuit_insights.explain.facts import ClusterFacts, FeatureInputs
from circuit_insights.explain.kinds import ClusterPrompt, LLMFreeVariant, LLMVariant, VariantTable
from circuit_insights.explain.prompts import PROMPT_VERSION
from circuit_insights.explain.requests import FINAL, RequestKey, merge_request, prompt_hash
from circuit_insights.explain.variants import TABLE
from circuit_insights.llm.client import ChatRequest, ChatResult, LLMBackend, iter_results

__all__ = [
    "build_merge_requests",
    "build_requests",
    "cluster_request",
    "explain_shard",
    "features_to_score",
    "features_with_every_variant",
    "final_descriptions",
    "rule_description",
    "unexplained_rows",
    "write_explanations",
]


def cluster_request(
    inputs: FeatureInputs, cluster: ClusterFacts, variant: str, config: ExplainConfig
) -> ChatRequest:
    """The request describing one cluster for a per-cluster variant."""
    kind = TABLE.get(variant)
    if not isinstance(kind, ClusterPrompt):
        raise InputError(
            f"variant {variant!r} is not a cluster variant {list(TABLE.cluster_names)}"
        )
    return kind.cluster_request(inputs, cluster, config)


def build_requests(
    feature_inputs: Mapping[int, FeatureInputs] | Sequence[FeatureInputs],
    variant: str,
    config: ExplainConfig | None = None,
) -> list[tuple[RequestKey, ChatRequest]]:
    """The first-round LLM requests of ``variant`` for every feature, in feature order.

    A per-feature prompt (MaxAct*, WeightLens+Out+LLM): one ``describe`` request per feature
    (``cluster`` -1, the final row). A per-cluster variant: one ``describe`` request per
    described cluster (merge requests come after the answers, :func:`build_merge_requests`).
    LLM-free variants and features that lack the variant's inputs: none.
    """
    config = config or ExplainConfig()
    kind = TABLE.get(variant)
    if kind is None:
        raise InputError(f"explanation variant {variant!r}: choose from {list(TABLE.names)}")
    items = feature_inputs.values() if isinstance(feature_inputs, Mapping) else feature_inputs
    out: list[tuple[RequestKey, ChatRequest]] = []
    if not isinstance(kind, LLMVariant):
        return out
    for inputs in sorted(items, key=lambda x: x.feature):
        if kind.missing(inputs, config) is not None:
            continue
        out.extend(kind.requests(inputs, config))
    return out


def build_merge_requests(
    feature_inputs: Mapping[int, FeatureInputs],
    variant: str,
    cluster_descriptions: Mapping[int, Mapping[int, str]],
    config: ExplainConfig | None = None,
) -> list[tuple[RequestKey, ChatRequest]]:
    """Merge requests of a per-cluster variant: for each feature with >= 2 cluster descriptions
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
    inputs: FeatureInputs,
    variant: str,
    config: ExplainConfig | None = None,
    *,
    table: VariantTable = TABLE,
) -> str | None:
    """The LLM-free description of a rule variant (None when the feature lacks its inputs)."""
    config = config or ExplainConfig()
    kind = table.get(variant)
    if not isinstance(kind, LLMFreeVariant):
        raise InputError(f"variant {variant!r} is not LLM-free {list(table.llm_free_names)}")
    if kind.missing(inputs, config) is not None:
        return None
    return kind.description(inputs, config)


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
    *,
    table: VariantTable | None = None,
) -> pd.DataFrame:
    """Descriptions of every feature by every variant: :data:`EXPLANATIONS_SCHEMA` rows.

    Per (feature, variant) exactly one final row (``cluster`` -1, ``is_final``); per-cluster
    variants also one row per described cluster. All first-round requests go to
    ``backend.chat_many`` in one batch, then the merge requests in a second. ``step``:
    ``describe``, ``merge``, ``copy`` (the final row of a feature with one described cluster
    repeats it; no tokens counted), ``rule``, ``imported`` (an explanation from another tool),
    ``missing_input`` (``error`` says what is missing) or ``skipped`` (no cluster description
    parsed, so nothing to merge). ``backend`` may be None when only LLM-free variants are asked
    for. What each variant reads and how it describes a feature is its object in ``table``
    (default :data:`circuit_insights.explain.variants.TABLE`; with imported variants,
    ``variants.with_imports``).
    """
    config = config or ExplainConfig()
    table = table if table is not None else TABLE
    variants = list(dict.fromkeys(variants))
    unknown = [v for v in variants if v not in table]
    if unknown:
        raise InputError(f"explanation variants {unknown}: choose from {list(table.names)}")
    needs_llm = [v for v in variants if table[v].needs_llm]
    if needs_llm and backend is None:
        raise InputError(f"explanation variants {needs_llm} need an LLM backend (none configured)")
    model = backend.model_name if backend is not None else ""
    features = [feature_inputs[f] for f in sorted(feature_inputs)]
    rows: list[dict[str, Any]] = []

    def n_described(inputs: FeatureInputs, variant: str) -> int:
        if not table[variant].per_cluster:
            return 0
        return len([c for c in inputs.described_clusters(config.max_clusters) if not c.is_noise])

    # Rule variants and missing inputs.
    for inputs in features:
        for variant in variants:
            kind = table[variant]
            reason = kind.missing(inputs, config)
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
            elif isinstance(kind, LLMFreeVariant):
                rows.append(
                    _row(
                        inputs,
                        variant,
                        FINAL,
                        kind.step,
                        0,
                        description=rule_description(inputs, variant, config, table=table),
                        llm_model=kind.author(inputs),
                        parse_status="ok",
                        raw_text=kind.raw_text(inputs),
                    )
                )

    # First round: every describe request of every LLM variant.
    # In LLM_VARIANTS order, whatever the caller's: cl_input's prompts before cl_full's before
    # wl_cl_full's, each starting with the one before's evidence, so that a server with prefix
    # caching has the shared part cached when the longer prompt arrives.
    first: list[tuple[RequestKey, ChatRequest]] = []
    for variant in sorted(needs_llm, key=table.llm_names.index):
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
    for variant in [v for v in needs_llm if table[v].per_cluster]:
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


def features_to_score(
    final: pd.DataFrame,
    variants: Sequence[str],
    limit: int | None = None,
    *,
    named: Sequence[int] = (),
) -> list[int]:
    """The features (ascending) whose descriptions are scored: every ``named`` feature (named by
    the user: ``models.<m>.features``, a graph) that has a description of every one of
    ``variants``, and of the others at most ``limit`` (the lowest ids;
    :func:`features_with_every_variant`)."""
    covered = features_with_every_variant(final, variants)
    chosen = set(named) & set(covered)
    others = [f for f in covered if f not in chosen]
    chosen.update(others if limit is None else others[:limit])
    return sorted(chosen)


def final_descriptions(explanations_df: pd.DataFrame) -> pd.DataFrame:
    """``feature, variant, description`` of the final rows: the input of FADE evaluation."""
    final = explanations_df[explanations_df["is_final"].astype(bool)]
    return final[["layer", "feature", "variant", "description"]].reset_index(drop=True)


def write_explanations(frame: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write the explanations table atomically with :data:`EXPLANATIONS_SCHEMA`."""
    write_parquet_atomic(frame[EXPLANATIONS_SCHEMA.names], path, schema=EXPLANATIONS_SCHEMA)
