"""The `kubernetes` runtime on its own against the emulated Kubernetes API (tests/kubernetes_emulator.py);
the operators' flows on it are in tests/unit/operators/test_*_kubernetes.py."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from airflow_provider_mlpipe import manifests
from airflow_provider_mlpipe.exceptions import ConfigError, ServingError, TrainingError
from airflow_provider_mlpipe.hooks.model_store import ModelStoreHook
from airflow_provider_mlpipe.operators.serving import ServingDeployOperator
from airflow_provider_mlpipe.operators.train import KubeTrainJobOperator
from airflow_provider_mlpipe.runtimes import get_runtime
from airflow_provider_mlpipe.runtimes.base import TrainingSpec
from airflow_provider_mlpipe.runtimes.kubernetes import KubernetesRuntime
from airflow_provider_mlpipe.triggers.kubernetes_job import KubernetesJobTrigger
from tests.kubernetes_emulator import NAMESPACE, EmulatedCluster, execute_until_deferred, make_context

DIGEST = "sha256:" + "ab" * 32


def spec(store_uri: str, **kwargs: object) -> TrainingSpec:
    values: dict[str, object] = {
        "model_name": "fashion_mnist",
        "image": "registry.example.com/mlpipe/trainer:1",
        "digest": DIGEST,
        "store": ModelStoreHook(store_uri),
        "dataset": None,
        "hyperparameters": {"epochs": 1},
        "timeout": timedelta(hours=1),
        "poll_interval": 0.05,
        "dag_id": "dag",
        **kwargs,
    }
    return TrainingSpec(**values)  # type: ignore[arg-type]


def test_check_training_refuses_an_unpinned_image_and_a_bad_gpu_count(store_uri: str) -> None:
    runtime = get_runtime("kubernetes")
    with pytest.raises(ConfigError, match="digest"):
        runtime.check_training(spec(store_uri, digest=""))
    with pytest.raises(ConfigError, match="gpus"):
        runtime.check_training(spec(store_uri, gpus="two"))


def test_start_training_creates_then_adopts_and_stop_deletes(k8s: EmulatedCluster, store_uri: str) -> None:
    runtime = get_runtime("kubernetes")
    assert isinstance(runtime, KubernetesRuntime)
    started = runtime.start_training(spec(store_uri), version=1, run_key="dag/run")
    name = manifests.train_job_name("fashion_mnist", 1, "dag/run")
    assert started.handle == {"resource": f"Job {NAMESPACE}/{name}", "job_name": name, "namespace": NAMESPACE}
    assert started.wait is not None and isinstance(started.wait.trigger, KubernetesJobTrigger)
    assert started.wait.timeout == timedelta(hours=1, minutes=15)
    again = get_runtime("kubernetes").start_training(spec(store_uri), version=1, run_key="dag/run")
    assert again.handle == started.handle
    k8s.finish_job(name, succeeded=True)
    # A finished Job is adopted without a wait.
    assert (
        get_runtime("kubernetes").start_training(spec(store_uri), version=1, run_key="dag/run").wait is None
    )
    runtime.stop_training(started.handle)
    assert k8s.writes() == [("create", "jobs", name), ("delete(Foreground)", "jobs", name)]


def test_serving_teardown_and_served_version(k8s: EmulatedCluster) -> None:
    runtime = get_runtime("kubernetes")
    assert runtime.served_version("serve-fashion-mnist-production") is None
    assert runtime.teardown_serving("serve-fashion-mnist-production").was == "absent"


async def test_a_0_1_0_kubernetes_deferral_resumes(
    k8s: EmulatedCluster, store_uri: str, tmp_path: Path
) -> None:
    """Tasks deferred by 0.1.0 resume in `execute_complete_kubernetes` with that version's kwargs and
    (if the trigger fired before the upgrade) event."""
    context = make_context()
    op = KubeTrainJobOperator(
        task_id="train",
        image="registry.example.com/mlpipe/trainer:1",
        digest=DIGEST,
        runtime="kubernetes",
        model_store=store_uri,
    )
    deferred = await asyncio.to_thread(execute_until_deferred, op, context)
    name = deferred.trigger.job_name
    old_event = {
        "status": "failed",
        "job_name": name,
        "namespace": NAMESPACE,
        "message": "BackoffLimitExceeded: Job has reached the specified backoff limit",
        "pod_problems": ["pod x: exit code 2"],
        "tail": ["boom"],
    }
    with pytest.raises(
        TrainingError, match=f"Job {NAMESPACE}/{name} training fashion_mnist v1 failed: Backoff"
    ):
        op.execute_complete_kubernetes(context, old_event, version=1, job_name=name, namespace=NAMESPACE)

    deploy = ServingDeployOperator(
        task_id="deploy_production",
        endpoint="production",
        version=1,
        runtime="kubernetes",
        model_store=store_uri,
    )
    old_serving_event = {
        "status": "available",
        "deployment": "d",
        "service": "d",
        "namespace": NAMESPACE,
        "message": "ok",
        "address": "10.1.2.3",
    }
    result = deploy.execute_complete_kubernetes(
        context,
        old_serving_event,
        name="serve-fashion-mnist-production",
        namespace=NAMESPACE,
        version=1,
        previous=None,
    )
    assert result["url"] == "http://10.1.2.3:8501" and result["namespace"] == NAMESPACE
    old_timeout = {
        "status": "timeout",
        "stage": "address",
        "message": "address not done",
        "namespace": NAMESPACE,
    }
    with pytest.raises(ServingError, match="address not done"):
        deploy.execute_complete_kubernetes(
            context,
            old_timeout,
            name="serve-fashion-mnist-production",
            namespace=NAMESPACE,
            version=1,
            previous=None,
        )
