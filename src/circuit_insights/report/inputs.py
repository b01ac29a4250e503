"""What the report reads: the files its rule declares, one model at a time.

The report stage (``circuit_insights.pipeline.stages.report``) knows the results layout; it
hands each model over as :class:`ModelInputs`: the model's per-shard tables by report table and
layer, and its corpus file. Nothing else is read: no folder is listed, so a table left over from
an earlier run is never shown. :func:`load_model_frames` reads them into :class:`ModelFrames`,
which the report can also be given directly (tests, notebooks).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from circuit_insights.core.errors import InputError
from circuit_insights.data.corpus import load_contexts
from circuit_insights.interop.graph import read_graph

__all__ = [
    "CONTRIBUTION_COLUMNS",
    "COVERAGE_COLUMNS",
    "TABLES",
    "ModelFrames",
    "ModelInputs",
    "load_model_frames",
    "read_table",
]

#: The tables the report reads, by the name it gives them: WeightLens, FADE evaluation,
#: rule-rated evaluation, explanations, clusters, samples, attribution contributions, TWERA,
#: delphi scores (both raters).
TABLES: tuple[str, ...] = (
    "weightlens",
    "evaluation",
    "rule_evaluation",
    "explanations",
    "clusters",
    "samples",
    "contributions",
    "twera",
    "delphi",
)

#: Tables keyed by other columns than ``layer`` / ``feature``: renamed to those on reading
#: (TWERA rows belong to their target feature).
_KEY_COLUMNS = {"twera": ("target_layer", "target_feature")}

#: Tables whose declared files may hold several layers' rows (the imported variants', one file
#: per variant): only the rows of the layer a file is declared for are read.
_SEVERAL_LAYERS = frozenset({"explanations"})

#: Tables without a ``layer`` column of the explained feature: the loader adds it under this
#: name, from the layer the file was declared for.
_ADDED_LAYER_COLUMN = {"samples": "layer", "contributions": "feature_layer"}

#: Columns read from the attribution contributions (the trigger tokens of example contexts).
CONTRIBUTION_COLUMNS = [
    "feature",
    "sample",
    "kind",
    "layer",
    "head",
    "source_feature",
    "position",
    "delta",
    "token",
]

#: Columns of the clusters tables the coverage table reads.
COVERAGE_COLUMNS = ["layer", "feature", "cluster", "is_noise", "n_samples", "n_clusters", "status"]


@dataclass(frozen=True)
class ModelInputs:
    """The declared input files of one model.

    ``tables``: report table (one of :data:`TABLES`) -> layer -> its shard files (a table or
    layer without files: not declared, not read; an ``explanations`` file may hold several
    layers' rows, as the imported variants' do: only the layer's are read); ``tokens``: the
    corpus tokens file (``CORPUS_TOKENS_SCHEMA``), None or absent: contexts are not shown;
    ``graph``: the model's attribution graph (``models.<m>.graph``), shown with the labels of
    ``label_variants`` (``labels.variants``, fallback order).
    """

    model: str
    tables: Mapping[str, Mapping[int, Sequence[str | os.PathLike[str]]]] = field(
        default_factory=dict
    )
    tokens: str | os.PathLike[str] | None = None
    graph: str | os.PathLike[str] | None = None
    label_variants: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = sorted(set(self.tables) - set(TABLES))
        if unknown:
            raise InputError(f"model {self.model!r}: unknown report tables {unknown}: use {TABLES}")


@dataclass
class ModelFrames:
    """Everything the report shows of one model; every table may be missing (None).

    ``weightlens`` (``WEIGHTLENS_SCHEMA``), ``evaluation`` (``FADE_EVALUATION_SCHEMA``),
    ``explanations`` (``EXPLANATIONS_SCHEMA``), ``clusters`` (``CLUSTERS_SCHEMA``) carry their own
    ``layer`` column; ``samples`` is ``SAMPLES_SCHEMA`` plus ``layer``; ``contributions`` is
    ``ATTRIBUTION_CONTRIBUTIONS_SCHEMA`` (at least :data:`CONTRIBUTION_COLUMNS`) plus
    ``feature_layer`` (the explained feature's layer; ``layer`` is the contributor's).
    ``context_ids`` (n,) and ``tokens`` (n, context_length): the corpus contexts
    (``corpus.load_contexts``). ``tokenizer``: display only (None: ``<id>``).
    """

    model: str
    weightlens: pd.DataFrame | None = None
    evaluation: pd.DataFrame | None = None
    explanations: pd.DataFrame | None = None
    clusters: pd.DataFrame | None = None
    samples: pd.DataFrame | None = None
    contributions: pd.DataFrame | None = None
    context_ids: np.ndarray | None = None
    tokens: np.ndarray | None = None
    tokenizer: object | None = None
    rule_evaluation: pd.DataFrame | None = None
    """Rule-rated scores of the executable explanations (``rater`` = ``rule``)."""
    twera: pd.DataFrame | None = None
    """Optional TWERA ranking of upstream connections (``WEIGHTLENS_TWERA_SCHEMA`` with
    ``target_layer`` / ``target_feature`` renamed ``layer`` / ``feature``)."""
    graph: Mapping[str, Any] | None = None
    """The model's attribution graph (circuit-tracer's JSON, ``interop.graph.read_graph``)."""
    graph_source: str = ""
    """Where the graph was read from."""
    label_variants: tuple[str, ...] = ()
    """The variants whose descriptions label the graph's features, in fallback order."""
    delphi: pd.DataFrame | None = None
    """Detection, fuzzing and simulation rows (``DELPHI_SCORES_SCHEMA``) of both raters."""


