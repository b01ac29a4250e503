"""Executable explanations: feature descriptions as predicates over (context tokens, position).

- ``rule``: the types (:class:`~circuit_insights.explain.executable.rule.Condition`, ``Clause``,
  ``Rule``: OR over clauses, each an AND over conditions), applied to a token matrix at every
  position at once, and their JSON form.
- ``config``: ``RuleConfig``, the thresholds of the derivation (config key ``rules``).
- ``evidence``: what a feature's rules are derived from, read from the stage tables.
- ``derive``: the derivations (validated tokens, max-activation tokens, circuit clusters, union);
  which variant uses which is said by the variant table, :mod:`circuit_insights.explain.variants`.
- ``synthetic``: contexts with a rule's triggers written in (FADE Clarity of the rule rater).

Definitions and thresholds in ``docs/rules.md``.
"""
