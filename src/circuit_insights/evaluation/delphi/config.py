"""The settings of the delphi scores (config block ``scores``; docs/delphi_scores.md).

Defaults follow EleutherAI/delphi (``delphi/config.py``, ``delphi/__main__.py``,
``delphi/scorers/classifier/fuzz.py``); the fields that choose otherwise say so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from circuit_insights.core.config import from_block
from circuit_insights.core.errors import InputError

__all__ = [
    "SCORES",
    "SELECTION_KEYS",
    "DelphiScoresConfig",
    "FuzzType",
    "ScoreName",
    "SimulationMode",
    "context_bos",
    "scores_settings",
]

ScoreName = Literal["detection", "fuzzing", "simulation"]
FuzzType = Literal["default", "active"]
SimulationMode = Literal["expected_value", "all_at_once"]

#: The scores, in the order they are computed and written.
SCORES: tuple[ScoreName, ...] = ("detection", "fuzzing", "simulation")


@dataclass(frozen=True)
class DelphiScoresConfig:
    """Detection, fuzzing and simulation settings (config block ``scores``)."""

    scorers: tuple[ScoreName, ...] = SCORES
    """Which scores to compute (delphi's ``scorers``; delphi's default leaves simulation out)."""
    example_length: int = 32
    """Tokens per example: held-out contexts are cut into non-overlapping windows of this length
    (delphi's ``example_ctx_len``); a context shorter than this is one window. Dense features
    fire in every 32-token window: a shorter window gives them non-activating examples."""
    n_quantiles: int = 10
    """Quantiles of the activating windows, by their maximum activation (``n_quantiles``)."""
    n_per_quantile: int = 5
    """Activating examples drawn per quantile (delphi: ``n_examples_test // n_quantiles`` =
    50 // 10)."""
    n_non_activating: int = 50
    """Non-activating examples per feature (``n_non_activating``)."""
    non_activating_with_replacement: bool = False
    """delphi draws non-activating windows with replacement and none at all when fewer exist
    than asked (``random_non_activating_windows``); False (ours): ``min(n, available)`` distinct
    windows."""
    batch_size: int = 5
    """Examples per detection / fuzzing prompt (``num_examples_per_scorer_prompt``)."""
    fuzz_threshold: float = 0.3
    """A token of an activating example is marked when its activation is at least this share of
    the example's maximum (``FuzzingScorer.threshold``)."""
    fuzz_type: FuzzType = "default"
    """``default``: wrongly marked examples are non-activating windows with random tokens
    marked; ``active``: activating windows with tokens below the threshold marked (``fuzz_type``)."""
    structured_output: bool = False
    """Ask the server for answers matching a JSON schema (guided decoding). delphi does not
    (False): free text parsed as delphi parses it; True keeps small LLMs well-formed."""
    max_tokens: int = 64
    """Answer budget of a detection / fuzzing request (the answer is a list of 0 / 1)."""
    simulation_mode: SimulationMode = "expected_value"
    """How the LLM simulates: ``expected_value`` reads the server's prompt log-probabilities
    of 0-10 at each token (delphi's ``_simulate_with_logprobs``, its default; needs vLLM's
    ``prompt_logprobs``); ``all_at_once`` asks for every activation as JSON
    (``_simulate_with_json``), for servers without prompt log-probabilities."""
    simulation_sequences_per_prompt: int = 1
    """Sequences listed in one ``expected_value`` prompt. delphi sends one per prompt (1);
    OpenAI's format takes several (``format_sequences_for_simulation``), which spares the
    system and few-shot turns, recomputed by the server for every prompt that asks for prompt
    log-probabilities. Their tokens must fit in the server's context."""
    simulation_logprobs: int = 15
    """Top log-probabilities read per token in ``expected_value`` mode (delphi's
    ``PROMPT_LOGPROBS_COUNT``)."""
    simulation_max_tokens: int = 1000
    """Answer budget of an ``all_at_once`` simulation request (delphi's ``JSON_MAX_TOKENS``)."""

    def __post_init__(self) -> None:
        scorers = tuple(self.scorers)
        unknown = [name for name in scorers if name not in SCORES]
        if unknown or len(set(scorers)) != len(scorers):
            raise InputError(f"scores.scorers {list(scorers)}: choose distinct ones of {SCORES}")
        object.__setattr__(self, "scorers", tuple(n for n in SCORES if n in scorers))
        for key in ("example_length", "n_quantiles", "batch_size", "max_tokens"):
            if int(getattr(self, key)) < 1:
                raise InputError(f"scores.{key} must be >= 1, got {getattr(self, key)}")
        if int(self.simulation_max_tokens) < 1:
            raise InputError("scores.simulation_max_tokens must be >= 1")
        if int(self.simulation_sequences_per_prompt) < 1:
            raise InputError("scores.simulation_sequences_per_prompt must be >= 1")
        if int(self.simulation_logprobs) < 1:
            raise InputError("scores.simulation_logprobs must be >= 1")
        if self.simulation_mode not in ("expected_value", "all_at_once"):
            raise InputError(
                "scores.simulation_mode must be 'expected_value' or 'all_at_once', "
                f"got {self.simulation_mode!r}"
            )
        for key in ("n_per_quantile", "n_non_activating"):
            if int(getattr(self, key)) < 0:
                raise InputError(f"scores.{key} must be >= 0, got {getattr(self, key)}")
        if not 0.0 <= float(self.fuzz_threshold) <= 1.0:
            raise InputError(f"scores.fuzz_threshold must be in [0, 1], got {self.fuzz_threshold}")
        if self.fuzz_type not in ("default", "active"):
            raise InputError(
                f"scores.fuzz_type must be 'default' or 'active', got {self.fuzz_type!r}"
            )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> DelphiScoresConfig:
        """From the workflow config's ``scores`` block (:func:`~circuit_insights.core.config.from_block`)."""
        values = dict(values or {})
        if "scorers" in values:
            scorers = values["scorers"]
            values["scorers"] = (scorers,) if isinstance(scorers, str) else tuple(scorers)
        return from_block(cls, values, "scores")


#: Keys of the workflow's ``scores`` block that choose what the LLM rates (the rest is
#: :class:`DelphiScoresConfig`).
SELECTION_KEYS: tuple[str, ...] = ("variants", "features_per_shard")


def scores_settings(
    block: Mapping[str, Any] | None,
) -> tuple[dict[str, Any], DelphiScoresConfig]:
    """The ``scores`` block split: (what the LLM rates, :class:`DelphiScoresConfig`)."""
    values = dict(block or {})
    chosen = {key: values.pop(key) for key in SELECTION_KEYS if key in values}
    return chosen, DelphiScoresConfig.from_mapping(values)


def context_bos(tokens: np.ndarray, bos_token_id: int | None) -> int | None:
    """The BOS id when every context (rows of ``tokens``, (n, context_length)) starts with it,
    else None: contexts of a model without BOS hold text at position 0, which is scored."""
    if bos_token_id is None or tokens.size == 0:
        return None
    return int(bos_token_id) if bool(np.all(tokens[:, 0] == int(bos_token_id))) else None
