"""FADE evaluation of feature descriptions (Puri et al. 2025; definitions in docs/fade.md).

- :mod:`.presets`: every knob of a run (:class:`~.presets.FadePreset`), the named presets.
- :mod:`.judge`: the LLM side: synthetic-text generation and rating requests, their answers.
- :mod:`.subject`: the subject-model side: activations on texts, steering, greedy continuations.
- :mod:`.faithfulness`: steered continuations rated per factor, the Faithfulness metric.
- :mod:`.run`: one (feature, description) -> one result row; a table of descriptions.
- :mod:`.rows`: the FADE_EVALUATION_SCHEMA row (shared with the rule rater) and its files.

The metrics themselves are pure functions in :mod:`circuit_insights.evaluation.metrics`.
"""
