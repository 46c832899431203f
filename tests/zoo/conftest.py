"""Shared fixtures for the zoo tests: the real Fashion-MNIST, loaded once per session."""
from __future__ import annotations

from pathlib import Path

import pytest

from zoo.data import DEFAULT_ROOT, DataSplits, idx_splits


@pytest.fixture(scope="session")
def fashion_root() -> str:
    if not Path(DEFAULT_ROOT).is_dir():
        pytest.skip(f"{DEFAULT_ROOT} missing: apt-get install dataset-fashion-mnist")
    return DEFAULT_ROOT


@pytest.fixture(scope="session")
def small_fashion(fashion_root: str) -> DataSplits:
    """500 training and 300 held-out images, seeded."""
    return idx_splits(root=fashion_root, train_limit=500, eval_limit=300, calib_size=64, seed=0)
