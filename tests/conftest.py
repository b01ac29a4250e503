"""Shared fixtures: tiny randomly initialised models of every supported family (no downloads)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from circuit_insights.models.tiny import (  # noqa: F401 - re-exported for tests
    FAMILIES,
    TINY_VOCAB,
    tiny_hf_model,
    tiny_subject_model,
)


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def tiny_model(family):
    return tiny_subject_model(family)


@pytest.fixture
def seed() -> int:
    torch.manual_seed(0)
    return 0


@pytest.fixture(scope="session")
def gemma3_270m_dir(tmp_path_factory):
    """The embedded Gemma 3 270M folder: the workflow's resources/ copy when it was built, else
    built here from its PyPI package (about a minute; nothing is downloaded)."""
    from pathlib import Path

    from circuit_insights.models.embedded import build_gemma3_270m

    built = Path(__file__).resolve().parents[1] / "resources" / "models" / "gemma-3-270m"
    if (built / "model.safetensors").is_file():
        return built
    return build_gemma3_270m(tmp_path_factory.mktemp("gemma-3-270m") / "model")


@pytest.fixture
def single_thread() -> Iterator[None]:
    """Torch on one thread for the test: tiny matrices run fastest, and training runs identically
    (it is deterministic per thread count). Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("single_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
