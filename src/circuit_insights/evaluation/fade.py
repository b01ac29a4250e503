"""FADE evaluation of feature descriptions (Puri et al. 2025; definitions in docs/fade.md).

The LLM-driven and subject-model parts; the metrics themselves are pure functions in
:mod:`circuit_insights.evaluation.metrics`.

- Clarity: the LLM writes synthetic texts for the description (:func:`generate_synthetic_texts`);
  the feature's sample activations on them (:func:`text_activations`) are compared with those of
  all natural (held-out) samples.
- Responsiveness and Purity: the LLM rates stratified natural samples 0 / 1 / 2
  (:func:`select_rating_samples`, :func:`rate_texts`).
- Faithfulness: greedy continuations of natural prompts with the feature set to
  ``factor × reference activation`` at every position (:func:`steered_continuations`, through
  :meth:`SubjectModel.splice` with the transcoder's error term kept) are rated the same way.

:func:`evaluate_feature` runs all of it for one (feature, description) and returns one row of
:data:`circuit_insights.data.schemas.FADE_EVALUATION_SCHEMA`; :func:`evaluate_descriptions` does it
for a table of descriptions and :func:`write_fade_evaluation` writes the rows.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
import string
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from importlib import resources
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from circuit_insights.core.contexts import ContextTokens
from circuit_insights.core.errors import InputError
from circuit_insights.core.io import write_parquet_atomic
from circuit_insights.data.schemas import FADE_EVALUATION_SCHEMA
from circuit_insights.evaluation import metrics
from circuit_insights.evaluation.metrics import (
    FADE_PERCENTILES,
    TOP_SELECTIONS,
    RatingSelection,
    select_rating_samples,
)
from circuit_insights.llm.client import ChatRequest, ChatResult, LLMBackend
from circuit_insights.models.adapters import SubjectModel
from circuit_insights.transcoders.base import Transcoder

__all__ = [
    "PRESETS",
    "PROMPT_VERSION",
    "FadePreset",
    "LLMUsage",
    "evaluate_descriptions",
    "evaluate_feature",
    "fade_preset",
    "generate_synthetic_texts",
    "greedy_continuations",
    "natural_sample_activations",
    "parse_ratings",
    "parse_texts",
    "preset_from_config",
    "rate_text_groups",
    "rate_texts",
    "read_fade_evaluation",
    "select_rating_samples",
    "steered_continuations",
    "text_activations",
    "write_fade_evaluation",
]

PROMPT_VERSION = "fade_v1"
"""Version of the prompt templates ``prompts/fade_*_v1.txt``; recorded with every result."""

Baseline = Literal["ablate", "unsteered"]


# --- presets ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FadePreset:
    """Every knob of a FADE run. ``paper`` is FADE's published configuration."""

    name: str = "paper"
    generation_calls: int = 15
    """LLM calls writing synthetic texts (each returns a list of texts)."""
    generation_temperature: float = 1.0
    """Sampling temperature of the synthetic-text calls (each call also gets its own seed, so
    the calls differ; FADE uses the API's default temperature)."""
    generation_max_tokens: int = 1024
    n_rated: int = 500
    """Natural samples rated for Responsiveness and Purity."""
    rating_batch_size: int = 15
    rating_max_tokens: int | None = None
    """Answer budget of a rating call; None: 32 + 16 per text."""
    top_fraction: float = 0.1
    """Share of ``n_rated`` taken from the highest activations (the rest from the percentile
    strata ``percentiles``)."""
    percentiles: tuple[float, ...] = FADE_PERCENTILES
    top_selection: str = "fade"
    """How the top part is taken (:data:`circuit_insights.evaluation.metrics.TOP_SELECTIONS`):
    ``fade``: the top samples whether or not a stratum drew them, then de-duplicated (FADE's
    code; fewer than ``n_rated`` may be rated); ``distinct``: the top samples not drawn yet
    (exactly ``n_rated``)."""
    failed_retries: int = 1
    """Times the texts whose rating is missing are sent again (FADE: 1)."""
    sparse_retries: int = 1
    """When fewer than ``sparse_threshold`` samples are rated 2, rate up to this many more rounds
    of ``n_rated`` new (unrated) samples chosen the same way (FADE: 1 round, threshold 15)."""
    sparse_threshold: int = 15
    n_prompts: int = 50
    """Natural prompts continued under each steering factor."""
    n_generated_tokens: int = 30
    steering_factors: tuple[float, ...] = (-50.0, -10.0, -1.0, 0.0, 1.0, 10.0, 50.0)
    """Factors of the reference activation; 0 is added when missing (the baseline)."""
    baseline: Baseline = "ablate"
    """What factor 0 does: ``ablate`` sets the feature to 0 at every position (FADE's SAE
    steering, ``factor × max``); ``unsteered`` runs the model as it is."""
    gate: float = 0.5
    """Faithfulness is computed only when Clarity and Responsiveness are both >= this."""
    faithfulness_failed_retries: int = 1
    flip_purity: bool = True
    """Compute Purity on negated activations when the Gini coefficient is negative (FADE)."""
    max_text_tokens: int = 128
    """Synthetic texts are cut to this many tokens (after BOS) for the subject model."""
    max_prompt_tokens: int | None = None
    """Steering prompts are the first this many tokens of a held-out context; None: all."""
    max_text_chars: int | None = None
    """Texts shown to the rating LLM are cut to this many characters; None: whole."""
    batch_size: int = 16
    """Sequences per forward pass of the subject model."""

    def __post_init__(self) -> None:
        positive = (
            "generation_calls",
            "generation_max_tokens",
            "rating_batch_size",
            "n_generated_tokens",
            "max_text_tokens",
            "batch_size",
        )
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise InputError(f"fade preset {self.name!r}: {name} must be >= 1")
        for name in ("n_rated", "n_prompts", "failed_retries", "sparse_retries"):
            if int(getattr(self, name)) < 0:
                raise InputError(f"fade preset {self.name!r}: {name} must be >= 0")
        if not 0.0 <= self.top_fraction <= 1.0:
            raise InputError(f"fade preset {self.name!r}: top_fraction must be in [0, 1]")
        if self.top_selection not in TOP_SELECTIONS:
            raise InputError(
                f"fade preset {self.name!r}: top_selection must be one of {list(TOP_SELECTIONS)}"
            )
        if list(self.percentiles) != sorted(self.percentiles) or len(self.percentiles) < 2:
            raise InputError(f"fade preset {self.name!r}: percentiles must increase")
        if self.baseline not in ("ablate", "unsteered"):
            raise InputError(f"fade preset {self.name!r}: baseline must be ablate or unsteered")
        if not self.steering_factors:
            raise InputError(f"fade preset {self.name!r}: steering_factors is empty")

    @property
    def factors(self) -> tuple[float, ...]:
        """The steering factors with the baseline 0 included, in the given order."""
        factors = tuple(float(f) for f in self.steering_factors)
        return factors if 0.0 in factors else (0.0, *factors)


