"""Helpers every package shares: errors, progress lines, atomic writes, token display and the
context types. Nothing here imports from another package of circuit_insights."""
