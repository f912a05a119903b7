"""Fault matrix on the production-like stack: PostgreSQL metadata database, CeleryExecutor with two
Celery workers on Redis, TWO schedulers running at once, a triggerer, a dag-processor and an api-server,
all separate processes started here. The local runtime runs real TensorFlow training and a real serving
server; faults are real signals (kill -9) sent to real processes. Nothing is emulated.

Each test injects one fault into one run and asserts the outcome the README's fault matrix promises. The
fault lands while the step is held in the state the test needs (a hold point, see holds.py), never by
racing the step with a clock; whatever a test kills is started again before the next test.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_mlpipe.demo.stack import AirflowClient, AirflowStack, StackConfig, free_port
from airflow_provider_mlpipe.holds import HELD, env_name
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


class Holds:
    """The stack's hold points (airflow_provider_mlpipe/holds.py): a file per point, which the trainer and
    the serving servers of this stack wait on while it exists."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, point: str) -> Path:
        return self.root / point

    def env(self) -> dict[str, str]:
        return {env_name(point): str(self.path(point)) for point in ("training_epoch", "predict")}

    def hold(self, point: str) -> None:
        self.path(point).touch()

    def release(self, point: str) -> None:
        self.path(point).unlink(missing_ok=True)

    def release_all(self) -> None:
        for path in self.root.iterdir():
            path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def holds(tmp_path_factory: pytest.TempPathFactory) -> Holds:
    return Holds(tmp_path_factory.mktemp("holds"))


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    fashion_mnist_dir: Path,
    postgres_database: Callable[[], str],
    holds: Holds,
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
            env=holds.env(),
        )
    )
    with airflow.running(DAG_ID, ("api-server", "scheduler", "scheduler-2", "dag-processor", "triggerer")):
        yield airflow


@pytest.fixture(autouse=True)
def restored(stack: AirflowStack, holds: Holds) -> Iterator[None]:
    """Whatever a test broke is mended before the next one starts: its holds released, every component it
    killed running and Airflow healthy again."""
    try:
        yield
    finally:
        holds.release_all()
        stack.restore()


@pytest.fixture(scope="module")
def admin(stack: AirflowStack) -> AirflowClient:
    return stack.client("admin")


def _hook(stack: AirflowStack) -> LocalProcessHook:
    return LocalProcessHook(str(stack.home / "mlpipe" / "state"))


def _train_dirs(stack: AirflowStack, version: int) -> list[Path]:
    """The training process directory of `version` and any archived earlier attempts of it."""
    return sorted(_hook(stack).state_dir.glob(f"train-fashion-mnist-v{version}*"))


def _wait_for_line(what: str, paths: Callable[[], Iterable[Path]], text: str, timeout: float = 300) -> Path:
    """Wait until one of `paths()` has a line containing `text` (an event the step logs); the timeout only
    bounds a failure."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in paths():
            if path.exists() and text in path.read_text(errors="replace"):
                return path
        time.sleep(0.2)
    raise TimeoutError(f"{what}: no {text!r} within {timeout:.0f} s")


def _held_training(stack: AirflowStack, admin: AirflowClient, run_id: str) -> Path:
    """The training process directory of `run_id`, once its trainer is held at an epoch's start."""

    def logs() -> Iterator[Path]:
        for pdir in _hook(stack).state_dir.glob("train-fashion-mnist-v*"):
            spec = json.loads((pdir / "spec.json").read_text()) if (pdir / "spec.json").exists() else {}
            if spec.get("metadata", {}).get("run") == f"{DAG_ID}/{run_id}":
                yield pdir / "output.log"

    try:
        return _wait_for_line(f"training of {run_id}", logs, f"{HELD} training_epoch").parent
    except TimeoutError as err:
        raise TimeoutError(f"{err}; tasks: {admin.task_states(DAG_ID, run_id)}") from None


def _approve_and_finish(stack: AirflowStack, admin: AirflowClient, run_id: str) -> dict[str, str | None]:
    states = admin.wait_for_run(DAG_ID, run_id, timeout=600, until_task=("approval", "awaiting_input"))
    assert states.get("approval") == "awaiting_input", states
    assert stack.respond(admin, DAG_ID, run_id, "approval", "Approve").status_code == 200
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


