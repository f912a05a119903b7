"""The Kubernetes API emulator (tests/kubernetes_emulator.py) refuses what a real apiserver refuses, so that
the runtime's tests cannot pass on a request a cluster would answer with an error. Each strictness is
driven over HTTP here, as a client sends it; the expected answers are those of the apiserver
(k8s.io/apiserver: 409 Conflict on a stale resourceVersion, 422 Invalid on an immutable field, 400
BadRequest on an unparsable label selector, status only through /status)."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from airflow_provider_mlpipe import manifests
from tests.kubernetes_emulator import NAMESPACE, EmulatedCluster

DEPLOY = "serve-x"
JOB = "train-x"


def url(k8s: EmulatedCluster, kind: str, name: str = "", sub: str = "") -> str:
    base = {
        "deployments": f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments",
        "jobs": f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs",
        "pods": f"/api/v1/namespaces/{NAMESPACE}/pods",
    }[kind]
    return k8s.url + base + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")


def patch(k8s: EmulatedCluster, kind: str, name: str, body: Any, sub: str = "") -> requests.Response:
    content_type = "application/json-patch+json" if isinstance(body, list) else "application/merge-patch+json"
    return requests.patch(
        url(k8s, kind, name, sub), json=body, headers={"Content-Type": content_type}, timeout=10
    )


def create_deployment(k8s: EmulatedCluster) -> dict[str, Any]:
    template = {
        "metadata": {"labels": manifests.serving_selector(DEPLOY)},
        "spec": {"containers": [{"name": "c", "image": "tensorflow/serving:2.19.0"}]},
    }
    body = manifests.serving_deployment(
        name=DEPLOY,
        namespace=NAMESPACE,
        endpoint="staging",
        model_name="m",
        version=1,
        run_key="r",
        dag_id="d",
        template=template,
    )
    resp = requests.post(url(k8s, "deployments"), json=body, timeout=10)
    assert resp.status_code in (200, 201), resp.text
    return dict(resp.json())


def test_a_stale_resource_version_gets_409(k8s: EmulatedCluster) -> None:
    created = create_deployment(k8s)
    stale = created["metadata"]["resourceVersion"]
    assert patch(k8s, "deployments", DEPLOY, {"spec": {"replicas": 2}}).status_code == 200
    # Guarded by the version read before that change: refused, and nothing changed.
    resp = patch(
        k8s, "deployments", DEPLOY, {"metadata": {"resourceVersion": stale}, "spec": {"replicas": 3}}
    )
    assert resp.status_code == 409 and resp.json()["reason"] == "Conflict"
    replica_3 = {"op": "replace", "path": "/spec/replicas", "value": 3}
    guard = [{"op": "replace", "path": "/metadata/resourceVersion", "value": stale}]
    assert patch(k8s, "deployments", DEPLOY, [*guard, replica_3]).status_code == 409
    # A JSON patch `test` of it is an ordinary test: 422 when it fails (the apiserver's jsonpatch error).
    test = [{"op": "test", "path": "/metadata/resourceVersion", "value": stale}]
    assert patch(k8s, "deployments", DEPLOY, [*test, replica_3]).status_code == 422
    current = k8s.get("deployments", DEPLOY)
    assert current is not None and current["spec"]["replicas"] == 2
    # The current version passes.
    fresh = current["metadata"]["resourceVersion"]
    guard = [{"op": "replace", "path": "/metadata/resourceVersion", "value": fresh}]
    resp = patch(
        k8s, "deployments", DEPLOY, [*guard, {"op": "replace", "path": "/spec/replicas", "value": 3}]
    )
    assert resp.status_code == 200 and resp.json()["spec"]["replicas"] == 3


def test_a_change_to_an_immutable_field_gets_422(k8s: EmulatedCluster) -> None:
    create_deployment(k8s)
    resp = patch(k8s, "deployments", DEPLOY, {"spec": {"selector": {"matchLabels": {"app": "other"}}}})
    assert resp.status_code == 422 and "spec.selector" in resp.json()["message"]
    assert "immutable" in resp.json()["message"]
    # The template of a Deployment may change (that is a rollout).
    resp = patch(
        k8s, "deployments", DEPLOY, {"spec": {"template": {"metadata": {"annotations": {"a": "b"}}}}}
    )
    assert resp.status_code == 200

    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": JOB},
        "spec": {
            "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "t", "image": "x"}]}}
        },
    }
    assert requests.post(url(k8s, "jobs"), json=job, timeout=10).status_code in (200, 201)
    resp = patch(
        k8s, "jobs", JOB, [{"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "y"}]
    )
    assert resp.status_code == 422 and "spec.template" in resp.json()["message"]
    # A Job's labels are mutable.
    assert patch(k8s, "jobs", JOB, {"metadata": {"labels": {"a": "b"}}}).status_code == 200


def test_the_full_label_selector_grammar_and_400_on_a_malformed_one(k8s: EmulatedCluster) -> None:
    for name, labels in {
        "p1": {"app": "a", "tier": "web"},
        "p2": {"app": "b", "tier": "db"},
        "p3": {"app": "c"},
    }.items():
        k8s.add("pods", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels}})

    def names(selector: str) -> list[str]:
        resp = requests.get(url(k8s, "pods"), params={"labelSelector": selector}, timeout=10)
        assert resp.status_code == 200, resp.text
        return sorted(item["metadata"]["name"] for item in resp.json()["items"])

    assert names("app in (a, b)") == ["p1", "p2"]
    assert names("app notin (a)") == ["p2", "p3"]
    assert names("tier") == ["p1", "p2"]
    assert names("!tier") == ["p3"]
    assert names("tier!=web") == ["p2", "p3"]
    assert names("app==a,tier=web") == ["p1"]
    assert names("") == ["p1", "p2", "p3"]
    for malformed in ("app in a", "app=a=b", "app in (a", "=a", "app,,tier", "-bad-key=x"):
        resp = requests.get(url(k8s, "pods"), params={"labelSelector": malformed}, timeout=10)
        assert resp.status_code == 400, malformed
        assert resp.json()["reason"] == "BadRequest"


def test_status_is_written_only_through_the_status_subresource(k8s: EmulatedCluster) -> None:
    template = {"metadata": {"labels": manifests.serving_selector(DEPLOY)}, "spec": {"containers": []}}
    body = manifests.serving_deployment(
        name=DEPLOY,
        namespace=NAMESPACE,
        endpoint="staging",
        model_name="m",
        version=1,
        run_key="r",
        dag_id="d",
        template=template,
    )
    body["status"] = {"availableReplicas": 5}
    created = requests.post(url(k8s, "deployments"), json=body, timeout=10).json()
    assert "availableReplicas" not in (created.get("status") or {})
    resp = patch(k8s, "deployments", DEPLOY, {"status": {"availableReplicas": 7}, "spec": {"replicas": 2}})
    assert resp.status_code == 200
    current = k8s.get("deployments", DEPLOY)
    assert current is not None and current["spec"]["replicas"] == 2
    assert "availableReplicas" not in (current.get("status") or {})
    resp = patch(k8s, "deployments", DEPLOY, {"status": {"availableReplicas": 7}}, sub="status")
    assert resp.status_code == 200
    current = k8s.get("deployments", DEPLOY)
    assert current is not None and current["status"]["availableReplicas"] == 7


@pytest.mark.parametrize(
    "selector", ["job-name=train-x", "app.kubernetes.io/name=mlpipe-serving,mlpipe.io/endpoint=s"]
)
def test_the_runtime_s_own_selectors_parse(k8s: EmulatedCluster, selector: str) -> None:
    resp = requests.get(url(k8s, "pods"), params={"labelSelector": selector}, timeout=10)
    assert resp.status_code == 200


def _job(name: str = JOB, **container: Any) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "t", "image": "x", **container}],
                }
            }
        },
    }


@pytest.mark.parametrize(
    ("what", "body", "field"),
    [
        ("an upper-case name", _job("Train-X"), "metadata.name"),
        ("a Job name longer than a label", _job("t" * 64), "metadata.name"),
        (
            "a label value with a space",
            {**_job(), "metadata": {"name": JOB, "labels": {"a": "b c"}}},
            "labels",
        ),
        (
            "a label key with two slashes",
            {**_job(), "metadata": {"name": JOB, "labels": {"a/b/c": "d"}}},
            "labels",
        ),
        (
            "requests above limits",
            _job(resources={"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}}),
            "resources.requests",
        ),
        ("a port out of range", _job(ports=[{"containerPort": 70000}]), "containerPort"),
        (
            "a port name too long",
            _job(ports=[{"containerPort": 80, "name": "a-very-long-port-name"}]),
            "name",
        ),
        ("an invalid container name", _job(), "name"),
    ],
)
def test_objects_a_real_server_refuses_get_422(
    k8s: EmulatedCluster, what: str, body: dict[str, Any], field: str
) -> None:
    if what == "an invalid container name":
        body["spec"]["template"]["spec"]["containers"][0]["name"] = "Trainer_1"
    resp = requests.post(url(k8s, "jobs"), json=body, timeout=10)
    assert resp.status_code == 422, what
    assert resp.json()["reason"] == "Invalid" and field in resp.json()["message"], resp.json()["message"]
    assert k8s.names("jobs") == []


def test_a_deployment_whose_selector_misses_its_template_labels_gets_422(k8s: EmulatedCluster) -> None:
    created = create_deployment(k8s)
    body = {**created, "metadata": {"name": "serve-y"}}
    body["spec"] = {**created["spec"], "selector": {"matchLabels": {"app": "not-in-the-template"}}}
    resp = requests.post(url(k8s, "deployments"), json=body, timeout=10)
    assert resp.status_code == 422 and "does not match template" in resp.json()["message"]
    # A patch that would leave the template without the selector's labels is refused too.
    resp = patch(k8s, "deployments", DEPLOY, {"spec": {"template": {"metadata": {"labels": None}}}})
    assert resp.status_code == 422


def test_a_service_port_out_of_range_gets_422(k8s: EmulatedCluster) -> None:
    service = manifests.serving_service(
        name="serve-x", namespace=NAMESPACE, service_type="ClusterIP", model_name="m", run_key="r", dag_id="d"
    )
    service["spec"]["ports"][0]["port"] = 0
    resp = requests.post(k8s.url + f"/api/v1/namespaces/{NAMESPACE}/services", json=service, timeout=10)
    assert resp.status_code == 422 and "spec.ports[0].port" in resp.json()["message"]
    service["spec"]["ports"][0].update(port=8501, targetPort="Not_A_Name")
    resp = requests.post(k8s.url + f"/api/v1/namespaces/{NAMESPACE}/services", json=service, timeout=10)
    assert resp.status_code == 422 and "targetPort" in resp.json()["message"]


def test_a_pod_that_violates_pod_security_restricted_gets_403(k8s: EmulatedCluster) -> None:
    """deploy/namespace.yaml enforces `restricted`: a pod running as root, with privilege escalation, or
    keeping capabilities is refused at admission; the runtime's own pod specs pass."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "root-pod"},
        "spec": {"containers": [{"name": "c", "image": "x"}]},
    }
    resp = requests.post(url(k8s, "pods"), json=pod, timeout=10)
    assert resp.status_code == 403 and resp.json()["reason"] == "Forbidden"
    message = resp.json()["message"]
    assert 'violates PodSecurity "restricted:latest"' in message
    assert "allowPrivilegeEscalation" in message and "runAsNonRoot" in message and "seccompProfile" in message

    template = manifests.serving_pod_template(
        name="serve-x",
        model_name="m",
        version=1,
        model_store="oss://bucket/p",
        serving_image="tensorflow/serving:2.19.0",
        fetch_image="registry.example.com/fetch@sha256:" + "c" * 64,
        oss_secret="mlpipe-oss",
    )
    ok = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "runtime-pod"}, "spec": template["spec"]}
    assert requests.post(url(k8s, "pods"), json=ok, timeout=10).status_code in (200, 201)


