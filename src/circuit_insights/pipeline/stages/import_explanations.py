"""Rule import_explanations: one imported variant's rows, every feature of every layer."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)


def run_import_explanations_stage(
    *,
    model_name: str,
    variant: str,
    import_config: Mapping[str, Any],
    target_config: Mapping[str, Any],
    out_path: str,
) -> None:
    """Rule import_explanations: the explanations of ``models.<model>.imports.<variant>``
    (``import_config``: ``format``, ``path``, ``method``, ``explainer_model``) as
    ``EXPLANATIONS_SCHEMA`` rows of the imported variant, one per feature of every configured
    layer (``target_config``: :func:`circuit_insights.pipeline.interop.target_params`)."""
    from circuit_insights.explain.imported import import_rows
    from circuit_insights.explain.run import write_explanations
    from circuit_insights.pipeline.interop import (
        imported_variant_of,
        read_import,
        target_from_params,
    )

    target = target_from_params(target_config)
    key = f"config key 'models.{model_name}.imports.{variant}'"
    frame = read_import(import_config, target=target, key=key)
    rows = import_rows(
        frame,
        imported_variant_of(variant, import_config),
        layers=target.layers,
        width=target.width,
        method=import_config.get("method"),
    )
    write_explanations(rows, out_path)
    final = rows[rows["is_final"]]
    log.info(
        "%s: %d explanations read from %s (%s); %d of %d features of layers %s have one",
        variant,
        len(frame),
        import_config["path"],
        import_config["format"],
        int((final["step"] == "imported").sum()),
        len(final),
        list(target.layers),
    )
