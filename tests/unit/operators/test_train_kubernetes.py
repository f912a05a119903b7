"""KubeTrainJobOperator with runtime=kubernetes and KubernetesJobTrigger against an emulated Kubernetes API
(real HTTP, the provider's KubernetesHook/AsyncKubernetesHook; see tests/kubernetes_emulator.py for what
is emulated). No controller runs: the tests add the Job's pod, its log and its final status themselves,
and "publish" the model version as the training pod would have. No admission or RBAC runs either: after each
test, every object the operator sent is validated strictly (Kubernetes 1.30 and 1.35 schemas) and every
request checked against deploy/rbac.yaml (`check_sent`)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_mlpipe import manifests
from airflow_provider_mlpipe.exceptions import ConfigError, TrainingError
from airflow_provider_mlpipe.modelstore import open_store
from airflow_provider_mlpipe.operators.train import KubeTrainJobOperator
from airflow_provider_mlpipe.triggers.kubernetes_job import KubernetesJobTrigger
from tests.kubernetes_emulator import (
    CONN_ID,
    NAMESPACE,
    EmulatedCluster,
    check_sent,
    configure,
    emulated_cluster,
    execute_until_deferred,
    first_event,
    make_context,
    resume,
)

DIGEST = "sha256:" + "ab" * 32
SECRET_ID = "LTAI5tEMULATEDKEYID0000"
SECRET_KEY = "emulated-secret-access-key-must-never-leak"


@pytest.fixture
def k8s(k8s: EmulatedCluster, monkeypatch: pytest.MonkeyPatch) -> EmulatedCluster:
    """The operators' checked cluster (conftest.py), and the worker's own OSS credentials."""
    # Credentials the Airflow worker itself may hold: none may reach a manifest, an XCom or a log.
    monkeypatch.setenv("OSS_ACCESS_KEY_ID", SECRET_ID)
    monkeypatch.setenv("OSS_ACCESS_KEY_SECRET", SECRET_KEY)
    return k8s


def operator(store_uri: str, **kwargs: Any) -> KubeTrainJobOperator:
    return KubeTrainJobOperator(
        task_id="train",
        image="registry.example.com/mlpipe/trainer:1",
        digest=DIGEST,
        runtime="kubernetes",
        model_store=store_uri,
        hyperparameters={"epochs": 2},
        poll_interval=0.05,
        **kwargs,
    )


def publish(store_uri: str, version: int, tmp_path: Path) -> None:
    """What the training pod does at its end."""
    src = tmp_path / f"export-{version}"
    src.mkdir()
    (src / "saved_model.pb").write_bytes(b"pb")
    open_store(store_uri).publish(
        "fashion_mnist", version, src, {"metrics": {"test_accuracy": 0.9}, "image": "x", "digest": DIGEST}
    )


def assert_no_credentials(k8s: EmulatedCluster, *texts: str) -> None:
    bodies = json.dumps([k8s.get("jobs", n) for n in k8s.names("jobs")])
    for text in (bodies, *texts):
        assert SECRET_ID not in text and SECRET_KEY not in text


async def test_creates_the_job_follows_its_log_and_succeeds(
    k8s: EmulatedCluster, store_uri: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    context = make_context()
    op = operator(store_uri, gpus=1, node_selector={"pool": "gpu"})
    deferred = await asyncio.to_thread(execute_until_deferred, op, context)
    (name,) = k8s.names("jobs")
    assert deferred.trigger.job_name == name
    assert name == manifests.train_job_name("fashion_mnist", 1, "mlpipe_fashion_mnist/" + context["run_id"])
    job = k8s.get("jobs", name)
    assert job is not None
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"registry.example.com/mlpipe/trainer@{DIGEST}"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert job["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "gpu"}

    trigger = deferred.trigger
    assert trigger.serialize() == (
        "airflow_provider_mlpipe.triggers.kubernetes_job.KubernetesJobTrigger",
        {
            "job_name": name,
            "namespace": NAMESPACE,
            "conn_id": CONN_ID,
            "timeout_at": trigger.timeout_at,
            "poll_interval": 0.05,
            "log_pod": "",
            "log_since": "",
            "log_seen": 0,
            "transient_retry": {"attempts": 5, "base_delay": 0.5, "max_delay": 30.0},
            "stuck_after": 900.0,
        },
    )
    waiting = asyncio.create_task(first_event(trigger))
    k8s.add_job_pod(name, f"{name}-x1")
    k8s.set_log(f"{name}-x1", ["epoch 1/2 loss=0.6", "epoch 2/2 loss=0.4"])
    await asyncio.sleep(0.3)
    k8s.set_log(f"{name}-x1", ["epoch 1/2 loss=0.6", "epoch 2/2 loss=0.4", "published model=fashion_mnist"])
    publish(store_uri, 1, tmp_path)
    await asyncio.sleep(0.3)
    k8s.finish_job(name, succeeded=True)
    event = await waiting
    assert event["status"] == "success"
    result = resume(op, context, deferred, event)
    assert result["version"] == 1 and result["test_accuracy"] == 0.9

    captured = capfd.readouterr()
    log = captured.out + captured.err
    # The pod's log reached the task log, each line once.
    assert log.count("epoch 1/2 loss=0.6") == 1 and "published model=fashion_mnist" in log
    assert_no_credentials(k8s, log, json.dumps(result), json.dumps(list(context["ti"].xcoms.items())))
    assert k8s.writes() == [("create", "jobs", name)]


async def test_retry_adopts_the_job_it_created(k8s: EmulatedCluster, store_uri: str) -> None:
    context = make_context()
    first = await asyncio.to_thread(execute_until_deferred, operator(store_uri), context)
    # The worker died; the retry is a new operator instance, same run.
    second = await asyncio.to_thread(execute_until_deferred, operator(store_uri), context)
    assert first.trigger.job_name == second.trigger.job_name
    assert k8s.names("jobs") == [first.trigger.job_name]
    assert [c for c in k8s.writes() if c[0] == "create"] == [("create", "jobs", first.trigger.job_name)]


async def test_a_finished_job_is_adopted_without_waiting(
    k8s: EmulatedCluster, store_uri: str, tmp_path: Path
) -> None:
    context = make_context()
    deferred = await asyncio.to_thread(execute_until_deferred, operator(store_uri), context)
    name = deferred.trigger.job_name
    k8s.finish_job(name, succeeded=True)
    open_store(store_uri)  # the pod published, then the task was killed before it noticed:
    publish(store_uri, 1, tmp_path)
    result = await asyncio.to_thread(execute_until_deferred, operator(store_uri), context)
    assert isinstance(result, dict) and result["version"] == 1


async def test_failure_after_backoff_limit_names_reason_and_log(k8s: EmulatedCluster, store_uri: str) -> None:
    context = make_context()
    op = operator(store_uri, backoff_limit=1)
    deferred = await asyncio.to_thread(execute_until_deferred, op, context)
    name = deferred.trigger.job_name
    assert k8s.get("jobs", name)["spec"]["backoffLimit"] == 1  # type: ignore[index]
    terminated = {"exitCode": 2, "reason": "Error", "message": "dataset missing"}
    k8s.add_job_pod(name, f"{name}-a", phase="Failed", terminated=terminated)
    k8s.add_job_pod(name, f"{name}-b", phase="Failed", terminated=terminated)
    k8s.set_log(f"{name}-b", [f"line {i}" for i in range(40)] + ["train: error: --dataset: no such file"])
    k8s.finish_job(
        name,
        succeeded=False,
        reason="BackoffLimitExceeded",
        message="Job has reached the specified backoff limit",
    )
    event = await first_event(deferred.trigger)
    assert event["status"] == "failed"
    with pytest.raises(TrainingError) as err:
        resume(op, context, deferred, event)
    text = str(err.value)
    assert f"Job {NAMESPACE}/{name} " in text
    assert "BackoffLimitExceeded" in text and "exit code 2" in text and "dataset missing" in text
    assert "train: error: --dataset: no such file" in text and "line 39" in text and "line 5\n" not in text
    assert_no_credentials(k8s, text)

    # The next try starts over: the failed Job is replaced by one new Job of the same name.
    again = await asyncio.to_thread(execute_until_deferred, operator(store_uri), context)
    assert again.trigger.job_name == name
    assert k8s.writes() == [
        ("create", "jobs", name),
        ("delete(Foreground)", "jobs", name),
        ("create", "jobs", name),
    ]
    assert "conditions" not in (k8s.get("jobs", name) or {}).get("status", {})


async def test_deadline_exceeded(k8s: EmulatedCluster, store_uri: str) -> None:
    context = make_context()
    op = operator(store_uri)
    deferred = await asyncio.to_thread(execute_until_deferred, op, context)
    name = deferred.trigger.job_name
    assert k8s.get("jobs", name)["spec"]["activeDeadlineSeconds"] == 6 * 3600  # type: ignore[index]
    k8s.add_job_pod(name, f"{name}-a", phase="Failed", terminated={"exitCode": 143, "reason": "Error"})
    k8s.finish_job(
        name,
        succeeded=False,
        reason="DeadlineExceeded",
        message="Job was active longer than specified deadline",
    )
    event = await first_event(deferred.trigger)
    with pytest.raises(TrainingError) as err:
        resume(op, context, deferred, event)
    assert f"Job {NAMESPACE}/{name} " in str(err.value) and "DeadlineExceeded" in str(err.value)


async def test_trigger_timeout_deletes_the_job(k8s: EmulatedCluster, store_uri: str) -> None:
    context = make_context()
    op = operator(store_uri)
    deferred = await asyncio.to_thread(execute_until_deferred, op, context)
    name = deferred.trigger.job_name
    trigger = KubernetesJobTrigger(**{**deferred.trigger.serialize()[1], "timeout_at": 0.0})
    event = await first_event(trigger)
    assert event["status"] == "timeout"
    with pytest.raises(TrainingError, match="did not finish in time"):
        await asyncio.to_thread(resume, op, context, deferred, event)
    assert k8s.names("jobs") == []
    assert ("delete(Foreground)", "jobs", name) in k8s.writes()


async def test_on_kill_deletes_the_job(k8s: EmulatedCluster, store_uri: str) -> None:
    context = make_context()
    op = operator(store_uri)
    deferred = await asyncio.to_thread(execute_until_deferred, op, context)
    name = deferred.trigger.job_name
    await asyncio.to_thread(op.on_kill)  # killed before the deferral took effect
    assert k8s.names("jobs") == []
    # Killed while deferred: Airflow calls the trigger's on_kill.
    await asyncio.to_thread(execute_until_deferred, operator(store_uri), context)
    await deferred.trigger.on_kill()
    assert k8s.names("jobs") == []
    assert k8s.writes().count(("delete(Foreground)", "jobs", name)) == 2


async def test_job_deleted_under_the_trigger(k8s: EmulatedCluster, store_uri: str) -> None:
    context = make_context()
    op = operator(store_uri)
    deferred = await asyncio.to_thread(execute_until_deferred, op, context)
    name = deferred.trigger.job_name
    await deferred.trigger.on_kill()
    event = await first_event(deferred.trigger)
    assert event["status"] == "gone"
    with pytest.raises(TrainingError) as err:
        resume(op, context, deferred, event)
    assert f"Job {NAMESPACE}/{name} " in str(err.value) and "no longer exists" in str(err.value)


def test_unpinned_image_is_refused_before_anything_happens(k8s: EmulatedCluster, store_uri: str) -> None:
    op = KubeTrainJobOperator(
        task_id="train", image="reg.io/ns/trainer:1", runtime="kubernetes", model_store=store_uri
    )
    with pytest.raises(ConfigError, match="digest"):
        op.execute(make_context())
    assert k8s.calls == []
    assert open_store(store_uri).published_versions("fashion_mnist") == []


async def test_the_connection_namespace_is_where_the_job_goes(
    k8s: EmulatedCluster, store_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No `[mlpipe] kubernetes_namespace` and no operator namespace: the connection's extra decides, for
    the operator (sync hook) and, through the trigger's kwargs, for the trigger (async hook)."""
    monkeypatch.delenv("AIRFLOW__MLPIPE__KUBERNETES_NAMESPACE")
    extra = {"kube_config": k8s.kubeconfig(), "namespace": "ml-prod"}
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps({"conn_type": "kubernetes", "extra": extra})
    )
    deferred = await asyncio.to_thread(execute_until_deferred, operator(store_uri), make_context())
    name = deferred.trigger.job_name
    assert k8s.names("jobs", namespace="ml-prod") == [name] and k8s.names("jobs") == []
    assert deferred.trigger.namespace == "ml-prod"
    # The trigger finds the Job there (in any other namespace it would report it gone).
    trigger = KubernetesJobTrigger(**{**deferred.trigger.serialize()[1], "timeout_at": 0.0})
    event = await first_event(trigger)
    assert event["status"] == "timeout" and event["details"]["namespace"] == "ml-prod"