PRESETS: dict[str, FadePreset] = {
    "paper": FadePreset(),
    "small": FadePreset(
        name="small",
        generation_calls=2,
        generation_max_tokens=512,
        n_rated=45,
        sparse_retries=0,
        n_prompts=4,
        n_generated_tokens=12,
        steering_factors=(-10.0, 0.0, 10.0),
        max_text_tokens=64,
        max_prompt_tokens=32,
        max_text_chars=400,
        top_selection="distinct",
    ),
}


def fade_preset(preset: str | FadePreset = "paper", **overrides: Any) -> FadePreset:
    """A preset by name (or as given) with fields overridden; InputError for unknown names."""
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise InputError(f"fade preset {preset!r} is not one of {sorted(PRESETS)}")
        preset = PRESETS[preset]
    known = {f.name for f in fields(FadePreset)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise InputError(f"unknown fade preset key(s) {unknown}")
    if "steering_factors" in overrides:
        overrides["steering_factors"] = tuple(float(f) for f in overrides["steering_factors"])
    if "percentiles" in overrides:
        overrides["percentiles"] = tuple(float(p) for p in overrides["percentiles"])
    return replace(preset, **overrides) if overrides else preset


def preset_from_config(evaluate_config: Mapping[str, Any]) -> FadePreset:
    """The FADE preset of a workflow ``evaluate`` config block: ``preset`` (a preset name) with
    ``top_selection`` overriding the preset's own when it is set (not null)."""
    name = evaluate_config.get("preset", "paper")
    top_selection = evaluate_config.get("top_selection")
    if top_selection is not None and top_selection not in TOP_SELECTIONS:
        raise InputError(
            f"config key evaluate.top_selection: {top_selection!r} is not one of "
            f"{list(TOP_SELECTIONS)}"
        )
    overrides = {} if top_selection is None else {"top_selection": str(top_selection)}
    return fade_preset(str(name), **overrides)


# --- LLM bookkeeping -------------------------------------------------------------------------


@dataclass
class LLMUsage:
    """What the LLM calls of one evaluation cost."""

    calls: int = 0
    failed_calls: int = 0
    """Calls whose answer could not be used (``parse_status`` other than ``ok``)."""
    cached_calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    latency_s: float = 0.0

    def add(self, results: Sequence[ChatResult]) -> None:
        for result in results:
            self.calls += 1
            self.failed_calls += int(result.parse_status != "ok")
            self.cached_calls += int(bool(result.cached))
            self.tokens_in += int(result.tokens_in or 0)
            self.tokens_out += int(result.tokens_out or 0)
            self.latency_s += float(result.latency_s or 0.0)


def _chat(
    backend: LLMBackend, requests: Sequence[ChatRequest], usage: LLMUsage
) -> list[ChatResult]:
    if not requests:
        return []
    results = list(backend.chat_many(list(requests)))
    if len(results) != len(requests):
        raise RuntimeError(
            f"LLM backend {getattr(backend, 'model_name', '?')!r} answered {len(results)} of "
            f"{len(requests)} requests"
        )
    usage.add(results)
    return results


@functools.cache
def load_prompt(name: str) -> string.Template:
    """The packaged prompt template ``prompts/{name}.txt`` (``$``-placeholders)."""
    path = resources.files("circuit_insights").joinpath("prompts", f"{name}.txt")
    return string.Template(path.read_text(encoding="utf-8"))


def _answer(result: ChatResult) -> Any:
    """The parsed answer, or the text parsed as JSON when the backend could not; else None."""
    if result.parsed is not None:
        return result.parsed
    text = (result.text or "").strip()
    if not text:
        return None
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, flags=re.DOTALL)
    if fenced:
        text = fenced.group(1).strip()
    try:
        return json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return None


