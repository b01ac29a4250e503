"""One module per workflow rule: ``workflow/rules/*.smk`` rule X runs ``scripts/X.py``, which calls
``circuit_insights.pipeline.stages.X``.

A stage is glue: it reads the rule's input files, calls the library (``models``, ``transcoders``,
``data``, ``weightlens``, ``circuitlens``, ``explain``, ``evaluation``, ``report``) and writes the
rule's outputs atomically. Stages are importable and testable without Snakemake.
"""