def test_check_sent_refuses_what_an_apiserver_would() -> None:
    """The after-the-fact check of the fixture is live: an unknown field and an ungranted verb fail it."""
    from kubernetes import client

    from airflow_provider_mlpipe.hooks.kubernetes import KubernetesResourceHook

    with emulated_cluster() as cluster, pytest.MonkeyPatch.context() as mp:
        configure(mp, cluster)
        hook = KubernetesResourceHook(CONN_ID, NAMESPACE)
        job = manifests.train_job(
            name="train-x",
            namespace=NAMESPACE,
            image="registry.example.com/mlpipe/trainer:1",
            digest=DIGEST,
            model_name="fashion_mnist",
            version=1,
            model_store="oss://bucket/models",
            dataset=None,
            hyperparameters={},
            run_key="run",
            dag_id="dag",
            oss_secret="mlpipe-oss",
        )
        hook.create_or_adopt(job)
        assert check_sent(cluster) == 1
        job["metadata"]["name"] = "train-y"
        job["spec"]["template"]["spec"]["containers"][0]["gpu"] = 1
        hook.create_or_adopt(job)
        with pytest.raises(AssertionError, match="create Job train-y is invalid"):
            check_sent(cluster)

    with emulated_cluster() as cluster, pytest.MonkeyPatch.context() as mp:
        configure(mp, cluster)
        # The Role grants `list` on Jobs to nobody: the runtime reads them by name.
        client.BatchV1Api(KubernetesResourceHook(CONN_ID, NAMESPACE).api_client).list_namespaced_job(
            NAMESPACE
        )
        with pytest.raises(AssertionError, match=r"\('batch', 'jobs', 'list'\)"):
            check_sent(cluster)


