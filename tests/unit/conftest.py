"""Fixtures shared by the unit tests of the `kubernetes` runtime (hooks/, operators/)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kubernetes_emulator import EmulatedCluster, configure, emulated_cluster


@pytest.fixture
def k8s(monkeypatch: pytest.MonkeyPatch) -> Iterator[EmulatedCluster]:
    """The emulated Kubernetes API (tests/kubernetes_emulator.py), with Airflow's `kubernetes` connection and
    the `[mlpipe]` settings pointed at it (`configure`)."""
    with emulated_cluster() as cluster:
        configure(monkeypatch, cluster)
        yield cluster


@pytest.fixture
def store_uri(tmp_path: Path) -> str:
    """An empty file:// model store."""
    return (tmp_path / "models").as_uri()
