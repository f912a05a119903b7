"""ModelsData: what the Models page shows, read from a real file:// model store through the store API.

Nothing emulated; the store's backend is wrapped only to count reads (CountingBackend), which shows the
cache at work with 500 versions (a read count, not a timing: speed belongs in benchmarks/).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_mlpipe.models_page.data import ModelsData
from airflow_provider_mlpipe.modelstore import ModelStore, open_store
from airflow_provider_mlpipe.modelstore.backends import FileBackend

MODEL = "fashion_mnist"
NAMES = ["T-shirt/top", "Trouser", "Pullover"]


class CountingBackend(FileBackend):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads: Counter[str] = Counter()

    def get_bytes(self, key: str) -> bytes:
        self.reads["manifest" if key.endswith("/manifest.json") else "other"] += 1
        return super().get_bytes(key)


def publish(store: ModelStore, tmp: Path, version: int, accuracy: float) -> None:
    export = tmp / "export"
    export.mkdir(exist_ok=True)
    (export / "saved_model.pb").write_bytes(b"model")
    store.publish(
        MODEL,
        version,
        export,
        {
            "run_id": f"mlpipe_fashion_mnist/manual__run-{version}",
            "image": f"reg/ns/trainer@sha256:{version:064x}",
            "digest": f"sha256:{version:064x}",
            "dataset": {"checksum": f"{version:032x}"},
            "metrics": {
                "test_accuracy": accuracy,
                "per_class_accuracy": {"0": 0.9, "1": 0.95, "2": accuracy},
            },
            "class_names": NAMES,
        },
    )


EVALUATION = {
    "accuracy": 0.88,
    "per_class_accuracy": {"0": 0.91, "1": 0.97, "2": 0.76},
    "confusion_matrix": [[91, 2, 7], [1, 97, 2], [20, 4, 76]],
    "class_names": NAMES,
}


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    store = open_store((tmp_path / "models").as_uri())
    for version, accuracy in ((1, 0.85), (2, 0.87), (3, 0.86)):
        publish(store, tmp_path, version, accuracy)
    store.promote(
        MODEL, 1, run_id="mlpipe_fashion_mnist/manual__run-1", approved_by="alice", extra={"accuracy": 0.85}
    )
    store.promote(
        MODEL, 2, run_id="mlpipe_fashion_mnist/manual__run-2", approved_by="bob", extra={"accuracy": 0.87}
    )
    store.rollback(
        MODEL, run_id="mlpipe_rollback_production/manual__rb", requested_by="carol", reason="bad shoes"
    )
    store.record_evaluation(MODEL, 3, "staging", EVALUATION)
    store.record_evaluation(
        MODEL, 1, "staging", {**EVALUATION, "per_class_accuracy": {"0": 0.8, "1": 0.9, "2": 0.7}}
    )
    return store


def test_model_versions_aliases_approvers_and_timeline(store: ModelStore) -> None:
    data = ModelsData(store)
    assert data.overview() == [
        {"name": MODEL, "versions": 3, "latest": 3, "production": {"version": 1, "accuracy": 0.85}}
    ]
    body = data.model(MODEL)
    assert body["production"] == {"version": 1, "accuracy": 0.85}
    rows = {row["version"]: row for row in body["versions"]}
    assert rows[1]["aliases"] == ["production"] and rows[2]["aliases"] == ["previous"]
    assert (rows[1]["approved_by"], rows[2]["approved_by"], rows[3]["approved_by"]) == ("alice", "bob", None)
    assert rows[2]["digest"] == f"sha256:{2:064x}" and rows[2]["dataset_checksum"] == f"{2:032x}"
    assert rows[2]["accuracy"] == 0.87 and rows[2]["created_at"]
    assert rows[2]["run"] == {
        "dag_id": "mlpipe_fashion_mnist",
        "run_id": "manual__run-2",
        "path": "/dags/mlpipe_fashion_mnist/runs/manual__run-2",
    }
    # Newest first: the rollback (who and why), then the two promotions.
    assert [(t["kind"], t["version"], t["who"]) for t in body["timeline"]] == [
        ("rollback", 1, "carol"),
        ("promotion", 2, "bob"),
        ("promotion", 1, "alice"),
    ]
    assert "bad shoes" in body["timeline"][0]["why"]


def test_version_against_production_uses_the_recorded_evaluations(store: ModelStore) -> None:
    body = ModelsData(store).version(MODEL, 3)
    assert body["per_class_source"] == "staging evaluation"
    assert body["per_class_accuracy"] == EVALUATION["per_class_accuracy"]
    assert body["confusion_matrix"] == EVALUATION["confusion_matrix"]
    assert body["production"] == {
        "version": 1,
        "accuracy": 0.85,
        "per_class_accuracy": {"0": 0.8, "1": 0.9, "2": 0.7},
    }
    # Without a recorded evaluation: the training split's per-class accuracy, and no confusion matrix.
    body = ModelsData(store).version(MODEL, 2)
    assert body["per_class_source"] == "training test split"
    assert body["confusion_matrix"] is None


def test_a_promotion_shows_on_the_next_read(tmp_path: Path) -> None:
    """The page read the aliases (the approval's pictures do, while the run waits); the approver promotes;
    the next read shows the new production, not a cached one."""
    store = open_store((tmp_path / "models").as_uri())
    publish(store, tmp_path, 1, 0.8)
    data = ModelsData(store)
    assert data.model(MODEL)["production"] is None
    store.promote(MODEL, 1, run_id="mlpipe_fashion_mnist/run-1", approved_by="alice", extra={"accuracy": 0.8})
    assert data.model(MODEL)["production"] == {"version": 1, "accuracy": 0.8}
    assert {row["version"]: row["aliases"] for row in data.model(MODEL)["versions"]} == {1: ["production"]}


def test_no_production_yet(tmp_path: Path) -> None:
    store = open_store((tmp_path / "models").as_uri())
    publish(store, tmp_path, 1, 0.8)
    data = ModelsData(store)
    assert data.model(MODEL)["production"] is None
    assert data.version(MODEL, 1)["production"] is None


def test_500_versions_read_each_manifest_once(tmp_path: Path) -> None:
    root = tmp_path / "models"
    store = open_store(root.as_uri())
    for version in range(1, 501):
        publish(store, tmp_path, version, 0.8 + version / 10_000)
    backend = CountingBackend(root)
    data = ModelsData(ModelStore(backend))  # aliases and the version list are read on every call
    first = data.model(MODEL)
    assert len(first["versions"]) == 500
    assert backend.reads["manifest"] == 500
    second: Any = data.model(MODEL)
    assert second == first
    assert backend.reads["manifest"] == 500  # published versions never change: not read again