async def test_the_log_is_read_incrementally_each_line_copied_once(
    k8s: EmulatedCluster, capfd: pytest.CaptureFixture[str]
) -> None:
    """After the first read of a pod's log, each poll asks only for the last seconds (sinceSeconds, with
    the kubelet's timestamps) and drops what it copied already: an hours-long log is not downloaded again on
    every poll, and lines sharing one timestamp are neither lost nor repeated."""
    import datetime as dt

    name = "train-fashion-mnist-v1-log"
    pod = f"{name}-x1"
    k8s.add("jobs", {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": {}})
    k8s.add_job_pod(name, pod)
    # Three hours of training, a line every 20 s.
    start = dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)
    old = [f"step {i}" for i in range(500)]
    for i in range(len(old)):
        k8s.set_log(pod, old[: i + 1], at=start + dt.timedelta(seconds=20 * i))
    trigger = KubernetesJobTrigger(
        job_name=name, namespace=NAMESPACE, conn_id=CONN_ID, timeout_at=time.time() + 60, poll_interval=0.05
    )

    async def polled() -> None:
        """Until the trigger has read the log once more (a loaded machine can take a while to start it)."""
        reads = len(k8s.api.log_queries)
        for _ in range(600):
            if len(k8s.api.log_queries) > reads:
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the trigger stopped reading the pod's log")

    waiting = asyncio.create_task(first_event(trigger))
    await polled()
    same_moment = dt.datetime.now(dt.UTC)
    k8s.set_log(pod, [*old, "epoch 1/2", "epoch 1/2 done"], at=same_moment)
    await polled()
    # Written later within the same timestamp as the two before: still copied, once.
    k8s.set_log(pod, [*old, "epoch 1/2", "epoch 1/2 done", "epoch 2/2"], at=same_moment)
    await polled()
    k8s.finish_job(name, succeeded=True)
    assert (await waiting)["status"] == "success"

    log = "".join(capfd.readouterr())
    # Each copied line is logged as "[<pod>] <line> [<logger>] ...".
    for line in ("step 0", "step 499", "epoch 1/2", "epoch 1/2 done", "epoch 2/2"):
        assert log.count(f"-x1] {line} [") == 1, line
    reads = [
        (q, n)
        for q, n in zip(k8s.api.log_queries, k8s.api.log_lines_sent, strict=True)
        if "tailLines" not in q
    ]
    assert len(reads) >= 3
    assert all(q.get("timestamps", "").lower() == "true" for q, _ in reads), reads
    # The first read is the whole log; every later one starts shortly before the last line copied, so it
    # is sent a few lines (the minute of overlap), not the three hours before them.
    assert "sinceSeconds" not in reads[0][0] and reads[0][1] == 500
    assert all("sinceSeconds" in q and n <= 10 for q, n in reads[1:]), reads


def test_new_lines_compares_kubelet_timestamps_as_times_not_text() -> None:
    """Go's RFC3339Nano drops trailing zeros (".5Z" is later than ".123Z", though it sorts first as text);
    lines stamped exactly like the last one copied are skipped only as many times as they were copied."""
    from airflow_provider_mlpipe.triggers.kubernetes_job import _new_lines

    lines = [
        "2026-01-01T00:00:01.123Z a",
        "2026-01-01T00:00:01.5Z b",
        "2026-01-01T00:00:01.5Z c",
        "a continuation line without a stamp",
        "2026-01-01T00:00:02Z d",
    ]
    assert _new_lines(lines, "", 0) == [
        ("2026-01-01T00:00:01.123Z", "a"),
        ("2026-01-01T00:00:01.5Z", "b"),
        ("2026-01-01T00:00:01.5Z", "c"),
        ("2026-01-01T00:00:01.5Z", "a continuation line without a stamp"),
        ("2026-01-01T00:00:02Z", "d"),
    ]
    # Copied so far: up to "b" (one line stamped .5).
    assert [text for _, text in _new_lines(lines, "2026-01-01T00:00:01.500000000Z", 1)] == [
        "c",
        "a continuation line without a stamp",
        "d",
    ]


def _pending_pod(job: str, pod: str, status: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod, "labels": {"job-name": job, "batch.kubernetes.io/job-name": job}},
        "status": {"phase": "Pending", **status},
    }


