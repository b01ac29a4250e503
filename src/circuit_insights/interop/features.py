"""Named features: the per-layer feature list a user writes in the config.

The syntax (docs/formats.md, "Named features"): a mapping from layer to its features, where the
features are one entry or a list of entries, and an entry is

- an integer: that feature (``17``);
- a string of comma-separated items, each a feature (``"17"``) or an inclusive range
  (``"10-19"``: features 10 to 19, both included).

.. code-block:: yaml

    features:
      3: [0, 5, "10-19"]
      8: "0-9,17"

Layer keys may be integers or strings of digits (a JSON config has only string keys).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from circuit_insights.core.errors import InputError

_ITEM = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def parse_named_features(
    block: Mapping[Any, Any] | None,
    *,
    layers: Iterable[int],
    width: int,
    key: str = "features",
) -> dict[int, list[int]]:
    """The features of ``block`` per layer, sorted and unique: ``{layer: [feature, ...]}``.

    ``layers`` are the configured layers, ``width`` the transcoder's number of features; ``key``
    is where the block sits in the config (it starts every error message). Raises
    :class:`InputError` naming the layer, the entry and the width for an index outside
    ``[0, width)``, naming the layer for one that is not configured, and naming the entry for
    anything that is not an entry of the syntax above. An empty or missing block gives ``{}``.
    """
    configured = sorted(set(int(layer) for layer in layers))
    if block is None:
        return {}
    if not isinstance(block, Mapping):
        raise InputError(f"{key}: expected a mapping from layer to features, got {block!r}")
    found: dict[int, set[int]] = {}
    for raw_layer, entries in block.items():
        layer = _layer(raw_layer, key)
        if layer not in configured:
            raise InputError(
                f"{key}: layer {layer} is not a configured layer "
                f"(configured: {', '.join(map(str, configured))})"
            )
        if layer in found:
            raise InputError(f"{key}: layer {layer} is given twice")
        items = entries if isinstance(entries, list) else [entries]
        found[layer] = set()
        for entry in items:
            found[layer].update(_entry(entry, layer=layer, width=width, key=key))
    return {layer: sorted(found[layer]) for layer in sorted(found)}


def format_named_features(features: Mapping[int, Iterable[int]]) -> dict[int, str]:
    """The shortest form of ``features`` in the syntax above (runs as ranges): the inverse of
    :func:`parse_named_features`, e.g. ``{3: [0, 1, 2, 7]}`` -> ``{3: "0-2,7"}``."""
    written: dict[int, str] = {}
    for layer in sorted(features):
        indices = sorted(set(int(i) for i in features[layer]))
        runs: list[str] = []
        start = 0
        while start < len(indices):
            stop = start
            while stop + 1 < len(indices) and indices[stop + 1] == indices[stop] + 1:
                stop += 1
            first, last = indices[start], indices[stop]
            runs.append(str(first) if first == last else f"{first}-{last}")
            start = stop + 1
        written[layer] = ",".join(runs)
    return written


def _layer(raw: Any, key: str) -> int:
    if isinstance(raw, bool) or not isinstance(raw, (int, str)):
        raise InputError(f"{key}: layer {raw!r} is not a layer index")
    if isinstance(raw, str) and not raw.strip().isdigit():
        raise InputError(f"{key}: layer {raw!r} is not a layer index")
    return int(raw)


def _entry(entry: Any, *, layer: int, width: int, key: str) -> set[int]:
    where = f"{key}: layer {layer}, entry {entry!r}"
    if isinstance(entry, bool) or not isinstance(entry, (int, str)):
        raise InputError(f"{where}: not a feature index or a string of indices and ranges")
    if isinstance(entry, int):
        return {_index(entry, where=where, width=width)}
    indices: set[int] = set()
    for item in entry.split(","):
        match = _ITEM.match(item)
        if match is None:
            raise InputError(
                f"{where}: {item.strip()!r} is neither an index nor a range like '10-19'"
            )
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if last < first:
            raise InputError(f"{where}: range {item.strip()!r} runs backwards")
        _index(first, where=where, width=width)
        _index(last, where=where, width=width)
        indices.update(range(first, last + 1))
    return indices


def _index(index: int, *, where: str, width: int) -> int:
    if index < 0:
        raise InputError(f"{where}: feature {index} is negative")
    if index >= width:
        raise InputError(
            f"{where}: feature {index} is at or above the transcoder's width {width} "
            f"(valid: 0-{width - 1})"
        )
    return index