# --- synthetic texts -------------------------------------------------------------------------

# The list is bounded so that a small LLM that repeats itself still closes its JSON before
# max_tokens (vLLM's structured outputs honour maxItems).
GENERATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "texts": {
            "type": "array",
            "items": {"type": "string"},
            "minItems": 1,
            "maxItems": 10,
        }
    },
    "required": ["texts"],
    "additionalProperties": False,
}


def parse_texts(answer: Any) -> list[str]:
    """The non-empty strings of a generation answer (``{"texts": [...]}`` or a bare list)."""
    if isinstance(answer, Mapping):
        answer = answer.get("texts")
    if not isinstance(answer, list):
        return []
    return [text.strip() for text in answer if isinstance(text, str) and text.strip()]


def generate_synthetic_texts(
    backend: LLMBackend,
    description: str,
    *,
    n_calls: int = 15,
    temperature: float = 1.0,
    max_tokens: int = 1024,
    seed: int = 0,
    usage: LLMUsage | None = None,
) -> list[str]:
    """Ask the LLM ``n_calls`` times for a list of varied texts expressing ``description``.

    Each call has its own seed and index (so a caching backend does not answer them all
    alike). Returns the distinct texts in order of appearance; failed or unparseable calls add
    nothing.
    """
    usage = usage if usage is not None else LLMUsage()
    system = load_prompt("fade_generation_system_v1").substitute()
    user = load_prompt("fade_generation_user_v1")
    requests = [
        ChatRequest(
            messages=(
                ("system", system),
                (
                    "user",
                    user.substitute(description=description, call_index=i + 1, n_calls=n_calls),
                ),
            ),
            json_schema=GENERATION_SCHEMA,
            temperature=temperature,
            max_tokens=max_tokens,
            seed=(seed * 1000 + i) % (2**31 - 1),
        )
        for i in range(n_calls)
    ]
    texts: dict[str, None] = {}
    for result in _chat(backend, requests, usage):
        for text in parse_texts(_answer(result)):
            texts.setdefault(text, None)
    return list(texts)


# --- ratings ---------------------------------------------------------------------------------

RATING_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "ratings": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer"},
                    "rating": {"type": "integer", "enum": [0, 1, 2]},
                },
                "required": ["id", "rating"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["ratings"],
    "additionalProperties": False,
}


def rating_schema(n_texts: int) -> dict[str, Any]:
    """:data:`RATING_SCHEMA` for exactly ``n_texts`` texts numbered 1..n (ids and count bounded,
    so the answer cannot run on past the batch)."""
    schema = json.loads(json.dumps(RATING_SCHEMA))
    ratings = schema["properties"]["ratings"]
    ratings["minItems"] = ratings["maxItems"] = n_texts
    ratings["items"]["properties"]["id"].update(minimum=1, maximum=n_texts)
    return schema


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def parse_ratings(answer: Any, n_texts: int) -> dict[int, int]:
    """Valid ratings of a rating answer: 1-based text id -> rating in {0, 1, 2}.

    Accepts ``{"ratings": [{"id", "rating"}, ...]}``, a bare list of such items, or a mapping
    ``{"id": rating}``. Ids outside ``1..n_texts`` and ratings outside {0, 1, 2} are dropped; the
    first valid rating of an id wins.
    """
    if isinstance(answer, Mapping) and "ratings" in answer:
        answer = answer["ratings"]
    pairs: list[tuple[Any, Any]] = []
    if isinstance(answer, list):
        pairs = [
            (item.get("id"), item.get("rating")) for item in answer if isinstance(item, Mapping)
        ]
    elif isinstance(answer, Mapping):
        pairs = list(answer.items())
    ratings: dict[int, int] = {}
    for raw_id, raw_rating in pairs:
        text_id, rating = _as_int(raw_id), _as_int(raw_rating)
        if text_id is None or rating is None or not 1 <= text_id <= n_texts:
            continue
        if rating in (0, 1, 2):
            ratings.setdefault(text_id, rating)
    return ratings


def _shown(text: str, max_chars: int | None) -> str:
    if max_chars is not None and len(text) > max_chars:
        text = text[:max_chars] + "..."
    return json.dumps(text, ensure_ascii=False)


def _rating_request(
    description: str,
    texts: Sequence[str],
    *,
    seed: int,
    max_tokens: int | None,
    max_chars: int | None,
) -> ChatRequest:
    """One rating request: ``texts`` numbered from 1."""
    listing = "\n".join(
        f"{number}. {_shown(text, max_chars)}" for number, text in enumerate(texts, start=1)
    )
    return ChatRequest(
        messages=(
            ("system", load_prompt("fade_rating_system_v1").substitute()),
            (
                "user",
                load_prompt("fade_rating_user_v1").substitute(
                    description=description, texts=listing
                ),
            ),
        ),
        json_schema=rating_schema(len(texts)),
        temperature=0.0,
        # ~18 tokens per pretty-printed {"id", "rating"} entry (the server may indent its JSON)
        max_tokens=max_tokens if max_tokens is not None else 64 + 24 * len(texts),
        seed=seed,
    )