async def test_an_unschedulable_job_fails_with_the_scheduler_s_reason(
    k8s: EmulatedCluster, store_uri: str
) -> None:
    """A GPU Job on a cluster without GPU capacity: its pod stays `PodScheduled=False`. After the stuck
    window (0 s here: at the first poll that sees it) the task fails with the scheduler's message and the
    Job is deleted, instead of waiting out activeDeadlineSeconds. Emulated: the scheduler's condition."""
    context = make_context()
    op = operator(store_uri, gpus=1)
    deferred = await asyncio.to_thread(execute_until_deferred, op, context)
    name = deferred.trigger.job_name
    message = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    condition = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}
    k8s.add("pods", _pending_pod(name, f"{name}-a", {"conditions": [condition]}))
    trigger = KubernetesJobTrigger(**{**deferred.trigger.serialize()[1], "stuck_after": 0.0})
    event = await first_event(trigger)
    assert event["status"] == "failed" and event["details"]["stuck"] is True
    assert message in event["message"] and "not scheduled: Unschedulable" in event["message"]
    with pytest.raises(TrainingError, match="could not start and was stopped") as err:
        await asyncio.to_thread(resume, op, context, deferred, event)
    assert "Insufficient nvidia.com/gpu" in str(err.value)
    assert ("delete(Foreground)", "jobs", name) in k8s.writes()


