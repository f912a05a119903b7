"""The `kubernetes` runtime on its own against the emulated Kubernetes API (tests/kubernetes_emulator.py);
the operators' flows on it are in tests/unit/operators/test_*_kubernetes.py."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_mlpipe import manifests
from airflow_provider_mlpipe.exceptions import ConfigError, ServingError, TrainingError
from airflow_provider_mlpipe.hooks.model_store import ModelStoreHook
from airflow_provider_mlpipe.operators.serving import ServingDeployOperator
from airflow_provider_mlpipe.operators.train import KubeTrainJobOperator
from airflow_provider_mlpipe.runtimes import get_runtime
from airflow_provider_mlpipe.runtimes.base import ServingSpec, TrainingSpec
from airflow_provider_mlpipe.runtimes.kubernetes import KubernetesRuntime, pod_oss_location
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
    # The Deployment the 0.1.0 task rolled out: the result is confirmed against the version it serves.
    k8s.add(
        "deployments",
        {
            "metadata": {
                "name": "serve-fashion-mnist-production",
                "annotations": {manifests.A_VERSION: "1"},
                "generation": 1,
            },
            "spec": {},
        },
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


def _oss_env(container: dict[str, Any]) -> dict[str, Any]:
    return {
        e["name"]: e.get("value", "secretKeyRef") for e in container["env"] if e["name"].startswith("OSS_")
    }


def test_oss_region_and_endpoint_of_the_connection_reach_the_pods(
    k8s: EmulatedCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An `oss` connection in the Alibaba provider's fields (extras region / endpoint): the training Job and
    the serving fetch step get the same OSS_REGION / OSS_ENDPOINT, the keys only by secretKeyRef. No OSS
    request is made (opening the store's client connects to nothing)."""
    extra = {
        "auth_type": "AK",
        "access_key_id": "LTAI-conn-id",
        "access_key_secret": "conn-secret-value",
        "region": "cn-shanghai",
        "endpoint": "oss-cn-shanghai-internal.aliyuncs.com",
    }
    monkeypatch.setenv("AIRFLOW_CONN_OSS_DEFAULT", json.dumps({"conn_type": "oss", "extra": extra}))
    for name in ("OSS_REGION", "OSS_ENDPOINT", "OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET"):
        monkeypatch.delenv(name, raising=False)
    wanted = {
        "OSS_ACCESS_KEY_ID": "secretKeyRef",
        "OSS_ACCESS_KEY_SECRET": "secretKeyRef",
        "OSS_REGION": "cn-shanghai",
        "OSS_ENDPOINT": "oss-cn-shanghai-internal.aliyuncs.com",
    }
    runtime = get_runtime("kubernetes")
    assert isinstance(runtime, KubernetesRuntime)
    hook = ModelStoreHook("oss://models-bucket/mlpipe")
    job = runtime.job_manifest(spec("unused", store=hook), version=1, run_key="dag/run", name="train-x")
    assert _oss_env(job["spec"]["template"]["spec"]["containers"][0]) == wanted

    serving = ServingSpec(
        endpoint="staging",
        model_name="fashion_mnist",
        store=hook.store,
        ready_timeout=timedelta(minutes=5),
        poll_interval=0.05,
        dag_id="dag",
    )
    runtime.deploy_serving(serving, name="serve-fashion-mnist-staging", version=1, run_key="dag/run")
    deployment = k8s.get("deployments", "serve-fashion-mnist-staging")
    assert deployment is not None
    (fetch,) = deployment["spec"]["template"]["spec"]["initContainers"]
    assert _oss_env(fetch) == wanted
    assert "conn-secret-value" not in json.dumps(deployment) + json.dumps(job)

    # [mlpipe] kubernetes_oss_* wins for the pods (e.g. the VPC endpoint while Airflow uses the public one).
    monkeypatch.setenv("AIRFLOW__MLPIPE__KUBERNETES_OSS_ENDPOINT", "https://oss-cn-shanghai-internal.example")
    job = runtime.job_manifest(spec("unused", store=hook), version=1, run_key="dag/run", name="train-x")
    env = _oss_env(job["spec"]["template"]["spec"]["containers"][0])
    assert env["OSS_ENDPOINT"] == "https://oss-cn-shanghai-internal.example" and "OSS_REGION" not in env


def test_a_file_store_gives_the_pods_no_oss_location(store_uri: str) -> None:
    runtime = get_runtime("kubernetes")
    assert isinstance(runtime, KubernetesRuntime)
    job = runtime.job_manifest(spec(store_uri), version=1, run_key="dag/run", name="train-x")
    env = _oss_env(job["spec"]["template"]["spec"]["containers"][0])
    assert env == {"OSS_ACCESS_KEY_ID": "secretKeyRef", "OSS_ACCESS_KEY_SECRET": "secretKeyRef"}


