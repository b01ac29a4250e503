"""WeightLens for the features of one (layer, shard): steps 1-5 into one row per feature.

:func:`run_weightlens` runs steps 1-3 from the weights (:mod:`.weights`), inherits the upstream
features' validated tokens (:mod:`.upstream`), validates every candidate token alone
(:mod:`.validation`), classifies (:mod:`.classify`), scores on held-out data (:mod:`.heldout`)
and describes (:mod:`.describe`) each feature. Columns: ``schemas.WEIGHTLENS_SCHEMA``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
import pandas as pd

from circuit_insights.core.contexts import HeldOut, TopContexts
from circuit_insights.core.errors import InputError
from circuit_insights.core.tokens import TokenDisplay
from circuit_insights.data.schemas import WEIGHTLENS_SCHEMA
from circuit_insights.data.shards import Shard
from circuit_insights.models.subject import SubjectModel
from circuit_insights.transcoders.base import Transcoder
from circuit_insights.weightlens.classify import classify_features
from circuit_insights.weightlens.config import Thresholds, WeightLensOptions, resolve_thresholds
from circuit_insights.weightlens.describe import describe
from circuit_insights.weightlens.heldout import score_heldout
from circuit_insights.weightlens.inputs import check_transcoders, feature_ids_of
from circuit_insights.weightlens.upstream import inherited_lookup, shard_candidates
from circuit_insights.weightlens.validation import single_token_pair_activations
from circuit_insights.weightlens.weights import analyze_weights, input_token_z

log = logging.getLogger(__name__)


def run_weightlens(
    model: SubjectModel,
    transcoders: Mapping[int, Transcoder],
    layer: int,
    features: Shard | range | Sequence[int],
    upstream_results: Mapping[int, pd.DataFrame] | None = None,
    thresholds: Thresholds | str | None = None,
    *,
    top_contexts: TopContexts | None = None,
    heldout: HeldOut | None = None,
    options: WeightLensOptions | None = None,
    batch_size: int | None = None,
    tokenizer: object | None = None,
) -> pd.DataFrame:
    """WeightLens for ``features`` of ``layer``: one row per feature, columns ``WEIGHTLENS_SCHEMA``.

    Args:
        model: the subject model.
        transcoders: layer -> transcoder; must hold ``layer``. Every earlier layer present is an
            upstream layer: its connections are computed and its results are needed.
        layer: the features' layer.
        features: a shard, a range, or feature ids.
        upstream_results: layer -> that layer's WeightLens results (all of its shards
            concatenated; at least ``feature`` and ``validated_token_ids``), for every earlier
            layer in ``transcoders``.
        thresholds: :class:`Thresholds`, a preset name, or None for the ``paper`` preset of the
            model's family.
        top_contexts: top contexts per feature for the token-based rule (None: validated tokens
            alone decide, recorded in ``classification_basis``).
        heldout: held-out activations and tokens for the LLM-free score (None: the score columns
            are missing with reason ``no held-out data``).
        options: :class:`WeightLensOptions`; ``batch_size`` overrides its field.
        tokenizer: for display strings; None: the model's tokenizer (``<id>`` when it has none).
    """
    options = options or WeightLensOptions()
    if batch_size is not None:
        options = replace(options, batch_size=int(batch_size))
    layer = model.check_layer(layer)
    if layer not in transcoders:
        raise InputError(f"layer {layer}: no transcoder given for the layer to explain")
    check_transcoders(model, transcoders)
    transcoder = transcoders[layer]
    feature_ids = feature_ids_of(features, layer, transcoder.d_transcoder)
    thresholds = resolve_thresholds(model, thresholds)
    upstream_results = upstream_results or {}
    upstream_layers = sorted(key for key in transcoders if key < layer)
    missing = [up for up in upstream_layers if up not in upstream_results]
    if missing:
        raise InputError(
            f"layer {layer}: upstream layer(s) {missing} have a transcoder but no WeightLens "
            "results; explain layers in order and pass their results, or leave their transcoders out"
        )
    lookups = {up: inherited_lookup(upstream_results, up) for up in upstream_layers}
    display = TokenDisplay(tokenizer if tokenizer is not None else model.tokenizer)

    weights = analyze_weights(model, transcoders, layer, feature_ids, thresholds, options)

    # Step 3b: inheritance; candidates = own (highest z first), then inherited ones not already own.
    candidates = shard_candidates(
        weights.candidates,
        weights.upstream,
        lookups,
        max_inherited_tokens=options.max_inherited_tokens,
    )
    candidate_ids = candidates.ids
    candidate_sources = candidates.sources

    # z of every candidate (inherited ones too) in the feature's own input-token distribution.
    counts = np.array([len(c) for c in candidate_ids], dtype=np.int64)
    pair_local = np.repeat(np.arange(len(feature_ids)), counts)
    pair_tokens = np.concatenate(candidate_ids) if len(candidate_ids) else np.zeros(0, np.int64)
    pair_z = input_token_z(
        model,
        transcoder,
        layer,
        features=feature_ids[pair_local],
        tokens=pair_tokens,
        mean=np.asarray(weights.input_mean)[pair_local],
        std=np.asarray(weights.input_std)[pair_local],
        options=options,
    )
    if len(pair_tokens) and (pair_tokens.min() < 0 or pair_tokens.max() >= model.vocab_size):
        raise InputError(
            f"layer {layer}: inherited token ids outside the vocabulary [0, {model.vocab_size}); "
            "were the upstream results made with another model?"
        )
    # Step 4: validation, one batched pass over the shard's unique candidate ids.
    unique_tokens, token_index = np.unique(pair_tokens, return_inverse=True)
    pair_activation = single_token_pair_activations(
        model,
        transcoder,
        layer,
        unique_tokens,
        pair_tokens=token_index,
        pair_features=feature_ids[pair_local],
        batch_size=options.batch_size,
    )  # (n_pairs,)
    log.info(
        "layer %d: %d features, %d candidate pairs over %d unique tokens validated in %d passes "
        "(%d inherited tokens offered, max_inherited_tokens %s)",
        layer,
        len(feature_ids),
        len(pair_tokens),
        len(unique_tokens),
        math.ceil(len(unique_tokens) / options.batch_size),
        candidates.n_offered,
        options.max_inherited_tokens,
    )
    boundaries = np.cumsum(counts)[:-1]
    z_per = np.split(pair_z, boundaries)
    act_per = np.split(pair_activation, boundaries)

    validated_pairs = pd.DataFrame(
        {
            "feature": feature_ids[pair_local],
            "token_id": pair_tokens,
            "activation": pair_activation,
        }
    )
    validated_pairs = validated_pairs[validated_pairs["activation"] > 0]
    classes = classify_features(
        feature_ids,
        validated_pairs,
        top_contexts,
        vocab_size=model.vocab_size,
        min_token_share=options.min_token_share,
    )
    scores = score_heldout(
        feature_ids,
        validated_pairs,
        heldout,
        vocab_size=model.vocab_size,
        bos_token_id=model.bos_token_id,
        positive_fraction=options.heldout_positive_fraction,
    )

    records = []
    for k, feature in enumerate(feature_ids.tolist()):
        cand = candidate_ids[k]
        acts = act_per[k]
        ok = acts > 0
        by_activation = np.argsort(-acts[ok], kind="stable")
        validated_ids = cand[ok][by_activation]
        validated_acts = acts[ok][by_activation]
        validated_sources = [candidate_sources[k][i] for i in np.flatnonzero(ok)[by_activation]]
        validated_set = set(validated_ids.tolist())
        upstream = weights.upstream[k]
        inherited = [[int(t) for t in tokens] for tokens in candidates.inherited[k]]
        upstream_for_description = [
            (int(up), int(f), display.many([t for t in tokens if t in validated_set]))
            for up, f, tokens in zip(upstream["layer"], upstream["feature"], inherited, strict=True)
            if any(t in validated_set for t in tokens)
        ]
        promoted_strings = display.many(weights.promoted[k])
        suppressed_strings = display.many(weights.suppressed[k])
        validated_strings = display.many(validated_ids)
        records.append(
            {
                "layer": layer,
                "feature": feature,
                "preset": thresholds.preset,
                "projection": options.projection,
                "z_scope": thresholds.z_scope,
                "t_tok": float(thresholds.t_tok),
                "t_up": float(thresholds.t_up),
                "input_score_mean": weights.input_mean[k],
                "input_score_std": weights.input_std[k],
                "n_candidate_tokens_total": int(weights.n_candidates[k]),
                "candidate_token_ids": cand.tolist(),
                "candidate_tokens": display.many(cand),
                "candidate_z": z_per[k].tolist(),
                "candidate_sources": candidate_sources[k],
                "candidate_activations": acts.tolist(),
                "validated_token_ids": validated_ids.tolist(),
                "validated_tokens": validated_strings,
                "validated_activations": validated_acts.tolist(),
                "validated_sources": validated_sources,
                "n_promoted_total": int(weights.n_promoted[k]),
                "promoted_token_ids": weights.promoted[k].tolist(),
                "promoted_tokens": promoted_strings,
                "promoted_z": weights.promoted_z[k].tolist(),
                "n_suppressed_total": int(weights.n_suppressed[k]),
                "suppressed_token_ids": weights.suppressed[k].tolist(),
                "suppressed_tokens": suppressed_strings,
                "suppressed_z": weights.suppressed_z[k].tolist(),
                "n_upstream_total": int(weights.n_upstream[k]),
                "upstream_layers": upstream["layer"].astype(int).tolist(),
                "upstream_features": upstream["feature"].astype(int).tolist(),
                "upstream_contributions": upstream["contribution"].tolist(),
                "upstream_z": upstream["z"].tolist(),
                "upstream_relative_contributions": upstream["relative_contribution"].tolist(),
                "upstream_has_result": candidates.has_result[k],
                "upstream_inherited_token_ids": inherited,
                "input_abs_contribution": weights.input_abs[k],
                "total_abs_contribution": weights.total_abs[k],
                "description": describe(
                    validated_strings,
                    promoted_strings,
                    suppressed_strings,
                    upstream_for_description,
                    limit=options.description_tokens,
                    upstream_limit=options.description_upstream,
                ),
            }
        )
    frame = pd.DataFrame.from_records(records)
    frame = frame.merge(classes, on="feature", how="left").merge(scores, on="feature", how="left")
    return frame[WEIGHTLENS_SCHEMA.names]
