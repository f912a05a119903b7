"""Fault matrix on the production-like stack: PostgreSQL metadata database, CeleryExecutor with two
Celery workers on Redis, TWO schedulers running at once, a triggerer, a dag-processor and an api-server,
all separate processes started here. The local runtime runs real TensorFlow training and a real serving
server; faults are real signals (kill -9) sent to real processes. Nothing is emulated.

Each test injects one fault into one run and asserts the outcome the README's fault matrix promises.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_mlpipe.demo.stack import AirflowClient, AirflowStack, StackConfig, free_port
from airflow_provider_mlpipe.hooks.local_process import RUNNING, LocalProcessHook

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

DAG_ID = "mlpipe_fashion_mnist"
# Big enough that training runs for several seconds after TensorFlow's start-up: room to inject a fault.
CONF: dict[str, Any] = {
    "image": "registry.cn-hangzhou.aliyuncs.com/mlpipe/fashion-trainer:faults",
    "runtime": "local",
    "min_accuracy": 0.5,
    "max_regression": 1.0,
    "evaluation_sample": 1000,
    "verify_sample": 300,
    "approvers": ["admin"],
    "hyperparameters": {"epochs": 3, "train_limit": 12000, "test_limit": 1000},
}


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, fashion_mnist_dir: Path, postgres_database: Callable[[], str]
) -> Iterator[AirflowStack]:
    airflow = AirflowStack(
        StackConfig(
            home=tmp_path_factory.mktemp("airflow-home"),
            port=free_port(),
            production_port=free_port(),
            dataset_dir=str(fashion_mnist_dir),
            users={"admin": ("admin", "admin-pw")},
            sql_alchemy_conn=postgres_database(),
            executor="CeleryExecutor",
            celery_workers=2,
            # A task whose worker died is noticed after this many seconds (default 300).
            extra_config={"scheduler": {"task_instance_heartbeat_timeout": "20"}},
        )
    )
    with airflow.running(DAG_ID, ("api-server", "scheduler", "scheduler-2", "dag-processor", "triggerer")):
        yield airflow


@pytest.fixture(scope="module")
def admin(stack: AirflowStack) -> AirflowClient:
    return stack.client("admin")


def _hook(stack: AirflowStack) -> LocalProcessHook:
    return LocalProcessHook(str(stack.home / "mlpipe" / "state"))


def _train_dirs(stack: AirflowStack, version: int) -> list[Path]:
    """The training process directory of `version` and any archived earlier attempts of it."""
    return sorted(_hook(stack).state_dir.glob(f"train-fashion-mnist-v{version}*"))


def _wait_training_started(stack: AirflowStack, admin: AirflowClient, run_id: str) -> Path:
    """Wait until the trainer of `run_id` is mid-training (its first epoch line is out)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        for pdir in _hook(stack).state_dir.glob("train-fashion-mnist-v*"):
            spec = json.loads((pdir / "spec.json").read_text()) if (pdir / "spec.json").exists() else {}
            log = pdir / "output.log"
            if (
                spec.get("metadata", {}).get("run") == f"{DAG_ID}/{run_id}"
                and log.exists()
                and "epoch 1/" in log.read_text()
            ):
                return pdir
        time.sleep(0.5)
    raise TimeoutError(f"training of {run_id} did not start; tasks: {admin.task_states(DAG_ID, run_id)}")


def _approve_and_finish(admin: AirflowClient, run_id: str) -> dict[str, str | None]:
    states = admin.wait_for_run(DAG_ID, run_id, timeout=600, until_task=("approval", "awaiting_input"))
    assert states.get("approval") == "awaiting_input", states
    assert admin.respond(DAG_ID, run_id, "approval", "Approve").status_code == 200
    return admin.wait_for_run(DAG_ID, run_id, timeout=600)


def _assert_trained_once(stack: AirflowStack, admin: AirflowClient, run_id: str) -> None:
    version = admin.xcom(DAG_ID, run_id, "train")["version"]
    dirs = _train_dirs(stack, version)
    assert [d.name for d in dirs] == [f"train-fashion-mnist-v{version}"], "a second training was started"
    assert (dirs[0] / "output.log").read_text().count("training model=") == 1


def _try_numbers(admin: AirflowClient, run_id: str) -> dict[str, int]:
    return {
        ti["task_id"]: ti["try_number"] for ti in admin.task_instances(DAG_ID, run_id) if ti["try_number"]
    }


def test_scheduler_kill_9_during_training_then_restart(stack: AirflowStack, admin: AirflowClient) -> None:
    run_id = admin.trigger(DAG_ID, CONF, run_id="fault-scheduler-kill")
    pdir = _wait_training_started(stack, admin, run_id)
    for scheduler in ("scheduler", "scheduler-2"):
        stack.kill_component(scheduler, signal.SIGKILL)
    time.sleep(5)
    # No scheduler at all, and the training goes on.
    assert _hook(stack).status(pdir.name).state == RUNNING
    for scheduler in ("scheduler", "scheduler-2"):
        stack.start_component(scheduler)
    states = _approve_and_finish(admin, run_id)
    assert admin.run_state(DAG_ID, run_id) == "success", states
    _assert_trained_once(stack, admin, run_id)
    assert _try_numbers(admin, run_id)["train"] == 1


