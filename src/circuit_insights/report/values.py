"""Table cells as the report reads and shows them: missing values, lists from parquet, numbers
formatted with a dash for a missing one."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

#: Shown for a missing number.
DASH = "\u2014"


def is_missing(value: Any) -> bool:
    """None, NaN, NA (anything pandas calls missing); a list or other object is not."""
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def as_float(value: Any) -> float | None:
    """A finite float or None."""
    if is_missing(value):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def as_list(values: Any) -> list[Any]:
    """A list from a parquet list cell (array, list, None)."""
    if values is None or (isinstance(values, float) and math.isnan(values)):
        return []
    return list(values)


def opt_int(value: Any) -> int | None:
    """An int, or None for a missing or non-finite value."""
    number = as_float(value)
    return None if number is None else int(number)


def text(value: Any) -> str | None:
    """A string with something other than spaces in it, or None."""
    if is_missing(value):
        return None
    out = str(value)
    return out if out.strip() else None


def fixed(value: Any, digits: int = 2) -> str:
    """A number with ``digits`` decimals, :data:`DASH` when missing or not finite."""
    number = as_float(value)
    return DASH if number is None else f"{number:.{digits}f}"


def general(value: Any, digits: int = 3) -> str:
    """A number with ``digits`` significant digits, :data:`DASH` when missing or not finite."""
    number = as_float(value)
    return DASH if number is None else f"{number:.{digits}g}"


def percent(value: Any) -> str:
    """A share as a percentage with one decimal, :data:`DASH` when missing or not finite."""
    number = as_float(value)
    return DASH if number is None else f"{100 * number:.1f}%"
