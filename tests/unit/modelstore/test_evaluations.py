"""ModelStore.record_evaluation / evaluations on a real file:// store."""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_provider_mlpipe.exceptions import ConfigError
from airflow_provider_mlpipe.modelstore import open_store


def test_recorded_by_name_and_replaced_by_a_later_one(tmp_path: Path) -> None:
    store = open_store((tmp_path / "models").as_uri())
    assert store.evaluations("wine", 1) == {}
    store.record_evaluation("wine", 1, "staging", {"accuracy": 0.5})
    store.record_evaluation("wine", 1, "staging", {"accuracy": 0.75})
    store.record_evaluation("wine", 1, "canary", {"accuracy": 0.7})
    found = store.evaluations("wine", 1)
    assert sorted(found) == ["canary", "staging"]
    assert found["staging"]["accuracy"] == 0.75 and found["staging"]["recorded_at"]
    assert store.evaluations("wine", 2) == {}


@pytest.mark.parametrize("name", ["", "Staging", "../x", "a/b", "x" * 41])
def test_bad_names_are_refused(tmp_path: Path, name: str) -> None:
    store = open_store((tmp_path / "models").as_uri())
    with pytest.raises(ConfigError, match="evaluation name"):
        store.record_evaluation("wine", 1, name, {"accuracy": 0.5})
