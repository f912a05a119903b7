"""Eight no-op Python tasks in a chain: what the orchestrator alone costs between consecutive tasks.

Real tasks (not EmptyOperator, which the scheduler completes without running anything): each one is
queued, handed to the executor, started in a task process and reported back, like every pipeline step."""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, chain, task


@task
def noop() -> None:
    return None


with DAG(
    dag_id="bench_noop_chain",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["benchmark"],
):
    chain(*[noop.override(task_id=f"noop_{i}")() for i in range(1, 9)])
