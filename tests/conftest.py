"""Shared fixtures: tiny randomly initialised models of every supported family (no downloads)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from circuit_insights.tiny import (  # noqa: F401 - re-exported for tests
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