def read_table(
    inputs: ModelInputs,
    table: str,
    *,
    features: Mapping[int, Collection[int]] | None = None,
    columns: Sequence[str] | None = None,
) -> pd.DataFrame | None:
    """The declared files of one table of a model, concatenated (by layer, then by path); None
    when none is declared.

    ``features``: layer -> features to keep (other layers are skipped; pyarrow filters);
    samples / contributions get the layer they were declared for (:data:`_ADDED_LAYER_COLUMN`).
    """
    if table not in TABLES:
        raise InputError(f"unknown report table {table!r}: choose from {list(TABLES)}")
    parts: list[pd.DataFrame] = []
    by_layer = inputs.tables.get(table, {})
    for layer in sorted(by_layer):
        if features is not None and layer not in features:
            continue
        for path in sorted(Path(p) for p in by_layer[layer]):
            names = pq.read_schema(path).names
            wanted = [c for c in columns if c in names] if columns is not None else None
            filters: list[tuple[str, str, Any]] | None = None
            layer_column, feature_column = _KEY_COLUMNS.get(table, ("layer", "feature"))
            if features is not None:
                keep = sorted(int(f) for f in features[layer])
                if not keep:
                    continue
                filters = [(feature_column, "in", keep)]
            if table in _SEVERAL_LAYERS and "layer" in names:
                filters = [*(filters or []), ("layer", "=", int(layer))]
            try:
                arrow = pq.read_table(path, columns=wanted, filters=filters)
            except Exception as exc:  # noqa: BLE001 - name the file at fault
                raise InputError(f"cannot read {table} file {path}: {exc}") from exc
            frame = arrow.to_pandas().rename(
                columns={layer_column: "layer", feature_column: "feature"}
            )
            added = _ADDED_LAYER_COLUMN.get(table, "layer")
            if added not in frame.columns:
                frame[added] = layer
            parts.append(frame)
    if not parts:
        return None
    return pd.concat(parts, ignore_index=True)


def load_model_frames(
    inputs: ModelInputs,
    *,
    features: Mapping[int, Collection[int]] | None = None,
    tables: Collection[str] | None = None,
    tokenizer: object | None = None,
) -> ModelFrames:
    """The ``tables`` of one model (default: all; missing ones: None), its corpus and its
    graph."""
    wanted = set(tables) if tables is not None else set(TABLES)
    frames: dict[str, pd.DataFrame | None] = {}
    for table in TABLES:
        if table not in wanted:
            frames[table] = None
            continue
        columns = CONTRIBUTION_COLUMNS if table == "contributions" else None
        frames[table] = read_table(inputs, table, features=features, columns=columns)
    context_ids = tokens = None
    if inputs.tokens is not None and Path(inputs.tokens).is_file():
        context_ids, tokens = load_contexts(Path(inputs.tokens), None)
    graph = read_graph(inputs.graph) if inputs.graph is not None else None
    return ModelFrames(
        model=inputs.model,
        context_ids=context_ids,
        tokens=tokens,
        tokenizer=tokenizer,
        graph=graph,
        graph_source=str(inputs.graph or ""),
        label_variants=tuple(inputs.label_variants),
        **frames,
    )
