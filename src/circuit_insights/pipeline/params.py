"""What each rule reads from the config: narrow ``params`` in a canonical form.

Snakemake reruns a job when the ``repr`` of one of its params changes (the default rerun
triggers). A rule that received a whole config block would rerun when any key of that block
changes, and a dict's ``repr`` follows its key order, so the same config written in another
order would rerun everything. Each function here therefore returns only the keys one rule
reads, with every mapping's keys sorted (:func:`canonical`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from circuit_insights.core.errors import InputError

SUBJECT_KEYS = ("source", "dtype", "device", "prepend_bos")
"""Keys of a model block that loading the subject model reads."""

TOKENIZER_KEYS = ("source", "prepend_bos")
"""Keys of a model block that loading only its tokenizer (and BOS convention) reads."""

TRANSCODER_LOAD_KEYS = ("kind", "format", "path", "n_features", "input_hook", "output_hook")
"""Keys of ``models.<m>.transcoders`` that loading a transcoder reads (training keys change the
trained files, which the loading jobs have as inputs)."""

TRANSCODER_PAIRS_KEYS = ("input_hook", "output_hook", "train_contexts")
"""Keys of ``models.<m>.transcoders`` that collecting the MLP pairs reads (rule collect_pairs)."""

TRANSCODER_TRAIN_KEYS = (
    "activation",
    "batch_tokens",
    "input_hook",
    "l1_coefficient",
    "learning_rate",
    "n_features",
    "output_hook",
    "seed",
    "steps",
    "top_k",
    "train_contexts",
)
"""Keys of ``models.<m>.transcoders`` that training a transcoder reads (rule train_transcoder).
``train_contexts`` reaches it through the pairs file, and stays a param: that file is temporary,
and a job whose input is gone is not rerun for the params of the job that made it."""

SELECTION_KEYS = ("features_per_shard", "min_samples", "seed")
"""Keys of ``explain`` that the seeded feature draw (rule select_features) reads."""

EXPLAIN_KEYS = (
    "features_per_shard",
    "min_samples",
    "prompt",
    "rule_variants_for_every_feature",
    "variants",
)
"""Keys of ``explain`` that the explain jobs read (the draw itself comes from its file)."""

EVALUATE_KEYS = ("features_per_shard", "preset", "seed", "top_selection", "variants")
"""Keys of ``evaluate`` that the FADE jobs read (``evaluate.threads`` is their resource only)."""

EVALUATE_RULES_KEYS = ("preset", "seed", "top_selection")
"""Keys of ``evaluate`` that the rule rater reads (its sample selection is FADE's)."""

DELPHI_RULE_KEYS = (
    "batch_size",
    "example_length",
    "fuzz_threshold",
    "fuzz_type",
    "n_non_activating",
    "n_per_quantile",
    "n_quantiles",
    "non_activating_with_replacement",
    "scorers",
)
"""Keys of ``scores`` that the exact rule scores read: the drawing of the examples and the
scores, not what only the LLM's requests use (``structured_output``, ``max_tokens``,
``simulation_mode``, ``simulation_sequences_per_prompt``, ``simulation_logprobs``,
``simulation_max_tokens``) nor which
descriptions the LLM rates."""

LLM_MODEL_KEYS = ("model", "served_model_name", "url")
"""Keys of ``llm`` naming the model that answers: params of every job that asks the LLM."""

LLM_EXPLAIN_KEYS = (*LLM_MODEL_KEYS, "max_tokens", "repetition_penalty", "retry_max_tokens")
"""Keys of ``llm`` that change the explain jobs' answers (FADE's requests set their own)."""

LLM_CONNECTION_KEYS = (
    "api_key_env",
    "concurrency",
    "kv_cache_gib",
    "max_failed_share",
    "max_retries",
    "reserved_cpus",
    "server_python",
    "startup_timeout_s",
    "timeout_s",
)
"""Keys of ``llm`` that say how the server is run and reached, not what it answers. They are no
params (Snakemake would rerun the LLM jobs when one changes): the scripts read them from the
workflow's config with :func:`llm_job_config`."""

RULES_DERIVATION_KEYS = (
    "cl_max_conditions",
    "cl_min_frequency",
    "cl_min_token_share",
    "maxact_min_share",
    "maxact_top_k",
    "variants",
)
"""Keys of ``rules`` that the explain jobs read (deriving the executable rules); the rater's
keys reach only rule evaluate_rules."""


TRANSCODER_KEYS = {
    "load": TRANSCODER_LOAD_KEYS,
    "pairs": TRANSCODER_PAIRS_KEYS,
    "train": TRANSCODER_TRAIN_KEYS,
}
"""What a job does with a model's transcoders -> the keys of their block it reads."""


def canonical(value: Any) -> Any:
    """``value`` with the keys of every mapping sorted, recursively (lists keep their order).

    Two configs that differ only in key order give equal ``repr``s.
    """
    if isinstance(value, Mapping):
        return {str(key): canonical(value[key]) for key in sorted(value, key=str)}
    if isinstance(value, list | tuple):
        return [canonical(item) for item in value]
    return value


def pick(block: Mapping[str, Any], keys: Iterable[str], where: str) -> dict[str, Any]:
    """The ``keys`` of a config ``block`` (at config key ``where``), canonical."""
    missing = [key for key in keys if key not in block]
    if missing:
        raise InputError(f"config key '{where}' lacks {missing} (was the config validated?)")
    return canonical({key: block[key] for key in keys})


def model_block(config: Mapping[str, Any], model: str) -> Mapping[str, Any]:
    """The validated block ``models.<model>``."""
    try:
        return config["models"][model]
    except KeyError:
        raise InputError(f"config key 'models.{model}' does not exist") from None


def tokenizer_params(config: Mapping[str, Any], model: str) -> dict[str, Any]:
    """Model keys of a job that loads only the tokenizer (corpus, cluster, explain, summarize)."""
    return pick(model_block(config, model), TOKENIZER_KEYS, f"models.{model}")


def subject_params(
    config: Mapping[str, Any], model: str, *, transcoders: str | None = None
) -> dict[str, Any]:
    """Model keys of a job that loads the subject model; with ``transcoders`` ``"load"``,
    ``"pairs"`` or ``"train"`` also the keys of its transcoders block that loading them
    (:data:`TRANSCODER_LOAD_KEYS`), collecting their MLP pairs (:data:`TRANSCODER_PAIRS_KEYS`)
    or training them (:data:`TRANSCODER_TRAIN_KEYS`) reads."""
    block = model_block(config, model)
    params = pick(block, SUBJECT_KEYS, f"models.{model}")
    if transcoders is not None:
        if transcoders not in TRANSCODER_KEYS:
            raise ValueError(
                f"transcoders must be one of {sorted(TRANSCODER_KEYS)} or None, not {transcoders!r}"
            )
        keys = TRANSCODER_KEYS[transcoders]
        params["transcoders"] = pick(block["transcoders"], keys, f"models.{model}.transcoders")
    return params


def weightlens_model_params(config: Mapping[str, Any], model: str) -> dict[str, Any]:
    """Model keys of a WeightLens job: the subject, its transcoders and its thresholds."""
    params = subject_params(config, model, transcoders="load")
    params["weightlens"] = canonical(model_block(config, model)["weightlens"])
    return params


def section(config: Mapping[str, Any], name: str, keys: Iterable[str] | None = None) -> Any:
    """The top-level config block ``name`` (only ``keys`` of it when given), canonical."""
    if name not in config:
        raise InputError(f"config key '{name}' does not exist")
    block = config[name]
    return canonical(block) if keys is None else pick(block, keys, name)


def llm_job_config(llm_params: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """An LLM job's whole ``llm`` settings: its params (the keys that change answers) with the
    :data:`LLM_CONNECTION_KEYS` of the workflow's validated ``config``."""
    return {**llm_params, **section(config, "llm", LLM_CONNECTION_KEYS)}
