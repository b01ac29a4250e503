"""The parquet schema of every artifact the workflow writes, in one place.

Each artifact has one ``pyarrow.schema`` constant; stages write with
``circuit_insights.core.io.write_parquet_atomic(table, path, schema=...)`` and tests check files
against these constants.
"""

from __future__ import annotations

import pyarrow as pa

# --- corpus ----------------------------------------------------------------------------------

# One row per fixed-length context (``circuit_insights.data.corpus``), sorted by ``context``.
# ``context``: 0..n-1; ``split``: "cache" (activation cache) or "eval" (held out);
# ``document``: index of the source document of the context's first non-BOS token;
# ``token_ids``: the context's token ids, all rows of one file the same length (BOS first
# where the model uses one).
CORPUS_TOKENS_SCHEMA = pa.schema(
    [
        pa.field("context", pa.int32(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("document", pa.int32(), nullable=False),
        pa.field("token_ids", pa.list_(pa.int32()), nullable=False),
    ]
)

# --- transcoders -----------------------------------------------------------------------------

# --- activation cache ------------------------------------------------------------------------

#: Sparse non-zero feature activations of one shard (``circuit_insights.data.cache``). Every non-zero
#: value is stored, including those at excluded (BOS / attention-sink) positions, which carry
#: ``excluded = True``. Row groups hold a narrow feature range and are sorted by
#: (feature, context, position); see ``docs/cache_and_sampling.md``.
ACTIVATIONS_SCHEMA = pa.schema(
    [
        pa.field("feature", pa.int32(), nullable=False),
        pa.field("context", pa.int32(), nullable=False),
        pa.field("position", pa.int32(), nullable=False),
        pa.field("activation", pa.float32(), nullable=False),
        pa.field("excluded", pa.bool_(), nullable=False),
    ]
)

#: One row per (feature, context) where the feature fires at a non-excluded position: the
#: maximum activation there and its position (the earliest one on ties).
MAXIMA_SCHEMA = pa.schema(
    [
        pa.field("feature", pa.int32(), nullable=False),
        pa.field("context", pa.int32(), nullable=False),
        pa.field("max_activation", pa.float32(), nullable=False),
        pa.field("max_position", pa.int32(), nullable=False),
    ]
)

#: One row per feature of the shard, dead features included. Statistics are over non-excluded
#: positions only; ``n_active_excluded_tokens`` counts the firings at excluded positions.
#: ``mean_activation``, ``max_activation`` and the quantiles (of the active values, from a
#: streaming log-spaced histogram, see ``circuit_insights.data.cache.LogHistogramSpec``) are null
#: (NaN in pandas) for a feature that never fires; ``frequency`` is null when no token was seen.
FEATURE_STATS_SCHEMA = pa.schema(
    [
        pa.field("feature", pa.int32(), nullable=False),
        pa.field("n_tokens_total", pa.int64(), nullable=False),
        pa.field("n_active_tokens", pa.int64(), nullable=False),
        pa.field("n_active_excluded_tokens", pa.int64(), nullable=False),
        pa.field("n_active_contexts", pa.int64(), nullable=False),
        pa.field("frequency", pa.float64()),
        pa.field("mean_activation", pa.float64()),
        pa.field("max_activation", pa.float32()),
        pa.field("quantile_50", pa.float32()),
        pa.field("quantile_90", pa.float32()),
        pa.field("quantile_99", pa.float32()),
    ]
)

#: What rule cache writes per (layer, split, shard) of a corpus chunk besides its non-zeros: the
#: chunk's tokens at non-excluded positions (one row), which the non-zeros alone do not give; the
#: histogram spec of the statistics is in the file's metadata. Rule merge_cache derives the
#: maxima and every statistic from the merged non-zeros and these counts
#: (``circuit_insights.data.cache_merge``).
CHUNK_TOKENS_SCHEMA = pa.schema([pa.field("n_tokens_total", pa.int64(), nullable=False)])

# --- sampling --------------------------------------------------------------------------------

#: Sampled contexts per feature (``circuit_insights.data.sampling``). ``kind`` is ``quantile``
#: (CircuitLens quantile sampling), ``top`` (MaxAct baseline) or ``negative`` (contexts where the
#: feature never fires at a non-excluded position). ``rank`` is the draw order (quantile,
#: negative) or the rank by activation (top), from 0. The consumer truncates the context's tokens
#: to ``tokens[: target_position + 1]``. ``bin`` is -1 and ``weight`` null (NaN in pandas) outside
#: ``quantile``.
SAMPLES_SCHEMA = pa.schema(
    [
        pa.field("feature", pa.int32(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),
        pa.field("context", pa.int32(), nullable=False),
        pa.field("target_position", pa.int32(), nullable=False),
        pa.field("activation", pa.float32(), nullable=False),
        pa.field("bin", pa.int32(), nullable=False),
        pa.field("weight", pa.float64()),
    ]
)

#: The choice of features of one shard that attribution, explanation and evaluation work on
#: (``circuit_insights.data.selection``), made once by rule select_features. One row per feature
#: with at least ``explain.min_samples`` quantile samples, and one per named feature
#: (``models.<m>.features`` / ``models.<m>.graph``) whatever its samples, sorted by ``feature``;
#: ``selected`` marks the features worked on: the named ones and the seeded draw
#: (``explain.features_per_shard``; all eligible ones when null); ``reason`` says why a row is
#: there: ``named``, ``drawn`` (in the draw, not named) or ``eligible`` (not selected);
#: ``n_quantile_samples`` counts the feature's quantile samples.
FEATURE_SELECTION_SCHEMA = pa.schema(
    [
        pa.field("feature", pa.int32(), nullable=False),
        pa.field("n_quantile_samples", pa.int32(), nullable=False),
        pa.field("selected", pa.bool_(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
    ]
)

# --- weightlens ------------------------------------------------------------------------------

#: One row per explained feature of a (layer, shard) (``circuit_insights.weightlens``; every
#: definition in ``docs/weightlens.md``). Token lists hold ids (the truth) and display strings
#: (escaped, ``<id>`` without a tokenizer). ``candidate_*``: own input-token candidates (highest z
#: first, at most ``max_candidate_tokens`` of ``n_candidate_tokens_total``) then inherited tokens;
#: ``candidate_sources`` is ``input`` or the ``L{layer}#{feature}`` upstream features it came from;
#: ``candidate_activations`` the single-token activation ([BOS, token], last position).
#: ``validated_*``: the candidates with activation > 0, by activation. ``promoted_*`` /
#: ``suppressed_*``: output tokens (not validated; suppressed z are negative). ``upstream_*``: kept
#: upstream features (z within their layer > t_up), by relative contribution, with the validated
#: tokens inherited from each (``upstream_has_result`` False where the upstream results lacked the
#: feature). Score columns are null when undefined, with ``score_reason``.
WEIGHTLENS_SCHEMA = pa.schema(
    [
        pa.field("layer", pa.int32(), nullable=False),
        pa.field("feature", pa.int32(), nullable=False),
        pa.field("preset", pa.string(), nullable=False),
        pa.field("projection", pa.string(), nullable=False),
        pa.field("z_scope", pa.string(), nullable=False),
        pa.field("t_tok", pa.float32(), nullable=False),
        pa.field("t_up", pa.float32(), nullable=False),
        pa.field("input_score_mean", pa.float64(), nullable=False),
        pa.field("input_score_std", pa.float64(), nullable=False),
        pa.field("n_candidate_tokens_total", pa.int32(), nullable=False),
        pa.field("candidate_token_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("candidate_tokens", pa.list_(pa.string()), nullable=False),
        pa.field("candidate_z", pa.list_(pa.float32()), nullable=False),
        pa.field("candidate_sources", pa.list_(pa.string()), nullable=False),
        pa.field("candidate_activations", pa.list_(pa.float32()), nullable=False),
        pa.field("validated_token_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("validated_tokens", pa.list_(pa.string()), nullable=False),
        pa.field("validated_activations", pa.list_(pa.float32()), nullable=False),
        pa.field("validated_sources", pa.list_(pa.string()), nullable=False),
        pa.field("n_promoted_total", pa.int32(), nullable=False),
        pa.field("promoted_token_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("promoted_tokens", pa.list_(pa.string()), nullable=False),
        pa.field("promoted_z", pa.list_(pa.float32()), nullable=False),
        pa.field("n_suppressed_total", pa.int32(), nullable=False),
        pa.field("suppressed_token_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("suppressed_tokens", pa.list_(pa.string()), nullable=False),
        pa.field("suppressed_z", pa.list_(pa.float32()), nullable=False),
        pa.field("n_upstream_total", pa.int32(), nullable=False),
        pa.field("upstream_layers", pa.list_(pa.int32()), nullable=False),
        pa.field("upstream_features", pa.list_(pa.int32()), nullable=False),
        pa.field("upstream_contributions", pa.list_(pa.float32()), nullable=False),
        pa.field("upstream_z", pa.list_(pa.float32()), nullable=False),
        pa.field("upstream_relative_contributions", pa.list_(pa.float32()), nullable=False),
        pa.field("upstream_has_result", pa.list_(pa.bool_()), nullable=False),
        pa.field("upstream_inherited_token_ids", pa.list_(pa.list_(pa.int32())), nullable=False),
        pa.field("input_abs_contribution", pa.float64(), nullable=False),
        pa.field("total_abs_contribution", pa.float64(), nullable=False),
        pa.field("description", pa.string(), nullable=False),
        pa.field("is_token_based", pa.bool_(), nullable=False),
        pa.field("classification", pa.string(), nullable=False),
        pa.field("classification_basis", pa.string(), nullable=False),
        pa.field("n_top_contexts", pa.int32(), nullable=False),
        pa.field("n_top_contexts_explained", pa.int32(), nullable=False),
        pa.field("top_context_share", pa.float64()),
        pa.field("min_token_share", pa.float64(), nullable=False),
        pa.field("auroc", pa.float64()),
        pa.field("precision", pa.float64()),
        pa.field("recall", pa.float64()),
        pa.field("n_positive", pa.int64(), nullable=False),
        pa.field("n_predicted", pa.int64(), nullable=False),
        pa.field("n_true_positive", pa.int64(), nullable=False),
        pa.field("n_scored_positions", pa.int64(), nullable=False),
        pa.field("score_reason", pa.string(), nullable=False),
    ]
)

#: Optional TWERA ranking of upstream connections (``circuit_insights.weightlens.twera``): per
#: target feature, source features that co-activate with it, by |twera| (``rank`` from 0).
#: ``coactivation`` = E[a_s a_t] / E[a_t]; ``virtual_weight`` = W_dec^s · W_enc^t (residual-stream
#: directions); ``twera`` their product; ``n_coactive`` positions where both fire.
WEIGHTLENS_TWERA_SCHEMA = pa.schema(
    [
        pa.field("target_layer", pa.int32(), nullable=False),
        pa.field("target_feature", pa.int32(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),
        pa.field("source_layer", pa.int32(), nullable=False),
        pa.field("source_feature", pa.int32(), nullable=False),
        pa.field("coactivation", pa.float64(), nullable=False),
        pa.field("virtual_weight", pa.float64(), nullable=False),
        pa.field("twera", pa.float64(), nullable=False),
        pa.field("n_coactive", pa.int64(), nullable=False),
    ]
)

# --- attribution -----------------------------------------------------------------------------

#: CircuitLens contributions (``circuit_insights.circuitlens.attribution``; definitions in
#: ``docs/attribution.md``), the significant ones per (feature, sample), in request order.
#: ``kind``: ``embedding``, ``feature``, ``error``, ``mlp_error``, ``bias`` (``partition`` "leaf":
#: these sum exactly to the pre-activation before filtering), ``head`` ("mediator": the total effect
#: of one head's value vector at one source position; not part of the leaf sum), ``logit``
#: ("output": the feature's effect on the logit of the actual token at ``position + 1``) and
#: ``top_token`` ("output_vocab": ``detail`` "promoted" / "suppressed"). ``layer`` is the
#: contributor's layer (null for embeddings, the feature's own layer for output rows); ``head`` only
#: for heads; ``source_feature`` only for features; ``position`` the contributor's (source) position,
#: null for biases (summed over positions); ``delta = position - target_position``; ``token``: the
#: token at ``position`` (leaves, heads) or the token whose logit is meant (output rows); ``detail``:
#: the bias part (``attention``, ``pre_attention_norm``, ``post_attention_norm``, ``pre_mlp_norm``,
#: ``post_mlp_norm``, ``b_dec_out``, ``b_dec_in``, ``b_enc``) or the top-token direction;
#: ``share`` = |value| / sum of |value| over the whole partition of the (feature, sample) (for
#: ``top_token``: over the whole vocabulary).
ATTRIBUTION_CONTRIBUTIONS_SCHEMA = pa.schema(
    [
        pa.field("feature", pa.int32(), nullable=False),
        pa.field("sample", pa.int64(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("partition", pa.string(), nullable=False),
        pa.field("layer", pa.int32(), nullable=True),
        pa.field("head", pa.int32(), nullable=True),
        pa.field("source_feature", pa.int32(), nullable=True),
        pa.field("position", pa.int32(), nullable=True),
        pa.field("delta", pa.int32(), nullable=True),
        pa.field("token", pa.int32(), nullable=True),
        pa.field("detail", pa.string(), nullable=True),
        pa.field("value", pa.float32(), nullable=False),
        pa.field("share", pa.float32(), nullable=False),
    ]
)

#: One row per attribution request: the exact totals that make the filtered contributions
#: checkable. ``status`` is "ok" or "skipped_bos" (target on the BOS token: no contributions, null
#: numbers, zero counts). ``pre_activation`` / ``activation``: from the plain forward pass;
#: ``frozen_pre_activation``: the frozen replay's value; ``leaf_sum``: sum of all leaf
#: contributions before filtering (== ``pre_activation`` up to float rounding); ``kept_*`` /
#: ``dropped_*``: counts and sums of the leaves (and heads) kept and dropped by the significance
#: filter; ``head_sum``: sum of all head contributions; ``n_output_positions``: logit positions
#: attributed (fewer than requested where the context ends).
ATTRIBUTION_TOTALS_SCHEMA = pa.schema(
    [
        pa.field("feature", pa.int32(), nullable=False),
        pa.field("sample", pa.int64(), nullable=False),
        pa.field("layer", pa.int32(), nullable=False),
        pa.field("target_position", pa.int32(), nullable=False),
        pa.field("target_token", pa.int32(), nullable=False),
        pa.field("context_length", pa.int32(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("fires", pa.bool_(), nullable=False),
        pa.field("pre_activation", pa.float64(), nullable=True),
        pa.field("activation", pa.float64(), nullable=True),
        pa.field("frozen_pre_activation", pa.float64(), nullable=True),
        pa.field("leaf_sum", pa.float64(), nullable=True),
        pa.field("leaf_abs_sum", pa.float64(), nullable=True),
        pa.field("n_leaves", pa.int32(), nullable=False),
        pa.field("n_leaves_kept", pa.int32(), nullable=False),
        pa.field("kept_leaf_sum", pa.float64(), nullable=True),
        pa.field("n_leaves_dropped", pa.int32(), nullable=False),
        pa.field("dropped_leaf_sum", pa.float64(), nullable=True),
        pa.field("head_sum", pa.float64(), nullable=True),
        pa.field("head_abs_sum", pa.float64(), nullable=True),
        pa.field("n_heads", pa.int32(), nullable=False),
        pa.field("n_heads_kept", pa.int32(), nullable=False),
        pa.field("kept_head_sum", pa.float64(), nullable=True),
        pa.field("n_heads_dropped", pa.int32(), nullable=False),
        pa.field("dropped_head_sum", pa.float64(), nullable=True),
        pa.field("n_output_positions", pa.int32(), nullable=False),
    ]
)

# --- evaluation ------------------------------------------------------------------------------

#: FADE scores (``circuit_insights.evaluation.fade``; definitions in ``docs/fade.md``), one row per
#: (feature, variant) of a (layer, shard). ``variant`` names the explanation method (e.g.
#: ``weightlens``, ``cl_full``); ``description`` is null when the variant has none. Metric values
#: are null (NaN in pandas) when undefined, with ``*_reason`` saying why (reasons listed in
#: ``circuit_insights.evaluation.metrics.REASONS``; null when the value is defined). Counts:
#: ``n_synthetic_texts`` distinct LLM texts, ``n_synthetic_scored`` those with a token to score;
#: ``n_natural`` held-out contexts (all natural samples), ``n_natural_active`` those where the
#: feature fires; ``n_rated`` natural samples sent for rating and how many got each rating
#: (``n_rating_missing``: no valid rating after retries). Steering: ``steering_reference`` is the
#: activation the factors multiply; per factor (``steering_factors``, 0 included) the share of
#: rated continuations rated 2 (null where none was rated) and how many were rated; empty lists
#: when Faithfulness was not run. ``llm_*``: calls, answers whose ``parse_status`` was not
#: ``ok`` (``llm_failed_calls``), requests the server failed (``llm_error_calls``, a subset:
#: no answer at all), cache hits, tokens and summed latency of this row's LLM requests; ``elapsed_s`` wall
#: time of the row. ``rater``: ``llm`` (FADE with the LLM rating) or ``rule`` (an executable
#: explanation rated by applying it, ``circuit_insights.evaluation.rule_rater``; never mix the two).
FADE_EVALUATION_SCHEMA = pa.schema(
    [
        pa.field("layer", pa.int32(), nullable=False),
        pa.field("feature", pa.int32(), nullable=False),
        pa.field("variant", pa.string(), nullable=False),
        pa.field("description", pa.string(), nullable=True),
        pa.field("preset", pa.string(), nullable=False),
        pa.field("llm_model", pa.string(), nullable=False),
        pa.field("prompt_version", pa.string(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("rater", pa.string(), nullable=False),
        pa.field("clarity", pa.float64()),
        pa.field("clarity_reason", pa.string()),
        pa.field("responsiveness", pa.float64()),
        pa.field("responsiveness_reason", pa.string()),
        pa.field("purity", pa.float64()),
        pa.field("purity_reason", pa.string()),
        pa.field("faithfulness", pa.float64()),
        pa.field("faithfulness_reason", pa.string()),
        pa.field("n_synthetic_texts", pa.int32(), nullable=False),
        pa.field("n_synthetic_scored", pa.int32(), nullable=False),
        pa.field("n_natural", pa.int32(), nullable=False),
        pa.field("n_natural_active", pa.int32(), nullable=False),
        pa.field("n_rated", pa.int32(), nullable=False),
        pa.field("n_rated_0", pa.int32(), nullable=False),
        pa.field("n_rated_1", pa.int32(), nullable=False),
        pa.field("n_rated_2", pa.int32(), nullable=False),
        pa.field("n_rating_missing", pa.int32(), nullable=False),
        pa.field("steering_reference", pa.float64()),
        pa.field("steering_factors", pa.list_(pa.float64()), nullable=False),
        pa.field("concept_share_by_factor", pa.list_(pa.float64()), nullable=False),
        pa.field("n_continuations_rated", pa.list_(pa.int32()), nullable=False),
        pa.field("llm_calls", pa.int32(), nullable=False),
        pa.field("llm_failed_calls", pa.int32(), nullable=False),
        pa.field("llm_error_calls", pa.int32(), nullable=False),
        pa.field("llm_cached_calls", pa.int32(), nullable=False),
        pa.field("llm_tokens_in", pa.int64(), nullable=False),
        pa.field("llm_tokens_out", pa.int64(), nullable=False),
        pa.field("llm_latency_s", pa.float64(), nullable=False),
        pa.field("elapsed_s", pa.float64(), nullable=False),
    ]
)

# --- clustering ---

#: CircuitLens clusters (``circuit_insights.circuitlens.clustering``; definitions in
#: ``docs/clustering_and_explanations.md``): one row per (feature, cluster) of a (layer, shard),
#: clusters numbered 0.. by size, plus ``cluster`` -1 (``is_noise``) for the feature's samples in
#: no cluster (noise, empty sets). ``status`` (per feature): ``clustered``, ``all_noise``,
#: ``too_few_samples``, ``no_contributors``. ``n_feature_samples``: the N samples clustered (rho is
#: a share of N); ``share`` = n_samples / N; ``n_elements``: contributors left after the rho filter.
#: ``defining_*``: the cluster's most frequent contributors (``kinds`` feature / head / token;
#: ``layers`` null for tokens; ``indices``: source feature, head or token id; ``deltas`` null for
#: features; ``frequency`` inside the cluster; ``lift`` = frequency / overall frequency), with one
#: ``trigger_patterns`` sentence each. ``output_*``: top promoted / suppressed tokens and actual
#: next tokens by the number of member samples they appear in (``*_counts``), the mean logit
#: effect on the actual next token (null without logit rows). ``example_samples``: the most
#: central members first.
CLUSTERS_SCHEMA = pa.schema(
    [
        pa.field("layer", pa.int32(), nullable=False),
        pa.field("feature", pa.int32(), nullable=False),
        pa.field("cluster", pa.int32(), nullable=False),
        pa.field("is_noise", pa.bool_(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("method", pa.string(), nullable=False),
        pa.field("n_clusters", pa.int32(), nullable=False),
        pa.field("n_samples", pa.int32(), nullable=False),
        pa.field("share", pa.float64(), nullable=False),
        pa.field("n_feature_samples", pa.int32(), nullable=False),
        pa.field("n_elements", pa.int32(), nullable=False),
        pa.field("defining_labels", pa.list_(pa.string()), nullable=False),
        pa.field("defining_kinds", pa.list_(pa.string()), nullable=False),
        pa.field("defining_layers", pa.list_(pa.int32()), nullable=False),
        pa.field("defining_indices", pa.list_(pa.int32()), nullable=False),
        pa.field("defining_deltas", pa.list_(pa.int32()), nullable=False),
        pa.field("defining_frequency", pa.list_(pa.float32()), nullable=False),
        pa.field("defining_lift", pa.list_(pa.float32()), nullable=False),
        pa.field("trigger_patterns", pa.list_(pa.string()), nullable=False),
        pa.field("output_promoted_token_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("output_promoted_tokens", pa.list_(pa.string()), nullable=False),
        pa.field("output_promoted_counts", pa.list_(pa.int32()), nullable=False),
        pa.field("output_suppressed_token_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("output_suppressed_tokens", pa.list_(pa.string()), nullable=False),
        pa.field("output_suppressed_counts", pa.list_(pa.int32()), nullable=False),
        pa.field("output_n_logit_samples", pa.int32(), nullable=False),
        pa.field("output_mean_logit", pa.float64()),
        pa.field("output_next_token_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("output_next_tokens", pa.list_(pa.string()), nullable=False),
        pa.field("output_next_counts", pa.list_(pa.int32()), nullable=False),
        pa.field("mean_activation", pa.float64()),
        pa.field("example_samples", pa.list_(pa.int64()), nullable=False),
    ]
)

#: One row per attribution request (totals row) of a (layer, shard): its cluster (-1: none) and
#: ``status``: ``clustered``, ``noise``, ``empty_set`` (no contributor left after the rho filter),
#: ``not_firing`` or the attribution's own non-ok status (e.g. ``skipped_bos``) for samples left
#: out of the clustering. ``set_size``: contributors after the rho filter (0 when left out).
CLUSTER_ASSIGNMENTS_SCHEMA = pa.schema(
    [
        pa.field("layer", pa.int32(), nullable=False),
        pa.field("feature", pa.int32(), nullable=False),
        pa.field("sample", pa.int64(), nullable=False),
        pa.field("cluster", pa.int32(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("set_size", pa.int32(), nullable=False),
    ]
)

# --- explanations ---

#: Feature descriptions (``circuit_insights.explain``; definitions in
#: ``docs/clustering_and_explanations.md``), per (layer, shard). Per (feature, variant) exactly one
#: final row (``cluster`` -1, ``is_final``), the description FADE evaluates; CL variants also one
#: row per described cluster (``cluster`` >= 0). ``step``: ``describe`` (one LLM answer),
#: ``merge`` (LLM combination of the cluster rows), ``copy`` (the only cluster description,
#: repeated; tokens not counted again), ``rule`` (LLM-free), ``missing_input`` / ``skipped`` (no
#: description; ``error`` says why). ``n_clusters``: clusters described for the feature (CL
#: variants; 0 otherwise). ``parse_status``: the LLM answer's (``ok``, ``empty``, ``unparseable``,
#: ``error``), ``ok`` for rule and copy rows, ``missing_input`` / ``skipped`` otherwise;
#: ``description`` is null unless ``ok``. ``prompt_hash``: sha256 of the request's canonical JSON
#: (null without request); ``raw_text``: the LLM's answer as it came (null without one);
#: ``llm_model`` empty for rule rows.
EXPLANATIONS_SCHEMA = pa.schema(
    [
        pa.field("layer", pa.int32(), nullable=False),
        pa.field("feature", pa.int32(), nullable=False),
        pa.field("variant", pa.string(), nullable=False),
        pa.field("cluster", pa.int32(), nullable=False),
        pa.field("is_final", pa.bool_(), nullable=False),
        pa.field("step", pa.string(), nullable=False),
        pa.field("n_clusters", pa.int32(), nullable=False),
        pa.field("description", pa.string()),
        pa.field("prompt_version", pa.string(), nullable=False),
        pa.field("prompt_hash", pa.string()),
        pa.field("llm_model", pa.string(), nullable=False),
        pa.field("tokens_in", pa.int64(), nullable=False),
        pa.field("tokens_out", pa.int64(), nullable=False),
        pa.field("latency_s", pa.float64(), nullable=False),
        pa.field("cached", pa.bool_(), nullable=False),
        pa.field("parse_status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("raw_text", pa.string()),
    ]
)

# --- summary ---

#: Scores of one model in long form (``circuit_insights.report.scores.summarize_model``; definitions in
#: ``docs/report.md``): one row per (layer, feature, variant, metric). ``metric``: the FADE
#: metrics ``clarity``, ``responsiveness``, ``purity``, ``faithfulness`` of every evaluated
#: variant, and the LLM-free ``weightlens_auroc`` / ``weightlens_precision`` (variant
#: ``weightlens_rule``) of every feature. ``value`` is null when undefined, and ``reason`` (the
#: evaluation's ``*_reason`` / WeightLens ``score_reason``, or ``no_weightlens_result``) is
#: non-null exactly then.
SUMMARY_SCHEMA = pa.schema(
    [
        pa.field("model", pa.string(), nullable=False),
        pa.field("layer", pa.int32(), nullable=False),
        pa.field("feature", pa.int32(), nullable=False),
        pa.field("variant", pa.string(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("value", pa.float64()),
        pa.field("reason", pa.string()),
    ]
)

#: The paper-style table (``circuit_insights.report.stats.metric_table``): per (model, variant, layer,
#: metric) the mean over features with a value (``n``) and its percentile-bootstrap CI
#: (``ci_low``, ``ci_high``; null when ``n`` is 0); ``n_degenerate`` of those ``n`` are degenerate
#: features counted as FADE's code counts them (Clarity / Responsiveness of all-equal activations:
#: 0); ``n_missing`` features without a value, ``missing_reasons`` their reasons with counts
#: (``"gated: 3; no_rated_0: 1"``, empty when none).
METRIC_TABLE_SCHEMA = pa.schema(
    [
        pa.field("model", pa.string(), nullable=False),
        pa.field("variant", pa.string(), nullable=False),
        pa.field("layer", pa.int32(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("n", pa.int64(), nullable=False),
        pa.field("n_degenerate", pa.int64(), nullable=False),
        pa.field("n_missing", pa.int64(), nullable=False),
        pa.field("mean", pa.float64()),
        pa.field("ci_low", pa.float64()),
        pa.field("ci_high", pa.float64()),
        pa.field("missing_reasons", pa.string(), nullable=False),
    ]
)

#: The rule-rated comparison of the explanation methods
#: (``circuit_insights.report.rule_comparison.rule_comparison_table``; ``docs/rules.md``): per (model,
#: ``classification`` = ``token_based`` / ``context_dependent`` / ``all`` / ``unclassified``, metric,
#: layer, variant) the mean over features with a value (``n``), its percentile-bootstrap 95% CI
#: (null when ``n`` < 3), ``n_missing`` and ``missing_reasons`` as in ``METRIC_TABLE_SCHEMA``.
#: Only rows with ``rater`` = ``rule``.
RULE_COMPARISON_SCHEMA = pa.schema(
    [
        pa.field("model", pa.string(), nullable=False),
        pa.field("classification", pa.string(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("layer", pa.int32(), nullable=False),
        pa.field("variant", pa.string(), nullable=False),
        pa.field("n", pa.int64(), nullable=False),
        pa.field("n_missing", pa.int64(), nullable=False),
        pa.field("mean", pa.float64()),
        pa.field("ci_low", pa.float64()),
        pa.field("ci_high", pa.float64()),
        pa.field("missing_reasons", pa.string(), nullable=False),
    ]
)

#: Share of features WeightLens validates / classifies token-based
#: (``circuit_insights.report.shares.token_based_shares``), per layer and over all layers (``layer``
#: null), next to the paper's figure for the model's family (``paper_*`` null for other models).
TOKEN_SHARES_SCHEMA = pa.schema(
    [
        pa.field("model", pa.string(), nullable=False),
        pa.field("layer", pa.int32()),
        pa.field("n_features", pa.int64(), nullable=False),
        pa.field("n_validated", pa.int64(), nullable=False),
        pa.field("validated_share", pa.float64()),
        pa.field("n_token_based", pa.int64(), nullable=False),
        pa.field("token_based_share", pa.float64()),
        pa.field("paper_model", pa.string()),
        pa.field("paper_share", pa.float64()),
    ]
)
