"""WeightLens settings: z-score thresholds and their presets, and the run's other options."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

from circuit_insights.core.config import from_block
from circuit_insights.core.errors import InputError
from circuit_insights.models.subject import SubjectModel

Preset = Literal["paper", "reference"]
ZScope = Literal["full", "top"]
Projection = Literal["folded", "raw", "normalized"]
PRESETS: tuple[str, ...] = get_args(Preset)
Z_SCOPES: tuple[str, ...] = get_args(ZScope)
PROJECTIONS: tuple[str, ...] = get_args(Projection)

#: ``paper`` preset t_tok per model family (the paper: 4 for GPT-2, 4.5 for Gemma-2-2B / Llama-3.2).
PAPER_T_TOK: dict[str, float] = {"gpt2": 4.0, "gemma2": 4.5, "gemma3": 4.5, "llama": 4.5}
DEFAULT_T_TOK = 4.5


@dataclass(frozen=True)
class Thresholds:
    """z-score thresholds and how the z-scores are computed."""

    t_tok: float
    """Input-token candidates ``z > t_tok``; promoted ``z > t_tok``; suppressed ``z < -t_tok``."""
    t_up: float
    """Upstream features kept when ``z > t_up`` (z within each upstream layer)."""
    z_scope: ZScope = "full"
    """``full``: mean and std over the whole distribution (vocabulary, or an upstream layer's
    features). ``top``: mean and std of the ``top_tokens`` largest token scores (the ``top_tokens``
    smallest for suppressed tokens) or the ``top_upstream`` largest contributions of each upstream
    layer, and only those can pass (the published WeightLens code)."""
    top_tokens: int = 1000
    top_upstream: int = 100
    preset: str = "custom"
    """Name recorded in the output: ``paper``, ``reference``, ``<preset>+overrides`` or ``custom``."""

    def __post_init__(self) -> None:
        for name in ("t_tok", "t_up"):
            value = getattr(self, name)
            if not math.isfinite(float(value)):
                raise InputError(f"weightlens threshold {name} must be finite, got {value!r}")
        if self.z_scope not in Z_SCOPES:
            raise InputError(f"weightlens z_scope {self.z_scope!r} is not one of {Z_SCOPES}")
        for name in ("top_tokens", "top_upstream"):
            if int(getattr(self, name)) < 2:
                raise InputError(f"weightlens {name} must be >= 2, got {getattr(self, name)}")


def thresholds_for(family: str, preset: str = "paper", **overrides: Any) -> Thresholds:
    """The thresholds of ``preset`` for a model family, with explicit ``overrides``.

    ``paper``: t_tok 4 (GPT-2) or 4.5 (Gemma, Llama and others), t_up 3, z over the full
    distribution. ``reference``: t_tok 5.5, t_up 4, z within the top 1000 tokens / top 100
    upstream features of each layer. ``overrides`` are :class:`Thresholds` fields.
    """
    if preset == "paper":
        base = Thresholds(
            t_tok=PAPER_T_TOK.get(family, DEFAULT_T_TOK), t_up=3.0, z_scope="full", preset="paper"
        )
    elif preset == "reference":
        base = Thresholds(
            t_tok=5.5,
            t_up=4.0,
            z_scope="top",
            top_tokens=1000,
            top_upstream=100,
            preset="reference",
        )
    else:
        raise InputError(f"weightlens preset {preset!r} is not one of {PRESETS}")
    unknown = sorted(set(overrides) - {f for f in Thresholds.__dataclass_fields__ if f != "preset"})
    if unknown:
        raise InputError(f"weightlens threshold override(s) {unknown} are not Thresholds fields")
    if not overrides:
        return base
    return replace(base, **overrides, preset=f"{preset}+overrides")


def resolve_thresholds(model: SubjectModel, thresholds: Thresholds | str | None) -> Thresholds:
    """``None`` -> the ``paper`` preset of the model's family; a preset name -> that preset."""
    if thresholds is None:
        return thresholds_for(model.adapter.family, "paper")
    if isinstance(thresholds, str):
        return thresholds_for(model.adapter.family, thresholds)
    return thresholds


