"""Both Kubernetes hooks, the training operator and the Job trigger under injected API faults.

The API server is the kmock EMULATOR of tests/kubernetes_emulator.py over real HTTP; the clients are the real
`kubernetes` (urllib3) and `kubernetes_asyncio` (aiohttp) clients behind the cncf-kubernetes provider's
hooks. The faults are injected at the emulator's HTTP layer: a 503 with Retry-After, a 429, a connection
reset (RST, no answer) and an answer held back past the client's read timeout are transient; 403, 404 and
422 are permanent. Backoff waits go to a recorder instead of the clock (`Sleeps`), except in the operator
and trigger tests, which run the real waits of a policy with a tiny base delay.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_mlpipe.exceptions import KubernetesRuntimeError, TrainingError
from airflow_provider_mlpipe.hooks.kubernetes import KubernetesResourceHook
from airflow_provider_mlpipe.hooks.kubernetes_async import AsyncKubernetesResourceHook
from airflow_provider_mlpipe.modelstore import open_store
from airflow_provider_mlpipe.operators.train import KubeTrainJobOperator
from airflow_provider_mlpipe.retries import RetryPolicy
from tests.kubernetes_emulator import (
    CONN_ID,
    NAMESPACE,
    EmulatedCluster,
    execute_until_deferred,
    first_event,
    make_context,
    resume,
)

JOBS = f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs"
DIGEST = "sha256:" + "ab" * 32
# An answer held back this long, against a client read timeout of READ_TIMEOUT.
HELD_BACK = 1.2
READ_TIMEOUT = 0.3
TRANSIENT = ["503", "429", "reset", "timeout"]


class Sleeps(list[float]):
    """Records the policy's waits instead of sleeping them (sync and async)."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)

    async def asleep(self, seconds: float) -> None:
        self.append(seconds)


def policy(
    sleeps: Sleeps, attempts: int = 5, base_delay: float = 1.0, max_delay: float = 30.0
) -> RetryPolicy:
    return RetryPolicy(attempts, base_delay, max_delay, sleep=sleeps, async_sleep=sleeps.asleep)


def sync_hook(sleeps: Sleeps, **kwargs: Any) -> KubernetesResourceHook:
    return KubernetesResourceHook(
        CONN_ID, NAMESPACE, retry=policy(sleeps, **kwargs), request_timeout=READ_TIMEOUT
    )


def async_hook(sleeps: Sleeps, **kwargs: Any) -> AsyncKubernetesResourceHook:
    return AsyncKubernetesResourceHook(
        CONN_ID, NAMESPACE, retry=policy(sleeps, **kwargs), request_timeout=READ_TIMEOUT
    )


def job(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "template": {
                "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}
            }
        },
    }


def inject(k8s: EmulatedCluster, kind: str, times: int, *, method: str, path: str) -> int | None:
    """Inject `times` faults of `kind`; returns the Retry-After the server sends (seconds), if any."""
    if kind == "503":
        k8s.fail_next(times, 503, method=method, path=path, retry_after=1)
        return 1
    if kind == "429":
        k8s.fail_next(times, 429, method=method, path=path)
    elif kind == "reset":
        k8s.reset_next(times, method=method, path=path)
    else:
        k8s.delay_next(times, HELD_BACK, method=method, path=path)
    return None


def assert_backoff_grew(sleeps: list[float], base: float, retry_after: int | None = None) -> None:
    """Wait n (from 1) is base * 2**(n-1), jittered down by up to half, lengthened to Retry-After."""
    assert sleeps, "no retry happened"
    for n, waited in enumerate(sleeps, start=1):
        nominal = base * 2 ** (n - 1)
        low, high = nominal / 2, nominal
        if retry_after is not None:
            low, high = max(low, retry_after), max(high, retry_after)
        assert low <= waited <= high, (n, sleeps)
    assert sleeps[-1] > sleeps[0], sleeps


def requests_to(k8s: EmulatedCluster, method: str, path: str) -> int:
    return sum(1 for m, p in k8s.requests if m == method and p == path)


