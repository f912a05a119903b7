"""One approval gate per run, the pipeline's own ApprovalSensor: runs park there waiting for a human."""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param

from airflow_provider_mlpipe.sensors.approval import ApprovalSensor

with DAG(
    dag_id="bench_parked_approval",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1000,
    max_active_tasks=1000,
    params={"approvers": Param(["admin"], type="array")},
    tags=["benchmark"],
):
    ApprovalSensor(
        task_id="approval",
        evidence={"training": {"model_name": "fashion_mnist", "version": 1}},
        retries=0,
    )
