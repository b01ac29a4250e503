"""Developer tools of the repository (not part of the circuit_insights package): run them with
``python -m tools.<name>`` from the repository root."""
