"""Preflight helpers for the Hugging Face hub: offline flags, a quick reachability probe, the
local hub cache."""

from __future__ import annotations

import os
import socket

# --- the Hugging Face hub ----------------------------------------------------------------------

HUB_PROBE_TIMEOUT_S = 3.0
"""Seconds a TCP connection to the Hugging Face hub may take before the hub counts as
unreachable (instead of the download's own retries, some 25 s)."""

_PROXY_VARIABLES = (
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
)


def hub_offline() -> bool:
    """Whether huggingface_hub works from its local cache only (``HF_HUB_OFFLINE=1``)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


_HUB_PROBES: dict[str, str | None] = {}


def hub_unreachable() -> str | None:
    """Why the hub's endpoint (``HF_ENDPOINT``) cannot be reached, or None when a TCP connection
    opens within :data:`HUB_PROBE_TIMEOUT_S` (or a proxy is configured, which only the download
    itself can judge). Asked once per process."""
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    endpoint = constants.ENDPOINT
    if endpoint not in _HUB_PROBES:
        parts = urlsplit(endpoint)
        host = parts.hostname or ""
        port = parts.port or (80 if parts.scheme == "http" else 443)
        problem = None
        if not any(os.environ.get(name) for name in _PROXY_VARIABLES):
            try:
                socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S).close()
            except OSError as error:
                problem = f"{host}:{port}: {error.strerror or error}"
        _HUB_PROBES[endpoint] = problem
    return _HUB_PROBES[endpoint]


def _in_hub_cache(repo_id: str, filename: str) -> bool:
    """Whether the local hub cache holds ``filename`` of ``repo_id`` (its main revision)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, filename), str)


OFFLINE_HINT = "offline, set HF_HUB_OFFLINE=1 to use the local hub cache"