async def test_a_job_that_creates_no_pod_fails_with_its_event(k8s: EmulatedCluster, store_uri: str) -> None:
    """A quota or a Pod Security rejection: the Job controller creates no pod and says why only in an Event
    on the Job (FailedCreate). Emulated: that Event, as the Job controller records it, and an older,
    unrelated one on another Job."""
    context = make_context()
    deferred = await asyncio.to_thread(execute_until_deferred, operator(store_uri), context)
    name = deferred.trigger.job_name
    forbidden = (
        f'Error creating: pods "{name}-x" is forbidden: exceeded quota: compute, requested: '
        "requests.nvidia.com/gpu=1, used: requests.nvidia.com/gpu=4, limited: requests.nvidia.com/gpu=4"
    )
    for event_name, job, reason, message, when in (
        ("e1", name, "FailedCreate", forbidden, "2026-01-01T00:00:02Z"),
        ("e0", name, "SuccessfulCreate", "older", "2026-01-01T00:00:01Z"),
        ("e2", "other-job", "FailedCreate", "not ours", "2026-01-01T00:00:03Z"),
    ):
        k8s.add(
            "events",
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": event_name},
                "involvedObject": {"kind": "Job", "name": job, "namespace": NAMESPACE},
                "type": "Warning" if reason == "FailedCreate" else "Normal",
                "reason": reason,
                "message": message,
                "lastTimestamp": when,
            },
        )
    trigger = KubernetesJobTrigger(**{**deferred.trigger.serialize()[1], "stuck_after": 0.0})
    event = await first_event(trigger)
    assert event["status"] == "failed" and event["details"]["stuck"] is True
    assert f"FailedCreate: {forbidden}" in event["message"] and "not ours" not in event["message"]


