"""ServingDeployOperator / ServingTeardownOperator with runtime=kubernetes and KubernetesServingTrigger
against an emulated Kubernetes API (real HTTP; see tests/kubernetes_emulator.py). No Deployment
controller or cloud load balancer runs: the tests report rollouts (`roll_out`) and external addresses
themselves, the way the controllers would. No admission or RBAC runs either: after each test, every object
the operators created or patched is validated strictly (Kubernetes 1.30 and 1.35 schemas) and every request
checked against deploy/rbac.yaml (`check_sent`)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_mlpipe import manifests
from airflow_provider_mlpipe.exceptions import ServingError
from airflow_provider_mlpipe.modelstore import open_store
from airflow_provider_mlpipe.operators.serving import ServingDeployOperator, ServingTeardownOperator
from tests.kubernetes_emulator import (
    CONN_ID,
    NAMESPACE,
    EmulatedCluster,
    execute_until_deferred,
    first_event,
    make_context,
    resume,
)

PROD = "serve-fashion-mnist-production"


@pytest.fixture
def store_uri(tmp_path: Path) -> str:
    uri = (tmp_path / "models").as_uri()
    store = open_store(uri)
    for version in (1, 2, 3):
        src = tmp_path / f"v{version}"
        src.mkdir()
        (src / "saved_model.pb").write_bytes(b"pb")
        store.publish("fashion_mnist", version, src, {"metrics": {}})
    return uri


def deploy_op(store_uri: str, endpoint: str, version: int | None, **kwargs: Any) -> ServingDeployOperator:
    return ServingDeployOperator(
        task_id=f"deploy_{endpoint}",
        endpoint=endpoint,
        version=version,
        runtime="kubernetes",
        model_store=store_uri,
        poll_interval=0.05,
        **kwargs,
    )


async def deploy(
    k8s: EmulatedCluster,
    op: ServingDeployOperator,
    context: Any,
    *,
    address: str | None = None,
    **rollout: Any,
) -> tuple[Any, dict[str, Any]]:
    """Run the operator; play the Deployment controller (and the cloud's load balancer)."""
    deferred = await asyncio.to_thread(execute_until_deferred, op, context)
    waiting = asyncio.create_task(first_event(deferred.trigger))
    await asyncio.sleep(0.1)
    k8s.roll_out(deferred.trigger.deployment, **rollout)
    if address:
        await asyncio.sleep(0.2)
        k8s.patch(
            "services", deferred.trigger.service, {"status": {"loadBalancer": {"ingress": [{"ip": address}]}}}
        )
    return deferred, await waiting


async def test_staging_deploys_a_deployment_and_a_clusterip_service(
    k8s: EmulatedCluster, store_uri: str
) -> None:
    context = make_context()
    op = deploy_op(store_uri, "staging", 1)
    deferred, event = await deploy(k8s, op, context)
    name = deferred.trigger.deployment
    assert name.startswith("serve-fashion-mnist-staging-")
    assert deferred.trigger.serialize() == (
        "airflow_provider_mlpipe.triggers.kubernetes_serving.KubernetesServingTrigger",
        {
            "deployment": name,
            "service": name,
            "namespace": NAMESPACE,
            "conn_id": CONN_ID,
            "generation": 1,
            "pod_selector": {**manifests.serving_selector(name), manifests.L_VERSION: "1"},
            "wait_for_address": False,
            "timeout_at": deferred.trigger.timeout_at,
            "poll_interval": 0.05,
            "transient_retry": {"attempts": 5, "base_delay": 0.5, "max_delay": 30.0},
            "version": "1",
        },
    )
    result = resume(op, context, deferred, event)
    assert result["url"] == f"http://{name}.{NAMESPACE}.svc.cluster.local:8501"
    assert result["version"] == 1 and result["previous_version"] is None
    assert context["ti"].xcoms["task", "url"] == result["url"]
    assert k8s.get("services", name)["spec"]["type"] == "ClusterIP"  # type: ignore[index]
    assert k8s.writes() == [("create", "deployments", name), ("create", "services", name)]

    # A retried task adopts both.
    again, event = await deploy(k8s, deploy_op(store_uri, "staging", 1), context)
    assert resume(op, context, again, event)["url"] == result["url"]
    assert k8s.writes() == [("create", "deployments", name), ("create", "services", name)]

    teardown = ServingTeardownOperator(task_id="teardown", endpoint="staging", runtime="kubernetes")
    assert (await asyncio.to_thread(teardown.execute, context))["was"] == "deleted"
    assert k8s.names("deployments") == [] and k8s.names("services") == []
    assert (await asyncio.to_thread(teardown.execute, context))["was"] == "absent"


async def test_production_waits_for_the_load_balancer_address(k8s: EmulatedCluster, store_uri: str) -> None:
    context = make_context()
    op = deploy_op(store_uri, "production", 1)
    deferred, event = await deploy(k8s, op, context, address="47.96.1.2")
    assert deferred.trigger.wait_for_address is True
    assert k8s.get("services", PROD)["spec"]["type"] == "LoadBalancer"  # type: ignore[index]
    result = resume(op, context, deferred, event)
    assert result["url"] == "http://47.96.1.2:8501"


async def test_load_balancer_address_timeout(k8s: EmulatedCluster, store_uri: str) -> None:
    context = make_context()
    op = deploy_op(store_uri, "production", 1)
    deferred = await asyncio.to_thread(execute_until_deferred, op, context)
    k8s.roll_out(PROD)
    trigger = type(deferred.trigger)(**{**deferred.trigger.serialize()[1], "timeout_at": 0.0})
    event = await first_event(trigger)
    assert event["status"] == "timeout" and event["details"]["stage"] == "address"
    with pytest.raises(ServingError, match="no external address"):
        resume(op, context, deferred, event)


async def test_new_version_rolls_out_and_a_failed_one_is_rolled_back(
    k8s: EmulatedCluster, store_uri: str
) -> None:
    context = make_context()
    _, event = await deploy(k8s, deploy_op(store_uri, "production", 1), context, address="10.0.0.9")

    op2 = deploy_op(store_uri, "production", 2)
    deferred, event = await deploy(k8s, op2, context, address="10.0.0.9")
    assert deferred.trigger.generation == 2
    result = resume(op2, context, deferred, event)
    assert result["version"] == 2 and result["previous_version"] == 1
    dep = k8s.get("deployments", PROD)
    assert dep is not None
    assert dep["metadata"]["labels"][manifests.L_VERSION] == "2"
    assert dep["spec"]["template"]["metadata"]["labels"][manifests.L_VERSION] == "2"
    assert "--version=2" in dep["spec"]["template"]["spec"]["initContainers"][0]["args"]

    # Version 3 never becomes ready: the rollout passes its progress deadline.
    op3 = deploy_op(store_uri, "production", 3)
    deferred, event = await deploy(k8s, op3, context, available=False, deadline_exceeded=True)
    assert event["status"] == "failed"
    with pytest.raises(ServingError) as err:
        await asyncio.to_thread(resume, op3, context, deferred, event)
    assert "ProgressDeadlineExceeded" in str(err.value) and "rolled back to v2" in str(err.value)
    # What check_sent validates after the test: the Deployment as created, then as each patch left it
    # (v2, v3, the rollback to v2).
    assert [how for how, obj in k8s.sent_objects() if obj["kind"] == "Deployment"] == ["create"] + [
        "patch"
    ] * 3
    dep = k8s.get("deployments", PROD)
    assert dep is not None
    assert dep["spec"]["template"]["metadata"]["labels"][manifests.L_VERSION] == "2"
    assert dep["metadata"]["annotations"][manifests.A_VERSION] == "2"
    # The Deployment's own label too: `kubectl get deploy -l mlpipe.io/model-version=2` finds what serves.
    assert dep["metadata"]["labels"][manifests.L_VERSION] == "2"
    assert dep["metadata"]["generation"] == 4
    assert [w for w in k8s.writes() if w[1] == "deployments"] == [
        ("create", "deployments", PROD),
        ("update", "deployments", PROD),  # v2
        ("update", "deployments", PROD),  # v3
        ("update", "deployments", PROD),  # rolled back to v2
    ]
    assert "secretKeyRef" in json.dumps(dep) and "REPLACE" not in json.dumps(dep)


async def test_rollout_timeout_rolls_back_too(k8s: EmulatedCluster, store_uri: str) -> None:
    context = make_context()
    await deploy(k8s, deploy_op(store_uri, "staging", 1), context)
    op = deploy_op(store_uri, "staging", 2)
    deferred = await asyncio.to_thread(execute_until_deferred, op, context)
    trigger = type(deferred.trigger)(**{**deferred.trigger.serialize()[1], "timeout_at": 0.0})
    event = await first_event(trigger)
    assert event["status"] == "timeout" and event["details"]["stage"] == "rollout"
    with pytest.raises(ServingError, match="rolled back to v1"):
        await asyncio.to_thread(resume, op, context, deferred, event)


async def test_first_deployment_failing_has_nothing_to_roll_back(
    k8s: EmulatedCluster, store_uri: str
) -> None:
    context = make_context()
    op = deploy_op(store_uri, "staging", 1)
    deferred, event = await deploy(k8s, op, context, available=False, deadline_exceeded=True)
    with pytest.raises(ServingError, match="did not become ready"):
        await asyncio.to_thread(resume, op, context, deferred, event)


async def test_rollback_task_with_no_production_alias_deletes_the_endpoint(
    k8s: EmulatedCluster, store_uri: str
) -> None:
    context = make_context()
    await deploy(k8s, deploy_op(store_uri, "production", 1), context, address="10.0.0.9")
    op = ServingDeployOperator(
        task_id="rollback_production",
        endpoint="production",
        from_alias="production",
        teardown_if_unresolved=True,
        runtime="kubernetes",
        model_store=store_uri,
    )
    result = await asyncio.to_thread(op.execute, context)
    assert result["url"] is None and result["previous_version"] == 1
    assert k8s.names("deployments") == [] and k8s.names("services") == []
