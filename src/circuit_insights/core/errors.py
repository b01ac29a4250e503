"""Errors raised on bad input: each message names the thing at fault."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input (a config key, a file, a layer index); the message names it."""
