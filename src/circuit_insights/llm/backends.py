"""The run's LLM backend from the ``llm`` config block, behind the response cache, with its
failed requests counted (:mod:`circuit_insights.llm.failures`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from circuit_insights.llm.failures import FailureCounter, counted


def server_python(llm_config: Mapping[str, Any]) -> str:
    """The Python that runs the vLLM server (the project's .venv-llm when it exists)."""
    import sys

    if llm_config["server_python"]:
        return llm_config["server_python"]
    candidate = Path(".venv-llm/bin/python")
    return str(candidate.absolute()) if candidate.exists() else sys.executable


def llm_backend(
    llm_config: Mapping[str, Any], model_location: str, state_file: str, cache_file: str
) -> FailureCounter:
    """The run's LLM behind the response cache: a configured URL, or the shared vLLM server
    (started by the first job that needs it; the workflow stops it at the end). The stage calls
    ``raise_if_failed`` on it before writing its output."""
    from circuit_insights.llm.cache import CachedBackend, ResponseCache
    from circuit_insights.llm.http_backend import OpenAICompatibleBackend
    from circuit_insights.llm.server import backend_from_state, ensure_shared_server

    options = {
        "concurrency": llm_config["concurrency"],
        "timeout_s": llm_config["timeout_s"],
        "max_retries": llm_config["max_retries"],
    }
    if llm_config["url"]:
        inner = OpenAICompatibleBackend(
            llm_config["url"],
            llm_config["model"],
            api_key_env=llm_config["api_key_env"] or None,
            **options,
        )
    else:
        Path(state_file).parent.mkdir(parents=True, exist_ok=True)
        ensure_shared_server(
            model_location,
            state_file,
            served_model_name=llm_config["served_model_name"],
            kv_cache_space_gib=llm_config["kv_cache_gib"],
            reserved_cpus=llm_config["reserved_cpus"],
            startup_timeout_s=llm_config["startup_timeout_s"],
            python=server_python(llm_config),
            log_path=str(Path(state_file).with_suffix(".log")),
        )
        inner = backend_from_state(state_file, **options)
    Path(cache_file).parent.mkdir(parents=True, exist_ok=True)
    return counted(CachedBackend(inner, ResponseCache(cache_file)), url=inner.base_url)
