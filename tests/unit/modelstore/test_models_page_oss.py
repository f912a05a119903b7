"""The Models page's data on an oss:// store: the real oss2 client against the OSS protocol emulator of
tests/emulators/oss_server.py (in this process); the same answers as on file://."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from airflow_provider_mlpipe.models_page.data import ModelsData
from airflow_provider_mlpipe.modelstore import open_store
from tests.unit.models_page.test_data import EVALUATION, MODEL, publish
from tests.unit.modelstore.conftest import BUCKET


def test_models_page_reads_an_oss_store(oss_env: dict[str, str], oss: Any, tmp_path: Path) -> None:
    store = open_store(f"oss://{BUCKET}/teams/ml")
    for version, accuracy in ((1, 0.85), (2, 0.87)):
        publish(store, tmp_path, version, accuracy)
    store.promote(
        MODEL, 1, run_id="mlpipe_fashion_mnist/manual__run-1", approved_by="alice", extra={"accuracy": 0.85}
    )
    store.record_evaluation(MODEL, 2, "staging", EVALUATION)
    data = ModelsData(store)
    assert data.overview() == [
        {"name": MODEL, "versions": 2, "latest": 2, "production": {"version": 1, "accuracy": 0.85}}
    ]
    rows = data.model(MODEL)["versions"]
    assert [(r["version"], r["aliases"], r["approved_by"]) for r in rows] == [
        (1, ["production"], "alice"),
        (2, [], None),
    ]
    version = data.version(MODEL, 2)
    assert version["confusion_matrix"] == EVALUATION["confusion_matrix"]
    assert version["production"]["version"] == 1
