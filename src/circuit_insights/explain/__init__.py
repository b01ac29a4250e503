"""Feature descriptions, every variant of the paper from the same inputs (docs/method.md).

- ``variants``: the table of variants (the only place naming them) and the lists derived from
  it (``VARIANTS``, ``LLM_VARIANTS``, ``RULE_VARIANTS``, ``CLUSTER_VARIANTS``,
  ``EXECUTABLE_VARIANTS``); ``kinds``: what a variant object is (what it reads, the reason
  when its input is missing, how it builds its request or its rule).
- ``config``: ``ExplainConfig``; ``facts``: ``FeatureInputs``, what the variants read of a
  feature; ``inputs``: building them (and the executable rules) from the stage tables.
- ``prompts``: the templates ``templates/explain_*_v2.txt`` and the prompt sections;
  ``requests``: the answer schema, request keys, the system message, the merge request.
- ``run``: ``explain_shard`` (requests, LLM calls, rows), reading final descriptions back.
- ``executable``: the executable rules (conditions, clauses, derivations, synthetic contexts).

Every answer is requested as JSON ``{"description": str}`` (structured output) at temperature
0; prompts are versioned (``PROMPT_VERSION``, recorded with every row).
"""
