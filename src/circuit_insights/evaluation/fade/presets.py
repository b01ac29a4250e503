"""FADE presets: every knob of a FADE run in one frozen dataclass, the named presets, and the
preset of a workflow ``evaluate`` config block."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

from circuit_insights.core.errors import InputError
from circuit_insights.evaluation.metrics import FADE_PERCENTILES, TOP_SELECTIONS

__all__ = ["PRESETS", "Baseline", "FadePreset", "fade_preset", "preset_from_config"]

Baseline = Literal["ablate", "unsteered"]


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
