"""EleutherAI/delphi's detection and fuzzing scores and OpenAI's simulation score, rated by the
LLM or exactly by executable rules (docs/delphi_scores.md).

One concern per module: :mod:`.config` (the ``scores`` block), :mod:`.examples` (windows drawn
per quantile), :mod:`.classifier` (what detection and fuzzing share), :mod:`.detection`,
:mod:`.fuzzing`, :mod:`.simulation`, :mod:`.prompts`, :mod:`.metrics` (the formulas),
:mod:`.rule_scorer` (the exact answers), :mod:`.rows` (the rows and their schema) and
:mod:`.run` (:func:`score_shard`).
"""

from __future__ import annotations

from circuit_insights.evaluation.delphi.config import DelphiScoresConfig
from circuit_insights.evaluation.delphi.rows import (
    DELPHI_SCORES_SCHEMA,
    REASONS,
    write_delphi_scores,
)
from circuit_insights.evaluation.delphi.run import score_shard

__all__ = [
    "DELPHI_SCORES_SCHEMA",
    "REASONS",
    "DelphiScoresConfig",
    "score_shard",
    "write_delphi_scores",
]
