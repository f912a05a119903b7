"""Shared fixtures. The real Fashion-MNIST copy lives in ../shared/datasets/fashion-mnist (md5-verified)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASET = REPO_ROOT.parent / "shared" / "datasets" / "fashion-mnist"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def fashion_mnist_dir() -> Path:
    """The real dataset: MLPIPE_DATASET_DIR, else the shared copy beside the repository."""
    location = Path(os.environ.get("MLPIPE_DATASET_DIR") or SHARED_DATASET)
    if not (location / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip(f"the Fashion-MNIST files are not at {location} (set MLPIPE_DATASET_DIR)")
    return location


# No orphans: see tests/process_guard.py. Its hooks are registered here, for every test session.
from tests.process_guard import pytest_configure, pytest_sessionfinish  # noqa: E402, F401