def test_check_sent_refuses_a_workload_template_that_violates_restricted(k8s: EmulatedCluster) -> None:
    """Admission refuses the pods of such a Job, not the Job: `check_sent` catches it after the fact."""
    from tests.kubernetes_emulator import check_sent

    assert requests.post(url(k8s, "jobs"), json=_job(), timeout=10).status_code in (200, 201)
    with pytest.raises(AssertionError, match="violates restricted"):
        check_sent(k8s)


def test_foreground_deletion_keeps_the_owner_until_its_dependents_are_gone(k8s: EmulatedCluster) -> None:
    """A Job deleted with propagationPolicy Foreground stays readable, with a deletionTimestamp and the
    `foregroundDeletion` finalizer, while one of its pods still has a finalizer; it goes with that pod."""
    assert requests.post(url(k8s, "jobs"), json=_job(), timeout=10).status_code in (200, 201)
    k8s.add_job_pod(JOB, "train-x-free")
    k8s.add_job_pod(JOB, "train-x-held")
    k8s.patch("pods", "train-x-held", {"metadata": {"finalizers": ["example.com/keep"]}})
    foreground = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Foreground"}
    resp = requests.delete(url(k8s, "jobs", JOB), json=foreground, timeout=10)
    assert resp.status_code == 200
    job = requests.get(url(k8s, "jobs", JOB), timeout=10).json()
    assert job["metadata"]["deletionTimestamp"] and "foregroundDeletion" in job["metadata"]["finalizers"]
    assert k8s.names("pods") == ["train-x-held"]
    held = k8s.get("pods", "train-x-held")
    assert held is not None and held["metadata"]["deletionTimestamp"]
    # The pod's finalizer goes: the pod goes, and the Job with it.
    assert patch_pod(k8s, "train-x-held", {"metadata": {"finalizers": None}}).status_code == 200
    assert requests.get(url(k8s, "jobs", JOB), timeout=10).status_code == 404
    assert k8s.names("pods") == [] and k8s.names("jobs") == []


def test_a_job_without_blocking_dependents_goes_at_once(k8s: EmulatedCluster) -> None:
    assert requests.post(url(k8s, "jobs"), json=_job(), timeout=10).status_code in (200, 201)
    k8s.add_job_pod(JOB, "train-x-a")
    foreground = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Foreground"}
    assert requests.delete(url(k8s, "jobs", JOB), json=foreground, timeout=10).status_code == 200
    assert requests.get(url(k8s, "jobs", JOB), timeout=10).status_code == 404
    assert k8s.names("pods") == []


def patch_pod(k8s: EmulatedCluster, name: str, body: dict[str, Any]) -> requests.Response:
    return requests.patch(
        url(k8s, "pods", name),
        json=body,
        headers={"Content-Type": "application/merge-patch+json"},
        timeout=10,
    )
