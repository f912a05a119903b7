"""Operators open an oss:// store with the Airflow connection named by their `oss_conn_id`, here against the
OSS protocol EMULATOR (tests/emulators/oss_server.py, in this process on 127.0.0.1; not Alibaba Cloud OSS),
which checks every request's signature: only the right connection's keys get an answer."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk.execution_time.context import OutletEventAccessors

from airflow_provider_mlpipe.exceptions import StoreAccessDenied
from airflow_provider_mlpipe.modelstore import ModelStore, open_store
from airflow_provider_mlpipe.modelstore.oss import OssCredentials
from airflow_provider_mlpipe.operators.gates import AccuracyGateOperator
from airflow_provider_mlpipe.operators.model_store import (
    ModelAliasOperator,
    ModelPromoteOperator,
    PipelineOutcomeOperator,
)
from airflow_provider_mlpipe.operators.serving import ServingDeployOperator
from airflow_provider_mlpipe.operators.train import KubeTrainJobOperator

MODEL = "fashion_mnist"
STORE = "oss://mlpipe-models/team-b/models"
CONN_ID = "oss_team_b"


def _connection(oss: Any, secret: str) -> str:
    extra = {
        "auth_type": "AK",
        "access_key_id": oss.access_key_id,
        "access_key_secret": secret,
        "region": "cn-hangzhou",
        "endpoint": oss.endpoint,
    }
    return json.dumps({"conn_type": "oss", "extra": extra})


@pytest.fixture
def published(oss: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelStore:
    """Version 1 in the emulator; connection `oss_team_b` holds the right secret, `oss_default` a wrong one
    (a hook that ignored oss_conn_id would be refused), and no OSS_* variables to fall back on."""
    for key in ("OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET", "OSS_REGION", "OSS_ENDPOINT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", _connection(oss, oss.access_key_secret))
    monkeypatch.setenv("AIRFLOW_CONN_OSS_DEFAULT", _connection(oss, "a-wrong-secret"))
    src = tmp_path / "export"
    src.mkdir()
    (src / "saved_model.pb").write_bytes(b"graph")
    credentials = OssCredentials(oss.access_key_id, oss.access_key_secret, "cn-hangzhou", oss.endpoint)
    store = open_store(STORE, credentials=credentials)
    store.publish(MODEL, 1, src, {"run_id": "run-1"})
    return store


def _operators(**store_args: Any) -> list[Any]:
    return [
        KubeTrainJobOperator(task_id="train", image="reg/ns/train:1", **store_args),
        ServingDeployOperator(task_id="deploy_staging", endpoint="staging", version=1, **store_args),
        ModelAliasOperator(task_id="set_staging_alias", alias="staging", version=1, **store_args),
        AccuracyGateOperator(
            task_id="accuracy_gate",
            metrics={"accuracy": 0.9},
            min_accuracy=0.5,
            pass_task_id="approval",
            fail_task_id="accuracy_rejected",
            **store_args,
        ),
        ModelPromoteOperator(task_id="promote_model", version=1, **store_args),
        PipelineOutcomeOperator(task_id="record_outcome", **store_args),
    ]


def test_every_store_operator_reads_the_store_through_its_oss_conn_id(published: ModelStore) -> None:
    for operator in _operators(model_store=STORE, oss_conn_id=CONN_ID):
        assert operator.store_hook.oss_conn_id == CONN_ID, operator.task_id
        assert operator.store_hook.store.published_versions(MODEL) == [1], operator.task_id


def test_the_default_connection_is_still_oss_default(published: ModelStore) -> None:
    for operator in _operators(model_store=STORE):
        assert operator.store_hook.oss_conn_id == "oss_default", operator.task_id
    with pytest.raises(StoreAccessDenied, match="SignatureDoesNotMatch"):
        ModelPromoteOperator(task_id="promote_model", version=1, model_store=STORE).execute(
            {"dag": SimpleNamespace(dag_id="dag"), "run_id": "r", "outlet_events": OutletEventAccessors()}
        )


def test_promotion_through_a_non_default_connection(published: ModelStore) -> None:
    operator = ModelPromoteOperator(
        task_id="promote_model", version=1, model_store=STORE, oss_conn_id=CONN_ID
    )
    record = operator.execute(
        {"dag": SimpleNamespace(dag_id="dag"), "run_id": "r", "outlet_events": OutletEventAccessors()}
    )
    assert published.get_alias(MODEL, "production") == record
    assert (record["version"], record["run_id"]) == (1, "dag/r")
