"""Rule delphi_rules: detection, fuzzing and simulation of every feature's executable rules,
exactly (rater = rule; docs/delphi_scores.md)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from circuit_insights.pipeline.locations import model_location

log = logging.getLogger(__name__)


def tokenizer_of(model_config: Mapping[str, Any], model_files: Sequence[str] | str) -> Any:
    """The subject model's tokenizer (display of tokens, its BOS)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_location(model_config, model_files))


def run_delphi_rules_stage(
    *,
    model_config: Mapping[str, Any],
    rules_config: Mapping[str, Any],
    scores_config: Mapping[str, Any],
    seed: int,
    model_files: Sequence[str] | str,
    layer: int,
    explanations_path: str,
    heldout_path: str,
    tokens_path: str,
    out_path: str,
) -> None:
    """Rule delphi_rules: the three scores of every feature's executable rules, exactly
    (``rater = "rule"``), on the examples the LLM-rated scores draw (same seed)."""
    import pandas as pd

    from circuit_insights.core.tokens import TokenDisplay
    from circuit_insights.data.corpus import load_contexts
    from circuit_insights.evaluation.delphi import score_shard, write_delphi_scores
    from circuit_insights.evaluation.delphi.config import context_bos, scores_settings
    from circuit_insights.evaluation.rule_rater import rules_from_explanations, rules_settings

    _, config = scores_settings(scores_config)
    variants, _, _ = rules_settings(rules_config)
    rules, _ = rules_from_explanations(pd.read_parquet(explanations_path), variants, layer)
    tokenizer = tokenizer_of(model_config, model_files)
    context_ids, tokens = load_contexts(tokens_path, "eval")
    started = time.perf_counter()
    frame = score_shard(
        layer=layer,
        heldout_activations=pd.read_parquet(heldout_path),
        heldout_tokens=(context_ids, tokens),
        config=config,
        seed=seed,
        bos_token_id=context_bos(tokens, tokenizer.bos_token_id),
        rules=rules,
        display=TokenDisplay(tokenizer),
    )
    write_delphi_scores(frame, out_path)
    log.info(
        "layer %d: %d rules of %d features scored exactly (%s) in %.0f s",
        layer,
        len(rules),
        len({rule.feature for rule in rules}),
        ", ".join(config.scorers),
        time.perf_counter() - started,
    )