def rate_texts(
    backend: LLMBackend,
    description: str,
    texts: Sequence[str],
    *,
    batch_size: int = 15,
    failed_retries: int = 1,
    seed: int = 0,
    max_tokens: int | None = None,
    max_chars: int | None = None,
    usage: LLMUsage | None = None,
) -> np.ndarray:
    """Ratings 0 / 1 / 2 of ``texts`` for ``description``, in batches; NaN where missing.

    Texts are numbered 1..k within each batch. Texts the LLM did not rate validly (missing ids,
    invalid ratings, failed or unparseable answers) are sent again, in new batches, up to
    ``failed_retries`` times (with the next seed); what is still missing stays NaN. (n,) float64.
    """
    return rate_text_groups(
        backend,
        description,
        [texts],
        batch_size=batch_size,
        failed_retries=failed_retries,
        seed=seed,
        max_tokens=max_tokens,
        max_chars=max_chars,
        usage=usage,
    )[0]


def rate_text_groups(
    backend: LLMBackend,
    description: str,
    groups: Sequence[Sequence[str]],
    *,
    batch_size: int = 15,
    failed_retries: int = 1,
    seed: int = 0,
    max_tokens: int | None = None,
    max_chars: int | None = None,
    usage: LLMUsage | None = None,
) -> list[np.ndarray]:
    """:func:`rate_texts` for several groups of texts at once (one ``chat_many`` per attempt).

    A batch never mixes groups (FADE rates the continuations of each steering factor apart).
    """
    usage = usage if usage is not None else LLMUsage()
    ratings = [np.full(len(texts), np.nan) for texts in groups]
    pending = [np.arange(len(texts)) for texts in groups]
    for attempt in range(max(int(failed_retries), 0) + 1):
        batches = [
            (group, indices[i : i + batch_size])
            for group, indices in enumerate(pending)
            for i in range(0, len(indices), batch_size)
        ]
        if not batches:
            break
        requests = [
            _rating_request(
                description,
                [groups[group][index] for index in batch],
                seed=seed + attempt,
                max_tokens=max_tokens,
                max_chars=max_chars,
            )
            for group, batch in batches
        ]
        for (group, batch), result in zip(batches, _chat(backend, requests, usage), strict=True):
            for text_id, rating in parse_ratings(_answer(result), len(batch)).items():
                ratings[group][batch[text_id - 1]] = rating
        pending = [np.flatnonzero(np.isnan(values)) for values in ratings]
    return ratings


# --- subject-model side ----------------------------------------------------------------------


def _tokenizer(model: SubjectModel) -> Any:
    if model.tokenizer is None:
        raise InputError(f"model {model.name!r} has no tokenizer: FADE needs one for its texts")
    return model.tokenizer


def decode_tokens(model: SubjectModel, token_ids: Sequence[int]) -> str:
    """Text of token ids without special tokens (``<id>`` pieces when there is no tokenizer)."""
    ids = [int(t) for t in token_ids]
    bos = model.bos_token_id
    if bos is not None and ids and ids[0] == bos:
        ids = ids[1:]
    if model.tokenizer is None:
        return "".join(f"<{t}>" for t in ids)
    return str(model.tokenizer.decode(ids, skip_special_tokens=True))  # type: ignore[attr-defined]


def encode_text(model: SubjectModel, text: str, max_tokens: int) -> list[int]:
    """Token ids of ``text`` for the subject model: BOS (where used) + at most ``max_tokens``."""
    ids = _tokenizer(model).encode(text, add_special_tokens=False)
    return model.with_bos([int(t) for t in ids[:max_tokens]])


def text_activations(
    model: SubjectModel,
    transcoder: Transcoder,
    feature: int,
    token_lists: Sequence[Sequence[int]],
    *,
    batch_size: int = 16,
) -> np.ndarray:
    """Sample activations of ``feature`` on token sequences (each starting with BOS if used).

    Sequences are right-padded and batched; the activation of a sequence is the signed value at
    the position of largest |activation| over its own tokens, BOS excluded (as in the cache). A
    sequence with no token besides BOS gets NaN. (n,) float64.
    """
    layer = model.check_layer(transcoder.layer, "transcoder layer")
    if not 0 <= feature < transcoder.d_transcoder:
        raise InputError(f"feature {feature} is outside [0, {transcoder.d_transcoder})")
    skip = 1 if model.bos_token_id is not None else 0
    out = np.full(len(token_lists), np.nan)
    for start in range(0, len(token_lists), batch_size):
        chunk = [list(ids) for ids in token_lists[start : start + batch_size]]
        width = max((len(ids) for ids in chunk), default=0)
        if width <= skip:
            continue
        input_ids = torch.zeros((len(chunk), width), dtype=torch.long)  # (batch, pos)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, ids in enumerate(chunk):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[row, : len(ids)] = 1
        x = model.hook_values(input_ids, {layer: [transcoder.input_hook]}, attention_mask=mask)[
            (layer, transcoder.input_hook)
        ]  # (batch, pos, d_model)
        with torch.no_grad():
            acts = transcoder.encode_slice(x, feature, feature + 1)[..., 0]  # (batch, pos)
        valid = mask.bool().clone()
        valid[:, :skip] = False
        values = metrics.sample_activations(acts.float().cpu().numpy(), valid.numpy())
        has_tokens = valid.any(dim=1).numpy()
        out[start : start + len(chunk)] = np.where(has_tokens, values, np.nan)
    return out