def test_pod_oss_location_refuses_an_oss_store_without_a_region() -> None:
    with pytest.raises(ConfigError, match="kubernetes_oss_region"):
        pod_oss_location(("oss://models-bucket/x",), dict)
    assert pod_oss_location(("file:///models", None), dict) == {}


def _serving_spec(store_uri: str, endpoint: str, **kwargs: Any) -> ServingSpec:
    from airflow_provider_mlpipe.modelstore import open_store

    values: dict[str, Any] = {
        "endpoint": endpoint,
        "model_name": "fashion_mnist",
        "store": open_store(store_uri),
        "ready_timeout": timedelta(minutes=5),
        "poll_interval": 0.05,
        "dag_id": "dag",
        **kwargs,
    }
    return ServingSpec(**values)


PROD = "serve-fashion-mnist-production"


def test_production_load_balancer_is_intranet_with_only_the_rest_port(
    k8s: EmulatedCluster, store_uri: str
) -> None:
    """TF Serving has no authentication: ACK's default (internet) is never what production gets unasked."""
    get_runtime("kubernetes").deploy_serving(
        _serving_spec(store_uri, "production"), name=PROD, version=1, run_key="r"
    )
    service = k8s.get("services", PROD)
    assert service is not None and service["spec"]["type"] == "LoadBalancer"
    assert service["metadata"]["annotations"][manifests.A_LB_ADDRESS_TYPE] == "intranet"
    assert [p["port"] for p in service["spec"]["ports"]] == [manifests.REST_PORT]
    assert "loadBalancerSourceRanges" not in service["spec"]


