"""The `local` runtime through the operators, with real processes: the training and serving images are
stood in for by tests/unit/runtimes/fake_trainer.py and fake_server.py (no TensorFlow), started, adopted,
waited for (the real triggers) and stopped by the runtime as in production."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_mlpipe.exceptions import ServingError, TrainingError
from airflow_provider_mlpipe.hooks.local_process import RUNNING, LocalProcessHook
from airflow_provider_mlpipe.modelstore import open_store
from airflow_provider_mlpipe.operators.serving import ServingDeployOperator, ServingTeardownOperator
from airflow_provider_mlpipe.operators.train import KubeTrainJobOperator
from airflow_provider_mlpipe.runtimes import local
from airflow_provider_mlpipe.runtimes.local import LocalRuntime
from airflow_provider_mlpipe.triggers.local_process import LocalProcessTrigger
from airflow_provider_mlpipe.triggers.serving import ServingReadyTrigger
from tests.kubernetes_emulator import execute_until_deferred, first_event, make_context, resume

TRAIN = "train-fashion-mnist-v1"


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    state = tmp_path / "state"
    monkeypatch.setenv("AIRFLOW__MLPIPE__LOCAL_STATE_DIR", str(state))
    monkeypatch.setenv("AIRFLOW__MLPIPE__LOCAL_HOST", "127.0.0.1")
    monkeypatch.setattr(local, "TRAINER_MODULE", "tests.unit.runtimes.fake_trainer")
    monkeypatch.setattr(local, "SERVER_MODULE", "tests.unit.runtimes.fake_server")
    yield state
    hook = LocalProcessHook(str(state))
    for pdir in state.glob("*"):
        if pdir.is_dir() and ".attempt-" not in pdir.name and pdir.name != "model-cache":
            hook.stop(pdir.name, timeout=10)


def train_op(store_uri: str, **kwargs: Any) -> KubeTrainJobOperator:
    return KubeTrainJobOperator(
        task_id="train", image="reg.io/ns/trainer:1", model_store=store_uri, poll_interval=0.05, **kwargs
    )


async def test_training_runs_defers_and_returns_the_versions_metrics(state_dir: Path, store_uri: str) -> None:
    context = make_context()
    op = train_op(store_uri)
    deferred = await asyncio.to_thread(execute_until_deferred, op, context)
    assert isinstance(deferred.trigger, LocalProcessTrigger)
    assert deferred.method_name == "execute_complete"
    assert deferred.kwargs == {
        "version": 1,
        "handle": {
            "resource": f"local process {TRAIN}",
            "process": TRAIN,
            "process_dir": str(state_dir / TRAIN),
        },
    }
    assert deferred.timeout == timedelta(hours=6, minutes=5)
    event = await first_event(deferred.trigger)
    assert event["status"] == "success" and event["details"]["exit_code"] == 0
    result = resume(op, context, deferred, event)
    assert result["version"] == 1 and result["test_accuracy"] == 0.91
    assert context["ti"].xcoms["task", "model_uri"] == result["model_uri"]


async def test_a_retry_adopts_the_running_training(
    state_dir: Path, store_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_TRAINER_SECONDS", "2")
    context = make_context()
    first = await asyncio.to_thread(execute_until_deferred, train_op(store_uri), context)
    second = await asyncio.to_thread(execute_until_deferred, train_op(store_uri), context)
    assert first.kwargs == second.kwargs
    # One process was started: the second attempt archived nothing.
    assert [p.name for p in state_dir.iterdir() if p.name.startswith(TRAIN)] == [TRAIN]
    assert (await first_event(second.trigger))["status"] == "success"


async def test_failed_training_names_the_process_the_reason_and_the_output(
    state_dir: Path, store_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_TRAINER", "fail")
    context = make_context()
    op = train_op(store_uri)
    deferred = await asyncio.to_thread(execute_until_deferred, op, context)
    event = await first_event(deferred.trigger)
    assert event["status"] == "failed"
    with pytest.raises(TrainingError) as err:
        resume(op, context, deferred, event)
    text = str(err.value)
    assert f"local process {TRAIN} training fashion_mnist v1 failed: exited with code 3" in text
    assert "train: error: --dataset: no such file" in text


async def test_timeout_stops_the_training(
    state_dir: Path, store_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_TRAINER", "hang")
    context = make_context()
    op = train_op(store_uri, training_timeout=timedelta(seconds=1))
    deferred = await asyncio.to_thread(execute_until_deferred, op, context)
    event = await first_event(deferred.trigger)
    assert event["status"] == "timeout"
    with pytest.raises(TrainingError, match="did not finish in time"):
        await asyncio.to_thread(resume, op, context, deferred, event)
    assert LocalProcessHook(str(state_dir)).status(TRAIN).state != RUNNING


async def test_on_kill_before_deferral_stops_the_training(
    state_dir: Path, store_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_TRAINER", "hang")
    op = train_op(store_uri)
    await asyncio.to_thread(execute_until_deferred, op, make_context())
    await asyncio.to_thread(op.on_kill)
    status = LocalProcessHook(str(state_dir)).status(TRAIN)
    assert status.state != RUNNING and status.stopped


def test_on_kill_of_a_task_that_started_nothing_does_nothing(store_uri: str) -> None:
    train_op(store_uri).on_kill()


async def test_a_0_1_0_deferral_resumes(state_dir: Path, store_uri: str) -> None:
    """A task deferred by 0.1.0 resumes with its stored kwargs (just the version) and, if the trigger fired
    before the upgrade, the event of the time."""
    context = make_context()
    op = train_op(store_uri)
    deferred = await asyncio.to_thread(execute_until_deferred, op, context)
    await first_event(deferred.trigger)
    old_event = {"status": "success", "process_dir": "x", "exit_code": 0, "message": "exited 0", "tail": []}
    assert op.execute_complete(context, old_event, version=1)["version"] == 1
    old_failure = {
        "status": "lost",
        "process_dir": "x",
        "exit_code": None,
        "message": "lost it",
        "tail": ["a"],
    }
    with pytest.raises(
        TrainingError, match=f"local process {TRAIN} training fashion_mnist v1 failed: lost it"
    ):
        op.execute_complete(context, old_failure, version=1)


# --- serving ----------------------------------------------------------------------------------------


@pytest.fixture
def published(tmp_path: Path, store_uri: str) -> str:
    store = open_store(store_uri)
    for version in (1, 2):
        src = tmp_path / f"v{version}"
        src.mkdir()
        (src / "saved_model.pb").write_bytes(b"pb")
        store.publish("fashion_mnist", version, src, {"metrics": {}})
    return store_uri


def deploy_op(store_uri: str, version: int | None, **kwargs: Any) -> ServingDeployOperator:
    kwargs = {"task_id": "deploy_staging", "endpoint": "staging", **kwargs}
    return ServingDeployOperator(
        version=version,
        model_store=store_uri,
        poll_interval=0.05,
        **kwargs,
    )


async def deploy(op: ServingDeployOperator, context: Any) -> tuple[Any, dict[str, Any]]:
    deferred = await asyncio.to_thread(execute_until_deferred, op, context)
    assert isinstance(deferred.trigger, ServingReadyTrigger)
    return deferred, await first_event(deferred.trigger)


async def test_serving_deploys_adopts_replaces_and_tears_down(state_dir: Path, published: str) -> None:
    context = make_context()
    op = deploy_op(published, 1)
    deferred, event = await deploy(op, context)
    name = deferred.kwargs["handle"]["name"]
    assert name.startswith("serve-fashion-mnist-staging-")
    assert deferred.kwargs["previous"] is None and deferred.timeout == timedelta(minutes=12)
    result = resume(op, context, deferred, event)
    assert result == {
        "endpoint": "staging",
        "name": name,
        "url": deferred.kwargs["handle"]["url"],
        "model_name": "fashion_mnist",
        "version": 1,
        "previous_version": None,
    }
    hook = LocalProcessHook(str(state_dir))
    pid = hook.status(name).pid

    # A retried task adopts the server that runs the version; another version replaces it.
    again, event = await deploy(deploy_op(published, 1), context)
    assert resume(op, context, again, event)["url"] == result["url"] and hook.status(name).pid == pid
    op2 = deploy_op(published, 2)
    newer, event = await deploy(op2, context)
    assert resume(op2, context, newer, event)["previous_version"] == 1 and hook.status(name).pid != pid

    teardown = ServingTeardownOperator(task_id="teardown", endpoint="staging")
    assert (await asyncio.to_thread(teardown.execute, context)) == {
        "endpoint": "staging",
        "name": name,
        "was": "failed",
    }
    assert not hook.process_dir(name).exists()
    assert (await asyncio.to_thread(teardown.execute, context))["was"] == "absent"


async def test_a_server_that_dies_fails_the_task_with_its_output(
    state_dir: Path, published: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_SERVER", "fail")
    context = make_context()
    op = deploy_op(published, 1)
    deferred, event = await deploy(op, context)
    assert event["status"] == "failed"
    with pytest.raises(ServingError) as err:
        await asyncio.to_thread(resume, op, context, deferred, event)
    name = deferred.kwargs["handle"]["name"]
    assert (
        f"staging endpoint {name} did not become ready with fashion_mnist v1: server process failed"
        in str(err.value)
    )
    assert "in use" in str(err.value)


async def test_unresolved_rollback_tears_the_endpoint_down(state_dir: Path, published: str) -> None:
    context = make_context()
    op = deploy_op(published, 1)
    deferred, event = await deploy(op, context)
    resume(op, context, deferred, event)
    rollback = deploy_op(published, None, from_alias="production", teardown_if_unresolved=True)
    result = await asyncio.to_thread(rollback.execute, context)
    assert result == {"endpoint": "staging", "url": None, "version": None, "previous_version": 1}
    assert LocalProcessHook(str(state_dir)).status(deferred.kwargs["handle"]["name"]).state == "absent"


def test_the_runtime_does_no_io_when_built(tmp_path: Path) -> None:
    runtime = LocalRuntime(state_dir=str(tmp_path / "nowhere"))
    runtime.cancel()
    assert not (tmp_path / "nowhere").exists()


async def test_each_model_has_its_own_production_port_and_a_taken_one_is_refused(
    state_dir: Path, published: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two models in production on one machine: `[mlpipe] production_ports` gives each its port; a model
    without an entry falls back to `production_port`, and taking another model's port is refused (its
    server would be replaced) with the setting to change."""
    from airflow_provider_mlpipe.demo.stack import free_port

    store = open_store(published)
    for model in ("digits", "churn"):
        src = tmp_path / f"{model}-v1"
        src.mkdir()
        (src / "saved_model.pb").write_bytes(b"pb")
        store.publish(model, 1, src, {"metrics": {}})
    fashion_port, digits_port = free_port(), free_port()
    monkeypatch.setenv("AIRFLOW__MLPIPE__PRODUCTION_PORT", str(fashion_port))
    monkeypatch.setenv("AIRFLOW__MLPIPE__PRODUCTION_PORTS", f"digits = {digits_port}")
    context = make_context()
    urls = {}
    for model in ("fashion_mnist", "digits"):
        op = deploy_op(published, 1, endpoint="production", model_name=model, task_id=f"deploy_{model}")
        deferred, event = await deploy(op, context)
        urls[model] = resume(op, context, deferred, event)["url"]
    assert urls == {
        "fashion_mnist": f"http://127.0.0.1:{fashion_port}",
        "digits": f"http://127.0.0.1:{digits_port}",
    }

    clash = deploy_op(published, 1, endpoint="production", model_name="churn", task_id="deploy_churn")
    with pytest.raises(ServingError) as err:
        await asyncio.to_thread(clash.execute, context)
    assert str(err.value) == (
        f"endpoint serve-churn-production: port {fashion_port} is held by serve-fashion-mnist-production; "
        "give churn a port of its own: [mlpipe] production_ports = churn=<port>"
    )
    # The refused deploy left the other model's server alone.
    assert LocalProcessHook(str(state_dir)).status("serve-fashion-mnist-production").state == RUNNING


