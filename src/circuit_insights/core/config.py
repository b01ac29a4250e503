"""One way from a config block to a config dataclass, with one error text for unknown keys."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from circuit_insights.core.errors import InputError

T = TypeVar("T")


def from_block(cls: type[T], values: Mapping[str, Any] | None, section: str) -> T:
    """``cls(**values)`` for the config block at ``section`` (e.g. ``"sampling"``).

    An unknown key raises :class:`InputError` naming it (``config key 'sampling.n_bin' is not
    a setting of 'sampling' (known: ...)``); the dataclass's own ``__post_init__`` checks the
    values.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    values = dict(values or {})
    known = sorted(item.name for item in dataclasses.fields(cls) if item.init)
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise InputError(
            f"config key '{section}.{unknown[0]}' is not a setting of '{section}' "
            f"(known: {', '.join(known)})"
        )
    return cls(**values)