# --- synchronous hook ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", TRANSIENT)
def test_sync_hook_retries_each_transient_fault_with_growing_backoff(k8s: EmulatedCluster, kind: str) -> None:
    k8s.add("jobs", job("train-a"))
    retry_after = inject(k8s, kind, 3, method="GET", path=r"/jobs/train-a$")
    sleeps = Sleeps()
    got = sync_hook(sleeps).get("Job", "train-a")
    assert got is not None and got["metadata"]["name"] == "train-a"
    assert_backoff_grew(sleeps, 1.0, retry_after)
    assert len(sleeps) == 3
    # Three faults, then the answer: one request per attempt (the client's own urllib3 retries are off).
    assert requests_to(k8s, "GET", f"{JOBS}/train-a") == 4
    assert sum(k8s.faults_served.values()) == 3


def test_retry_after_lengthens_the_wait_up_to_max_delay(k8s: EmulatedCluster) -> None:
    k8s.add("jobs", job("train-a"))
    k8s.fail_next(2, 503, method="GET", path=r"/jobs/train-a$", retry_after=7)
    sleeps = Sleeps()
    assert sync_hook(sleeps, base_delay=0.01, max_delay=30).get("Job", "train-a") is not None
    assert sleeps == [7.0, 7.0]

    k8s.fail_next(1, 429, method="GET", path=r"/jobs/train-a$", retry_after=120)
    capped = Sleeps()
    assert sync_hook(capped, base_delay=0.01, max_delay=5).get("Job", "train-a") is not None
    assert capped == [5.0]


def test_sync_hook_gives_up_naming_the_job_the_attempts_and_the_last_error(k8s: EmulatedCluster) -> None:
    k8s.reset_next(10, method="GET", path=r"/jobs/train-a$")
    sleeps = Sleeps()
    with pytest.raises(KubernetesRuntimeError) as info:
        sync_hook(sleeps, attempts=3).get("Job", "train-a")
    message = str(info.value)
    assert f"GET Job {NAMESPACE}/train-a failed after 3 attempts" in message
    assert "ProtocolError" in message and "reset" in message.lower()
    assert requests_to(k8s, "GET", f"{JOBS}/train-a") == 3 and len(sleeps) == 2


@pytest.mark.parametrize("kind", ["reset", "timeout"])
def test_a_create_whose_answer_was_lost_adopts_the_job(k8s: EmulatedCluster, kind: str) -> None:
    """The POST takes effect but its answer never arrives; the retried POST gets 409 AlreadyExists."""
    if kind == "reset":
        k8s.reset_next(1, method="POST", path=r"/jobs$", handled=True)
    else:
        k8s.delay_next(1, HELD_BACK, method="POST", path=r"/jobs$")
    sleeps = Sleeps()
    obj, created = sync_hook(sleeps, base_delay=0.01).create_or_adopt(job("train-a"))
    assert created is False  # adopted: the first POST made it
    assert k8s.names("jobs") == ["train-a"]
    stored = k8s.get("jobs", "train-a")
    assert stored is not None and obj["metadata"]["uid"] == stored["metadata"]["uid"]
    assert requests_to(k8s, "POST", JOBS) == 2 and len(sleeps) == 1


@pytest.mark.parametrize(("status", "reason"), [(403, "Forbidden"), (422, "Invalid"), (400, "BadRequest")])
def test_permanent_errors_on_a_read_fail_at_once_naming_the_job(
    k8s: EmulatedCluster, status: int, reason: str
) -> None:
    k8s.fail_next(
        5,
        status,
        method="GET",
        path=r"/jobs/train-a$",
        message=f'jobs.batch "train-a" is {reason.lower()}: the test says so',
    )
    sleeps = Sleeps()
    with pytest.raises(KubernetesRuntimeError) as info:
        sync_hook(sleeps).get("Job", "train-a")
    message = str(info.value)
    assert f"GET Job {NAMESPACE}/train-a failed: HTTP {status} {reason}" in message
    assert "the test says so" in message
    assert k8s.requests == [("GET", f"{JOBS}/train-a")] and sleeps == []


def test_a_forbidden_create_fails_at_once_naming_the_job(k8s: EmulatedCluster) -> None:
    k8s.fail_next(
        5,
        403,
        method="POST",
        path=r"/jobs$",
        message='jobs.batch is forbidden: User "system:serviceaccount:mlpipe:airflow" cannot create resource',
    )
    sleeps = Sleeps()
    with pytest.raises(KubernetesRuntimeError) as info:
        sync_hook(sleeps).create_or_adopt(job("train-a"))
    message = str(info.value)
    assert f"create Job {NAMESPACE}/train-a failed: HTTP 403 Forbidden" in message
    assert "cannot create resource" in message
    assert requests_to(k8s, "POST", JOBS) == 1 and sleeps == [] and k8s.names("jobs") == []