def natural_sample_activations(
    activations: pd.DataFrame, feature: int, context_ids: np.ndarray | Sequence[int]
) -> np.ndarray:
    """Sample activations of ``feature`` on the given contexts, from a sparse activation table.

    ``activations``: rows with columns ``feature``, ``context``, ``position``, ``activation``
    (optional ``excluded``: excluded rows, e.g. BOS, do not count). A context without rows has
    activation 0; a context with a NaN activation (at a position that counts) has activation
    NaN, never 0, so the metrics that use it are NaN with reason ``non_finite_activations``.
    (len(context_ids),) float64 in the order of ``context_ids``.
    """
    contexts = np.asarray(context_ids, dtype=np.int64)
    out = np.zeros(len(contexts))
    if len(activations) == 0 or len(contexts) == 0:
        return out
    rows = activations[activations["feature"].to_numpy() == feature]
    if "excluded" in rows.columns:
        rows = rows[~rows["excluded"].to_numpy(bool)]
    if len(rows) == 0:
        return out
    values = rows["activation"].to_numpy(np.float64)
    row_context = rows["context"].to_numpy(np.int64)
    # by context, then NaN first, then largest |value| first: a NaN row wins its context
    order = np.lexsort((-np.abs(values), ~np.isnan(values), row_context))
    first = order[np.r_[True, row_context[order][1:] != row_context[order][:-1]]]
    best = pd.Series(values[first], index=row_context[first])
    return best.reindex(contexts, fill_value=0.0).to_numpy(np.float64)


@torch.no_grad()
def greedy_continuations(
    model: SubjectModel,
    prompts: Tensor,
    n_tokens: int,
    *,
    batch_size: int = 16,
    kv_cache: bool = True,
) -> Tensor:
    """Greedy continuations of equal-length ``prompts`` (P, L): (P, n_tokens) token ids.

    Exactly ``n_tokens`` tokens, no stopping at EOS. ``kv_cache`` (the default): the prompt
    once, then one position per step with the model's KV cache
    (:meth:`SubjectModel.next_token_logits`); else the whole growing sequence at every step.
    Both run under whatever :meth:`SubjectModel.splice` is active (steering applies at every
    position either way) and give the same logits up to rounding.
    """
    out = []
    for start in range(0, len(prompts), batch_size):
        ids = prompts[start : start + batch_size].to(model.device, torch.long)  # (b, L)
        new: list[Tensor] = []
        cache: object | None = None
        step_ids = ids
        for _ in range(n_tokens):
            if kv_cache:
                logits, cache = model.next_token_logits(step_ids, cache)  # (b, vocab)
            else:
                logits = model.logits(ids, logits_to_keep=1)[:, -1]  # (b, vocab)
            next_token = logits.argmax(dim=-1, keepdim=True)  # (b, 1)
            new.append(next_token)
            ids = torch.cat([ids, next_token], dim=1)
            step_ids = next_token
        out.append(torch.cat(new, dim=1).cpu() if new else ids[:, :0].cpu())
    return torch.cat(out) if out else torch.zeros((0, n_tokens), dtype=torch.long)


@contextlib.contextmanager
def steering(
    model: SubjectModel, transcoder: Transcoder, feature: int, value: float | None
) -> Iterator[None]:
    """Set ``feature`` to ``value`` at every position (None: leave the model as it is).

    The transcoder is spliced with its error term kept, so only the feature's decoder
    contribution changes: the residual stream moves by ``(value − a) · W_dec[feature]``.
    """
    if value is None:
        yield
        return
    device = transcoder.W_dec.device
    override = {
        transcoder.layer: (
            torch.tensor([feature], dtype=torch.long, device=device),
            torch.tensor([float(value)], dtype=transcoder.W_dec.dtype, device=device),
        )
    }
    with model.splice({transcoder.layer: transcoder}, keep_error=True, feature_override=override):
        yield


def steered_continuations(
    model: SubjectModel,
    transcoder: Transcoder,
    feature: int,
    prompts: Tensor,
    factors: Sequence[float],
    reference_activation: float,
    *,
    n_tokens: int = 30,
    baseline: Baseline = "ablate",
    batch_size: int = 16,
) -> dict[float, Tensor]:
    """Greedy continuations (P, n_tokens) of ``prompts`` (P, L) under each steering factor.

    Factor ``f`` sets the feature to ``f × reference_activation`` at every position; with
    ``baseline="unsteered"`` factor 0 runs the unmodified model instead of ablating the feature.
    """
    model.check_layer(transcoder.layer, "transcoder layer")
    continuations = {}
    for factor in factors:
        value: float | None = float(factor) * float(reference_activation)
        if float(factor) == 0.0 and baseline == "unsteered":
            value = None
        with steering(model, transcoder, feature, value):
            continuations[float(factor)] = greedy_continuations(
                model, prompts, n_tokens, batch_size=batch_size
            )
    return continuations


