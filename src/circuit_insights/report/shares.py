"""The share of token-based features per layer, next to the paper's figure for the model's
family (``TOKEN_SHARES_SCHEMA``; ``docs/report.md``)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import pandas as pd

from circuit_insights.core.errors import InputError
from circuit_insights.data.schemas import TOKEN_SHARES_SCHEMA
from circuit_insights.report.paper import PAPER_TOKEN_SHARES, paper_family
from circuit_insights.report.scores import concat_frames, require_columns


def _validated_count(values: Any) -> int:
    if values is None or (isinstance(values, float) and math.isnan(values)):
        return 0
    return len(values)


def token_based_shares(
    weightlens_frames: pd.DataFrame | Iterable[pd.DataFrame] | None,
    *,
    model: str = "",
    family: str | None = None,
) -> pd.DataFrame:
    """Per layer, and over all layers (``layer`` null), ``TOKEN_SHARES_SCHEMA`` rows.

    ``validated_share``: features with at least one validated token; ``token_based_share``:
    features classified token-based (``is_token_based``, ``docs/weightlens.md``), what the paper
    reports. ``paper_model`` / ``paper_share``:
    the paper's figure for ``family`` (default: :func:`paper_family` of ``model``), null when the
    model is of none of its families.
    """
    weightlens = concat_frames(weightlens_frames, "WeightLens frames")
    columns = TOKEN_SHARES_SCHEMA.names
    if weightlens.empty:
        return pd.DataFrame({name: [] for name in columns})
    require_columns(
        weightlens,
        ["layer", "feature", "validated_token_ids", "is_token_based"],
        "WeightLens frame",
    )
    family = family if family is not None else paper_family(model)
    if family is not None and family not in PAPER_TOKEN_SHARES:
        raise InputError(f"paper family {family!r}: choose from {list(PAPER_TOKEN_SHARES)}")
    paper_model, paper_share = (
        PAPER_TOKEN_SHARES.get(family, (None, None)) if family else (None, None)
    )
    frame = pd.DataFrame(
        {
            "layer": weightlens["layer"].astype(int),
            "validated": [_validated_count(v) > 0 for v in weightlens["validated_token_ids"]],
            "token_based": weightlens["is_token_based"].astype(bool),
        }
    )

    def row(layer: int | None, part: pd.DataFrame) -> dict[str, Any]:
        n = len(part)
        return {
            "model": str(model),
            "layer": layer,
            "n_features": n,
            "n_validated": int(part["validated"].sum()),
            "validated_share": float(part["validated"].mean()) if n else math.nan,
            "n_token_based": int(part["token_based"].sum()),
            "token_based_share": float(part["token_based"].mean()) if n else math.nan,
            "paper_model": paper_model,
            "paper_share": paper_share,
        }

    rows = [row(int(layer), part) for layer, part in frame.groupby("layer", sort=True)]
    rows.append(row(None, frame))
    out = pd.DataFrame(rows)
    out["layer"] = out["layer"].astype("Int64")
    return out[columns]