def test_a_404_on_an_object_that_must_exist_fails_at_once(k8s: EmulatedCluster) -> None:
    sleeps = Sleeps()
    with pytest.raises(KubernetesRuntimeError) as info:
        sync_hook(sleeps).patch("Deployment", "serve-missing", {"spec": {"replicas": 2}})
    message = str(info.value)
    assert f"patch Deployment {NAMESPACE}/serve-missing failed: HTTP 404" in message
    assert "not found" in message.lower()  # the API's reason (the emulator words it its own way)
    assert len(k8s.requests) == 1 and sleeps == []


# --- asynchronous hook --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", TRANSIENT)
async def test_async_hook_retries_each_transient_fault_with_growing_backoff(
    k8s: EmulatedCluster, kind: str
) -> None:
    k8s.add("jobs", job("train-a"))
    retry_after = inject(k8s, kind, 3, method="GET", path=r"/jobs/train-a$")
    sleeps = Sleeps()
    got = await async_hook(sleeps).get("Job", "train-a")
    assert got is not None and got["metadata"]["name"] == "train-a"
    assert_backoff_grew(sleeps, 1.0, retry_after)
    assert len(sleeps) == 3
    assert requests_to(k8s, "GET", f"{JOBS}/train-a") == 4


async def test_async_hook_gives_up_naming_the_job_the_attempts_and_the_last_error(
    k8s: EmulatedCluster,
) -> None:
    k8s.fail_next(10, 503, method="GET", path=r"/jobs/train-a$")
    sleeps = Sleeps()
    with pytest.raises(KubernetesRuntimeError) as info:
        await async_hook(sleeps, attempts=3).get("Job", "train-a")
    message = str(info.value)
    assert f"GET Job {NAMESPACE}/train-a failed after 3 attempts: HTTP 503 ServiceUnavailable" in message
    assert requests_to(k8s, "GET", f"{JOBS}/train-a") == 3 and len(sleeps) == 2


async def test_async_hook_forbidden_fails_at_once_naming_the_job(k8s: EmulatedCluster) -> None:
    k8s.fail_next(5, 403, method="GET", path=r"/jobs/train-a$", message="jobs.batch is forbidden")
    sleeps = Sleeps()
    with pytest.raises(KubernetesRuntimeError) as info:
        await async_hook(sleeps).get("Job", "train-a")
    assert f"GET Job {NAMESPACE}/train-a failed: HTTP 403 Forbidden: jobs.batch is forbidden" in str(
        info.value
    )
    assert k8s.requests == [("GET", f"{JOBS}/train-a")] and sleeps == []
    # A 404 on a read is an answer, not an error: the object is absent.
    assert await async_hook(sleeps).get("Job", "train-b") is None and sleeps == []


async def test_async_pod_log_is_empty_only_while_there_is_no_log(k8s: EmulatedCluster) -> None:
    """400 is the apiserver's answer while the container waits (image pull), 404 for a pod that is gone."""
    k8s.set_log("train-a-x1", ["epoch 1/2"])
    k8s.fail_next(
        1,
        400,
        method="GET",
        path=r"/pods/train-a-x1/log$",
        message='container "trainer" in pod "train-a-x1" is waiting to start: ContainerCreating',
    )
    sleeps = Sleeps()
    hook = async_hook(sleeps)
    assert await hook.pod_log("train-a-x1") == []
    assert await hook.pod_log("train-a-gone") == []  # the emulator answers 404: no such pod log
    assert await hook.pod_log("train-a-x1") == ["epoch 1/2"]
    assert sleeps == [] and k8s.faults_served == {"GET 400": 1}


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (403, 'failed: HTTP 403 Forbidden: pods "train-a-x1" is forbidden'),
        (503, "failed after 3 attempts: HTTP 503 ServiceUnavailable"),
    ],
)
async def test_async_pod_log_surfaces_any_other_error(
    k8s: EmulatedCluster, status: int, expected: str
) -> None:
    """Not swallowed as "no log yet": a Role without pods/log, or an API server still failing after the
    retries, is reported (the trigger decides to go on without the log)."""
    k8s.set_log("train-a-x1", ["epoch 1/2"])
    message = 'pods "train-a-x1" is forbidden: cannot get resource "pods/log"' if status == 403 else ""
    k8s.fail_next(5, status, method="GET", path=r"/pods/train-a-x1/log$", message=message)
    with pytest.raises(KubernetesRuntimeError) as info:
        await async_hook(Sleeps(), attempts=3).pod_log("train-a-x1")
    assert f"read the log of Pod {NAMESPACE}/train-a-x1 {expected}" in str(info.value)


