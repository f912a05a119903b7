"""Fixtures for the OSS backend tests: an in-process OSS protocol emulator (tests/emulators/oss_server.py)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_EMULATOR = Path(__file__).resolve().parents[2] / "emulators" / "oss_server.py"


def _load_emulator_module() -> Any:
    # --import-mode=importlib puts no test directory on sys.path: load the emulator by file path, and register
    # it first (dataclasses resolve annotations through sys.modules).
    name = "mlpipe_tests_oss_emulator"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, _EMULATOR)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


oss_server = _load_emulator_module()
KEY_ID = "emulator-key-id"
SECRET = "emulator-key-secret"
BUCKET = "mlpipe-models"


@pytest.fixture
def oss() -> Iterator[Any]:
    emulator = oss_server.OssEmulator(KEY_ID, SECRET, buckets=(BUCKET, "mlpipe-data"))
    with emulator:
        yield emulator


@pytest.fixture
def oss_env(oss: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Credentials as the containers get them: OSS_* environment variables."""
    env = {
        "OSS_ACCESS_KEY_ID": KEY_ID,
        "OSS_ACCESS_KEY_SECRET": SECRET,
        "OSS_REGION": "cn-hangzhou",
        "OSS_ENDPOINT": oss.endpoint,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env
