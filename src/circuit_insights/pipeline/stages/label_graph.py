"""Rule label_graph: a copy of a model's attribution graph carrying our labels."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def run_label_graph_stage(
    *,
    graph_path: str,
    explanation_files: Sequence[str],
    label_variants: Sequence[str],
    target_config: Mapping[str, Any],
    out_dir: str,
) -> Path:
    """Rule label_graph: ``out_dir/{slug}.json``, the graph at ``graph_path`` with each feature
    node's ``clerp`` the description of the first of ``label_variants`` that describes the
    feature (``explanation_files``: ours and imported rows); a node keeps its label when none
    does. Also ``out_dir/graph-metadata.json``, the index circuit-tracer's local server reads.
    Returns the labelled graph's path."""
    import pandas as pd

    from circuit_insights.interop.graph import (
        read_graph,
        write_graph_index,
        write_labelled_graph,
    )
    from circuit_insights.interop.table import chosen_descriptions
    from circuit_insights.pipeline.interop import target_from_params

    target = target_from_params(target_config)
    explanations = pd.concat(
        [
            pd.read_parquet(
                path, columns=["layer", "feature", "variant", "description", "is_final"]
            )
            for path in explanation_files
        ],
        ignore_index=True,
    )
    chosen = chosen_descriptions(explanations, label_variants)
    slug = str(read_graph(graph_path)["metadata"].get("slug") or Path(graph_path).stem)
    dest = Path(out_dir) / f"{slug}.json"
    labelled = write_labelled_graph(
        graph_path,
        dest,
        {key: description for key, (_, description) in chosen.items()},
        target=target,
    )
    write_graph_index(out_dir, [dest])
    by_variant: dict[str, int] = {}
    for variant, _ in chosen.values():
        by_variant[variant] = by_variant.get(variant, 0) + 1
    log.info(
        "graph %s: %d feature nodes labelled (labels by variant over the features described: "
        "%s), written to %s",
        graph_path,
        labelled,
        by_variant,
        dest,
    )
    return dest
