"""Fixtures shared by test modules."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_model import train_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained model directory (tests/tiny_model.py), trained once per test session."""
    return train_tiny_model(tmp_path_factory.mktemp("tiny-model"))