# --- one feature -----------------------------------------------------------------------------


def _context_tokens(heldout_tokens: ContextTokens | tuple[np.ndarray, np.ndarray]) -> ContextTokens:
    if isinstance(heldout_tokens, ContextTokens):
        return heldout_tokens
    context_ids, tokens = heldout_tokens
    return ContextTokens(np.asarray(context_ids), np.asarray(tokens))


def _empty_row(
    layer: int, feature: int, variant: str, description: str | None, preset: FadePreset
) -> dict[str, Any]:
    row: dict[str, Any] = {name: None for name in FADE_EVALUATION_SCHEMA.names}
    row.update(
        layer=int(layer),
        feature=int(feature),
        variant=variant,
        description=description,
        preset=preset.name,
        prompt_version=PROMPT_VERSION,
        rater="llm",
        steering_factors=[],
        concept_share_by_factor=[],
        n_continuations_rated=[],
    )
    for name in ("clarity", "responsiveness", "purity", "faithfulness"):
        row[name] = math.nan
    for count in (
        "n_synthetic_texts",
        "n_synthetic_scored",
        "n_natural",
        "n_natural_active",
        "n_rated",
        "n_rated_0",
        "n_rated_1",
        "n_rated_2",
        "n_rating_missing",
    ):
        row[count] = 0
    return row


def _set_metric(row: dict[str, Any], name: str, value: metrics.MetricValue) -> None:
    row[name], row[f"{name}_reason"] = float(value[0]), value[1]


def record_ratings(
    row: dict[str, Any], rated_activations: np.ndarray, ratings: np.ndarray, preset: FadePreset
) -> None:
    """Write the rating counts, Responsiveness and Purity of rated samples into a result row
    (``rated_activations`` and ``ratings`` aligned, one per rated sample); shared by the LLM
    rater and the rule rater."""
    counts = metrics.count_ratings(ratings)
    row.update(
        n_rated=len(ratings),
        n_rated_0=counts.rated_0,
        n_rated_1=counts.rated_1,
        n_rated_2=counts.rated_2,
        n_rating_missing=counts.missing,
    )
    responsiveness, purity = metrics.responsiveness_and_purity(
        rated_activations, ratings, flip_negative=preset.flip_purity
    )
    _set_metric(row, "responsiveness", responsiveness)
    _set_metric(row, "purity", purity)