async def test_a_job_waits_while_the_window_lasts_and_a_running_pod_is_not_stuck(
    k8s: EmulatedCluster, store_uri: str
) -> None:
    """Within the window (an hour here) a stuck Job keeps waiting, and its verdict is the Job's own; a
    pod that runs is never stuck. The runtime defers with the configured window."""
    context = make_context()
    deferred = await asyncio.to_thread(execute_until_deferred, operator(store_uri), context)
    assert deferred.trigger.stuck_after == 900.0  # [mlpipe] kubernetes_stuck_timeout's default
    name = deferred.trigger.job_name
    waiting = {"name": "trainer", "state": {"waiting": {"reason": "ImagePullBackOff", "message": "401"}}}
    k8s.add("pods", _pending_pod(name, f"{name}-a", {"containerStatuses": [waiting]}))
    trigger = KubernetesJobTrigger(**{**deferred.trigger.serialize()[1], "stuck_after": 3600.0})
    seen: list[str] = []
    original = trigger._stuck

    async def observed(hook: Any, pods: list[dict[str, Any]]) -> str | None:
        result = await original(hook, pods)
        seen.append(str(result))
        if len(seen) == 2:  # seen stuck twice, within the window: the Job ends on its own now
            k8s.finish_job(name, succeeded=False, reason="DeadlineExceeded")
        return result

    trigger._stuck = observed  # type: ignore[method-assign]
    event = await first_event(trigger)
    assert seen == ["None", "None"]
    assert event["status"] == "failed" and "DeadlineExceeded" in event["message"]
    assert "stuck" not in event["details"]


def test_stuck_reasons() -> None:
    from airflow_provider_mlpipe.hooks.kubernetes_status import stuck_reasons

    running = _pending_pod("j", "p", {"phase": "Running"})
    assert stuck_reasons([running], []) == []
    creating = {"name": "t", "state": {"waiting": {"reason": "ContainerCreating"}}}
    assert stuck_reasons([_pending_pod("j", "p", {"containerStatuses": [creating]})], []) == []
    config = {
        "name": "t",
        "state": {"waiting": {"reason": "CreateContainerConfigError", "message": "no key"}},
    }
    assert stuck_reasons([_pending_pod("j", "p", {"containerStatuses": [config]})], []) == [
        "p/t: CreateContainerConfigError: no key"
    ]
    # Events count only while there is no pod.
    warning = {"type": "Warning", "reason": "FailedCreate", "message": "quota"}
    assert stuck_reasons([], [warning]) == ["FailedCreate: quota"]
    assert stuck_reasons([running], [warning]) == []