def test_scheduler_kill_9_during_training_then_restart(
    stack: AirflowStack, admin: AirflowClient, holds: Holds
) -> None:
    holds.hold("training_epoch")
    run_id = admin.trigger(DAG_ID, CONF, run_id="fault-scheduler-kill")
    pdir = _held_training(stack, admin, run_id)
    for scheduler in ("scheduler", "scheduler-2"):
        stack.kill_component(scheduler, signal.SIGKILL)
    # No scheduler at all: the training is still there, and once released it goes on by itself.
    assert _hook(stack).status(pdir.name).state == RUNNING
    holds.release("training_epoch")
    _wait_for_line("training without a scheduler", lambda: [pdir / "output.log"], "epoch 1/")
    assert not {"scheduler", "scheduler-2"} & set(stack.procs)
    for scheduler in ("scheduler", "scheduler-2"):
        stack.start_component(scheduler)
    states = _approve_and_finish(stack, admin, run_id)
    assert admin.run_state(DAG_ID, run_id) == "success", states
    _assert_trained_once(stack, admin, run_id)
    assert _try_numbers(admin, run_id)["train"] == 1


def test_triggerer_kill_9_during_deferred_wait_then_restart(
    stack: AirflowStack, admin: AirflowClient, holds: Holds
) -> None:
    holds.hold("training_epoch")
    run_id = admin.trigger(DAG_ID, CONF, run_id="fault-triggerer-kill")
    pdir = _held_training(stack, admin, run_id)
    # Held, the training cannot end: the task reaches its deferred wait and stays there.
    admin.wait_for_run(DAG_ID, run_id, timeout=300, until_task=("train", "deferred"), interval=0.2)
    stack.kill_component("triggerer", signal.SIGKILL)
    assert _hook(stack).status(pdir.name).state == RUNNING
    holds.release("training_epoch")
    _wait_for_line("training without a triggerer", lambda: [pdir / "output.log"], "epoch 1/")
    stack.start_component("triggerer")
    states = _approve_and_finish(stack, admin, run_id)
    assert admin.run_state(DAG_ID, run_id) == "success", states
    _assert_trained_once(stack, admin, run_id)
    assert _try_numbers(admin, run_id)["train"] == 1


def test_celery_workers_kill_9_while_train_task_runs(
    stack: AirflowStack, admin: AirflowClient, holds: Holds
) -> None:
    """Both workers die as soon as the train task is seen running: whichever moment that hits (before the
    trainer starts, before the task defers, or after), the run completes and exactly one training ran.
    The training is held meanwhile, so it cannot finish before the kill."""
    holds.hold("training_epoch")
    run_id = admin.trigger(DAG_ID, CONF, run_id="fault-worker-kill")
    admin.wait_for_run(
        DAG_ID, run_id, timeout=300, until_task=("train", ("running", "deferred")), interval=0.05
    )
    for worker in ("celery-worker-1", "celery-worker-2"):
        stack.kill_component(worker, signal.SIGKILL)
    for worker in ("celery-worker-1", "celery-worker-2"):
        stack.start_component(worker)
    holds.release("training_epoch")
    states = _approve_and_finish(stack, admin, run_id)
    assert admin.run_state(DAG_ID, run_id) == "success", states
    _assert_trained_once(stack, admin, run_id)


def test_staging_server_killed_during_evaluation(
    stack: AirflowStack, admin: AirflowClient, holds: Holds
) -> None:
    """The staging server dies with an evaluation request in flight: the evaluation retries with backoff
    (client retries, then task retries) and fails cleanly; staging is torn down and production is
    untouched."""
    production_before = _production_version(stack)
    holds.hold("predict")
    run_id = admin.trigger(DAG_ID, CONF, run_id="fault-staging-kill")

    def staging_logs() -> list[Path]:
        return [p / "output.log" for p in _hook(stack).state_dir.glob("serve-fashion-mnist-staging-*")]

    # The evaluation's first :predict is held inside the staging server: kill the server under it.
    log = _wait_for_line("the staging evaluation", staging_logs, f"{HELD} predict")
    child = json.loads((log.parent / "child.json").read_text())["pid"]
    os.kill(child, signal.SIGKILL)
    holds.release("predict")

    states = admin.wait_for_run(DAG_ID, run_id, timeout=600)
    assert admin.run_state(DAG_ID, run_id) == "failed"
    assert states["evaluate_staging"] == "failed"
    assert _try_numbers(admin, run_id)["evaluate_staging"] == 3  # 1 try + 2 retries, then give up
    assert states["teardown_staging"] == "success"
    assert states["deploy_production"] == "upstream_failed"
    assert not list(_hook(stack).state_dir.glob("serve-fashion-mnist-staging-*"))
    # record_outcome fails the run (so it pushes no XCom); its log says why.
    task_log = "".join(
        p.read_text()
        for p in (stack.home / "logs").glob(f"dag_id={DAG_ID}/run_id={run_id}/task_id=record_outcome/*")
    )
    assert "failed steps: evaluate_staging (not run because of them: accuracy_gate" in task_log
    assert _production_version(stack) == production_before


def test_every_task_ran_once_with_two_schedulers(admin: AirflowClient) -> None:
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
