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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`@pytest.mark.one_stack("<param>")`: a test of a module parametrized over Airflow stacks (fixture
    `stack`) that does not depend on the stack runs on the one named; its other copies are deselected (the
    summary counts them), before any fixture of theirs runs."""
    keep, drop = [], []
    for item in items:
        marker = item.get_closest_marker("one_stack")
        params = getattr(getattr(item, "callspec", None), "params", {})
        if marker is not None and "stack" in params and params["stack"] != marker.args[0]:
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


# No orphans: see tests/process_guard.py. Its hooks are registered here, for every test session.
from tests.process_guard import pytest_configure, pytest_sessionfinish  # noqa: E402, F401