@dataclass(frozen=True)
class WeightLensOptions:
    """Everything besides the thresholds; the defaults are the documented method."""

    projection: Projection = "folded"
    """``folded`` (default): encoders read through the pre-MLP norm's gain (and LayerNorm's
    centering), decoders written through Gemma's post-MLP norm gain and read by the logits through
    the final norm's gain. ``raw``: the paper's literal ``W_E·f_enc``, ``f_dec·W_U``,
    ``W_dec·f_enc``. ``normalized``: ``folded``, with each embedding row first normalized by the
    pre-MLP norm (the pre-activation the token would give if alone in the residual stream)."""
    max_candidate_tokens: int = 256
    """Own input-token candidates kept per feature (highest z first); the count before the cap is
    ``n_candidate_tokens_total``."""
    max_output_tokens: int = 50
    """Promoted and suppressed tokens kept per feature (highest |z| first)."""
    max_upstream_features: int = 64
    """Upstream features kept per feature (highest relative contribution first)."""
    max_inherited_tokens: int | None = 64
    """Inherited candidate tokens (those not already own candidates) kept per feature, ranked by
    their estimated contribution through the upstream feature they come from,
    ``|c| * a`` (``c``: the upstream feature's contribution to this feature's read direction;
    ``a``: its single-token activation on the token, from its ``validated_activations``),
    the largest over the upstream features that offer the token. None: no bound (the
    candidates then grow with depth, as validated tokens accumulate layer after layer)."""
    min_token_share: float = 0.5
    """Token-based when >= 1 validated token and the token at the max position of at least this
    share of the feature's top contexts is a validated token."""
    batch_size: int = 512
    """Single-token sequences per validation forward pass."""
    heldout_positive_fraction: float = 0.0
    """LLM-free held-out score: a position is a positive when the feature's activation there is
    above 0 and at least this fraction of the feature's largest held-out activation (0: any
    firing; 0.5: "strong" firing, the weak tail counting as negatives)."""
    feature_chunk: int | None = None
    """Features per matrix product; None: as many as keep a (vocab, chunk) float32 matrix under
    ``chunk_bytes``."""
    chunk_bytes: int = 256 * 2**20
    description_tokens: int = 8
    """Tokens shown per section of the description (the rest as ``+N more``)."""
    description_upstream: int = 3
    device: str | None = None
    """Where the matrix products run; None: the model's device."""

    def __post_init__(self) -> None:
        if self.projection not in PROJECTIONS:
            raise InputError(
                f"weightlens projection {self.projection!r} is not one of {PROJECTIONS}"
            )
        if not 0.0 <= float(self.min_token_share) <= 1.0:
            raise InputError(
                f"weightlens min_token_share must be in [0, 1], got {self.min_token_share}"
            )
        for name in ("max_candidate_tokens", "max_output_tokens", "max_upstream_features"):
            if int(getattr(self, name)) < 0:
                raise InputError(f"weightlens {name} must be >= 0, got {getattr(self, name)}")
        if self.max_inherited_tokens is not None and int(self.max_inherited_tokens) < 0:
            raise InputError(
                f"weightlens max_inherited_tokens must be >= 0 or None, "
                f"got {self.max_inherited_tokens}"
            )
        if int(self.batch_size) < 1 or int(self.chunk_bytes) < 1:
            raise InputError("weightlens batch_size and chunk_bytes must be positive")
        if self.feature_chunk is not None and int(self.feature_chunk) < 1:
            raise InputError(f"weightlens feature_chunk must be >= 1, got {self.feature_chunk}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> WeightLensOptions:
        """From the workflow config's ``weightlens`` block (:func:`~circuit_insights.core.config.from_block`)."""
        return from_block(cls, values, "weightlens")