def test_internet_load_balancer_needs_source_ranges(
    k8s: EmulatedCluster, store_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW__MLPIPE__KUBERNETES_LOAD_BALANCER_ADDRESS_TYPE", "internet")
    with pytest.raises(ConfigError, match="source ranges"):
        get_runtime("kubernetes").deploy_serving(
            _serving_spec(store_uri, "production"), name=PROD, version=1, run_key="r"
        )
    # Refused before anything was written.
    assert k8s.writes() == []
    monkeypatch.setenv(
        "AIRFLOW__MLPIPE__KUBERNETES_LOAD_BALANCER_SOURCE_RANGES", "203.0.113.0/24, 198.51.100.7/32"
    )
    monkeypatch.setenv("AIRFLOW__MLPIPE__KUBERNETES_EXPOSE_GRPC", "true")
    get_runtime("kubernetes").deploy_serving(
        _serving_spec(store_uri, "production"), name=PROD, version=1, run_key="r"
    )
    service = k8s.get("services", PROD)
    assert service is not None
    assert service["metadata"]["annotations"][manifests.A_LB_ADDRESS_TYPE] == "internet"
    assert service["spec"]["loadBalancerSourceRanges"] == ["203.0.113.0/24", "198.51.100.7/32"]
    assert [p["port"] for p in service["spec"]["ports"]] == [manifests.REST_PORT, manifests.GRPC_PORT]


def test_an_annotation_cannot_make_the_load_balancer_public_behind_the_setting(
    k8s: EmulatedCluster, store_uri: str
) -> None:
    spec = _serving_spec(
        store_uri, "production", service_annotations={manifests.A_LB_ADDRESS_TYPE: "internet"}
    )
    with pytest.raises(ConfigError, match="kubernetes_load_balancer_address_type"):
        get_runtime("kubernetes").deploy_serving(spec, name=PROD, version=1, run_key="r")
    assert k8s.writes() == []


def test_two_replicas_get_a_disruption_budget_that_teardown_deletes(
    k8s: EmulatedCluster, store_uri: str
) -> None:
    runtime = get_runtime("kubernetes")
    runtime.deploy_serving(
        _serving_spec(store_uri, "production", replicas=2), name=PROD, version=1, run_key="r"
    )
    pdb = k8s.get("poddisruptionbudgets", PROD)
    assert pdb is not None and pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == manifests.serving_selector(PROD)
    assert runtime.teardown_serving(PROD).was == "deleted"
    assert k8s.names("poddisruptionbudgets") == [] and k8s.names("deployments") == []
    # One replica: no budget (it would block every drain), and teardown sends no delete for one.
    runtime.deploy_serving(_serving_spec(store_uri, "staging"), name="serve-s", version=1, run_key="r")
    runtime.teardown_serving("serve-s")
    assert ("create", "poddisruptionbudgets", "serve-s") not in k8s.writes()
    assert ("delete(Foreground)", "poddisruptionbudgets", "serve-s") not in k8s.writes()


def test_a_deployment_being_deleted_is_not_adopted(
    k8s: EmulatedCluster, store_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A teardown in progress (deletionTimestamp set, dependents still going) is waited out, then a new
    Deployment is created; adopting it would wait on something the garbage collector removes. Emulated: the
    garbage collector finishing the deletion once the hook starts waiting."""
    from airflow_provider_mlpipe.hooks.kubernetes import KubernetesResourceHook

    old = manifests.serving_deployment(
        name=PROD,
        namespace=NAMESPACE,
        endpoint="production",
        model_name="fashion_mnist",
        version=1,
        run_key="old",
        dag_id="dag",
        template={"metadata": {"labels": manifests.serving_selector(PROD)}, "spec": {"containers": []}},
    )
    old["metadata"].update(deletionTimestamp="2026-01-01T00:00:00Z", generation=1)
    old["metadata"]["annotations"][manifests.A_VERSION] = "1"
    k8s.add("deployments", old)
    waited: list[str] = []
    real_wait = KubernetesResourceHook.wait_deleted

    def gc_then_wait(self: KubernetesResourceHook, kind: str, name: str, **kwargs: Any) -> None:
        waited.append(f"{kind}/{name}")
        k8s.delete("deployments", name)
        real_wait(self, kind, name, **kwargs)

    monkeypatch.setattr(KubernetesResourceHook, "wait_deleted", gc_then_wait)
    started = get_runtime("kubernetes").deploy_serving(
        _serving_spec(store_uri, "production"), name=PROD, version=1, run_key="r"
    )
    assert waited == [f"Deployment/{PROD}"]
    assert started.previous is None
    new = k8s.get("deployments", PROD)
    assert new is not None and "deletionTimestamp" not in new["metadata"]
    assert new["metadata"]["annotations"][manifests.A_RUN_ID] == "r"
    assert ("create", "deployments", PROD) in k8s.writes()


def test_an_existing_service_is_brought_to_the_settings(k8s: EmulatedCluster, store_uri: str) -> None:
    """A Service left public with both ports (by hand, or by an older version) is patched to the wanted
    intranet, REST-only spec instead of being adopted as it is."""
    left = manifests.serving_service(
        name=PROD,
        namespace=NAMESPACE,
        service_type="LoadBalancer",
        model_name="fashion_mnist",
        run_key="old",
        dag_id="dag",
        address_type="internet",
        source_ranges=["0.0.0.0/0"],
        expose_grpc=True,
    )
    k8s.add("services", left)
    get_runtime("kubernetes").deploy_serving(
        _serving_spec(store_uri, "production"), name=PROD, version=1, run_key="r"
    )
    service = k8s.get("services", PROD)
    assert service is not None
    assert service["metadata"]["annotations"][manifests.A_LB_ADDRESS_TYPE] == "intranet"
    assert [p["port"] for p in service["spec"]["ports"]] == [manifests.REST_PORT]
    assert "loadBalancerSourceRanges" not in service["spec"]
    assert ("update", "services", PROD) in k8s.writes()  # kmock names a PATCH "update"


def _deploy(store_uri: str, version: int, **kwargs: Any) -> Any:
    return get_runtime("kubernetes").deploy_serving(
        _serving_spec(store_uri, "production", **kwargs), name=PROD, version=version, run_key=f"r{version}"
    )


def _another_deploy_writes(k8s: EmulatedCluster, version: int) -> None:
    """What a concurrent run's rollout leaves: the Deployment at `version` (a new resourceVersion)."""
    k8s.patch(
        "deployments",
        PROD,
        {
            "metadata": {"annotations": {manifests.A_VERSION: str(version)}},
            "spec": {"template": {"metadata": {"annotations": {manifests.A_VERSION: str(version)}}}},
        },
    )


def test_a_rollout_patch_is_guarded_and_recomputed_after_a_concurrent_change(
    k8s: EmulatedCluster, store_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another run's rollout lands between this task's read and its patch (provoked at the patch): the
    guarded patch gets 409, the Deployment is read again, and the rollout records the version really
    replaced (v7, not v1) as the one to roll back to."""
    from airflow_provider_mlpipe.hooks.kubernetes import KubernetesResourceHook

    _deploy(store_uri, 1)
    real_patch = KubernetesResourceHook.patch
    interleaved: list[str] = []

    def interleave(self: KubernetesResourceHook, kind: str, name: str, patch: Any, **kwargs: Any) -> Any:
        if kind == "Deployment" and not interleaved:
            interleaved.append(str(kwargs.get("resource_version")))
            _another_deploy_writes(k8s, 7)
        return real_patch(self, kind, name, patch, **kwargs)

    monkeypatch.setattr(KubernetesResourceHook, "patch", interleave)
    started = _deploy(store_uri, 2)
    assert interleaved and interleaved[0] != "None"
    assert started.previous == 7
    deployment = k8s.get("deployments", PROD)
    assert deployment is not None
    annotations = deployment["metadata"]["annotations"]
    assert annotations[manifests.A_VERSION] == "2" and annotations[manifests.A_PREVIOUS_VERSION] == "7"
    previous_template = json.loads(annotations[manifests.A_PREVIOUS_TEMPLATE])
    assert previous_template["metadata"]["annotations"][manifests.A_VERSION] == "7"
    # One refused patch (409), then the one computed from the fresh read.
    assert [w for w in k8s.writes() if w[1] == "deployments"] == [
        ("create", "deployments", PROD),
        ("update", "deployments", PROD),
        ("update", "deployments", PROD),
    ]


def test_a_stale_guarded_patch_raises_a_conflict(k8s: EmulatedCluster, store_uri: str) -> None:
    from airflow_provider_mlpipe.exceptions import KubernetesConflict
    from airflow_provider_mlpipe.hooks.kubernetes import KubernetesResourceHook

    _deploy(store_uri, 1)
    hook = KubernetesResourceHook(namespace=NAMESPACE)
    deployment = hook.get("Deployment", PROD)
    assert deployment is not None
    stale = deployment["metadata"]["resourceVersion"]
    _another_deploy_writes(k8s, 5)
    with pytest.raises(KubernetesConflict, match="changed since it was read"):
        hook.patch("Deployment", PROD, {"spec": {"replicas": 3}}, resource_version=stale)
    assert (k8s.get("deployments", PROD) or {})["spec"]["replicas"] == 1


async def test_the_wait_fails_when_another_deploy_replaces_the_rollout(
    k8s: EmulatedCluster, store_uri: str
) -> None:
    """The rollout of v2 is replaced by another run's v3 while it waits: the wait does not report v3's
    rollout as v2's, and the failure rolls nothing back (what runs is the other run's)."""
    from airflow_provider_mlpipe.runtimes.base import Outcome
    from tests.kubernetes_emulator import first_event

    _deploy(store_uri, 1)
    runtime = get_runtime("kubernetes")
    started = runtime.deploy_serving(
        _serving_spec(store_uri, "production"), name=PROD, version=2, run_key="r2"
    )
    _another_deploy_writes(k8s, 3)
    k8s.roll_out(PROD)
    assert started.wait is not None
    event = await first_event(started.wait.trigger)
    assert event["status"] == "failed" and event["details"]["superseded"] is True
    assert "v3" in event["message"] and "v2" in event["message"]
    writes = len(k8s.writes())
    assert runtime.abandon_serving(started.handle, Outcome.from_event(event)) is None
    assert len(k8s.writes()) == writes
    assert (k8s.get("deployments", PROD) or {})["metadata"]["annotations"][manifests.A_VERSION] == "3"


def test_the_result_is_confirmed_against_the_version_served(k8s: EmulatedCluster, store_uri: str) -> None:
    from airflow_provider_mlpipe.runtimes.base import Outcome

    runtime = get_runtime("kubernetes")
    started = _deploy(store_uri, 1)
    ok = Outcome(status="success", message="ok", details={"address": "10.0.0.1"})
    assert runtime.serving_result(started.handle, ok)["url"] == "http://10.0.0.1:8501"
    _another_deploy_writes(k8s, 4)
    with pytest.raises(ServingError, match="serves v4, not v1"):
        runtime.serving_result(started.handle, ok)


def test_a_rollback_never_undoes_another_deploy(k8s: EmulatedCluster, store_uri: str) -> None:
    """v2's rollout failed, but another run's v5 landed since: v2's rollback must not restore v1 over v5."""
    from airflow_provider_mlpipe.runtimes.base import Outcome

    runtime = get_runtime("kubernetes")
    _deploy(store_uri, 1)
    started = _deploy(store_uri, 2)
    _another_deploy_writes(k8s, 5)
    failed = Outcome(status="failed", message="ProgressDeadlineExceeded")
    assert runtime.abandon_serving(started.handle, failed) == "not rolled back: the endpoint now serves v5"
    assert (k8s.get("deployments", PROD) or {})["metadata"]["annotations"][manifests.A_VERSION] == "5"
