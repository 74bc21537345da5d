"""Fixtures shared by test modules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_model import train_tiny_model


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of small models and tensors (they gain nothing from more
    on a shared CPU and lose a lot); the previous setting is restored for the next module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained model directory (tests/tiny_model.py), trained once per test session."""
    return train_tiny_model(tmp_path_factory.mktemp("tiny-model"))
