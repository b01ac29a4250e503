"""The parquet schema of every artifact the workflow writes, in one place.

Each artifact has one ``pyarrow.schema`` constant; stages write with
``circuit_insights.io.write_parquet_atomic(table, path, schema=...)`` and tests check files
against these constants.
"""

from __future__ import annotations

import pyarrow as pa

# --- corpus ----------------------------------------------------------------------------------

# One row per fixed-length context (``circuit_insights.corpus``), sorted by ``context``.
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

#: Sparse non-zero feature activations of one shard (``circuit_insights.cache``). Every non-zero
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
#: streaming log-spaced histogram, see ``circuit_insights.cache.LogHistogramSpec``) are NaN for
#: a feature that never fires.
FEATURE_STATS_SCHEMA = pa.schema(
    [
        pa.field("feature", pa.int32(), nullable=False),
        pa.field("n_tokens_total", pa.int64(), nullable=False),
        pa.field("n_active_tokens", pa.int64(), nullable=False),
        pa.field("n_active_excluded_tokens", pa.int64(), nullable=False),
        pa.field("n_active_contexts", pa.int64(), nullable=False),
        pa.field("frequency", pa.float64(), nullable=False),
        pa.field("mean_activation", pa.float64(), nullable=False),
        pa.field("max_activation", pa.float32(), nullable=False),
        pa.field("quantile_50", pa.float32(), nullable=False),
        pa.field("quantile_90", pa.float32(), nullable=False),
        pa.field("quantile_99", pa.float32(), nullable=False),
    ]
)

# --- sampling --------------------------------------------------------------------------------

#: Sampled contexts per feature (``circuit_insights.sampling``). ``kind`` is ``quantile``
#: (CircuitLens quantile sampling), ``top`` (MaxAct baseline) or ``negative`` (contexts where the
#: feature never fires at a non-excluded position). ``rank`` is the draw order (quantile,
#: negative) or the rank by activation (top), from 0. The consumer truncates the context's tokens
#: to ``tokens[: target_position + 1]``. ``bin`` is -1 and ``weight`` NaN outside ``quantile``.
SAMPLES_SCHEMA = pa.schema(
    [
        pa.field("feature", pa.int32(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),
        pa.field("context", pa.int32(), nullable=False),
        pa.field("target_position", pa.int32(), nullable=False),
        pa.field("activation", pa.float32(), nullable=False),
        pa.field("bin", pa.int32(), nullable=False),
        pa.field("weight", pa.float64(), nullable=False),
    ]
)