PORT = "an integer TCP port (1-65535)"


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (
            "digits",
            "[mlpipe] production_ports='digits' is invalid: expected comma-separated model=port pairs",
        ),
        (
            "digits=http",
            "[mlpipe] production_ports[digits]='http' is invalid: expected an integer TCP port (1-65535)",
        ),
        (
            "digits=70000",
            "[mlpipe] production_ports[digits]='70000' is invalid: expected an integer TCP port (1-65535)",
        ),
    ],
)
def test_a_bad_production_ports_setting_names_itself(
    setting: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_mlpipe import config
    from airflow_provider_mlpipe.exceptions import ConfigError

    monkeypatch.setenv("AIRFLOW__MLPIPE__PRODUCTION_PORTS", setting)
    with pytest.raises(ConfigError) as err:
        config.production_port("digits")
    assert str(err.value) == message


def test_the_trainer_gets_the_contract_environment_and_the_pipelines_command(
    tmp_path: Path, store_uri: str
) -> None:
    """The local runtime runs the pipeline's stand-in for the image with the same variables a Job's pod
    gets (manifests.train_job), `python` being this worker's interpreter."""
    import sys

    from airflow_provider_mlpipe.hooks.model_store import ModelStoreHook
    from airflow_provider_mlpipe.runtimes.base import TrainingSpec

    spec = TrainingSpec(
        model_name="digits",
        image="reg.io/team/digits:1",
        digest="sha256:" + "a" * 64,
        store=ModelStoreHook(store_uri),
        dataset="/data/digits",
        hyperparameters={"epochs": 3, "learning_rate": 0.01},
        timeout=timedelta(minutes=5),
        poll_interval=1,
        command=("python", "team/train.py", "--fast"),
    )
    assert LocalRuntime.trainer_command(spec) == [sys.executable, "team/train.py", "--fast"]
    assert LocalRuntime.trainer_environment(spec, 4, "dag/run") == {
        "MLPIPE_MODEL_STORE": open_store(store_uri).uri,
        "MLPIPE_MODEL_NAME": "digits",
        "MLPIPE_MODEL_VERSION": "4",
        "MLPIPE_IMAGE": "reg.io/team/digits:1",
        "MLPIPE_IMAGE_DIGEST": "sha256:" + "a" * 64,
        "MLPIPE_RUN_ID": "dag/run",
        "MLPIPE_DATASET": "/data/digits",
        "MLPIPE_EPOCHS": "3",
        "MLPIPE_LEARNING_RATE": "0.01",
    }
    bundled = TrainingSpec(**{**spec.__dict__, "command": ()})
    assert LocalRuntime.trainer_command(bundled) == [sys.executable, "-m", local.TRAINER_MODULE]
