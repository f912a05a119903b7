"""The operators' `k8s`: the emulated cluster of tests/unit/conftest.py, checked after each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.kubernetes_emulator import EmulatedCluster, check_sent


@pytest.fixture
def k8s(k8s: EmulatedCluster) -> Iterator[EmulatedCluster]:
    yield k8s
    # What a real apiserver would have refused, this emulator accepted: check it now.
    check_sent(k8s)