def rating_rounds(
    natural: np.ndarray,
    preset: FadePreset,
    seed: int,
    rate: Callable[[np.ndarray], np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """FADE's choice of natural samples to rate, with any rater: (indices, ratings).

    ``rate`` maps indices into ``natural`` to ratings (0 / 1 / 2, NaN missing). Rounds of
    :func:`select_rating_samples` as in FADE (a sparse round when fewer than
    ``preset.sparse_threshold`` are rated 2). The LLM rater (:func:`_rate_natural`) and the rule
    rater (:mod:`circuit_insights.evaluation.rule_rater`) both choose their samples here.
    """
    rated_index = np.zeros(0, dtype=np.int64)
    ratings = np.zeros(0)
    for round_ in range(preset.sparse_retries + 1):
        if round_ > 0 and (np.sum(ratings == 2) >= preset.sparse_threshold):
            break
        selection: RatingSelection = select_rating_samples(
            natural,
            preset.n_rated,
            top_fraction=preset.top_fraction,
            percentiles=preset.percentiles,
            seed=seed + round_,
            exclude=rated_index,
            top_selection=preset.top_selection,
        )
        if len(selection.index) == 0:
            break
        new = np.asarray(rate(selection.index), dtype=np.float64)
        rated_index = np.concatenate([rated_index, selection.index])
        ratings = np.concatenate([ratings, new])
    return rated_index, ratings


def _rate_natural(
    backend: LLMBackend,
    description: str,
    model: SubjectModel,
    context_tokens: ContextTokens,
    natural: np.ndarray,
    preset: FadePreset,
    seed: int,
    usage: LLMUsage,
) -> tuple[np.ndarray, np.ndarray]:
    """FADE's rating of natural samples: (indices into the natural samples, their ratings)."""

    def rate(index: np.ndarray) -> np.ndarray:
        texts = [decode_tokens(model, context_tokens.tokens[i]) for i in index]
        return rate_texts(
            backend,
            description,
            texts,
            batch_size=preset.rating_batch_size,
            failed_retries=preset.failed_retries,
            seed=seed,
            max_tokens=preset.rating_max_tokens,
            max_chars=preset.max_text_chars,
            usage=usage,
        )

    return rating_rounds(natural, preset, seed, rate)


def evaluate_feature(
    model: SubjectModel,
    transcoder: Transcoder,
    feature: int,
    description: str | None,
    heldout_activations: pd.DataFrame,
    heldout_tokens: ContextTokens | tuple[np.ndarray, np.ndarray],
    max_activation: float | None,
    backend: LLMBackend,
    preset: FadePreset | str = "paper",
    seed: int = 0,
    *,
    variant: str = "",
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """FADE's four metrics for one (feature, description): one FADE_EVALUATION_SCHEMA row.

    Args:
        heldout_activations: sparse activation rows of held-out contexts (``feature``,
            ``context``, ``position``, ``activation``, optional ``excluded``); other features'
            rows are ignored.
        heldout_tokens: the held-out contexts (``ContextTokens`` or ``(context_ids, tokens)``
            as :func:`circuit_insights.data.corpus.load_contexts` returns); every one is a natural
            sample, activation 0 where it has no row.
        max_activation: reference activation for steering; None (the workflow's choice): FADE's,
            the largest |sample activation| over the held-out contexts
            (:func:`circuit_insights.evaluation.metrics.steering_reference`).
        seed: seeds the sample choice and the LLM requests; keep it the same across the
            variants of one feature so that they are rated on the same samples.
        details: if given, filled with the texts, activations and ratings behind the metrics.

    A missing or blank description gives every metric NaN with reason ``no_description`` and
    makes no LLM call. A metric that cannot be computed is NaN with a reason
    (:data:`circuit_insights.evaluation.metrics.REASONS`); nothing here raises for degenerate data.
    """
    preset = fade_preset(preset)
    started = time.perf_counter()
    row = _empty_row(transcoder.layer, feature, variant, description, preset)
    row["seed"] = int(seed)
    row["llm_model"] = str(getattr(backend, "model_name", ""))
    usage = LLMUsage()
    details = details if details is not None else {}
    corpus = _context_tokens(heldout_tokens)
    natural = natural_sample_activations(heldout_activations, feature, corpus.context_ids)
    row["n_natural"] = len(natural)
    row["n_natural_active"] = int(np.count_nonzero(natural))
    details["natural_activations"] = natural

    if description is None or not str(description).strip():
        for name in ("clarity", "responsiveness", "purity", "faithfulness"):
            _set_metric(row, name, (math.nan, "no_description"))
        return _finish(row, usage, started)
    description = str(description).strip()

    # Clarity.
    texts = generate_synthetic_texts(
        backend,
        description,
        n_calls=preset.generation_calls,
        temperature=preset.generation_temperature,
        max_tokens=preset.generation_max_tokens,
        seed=seed,
        usage=usage,
    )
    token_lists = [encode_text(model, text, preset.max_text_tokens) for text in texts]
    synthetic = text_activations(
        model, transcoder, feature, token_lists, batch_size=preset.batch_size
    )
    details["synthetic_texts"], details["synthetic_activations"] = texts, synthetic
    scored = synthetic[np.isfinite(synthetic)]
    row["n_synthetic_texts"], row["n_synthetic_scored"] = len(texts), len(scored)
    _set_metric(row, "clarity", metrics.clarity(scored, natural))

    # Responsiveness and Purity.
    if len(natural) == 0:
        reason = "no_natural_samples"
    elif not np.isfinite(natural).all():
        reason = "non_finite_activations"
    elif natural.min() == natural.max():
        reason = "no_heldout_activations" if natural.max() == 0 else "no_variance"
    else:
        reason = None
    if reason is not None:
        _set_metric(row, "responsiveness", (math.nan, reason))
        _set_metric(row, "purity", (math.nan, reason))
    else:
        rated_index, ratings = _rate_natural(
            backend, description, model, corpus, natural, preset, seed, usage
        )
        details["rated_contexts"] = corpus.context_ids[rated_index]
        details["ratings"] = ratings
        record_ratings(row, natural[rated_index], ratings, preset)

    # Faithfulness.
    gate = metrics.faithfulness_gate(row["clarity"], row["responsiveness"], preset.gate)
    reference = (
        float(max_activation) if max_activation is not None else metrics.steering_reference(natural)
    )
    row["steering_reference"] = reference if math.isfinite(reference) else None
    if gate is not None:
        _set_metric(row, "faithfulness", (math.nan, gate))
    elif not np.isfinite(natural).all():
        _set_metric(row, "faithfulness", (math.nan, "non_finite_activations"))
    elif not math.isfinite(reference) or reference == 0.0 or preset.n_prompts == 0:
        _set_metric(row, "faithfulness", (math.nan, "no_max_activation"))
    else:
        _set_metric(
            row,
            "faithfulness",
            _faithfulness(
                model,
                transcoder,
                feature,
                description,
                corpus,
                reference,
                backend,
                preset,
                seed,
                usage,
                row,
                details,
            ),
        )
    return _finish(row, usage, started)


def _faithfulness(
    model: SubjectModel,
    transcoder: Transcoder,
    feature: int,
    description: str,
    corpus: ContextTokens,
    reference: float,
    backend: LLMBackend,
    preset: FadePreset,
    seed: int,
    usage: LLMUsage,
    row: dict[str, Any],
    details: dict[str, Any],
) -> metrics.MetricValue:
    rng = np.random.default_rng([seed, 1])
    n_prompts = min(preset.n_prompts, len(corpus.context_ids))
    chosen = np.sort(rng.choice(len(corpus.context_ids), size=n_prompts, replace=False))
    prompts = torch.as_tensor(corpus.tokens[chosen], dtype=torch.long)  # (P, L)
    if preset.max_prompt_tokens is not None:
        prompts = prompts[:, : preset.max_prompt_tokens]
    continuations = steered_continuations(
        model,
        transcoder,
        feature,
        prompts,
        preset.factors,
        reference,
        n_tokens=preset.n_generated_tokens,
        baseline=preset.baseline,
        batch_size=preset.batch_size,
    )
    texts_by_factor = {
        factor: [decode_tokens(model, ids.tolist()) for ids in tokens]
        for factor, tokens in continuations.items()
    }
    rated = rate_text_groups(
        backend,
        description,
        list(texts_by_factor.values()),
        batch_size=preset.rating_batch_size,
        failed_retries=preset.faithfulness_failed_retries,
        seed=seed,
        max_tokens=preset.rating_max_tokens,
        max_chars=preset.max_text_chars,
        usage=usage,
    )
    ratings_by_factor = dict(zip(texts_by_factor, rated, strict=True))
    shares = metrics.concept_shares(ratings_by_factor)
    row["steering_factors"] = [float(f) for f in shares]
    row["concept_share_by_factor"] = [
        None if math.isnan(share) else float(share) for share, _ in shares.values()
    ]
    row["n_continuations_rated"] = [int(n) for _, n in shares.values()]
    details["steering_prompts"] = corpus.context_ids[chosen]
    details["continuations"] = texts_by_factor
    details["continuation_ratings"] = ratings_by_factor
    return metrics.faithfulness(ratings_by_factor)


def _finish(row: dict[str, Any], usage: LLMUsage, started: float) -> dict[str, Any]:
    row.update(
        llm_calls=usage.calls,
        llm_failed_calls=usage.failed_calls,
        llm_cached_calls=usage.cached_calls,
        llm_tokens_in=usage.tokens_in,
        llm_tokens_out=usage.tokens_out,
        llm_latency_s=usage.latency_s,
        elapsed_s=time.perf_counter() - started,
    )
    return row


# --- many features, files --------------------------------------------------------------------


def feature_seed(seed: int, feature: int) -> int:
    """The seed of one feature: the same for every variant, different across features."""
    return int(np.random.default_rng([int(seed), int(feature)]).integers(0, 2**31 - 1))


def evaluate_descriptions(
    model: SubjectModel,
    transcoder: Transcoder,
    descriptions: pd.DataFrame,
    heldout_activations: pd.DataFrame,
    heldout_tokens: ContextTokens | tuple[np.ndarray, np.ndarray],
    backend: LLMBackend,
    preset: FadePreset | str = "paper",
    seed: int = 0,
) -> pd.DataFrame:
    """:func:`evaluate_feature` for every row of ``descriptions`` (``feature``, ``variant``,
    ``description``; description may be null); FADE_EVALUATION_SCHEMA columns.

    The steering reference of each feature is FADE's: the largest |sample activation| over the
    held-out contexts it is evaluated on (not a maximum over another split).
    """
    for column in ("feature", "variant", "description"):
        if column not in descriptions.columns:
            raise InputError(f"descriptions table lacks column {column!r}")
    preset = fade_preset(preset)
    corpus = _context_tokens(heldout_tokens)
    features = descriptions["feature"].astype(int).unique()
    own = heldout_activations[heldout_activations["feature"].isin(features)]
    rows = []
    by_feature = {int(f): g for f, g in own.groupby("feature")}
    for record in descriptions.itertuples(index=False):
        feature = int(record.feature)
        description = record.description
        if description is not None and not isinstance(description, str):
            description = None if pd.isna(description) else str(description)
        rows.append(
            evaluate_feature(
                model,
                transcoder,
                feature,
                description,
                by_feature.get(feature, own.iloc[:0]),
                corpus,
                None,
                backend,
                preset,
                feature_seed(seed, feature),
                variant=str(record.variant),
            )
        )
    return fade_frame(rows)


def fade_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Rows of :func:`evaluate_feature` as a frame with FADE_EVALUATION_SCHEMA columns."""
    table = FADE_EVALUATION_SCHEMA.empty_table().to_pandas()
    if not rows:
        return table
    return pd.DataFrame([dict(row) for row in rows], columns=FADE_EVALUATION_SCHEMA.names)


def write_fade_evaluation(
    rows: pd.DataFrame | Sequence[Mapping[str, Any]], path: str | os.PathLike[str]
) -> None:
    """Write evaluation rows atomically as parquet with FADE_EVALUATION_SCHEMA."""
    frame = rows if isinstance(rows, pd.DataFrame) else fade_frame(rows)
    write_parquet_atomic(frame, path, schema=FADE_EVALUATION_SCHEMA)


def read_fade_evaluation(paths: Sequence[str | os.PathLike[str]]) -> pd.DataFrame:
    """Concatenate evaluation files (FADE_EVALUATION_SCHEMA columns)."""
    import pyarrow.parquet as pq

    frames = [pq.read_table(path, schema=FADE_EVALUATION_SCHEMA).to_pandas() for path in paths]
    return pd.concat(frames, ignore_index=True) if frames else fade_frame([])