def test_triggerer_kill_9_during_deferred_wait_then_restart(
    stack: AirflowStack, admin: AirflowClient
) -> None:
    run_id = admin.trigger(DAG_ID, CONF, run_id="fault-triggerer-kill")
    pdir = _wait_training_started(stack, admin, run_id)
    assert admin.task_states(DAG_ID, run_id)["train"] == "deferred"
    stack.kill_component("triggerer", signal.SIGKILL)
    time.sleep(3)
    assert _hook(stack).status(pdir.name).state == RUNNING
    stack.start_component("triggerer")
    states = _approve_and_finish(admin, run_id)
    assert admin.run_state(DAG_ID, run_id) == "success", states
    _assert_trained_once(stack, admin, run_id)
    assert _try_numbers(admin, run_id)["train"] == 1


def test_celery_workers_kill_9_while_train_task_runs(stack: AirflowStack, admin: AirflowClient) -> None:
    """Both workers die as soon as the train task is seen running: whichever moment that hits (before the
    trainer starts, before the task defers, or after), the run completes and exactly one training ran."""
    run_id = admin.trigger(DAG_ID, CONF, run_id="fault-worker-kill")
    deadline = time.monotonic() + 300
    while admin.task_states(DAG_ID, run_id).get("train") not in ("running", "deferred"):
        assert time.monotonic() < deadline, admin.task_states(DAG_ID, run_id)
        time.sleep(0.05)
    for worker in ("celery-worker-1", "celery-worker-2"):
        stack.kill_component(worker, signal.SIGKILL)
    time.sleep(2)
    for worker in ("celery-worker-1", "celery-worker-2"):
        stack.start_component(worker)
    states = _approve_and_finish(admin, run_id)
    assert admin.run_state(DAG_ID, run_id) == "success", states
    _assert_trained_once(stack, admin, run_id)


def test_staging_server_killed_during_evaluation(stack: AirflowStack, admin: AirflowClient) -> None:
    """The staging server dies: the evaluation retries with backoff (client retries, then task retries)
    and fails cleanly; staging is torn down and production is untouched."""
    production_before = _production_version(stack)
    # All 10,000 test images (ten :predict batches), and the kill lands within 0.1 s of deploy_staging's
    # success: the evaluation task still has to be scheduled, started and load its data, so the server
    # is gone before its last batch. (A 1 s poll with a 1,000-image sample once let it finish first.)
    run_id = admin.trigger(DAG_ID, {**CONF, "evaluation_sample": 0}, run_id="fault-staging-kill")
    admin.wait_for_run(DAG_ID, run_id, timeout=600, until_task=("deploy_staging", "success"), interval=0.1)
    staging = [p for p in _hook(stack).state_dir.glob("serve-fashion-mnist-staging-*") if p.is_dir()]
    assert len(staging) == 1
    child = json.loads((staging[0] / "child.json").read_text())["pid"]
    os.kill(child, signal.SIGKILL)

    def evaluation_must_not_pass(states: dict[str, str | None]) -> None:
        # Otherwise the run would park at the approval gate and the wait would only time out.
        assert states.get("evaluate_staging") != "success", "the kill came after the evaluation finished"

    states = admin.wait_for_run(DAG_ID, run_id, timeout=600, on_poll=evaluation_must_not_pass)
    assert admin.run_state(DAG_ID, run_id) == "failed"
    assert states["evaluate_staging"] == "failed"
    assert _try_numbers(admin, run_id)["evaluate_staging"] == 3  # 1 try + 2 retries, then give up
    assert states["teardown_staging"] == "success"
    assert states["deploy_production"] == "upstream_failed"
    assert not list(_hook(stack).state_dir.glob("serve-fashion-mnist-staging-*"))
    # record_outcome fails the run (so it pushes no XCom); its log says why.
    log = "".join(
        p.read_text()
        for p in (stack.home / "logs").glob(f"dag_id={DAG_ID}/run_id={run_id}/task_id=record_outcome/*")
    )
    assert "failed steps: evaluate_staging (not run because of them: accuracy_gate" in log
    assert _production_version(stack) == production_before


def test_every_task_ran_once_with_two_schedulers(stack: AirflowStack, admin: AirflowClient) -> None:
    """Two schedulers ran throughout: no task of the runs without an injected task fault ran twice."""
    for run_id in ("fault-scheduler-kill", "fault-triggerer-kill"):
        tries = _try_numbers(admin, run_id)
        assert tries and all(n == 1 for n in tries.values()), (run_id, tries)


def test_no_leftovers(stack: AirflowStack) -> None:
    hook = _hook(stack)
    running = sorted(
        p.name for p in hook.state_dir.iterdir() if p.is_dir() and hook.status(p.name).state == RUNNING
    )
    assert running == ["serve-fashion-mnist-production"]
    assert not list(hook.state_dir.glob("serve-fashion-mnist-staging-*"))


def _production_version(stack: AirflowStack) -> int | None:
    from airflow_provider_mlpipe.modelstore import open_store

    record = open_store((stack.home / "mlpipe" / "models").as_uri()).get_alias("fashion_mnist", "production")
    return int(record["version"]) if record else None
