"""BatchScoringOperator against the real serving server holding a real Keras model (the `served` fixture of
the AccuracySensor tests: 13 tabular features, 3 classes): it scores with the version the production asset's
event names, else the store's production alias, and writes one CSV of predictions.

Emulated: the task context (run ids, and the triggering asset events built with the Task SDK's own
TriggeringAssetEventsAccessor from the records the API server would send).
"""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult
from airflow.sdk.execution_time.context import TriggeringAssetEventsAccessor

from airflow_provider_mlpipe.assets import PRODUCTION_ALIAS, production_asset
from airflow_provider_mlpipe.evaluation import write_evaluation_data
from airflow_provider_mlpipe.exceptions import ModelStoreError
from airflow_provider_mlpipe.modelstore import open_store
from airflow_provider_mlpipe.operators.scoring import BatchScoringOperator
from tests.unit.sensors.test_accuracy_sensor import MODEL, NAMES, Served, served  # noqa: F401

RUN_ID = "asset_triggered__2026-12-01T10:00:00+00:00"


def event_for(version: int) -> AssetEventDagRunReferenceResult:
    asset = production_asset(MODEL)
    return AssetEventDagRunReferenceResult(
        asset={"name": asset.name, "uri": asset.uri, "extra": {}},
        extra={"event": "promoted", "model_name": MODEL, "version": version, "accuracy": 0.9},
        source_task_id="promote_model",
        source_dag_id="mlpipe_fashion_mnist",
        source_run_id="manual__1",
        source_map_index=-1,
        source_aliases=[{"name": PRODUCTION_ALIAS}],
        timestamp=datetime(2026, 12, 1, 10, tzinfo=UTC),
    )


def context(events: list[AssetEventDagRunReferenceResult]) -> Any:
    return {
        "dag": SimpleNamespace(dag_id="mlpipe_batch_scoring"),
        "run_id": RUN_ID,
        "triggering_asset_events": TriggeringAssetEventsAccessor.build(events),
    }


def scorer(served: Served, data: Path, out: Path, **kwargs: Any) -> BatchScoringOperator:  # noqa: F811
    return BatchScoringOperator(
        task_id="score",
        model_name=MODEL,
        input=str(data),
        endpoint_url=served.url,
        output_dir=str(out),
        model_store=served.store_uri,
        batch_size=40,
        transient_retry={"attempts": 1},
        **kwargs,
    )


@pytest.fixture
def data(served: Served, tmp_path: Path) -> Path:  # noqa: F811
    path = tmp_path / "to-score.npz"
    write_evaluation_data(path, served.x_test, served.y_test, class_names=NAMES)
    return path


def rows(path: str) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_scores_with_the_version_the_asset_event_names(served: Served, data: Path, tmp_path: Path) -> None:  # noqa: F811
    result = scorer(served, data, tmp_path / "scores").execute(context([event_for(1)]))
    assert (result["version"], result["rows"]) == (1, len(served.x_test))
    assert (
        Path(result["output"]).name
        == f"{MODEL}-v1-mlpipe_batch_scoring_{RUN_ID.replace(':', '_').replace('+', '_')}.csv"
    )
    written = rows(result["output"])
    assert [int(r["class"]) for r in written] == served.expected_pred.tolist()
    assert [r["class_name"] for r in written] == [NAMES[i] for i in served.expected_pred]
    assert sum(result["class_counts"].values()) == len(served.x_test)


def test_limit_and_fallback_to_the_production_alias(served: Served, data: Path, tmp_path: Path) -> None:  # noqa: F811
    operator = scorer(served, data, tmp_path / "scores", limit=7)
    store = open_store(served.store_uri)
    if store.get_alias(MODEL, "production") is None:
        with pytest.raises(ModelStoreError, match="no production model"):
            operator.execute(context([]))
        store.promote(MODEL, 1, run_id="seed", approved_by="carol", extra={})
    result = operator.execute(context([]))
    assert (result["version"], result["rows"]) == (1, 7)
    assert [int(r["class"]) for r in rows(result["output"])] == served.expected_pred[:7].tolist()
