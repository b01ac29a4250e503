"""The explanation formats that cross the border: one object per format, read and write.

Each :class:`ExplanationFormat` reads a file (or folder) of explanations into the tidy frame of
``interop.table`` and writes ours (with their scores when given). Fields and sources of every
format: docs/formats.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Protocol

import pandas as pd

from circuit_insights.core.errors import InputError
from circuit_insights.interop import delphi, neuronpedia
from circuit_insights.interop.target import TranscoderSet


class Reader(Protocol):
    def __call__(self, path: str | os.PathLike[str], *, target: TranscoderSet) -> pd.DataFrame: ...


class Writer(Protocol):
    def __call__(
        self,
        explanations: pd.DataFrame,
        path: str | os.PathLike[str],
        *,
        target: TranscoderSet,
        scores: pd.DataFrame | None = None,
    ) -> Any: ...


@dataclass(frozen=True)
class ExplanationFormat:
    """One explanation format: its name (the ``source`` of the rows it reads), its reader and
    writer, and whether it is written as a folder (else one file)."""

    name: str
    read: Reader
    write: Writer
    folder: bool
    description: str


NEURONPEDIA = ExplanationFormat(
    name=neuronpedia.NAME,
    read=neuronpedia.read_neuronpedia,
    write=neuronpedia.write_neuronpedia,
    folder=False,
    description="Neuronpedia's explanation export: a JSON list of explanation objects",
)
DELPHI = ExplanationFormat(
    name=delphi.NAME,
    read=delphi.read_delphi,
    write=delphi.write_delphi,
    folder=True,
    description="delphi's run folders: explanations/ and scores/<scorer>/, a file per latent",
)

#: The formats by name.
FORMATS: dict[str, ExplanationFormat] = {f.name: f for f in (NEURONPEDIA, DELPHI)}


def explanation_format(name: str, *, key: str = "format") -> ExplanationFormat:
    """The format called ``name``; :class:`InputError` naming ``key`` and the known formats."""
    if name not in FORMATS:
        raise InputError(
            f"{key}: unknown explanation format {name!r} (known: {', '.join(FORMATS)})"
        )
    return FORMATS[name]
