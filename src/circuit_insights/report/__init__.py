"""The report: the summary of each model's scores (``summary.write_summary``, rule summarize) and
the static HTML report of a run (``html.build_report``, rule report). Layout: ``docs/report.md``."""
