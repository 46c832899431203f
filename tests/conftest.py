"""Shared fixtures: a small slice of Fashion-MNIST; the tiny CNN lives in tinynet.py."""
from __future__ import annotations

import pytest
import torch

from zoo.data import idx_splits

# Tiny models run faster on one thread, and parallel test runs on 2 cores do not thrash.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def small_splits():
    """2,000 training and 500 held-out Fashion-MNIST images."""
    return idx_splits(train_limit=2000, eval_limit=500, calib_size=64, seed=0)


@pytest.fixture
def example_input() -> torch.Tensor:
    return torch.randn(1, 1, 28, 28)