# --- the operator and the trigger ---------------------------------------------------------------------

TINY = {"attempts": 5, "base_delay": 0.01, "max_delay": 0.05}


def train_op(store_uri: str) -> KubeTrainJobOperator:
    return KubeTrainJobOperator(
        task_id="train",
        image="registry.example.com/mlpipe/trainer:1",
        digest=DIGEST,
        runtime="kubernetes",
        model_store=store_uri,
        poll_interval=0.05,
        transient_retry=TINY,
    )


def publish(store_uri: str, tmp_path: Path) -> None:
    """What the training pod does at its end."""
    src = tmp_path / "export"
    src.mkdir()
    (src / "saved_model.pb").write_bytes(b"pb")
    open_store(store_uri).publish("fashion_mnist", 1, src, {"metrics": {"test_accuracy": 0.9}})


async def test_train_operator_under_transient_faults_creates_exactly_one_job(
    k8s: EmulatedCluster, store_uri: str
) -> None:
    k8s.fail_next(1, 503, method="GET", path=r"/jobs/train-", retry_after=0)
    k8s.reset_next(1, method="POST", path=r"/jobs$", handled=True)  # created, answer lost
    k8s.fail_next(1, 429, method="GET", path=r"/jobs/train-")  # on the read that adopts it
    deferred = await asyncio.to_thread(execute_until_deferred, train_op(store_uri), make_context())
    name = deferred.trigger.job_name
    assert k8s.names("jobs") == [name]
    assert requests_to(k8s, "POST", JOBS) == 2  # the lost one and the retry that met 409
    assert k8s.faults_served == {"GET 503": 1, "POST reset": 1, "GET 429": 1}
    # The trigger waits under the run's policy.
    assert deferred.trigger.transient_retry == TINY


async def test_job_trigger_survives_transient_faults_while_polling(
    k8s: EmulatedCluster, store_uri: str, tmp_path: Path
) -> None:
    context = make_context()
    op = train_op(store_uri)
    deferred = await asyncio.to_thread(execute_until_deferred, op, context)
    name = deferred.trigger.job_name
    k8s.fail_next(2, 503, method="GET", path=rf"/jobs/{name}$", retry_after=0)
    k8s.reset_next(1, method="GET", path=rf"/jobs/{name}$")
    k8s.fail_next(1, 429, method="GET", path=r"/pods$")
    k8s.reset_next(1, method="GET", path=r"/pods$")
    waiting = asyncio.create_task(first_event(deferred.trigger))
    for _ in range(200):
        if sum(k8s.faults_served.values()) == 5:
            break
        await asyncio.sleep(0.02)
    assert not waiting.done()
    publish(store_uri, tmp_path)
    k8s.finish_job(name, succeeded=True)
    event = await waiting
    assert event["status"] == "success"
    assert k8s.faults_served == {"GET 503": 2, "GET reset": 2, "GET 429": 1}
    assert resume(op, context, deferred, event)["version"] == 1


async def test_train_operator_forbidden_fails_at_once_naming_the_job(
    k8s: EmulatedCluster, store_uri: str
) -> None:
    k8s.fail_next(5, 403, method="POST", path=r"/jobs$", message="jobs.batch is forbidden: no create verb")
    with pytest.raises(KubernetesRuntimeError) as info:
        await asyncio.to_thread(execute_until_deferred, train_op(store_uri), make_context())
    message = str(info.value)
    assert f"create Job {NAMESPACE}/train-fashion-mnist-v1-" in message
    assert "HTTP 403 Forbidden: jobs.batch is forbidden: no create verb" in message
    assert requests_to(k8s, "POST", JOBS) == 1 and k8s.names("jobs") == []


@pytest.mark.parametrize("status", [403, 503])
async def test_job_trigger_reports_the_failure_when_its_pods_cannot_be_read(
    k8s: EmulatedCluster, store_uri: str, status: int
) -> None:
    """The Job failed; listing its pods fails (forbidden, or unavailable after every retry): the event
    still carries the Job's reason, with no pod details and no log tail, instead of crashing the trigger."""
    context = make_context()
    op = train_op(store_uri)
    deferred = await asyncio.to_thread(execute_until_deferred, op, context)
    name = deferred.trigger.job_name
    k8s.add_job_pod(name, f"{name}-a", phase="Failed", terminated={"exitCode": 2, "reason": "Error"})
    k8s.set_log(f"{name}-a", ["train: error: --dataset: no such file"])
    k8s.finish_job(name, succeeded=False, reason="BackoffLimitExceeded", message="reached the backoff limit")
    k8s.fail_next(1000, status, method="GET", path=r"/pods$")
    event = await first_event(deferred.trigger)
    assert event["status"] == "failed" and event["message"].startswith("BackoffLimitExceeded")
    assert event["details"]["pod_problems"] == [] and event["tail"] == []
    assert k8s.faults_served[f"GET {status}"] >= 2  # the poll's listing and the event's
    with pytest.raises(TrainingError) as info:
        resume(op, context, deferred, event)
    assert f"Job {NAMESPACE}/{name} " in str(info.value) and "BackoffLimitExceeded" in str(info.value)


async def test_job_trigger_reports_the_failure_when_the_log_tail_cannot_be_read(
    k8s: EmulatedCluster, store_uri: str
) -> None:
    deferred = await asyncio.to_thread(execute_until_deferred, train_op(store_uri), make_context())
    name = deferred.trigger.job_name
    k8s.add_job_pod(name, f"{name}-a", phase="Failed", terminated={"exitCode": 2, "reason": "Error"})
    k8s.set_log(f"{name}-a", ["train: error: --dataset: no such file"])
    k8s.finish_job(name, succeeded=False, reason="DeadlineExceeded")
    k8s.fail_next(1000, 503, method="GET", path=r"/log$")
    event = await first_event(deferred.trigger)
    assert event["status"] == "failed" and event["message"] == "DeadlineExceeded"
    assert (
        event["details"]["pod_problems"] == [f"{name}-a/trainer: Error (exit code 2)"] and event["tail"] == []
    )


async def test_job_trigger_keeps_polling_while_the_log_is_forbidden(
    k8s: EmulatedCluster, store_uri: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A Role without pods/log (403 on every log read): the wait goes on, the Job's status decides, and
    the trigger says so once rather than on every poll."""
    context = make_context()
    op = train_op(store_uri)
    deferred = await asyncio.to_thread(execute_until_deferred, op, context)
    name = deferred.trigger.job_name
    k8s.add_job_pod(name, f"{name}-x1")
    k8s.set_log(f"{name}-x1", ["epoch 1/2 loss=0.6"])
    k8s.fail_next(1000, 403, method="GET", path=r"/log$", message="cannot get resource pods/log")
    waiting = asyncio.create_task(first_event(deferred.trigger))
    for _ in range(200):
        if k8s.faults_served["GET 403"] >= 3:
            break
        await asyncio.sleep(0.02)
    assert k8s.faults_served["GET 403"] >= 3 and not waiting.done()
    publish(store_uri, tmp_path)
    k8s.finish_job(name, succeeded=True)
    event = await waiting
    assert event["status"] == "success" and event["tail"] == []
    assert resume(op, context, deferred, event)["version"] == 1
    captured = capfd.readouterr()
    log = captured.out + captured.err
    assert log.count("cannot copy the pod's log") == 1 and "cannot get resource pods/log" in log
    assert "epoch 1/2 loss=0.6" not in log


async def test_job_trigger_on_kill_gives_up_within_airflows_on_kill_timeout(
    k8s: EmulatedCluster, store_uri: str
) -> None:
    """The delete on a user's kill runs under a short policy (3 attempts, waits of at most 1 s, 5 s per
    request), not the run's: Airflow cancels on_kill after `[triggerer] on_kill_timeout` (30 s)."""
    deferred = await asyncio.to_thread(execute_until_deferred, train_op(store_uri), make_context())
    name = deferred.trigger.job_name
    k8s.fail_next(1000, 503, method="DELETE", path=rf"/jobs/{name}$")
    started = time.monotonic()
    with pytest.raises(
        KubernetesRuntimeError, match=f"delete Job {NAMESPACE}/{name} failed after 3 attempts"
    ):
        await deferred.trigger.on_kill()
    assert time.monotonic() - started < 5
    assert requests_to(k8s, "DELETE", f"{JOBS}/{name}") == 3  # the run's policy (TINY) would make 5
    assert k8s.names("jobs") == [name]
