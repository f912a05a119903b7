"""Every manifest the Kubernetes runtime builds passes `kubernetes-validate --strict` (Kubernetes 1.30 and
1.35 schemas, bundled with kubernetes-validate), and none carries a credential."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest
import yaml

from airflow_provider_mlpipe import manifests
from airflow_provider_mlpipe.exceptions import ConfigError
from tests.kubernetes_emulator import SCHEMA_VERSIONS

# The same schemas the operator tests validate what they sent against (tests/kubernetes_emulator.py).
VERSIONS = list(SCHEMA_VERSIONS)
DIGEST = "sha256:" + "ab" * 32
IMAGE = "registry.cn-hangzhou.aliyuncs.com/mlpipe/fashion-trainer:v7"
RUN = "mlpipe_fashion_mnist/manual__2026-01-01T00:00:00+00:00"
REPO = Path(__file__).resolve().parents[2]


def job(**overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "name": manifests.train_job_name("fashion_mnist", 3, RUN),
        "namespace": "mlpipe",
        "image": IMAGE,
        "digest": DIGEST,
        "model_name": "fashion_mnist",
        "version": 3,
        "model_store": "oss://models-bucket/mlpipe",
        "dataset": "oss://datasets/fashion-mnist",
        "hyperparameters": {"epochs": 2, "learning_rate": 0.003},
        "run_key": RUN,
        "dag_id": "mlpipe_fashion_mnist",
        "oss_secret": "mlpipe-oss",
        **overrides,
    }
    return manifests.train_job(**kwargs)


def deployment(
    version: int = 3, name: str = "serve-fashion-mnist-production", replicas: int = 2
) -> dict[str, Any]:
    template = manifests.serving_pod_template(
        name=name,
        model_name="fashion_mnist",
        version=version,
        model_store="oss://models-bucket/mlpipe",
        serving_image="tensorflow/serving:2.19.0",
        fetch_image="registry.example.com/mlpipe/fetch@" + DIGEST,
        oss_secret="mlpipe-oss",
    )
    return manifests.serving_deployment(
        name=name,
        namespace="mlpipe",
        endpoint="production",
        model_name="fashion_mnist",
        version=version,
        run_key=RUN,
        dag_id="mlpipe_fashion_mnist",
        template=template,
        replicas=replicas,
    )


def service(service_type: str, **kwargs: Any) -> dict[str, Any]:
    return manifests.serving_service(
        name="serve-fashion-mnist-production",
        namespace="mlpipe",
        service_type=service_type,
        model_name="fashion_mnist",
        run_key=RUN,
        dag_id="mlpipe_fashion_mnist",
        annotations={"service.beta.kubernetes.io/alibaba-cloud-loadbalancer-id": "lb-bp1example"},
        **kwargs,
    )


def rolled_out() -> dict[str, Any]:
    return jsonpatch.apply_patch(deployment(3), manifests.rollout_patch(deployment(3), deployment(4)))


def rolled_back() -> dict[str, Any]:
    after = rolled_out()
    patch = manifests.rollback_patch(after)
    assert patch is not None
    return jsonpatch.apply_patch(after, patch)


def deploy_files() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((REPO / "deploy").glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


ALL: dict[str, Any] = {
    "job": job,
    "job-gpu-placed": lambda: job(
        gpus=2,
        node_selector={"aliyun.accelerator/nvidia_name": "Tesla-V100"},
        tolerations=[{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
        service_account="mlpipe-train",
        image_pull_secrets=["acr-pull"],
    ),
    "job-oss-location": lambda: job(oss_location=LOCATION),
    "job-file-store": lambda: job(model_store="file:///mnt/models", dataset=None, hyperparameters={}),
    "deployment": deployment,
    "deployment-rolled-out": rolled_out,
    "deployment-rolled-back": rolled_back,
    "deployment-one-replica": lambda: deployment(replicas=1),
    "pdb": lambda: manifests.serving_pdb(
        name="serve-fashion-mnist-production",
        namespace="mlpipe",
        model_name="fashion_mnist",
        run_key=RUN,
        dag_id="mlpipe_fashion_mnist",
    ),
    "service-clusterip": lambda: service("ClusterIP"),
    "service-loadbalancer": lambda: service("LoadBalancer"),
    "service-loadbalancer-internet": lambda: service(
        "LoadBalancer", address_type="internet", source_ranges=["203.0.113.0/24"], expose_grpc=True
    ),
}


@pytest.mark.parametrize("k8s_version", VERSIONS)
@pytest.mark.parametrize("which", sorted(ALL))
def test_manifest_validates_strictly(which: str, k8s_version: str) -> None:
    kubernetes_validate.validate(ALL[which](), k8s_version, strict=True)


@pytest.mark.parametrize("k8s_version", VERSIONS)
def test_deploy_manifests_validate_strictly(k8s_version: str) -> None:
    docs = deploy_files()
    kinds = {d["kind"] for d in docs}
    assert {"Role", "RoleBinding", "ServiceAccount", "Secret"} <= kinds
    for doc in docs:
        kubernetes_validate.validate(doc, k8s_version, strict=True)


def test_the_strict_validator_does_reject_an_unknown_field() -> None:
    bad = job()
    bad["spec"]["template"]["spec"]["containers"][0]["gpu"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, "1.35.0", strict=True)


# Every Kubernetes API call the runtime makes, as RBAC names it: (apiGroup, resource, verb) -> the calls.
# From the hooks' methods (airflow_provider_mlpipe/hooks/kubernetes.py, kubernetes_async.py) and their
# callers in runtimes/kubernetes.py and triggers/. The provider's KubernetesHook / AsyncKubernetesHook only
# load the connection and build the clients here: they make no API call of their own. The sync hook's list_pods /
# pod_log and get("Pod") have no caller, so they need no verb.
API_CALLS: dict[tuple[str, str, str], list[str]] = {
    ("batch", "jobs", "get"): [
        "KubernetesRuntime.start_training: hook.get('Job') (a Job failed in an earlier try?)",
        "KubernetesResourceHook.create_or_adopt: GET before the create, and after a 409",
        "KubernetesResourceHook.wait_deleted: GET until 404",
        "KubernetesJobTrigger.run: AsyncKubernetesResourceHook.get('Job'), each poll",
    ],
    ("batch", "jobs", "create"): ["KubernetesResourceHook.create_or_adopt (the training Job)"],
    ("batch", "jobs", "delete"): [
        "KubernetesRuntime.start_training: replaces a Job failed in an earlier try",
        "KubernetesRuntime.stop_training: the trigger timed out",
        "KubernetesRuntime.cancel: KubeTrainJobOperator.on_kill (before deferral)",
        "KubernetesJobTrigger.on_kill: AsyncKubernetesResourceHook.delete",
    ],
    ("", "pods", "list"): [
        "KubernetesJobTrigger._pods: list_pods('job-name=<job>') (newest pod, termination reasons)",
        "KubernetesServingTrigger._problems: list_pods(<serving selector>)",
    ],
    ("", "events", "list"): [
        "KubernetesJobTrigger._stuck: AsyncKubernetesResourceHook.list_events('Job') (no pod: why?)",
    ],
    ("", "pods/log", "get"): [
        "KubernetesJobTrigger._copy_log / _event: AsyncKubernetesResourceHook.pod_log",
    ],
    ("apps", "deployments", "get"): [
        "KubernetesRuntime.deploy_serving / served_version: hook.get('Deployment') (which version runs?)",
        "KubernetesRuntime.abandon_serving: hook.get('Deployment') before a rollback",
        "KubernetesResourceHook.create_or_adopt",
        "KubernetesServingTrigger.run: AsyncKubernetesResourceHook.get('Deployment'), each poll",
    ],
    ("apps", "deployments", "create"): ["KubernetesResourceHook.create_or_adopt (a new endpoint)"],
    ("apps", "deployments", "patch"): [
        "KubernetesRuntime.deploy_serving: hook.patch(rollout_patch)",
        "KubernetesRuntime.abandon_serving: hook.patch(rollback_patch)",
    ],
    ("apps", "deployments", "delete"): [
        "KubernetesRuntime.teardown_serving (ServingTeardownOperator)",
        "KubernetesRuntime.teardown_serving (ServingDeployOperator: teardown_if_unresolved)",
    ],
    ("", "services", "get"): [
        "KubernetesResourceHook.create_or_adopt",
        "KubernetesServingTrigger.run: AsyncKubernetesResourceHook.get('Service') (LoadBalancer address)",
    ],
    ("", "services", "create"): ["KubernetesResourceHook.create_or_adopt"],
    ("", "services", "patch"): [
        "KubernetesRuntime.deploy_serving: hook.patch('Service', service_patch) (an existing Service differs)"
    ],
    ("policy", "poddisruptionbudgets", "get"): [
        "KubernetesResourceHook.create_or_adopt (replicas >= 2)",
        "KubernetesRuntime.teardown_serving: hook.get('PodDisruptionBudget') (is there one to delete?)",
    ],
    ("policy", "poddisruptionbudgets", "create"): ["KubernetesResourceHook.create_or_adopt (replicas >= 2)"],
    ("policy", "poddisruptionbudgets", "delete"): ["KubernetesRuntime.teardown_serving"],
    ("", "services", "delete"): [
        "KubernetesRuntime.teardown_serving (ServingTeardownOperator)",
        "KubernetesRuntime.teardown_serving (ServingDeployOperator: teardown_if_unresolved)",
    ],
}


def test_rbac_is_least_privilege() -> None:
    """The Role grants exactly the verbs of API_CALLS, one rule per resource, nothing else."""
    role = next(d for d in deploy_files() if d["kind"] == "Role")
    expected: dict[tuple[str, str], list[str]] = {}
    for group, resource, verb in API_CALLS:
        expected.setdefault((group, resource), []).append(verb)
    granted: dict[tuple[str, str], list[str]] = {}
    for rule in role["rules"]:
        # No resourceNames, nonResourceURLs or wildcards: a rule is a group, a resource and verbs.
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule
        assert len(rule["apiGroups"]) == 1 and len(rule["resources"]) == 1, rule
        ((group,), (resource,)) = rule["apiGroups"], rule["resources"]
        assert (group, resource) not in granted, f"two rules for {group}/{resource}"
        granted[group, resource] = sorted(rule["verbs"])
    assert granted == {key: sorted(verbs) for key, verbs in expected.items()}
    assert role["metadata"]["namespace"] == "mlpipe"
    assert not [d for d in deploy_files() if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]


def test_job_spec() -> None:
    manifest = job(gpus=1, node_selector={"gpu": "yes"})
    spec = manifest["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == f"registry.cn-hangzhou.aliyuncs.com/mlpipe/fashion-trainer@{DIGEST}"
    # The image's own entrypoint runs; the contract's settings travel as environment variables.
    assert "command" not in container and "args" not in container
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MLPIPE_EPOCHS"] == "2" and env["MLPIPE_LEARNING_RATE"] == "0.003"
    assert env["MLPIPE_MODEL_VERSION"] == "3" and env["MLPIPE_MODEL_STORE"] == "oss://models-bucket/mlpipe"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["restartPolicy"] == "Never"
    assert pod["nodeSelector"] == {"gpu": "yes"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert (
        spec["backoffLimit"] == 1
        and spec["activeDeadlineSeconds"] > 0
        and spec["ttlSecondsAfterFinished"] > 0
    )
    assert pod["securityContext"]["runAsNonRoot"] is True
    sc = container["securityContext"]
    assert (
        sc["readOnlyRootFilesystem"]
        and not sc["allowPrivilegeEscalation"]
        and sc["capabilities"]["drop"] == ["ALL"]
    )
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/scratch", "/tmp"}
    env = {e["name"]: e for e in container["env"]}
    assert env["MLPIPE_MODEL_STORE"]["value"] == "oss://models-bucket/mlpipe"
    assert env["MLPIPE_MODEL_VERSION"]["value"] == "3"
    labels = manifest["metadata"]["labels"]
    assert labels[manifests.L_VERSION] == "3" and labels[manifests.L_DAG] == "mlpipe_fashion_mnist"
    assert labels[manifests.L_RUN] == manifests.short_hash(RUN, 16)
    assert spec["template"]["metadata"]["labels"] == labels


LOCATION = {"OSS_REGION": "cn-hangzhou", "OSS_ENDPOINT": "oss-cn-hangzhou-internal.aliyuncs.com"}


def test_credentials_only_by_secret_key_ref() -> None:
    for build in ALL.values():
        manifest = build()
        text = json.dumps(manifest)
        assert "OSS_ACCESS_KEY" not in text or '"secretKeyRef"' in text
        pod = manifest.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("initContainers", []) + pod.get("containers", []):
            for env in container.get("env", []):
                if env["name"].startswith("OSS_ACCESS_KEY"):
                    assert set(env) == {"name", "valueFrom"}
                    assert env["valueFrom"]["secretKeyRef"]["name"] == "mlpipe-oss"
    assert {e["name"] for e in job()["spec"]["template"]["spec"]["containers"][0]["env"]} >= {
        "OSS_ACCESS_KEY_ID",
        "OSS_ACCESS_KEY_SECRET",
    }
    # Required when the store is on OSS, optional when nothing reads OSS.
    refs = [
        e["valueFrom"]["secretKeyRef"]
        for e in job()["spec"]["template"]["spec"]["containers"][0]["env"]
        if "valueFrom" in e
    ]
    assert [r["optional"] for r in refs] == [False, False]
    local = job(model_store="file:///mnt/models", dataset=None)
    refs = [
        e["valueFrom"]["secretKeyRef"]
        for e in local["spec"]["template"]["spec"]["containers"][0]["env"]
        if "valueFrom" in e
    ]
    assert all(r["optional"] for r in refs)


def _pod_containers(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    pod = manifest["spec"]["template"]["spec"]
    return [*pod.get("initContainers", []), *pod["containers"]]


def test_pods_read_exactly_the_secret_keys_of_the_readme_and_the_example() -> None:
    """The Secret README step 2 creates and deploy/oss-secret.example.yaml holds the keys the pods read,
    no more and no fewer: a key the pods read that the documented Secret lacks stops them on a cluster."""
    readme = (REPO / "README.md").read_text()
    step = readme[readme.index("kubectl -n mlpipe create secret generic mlpipe-oss") :]
    step = step[: step.index("```")]
    documented = set(re.findall(r"--from-literal=(\w+)=", step))
    (example,) = [d for d in deploy_files() if d["kind"] == "Secret"]
    read = {
        env["valueFrom"]["secretKeyRef"]["key"]
        for manifest in (job(), deployment())
        for container in _pod_containers(manifest)
        for env in container.get("env", [])
        if "valueFrom" in env
    }
    assert read == documented == set(example["stringData"]) == {"access_key_id", "access_key_secret"}


def test_oss_region_and_endpoint_reach_the_trainer_and_the_fetch_step() -> None:
    """Where the bucket lives is a plain value on every container that opens the store (not secret)."""
    template = manifests.serving_pod_template(
        name="serve-fashion-mnist-staging",
        model_name="fashion_mnist",
        version=3,
        model_store="oss://models-bucket/mlpipe",
        serving_image="tensorflow/serving:2.19.0",
        fetch_image="registry.example.com/mlpipe/fetch@" + DIGEST,
        oss_secret="mlpipe-oss",
        oss_location=LOCATION,
    )
    (fetch,) = template["spec"]["initContainers"]
    (trainer,) = job(oss_location=LOCATION)["spec"]["template"]["spec"]["containers"]
    for container in (trainer, fetch):
        values = {e["name"]: e.get("value") for e in container["env"]}
        assert {k: values.get(k) for k in LOCATION} == LOCATION
        # One entry per name: the API server warns on duplicates and the last one would win.
        names = [e["name"] for e in container["env"]]
        assert len(names) == len(set(names))
    for version in VERSIONS:
        kubernetes_validate.validate(job(oss_location=LOCATION), version, strict=True)


def test_deployment_spec() -> None:
    manifest = deployment()
    spec = manifest["spec"]
    pod = spec["template"]["spec"]
    (init,) = pod["initContainers"]
    (server,) = pod["containers"]
    assert init["args"] == [
        "--model-store=oss://models-bucket/mlpipe",
        "--model-name=fashion_mnist",
        "--version=3",
        "--dest=/models/fashion_mnist",
    ]
    assert server["image"] == "tensorflow/serving:2.19.0"
    assert {
        "--model_name=fashion_mnist",
        "--model_base_path=/models/fashion_mnist",
        "--rest_api_port=8501",
    } <= set(server["args"])
    assert server["readinessProbe"]["httpGet"]["path"] == "/v1/models/fashion_mnist"
    assert {v["name"]: v for v in pod["volumes"]}["models"]["emptyDir"]
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert spec["replicas"] == 2
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()


def test_rollout_then_rollback_restores_the_previous_template() -> None:
    after = rolled_out()
    assert after["spec"]["template"] == deployment(4)["spec"]["template"]
    assert after["metadata"]["annotations"][manifests.A_PREVIOUS_VERSION] == "3"
    back = rolled_back()
    assert back["spec"]["template"] == deployment(3)["spec"]["template"]
    assert back["metadata"]["annotations"][manifests.A_VERSION] == "3"
    assert after["metadata"]["labels"][manifests.L_VERSION] == "4"
    assert back["metadata"]["labels"][manifests.L_VERSION] == "3"
    assert manifests.A_PREVIOUS_TEMPLATE not in back["metadata"]["annotations"]
    assert manifests.rollback_patch(deployment(3)) is None
    # The selector is immutable in Kubernetes: a rollout must never touch it.
    assert after["spec"]["selector"] == deployment(3)["spec"]["selector"] == back["spec"]["selector"]


def test_job_names_are_deterministic_dns_labels() -> None:
    a = manifests.train_job_name("fashion_mnist", 3, RUN)
    assert a == manifests.train_job_name("fashion_mnist", 3, RUN)
    assert a.startswith("train-fashion-mnist-v3-")
    assert a != manifests.train_job_name("fashion_mnist", 3, RUN + "x")
    long_model = "m" * 63
    b = manifests.train_job_name(long_model, 123456, RUN)
    c = manifests.train_job_name(long_model, 123457, RUN)
    assert len(b) <= 63 and len(c) <= 63 and b != c
    assert manifests.serving_name("serve-fashion-mnist-production") == "serve-fashion-mnist-production"
    long_endpoint = manifests.serving_name(f"serve-{long_model}-staging-0123456789")
    assert len(long_endpoint) <= 63 and long_endpoint.startswith("serve-")
    assert (
        manifests.label_value("x" * 100) == manifests.label_value("x" * 100)
        and len(manifests.label_value("x" * 100)) <= 63
    )


@pytest.mark.parametrize(
    ("image", "digest", "pinned"),
    [
        ("reg.io/ns/repo:tag", DIGEST, f"reg.io/ns/repo@{DIGEST}"),
        ("reg.io:5000/ns/repo", DIGEST, f"reg.io:5000/ns/repo@{DIGEST}"),
        ("reg.io:5000/ns/repo:1.2", DIGEST, f"reg.io:5000/ns/repo@{DIGEST}"),
        (f"reg.io/ns/repo@{DIGEST}", "", f"reg.io/ns/repo@{DIGEST}"),
        (f"reg.io/ns/repo@{DIGEST}", DIGEST, f"reg.io/ns/repo@{DIGEST}"),
    ],
)
def test_pinned_image(image: str, digest: str, pinned: str) -> None:
    assert manifests.pinned_image(image, digest) == pinned


@pytest.mark.parametrize(
    ("image", "digest"),
    [
        ("reg.io/ns/repo:tag", ""),
        ("reg.io/ns/repo:tag", "sha256:short"),
        (f"reg.io/ns/repo@{DIGEST}", "sha256:" + "cd" * 32),
    ],
)
def test_unpinnable_image_is_refused(image: str, digest: str) -> None:
    with pytest.raises(ConfigError, match="digest"):
        manifests.pinned_image(image, digest)


def test_manifests_are_not_mutated_by_patch_building() -> None:
    before = deployment(3)
    snapshot = copy.deepcopy(before)
    manifests.rollout_patch(before, deployment(4))
    assert before == snapshot


def test_load_balancer_is_intranet_unless_internet_is_set_with_source_ranges() -> None:
    lb = service("LoadBalancer")
    assert lb["metadata"]["annotations"][manifests.A_LB_ADDRESS_TYPE] == "intranet"
    assert [p["name"] for p in lb["spec"]["ports"]] == ["http"]
    cluster_ip = service("ClusterIP")
    assert manifests.A_LB_ADDRESS_TYPE not in cluster_ip["metadata"]["annotations"]
    with pytest.raises(ConfigError, match="source ranges"):
        service("LoadBalancer", address_type="internet")
    with pytest.raises(ConfigError, match="CIDR"):
        service("LoadBalancer", address_type="internet", source_ranges=["0.0.0.0/33"])
    with pytest.raises(ConfigError, match="intranet or internet"):
        service("LoadBalancer", address_type="public")
    public = service("LoadBalancer", address_type="internet", source_ranges=["203.0.113.0/24"])
    assert public["spec"]["loadBalancerSourceRanges"] == ["203.0.113.0/24"]
    assert public["metadata"]["annotations"][manifests.A_LB_ADDRESS_TYPE] == "internet"


def test_job_failure_policy() -> None:
    """A usage error (bad hyperparameters, a dataset that misses a file) fails the Job on its first pod;
    a disruption (eviction, preemption, drain) does not count against backoffLimit; a replacement pod
    starts only when the failed one is gone."""
    from training_image.train import EXIT_USAGE

    spec = job()["spec"]
    assert spec["podReplacementPolicy"] == "Failed"
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "FailJob",
        "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [EXIT_USAGE]},
    }
    assert rules[1] == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }
    (container,) = spec["template"]["spec"]["containers"]
    assert container["name"] == "trainer" and spec["template"]["spec"]["restartPolicy"] == "Never"


def test_serving_startup_probe_covers_model_loading() -> None:
    """Liveness starts only after the startupProbe succeeds; that one allows the ready timeout for TF
    Serving to load the model and open its port."""
    template = manifests.serving_pod_template(
        name="serve-x",
        model_name="fashion_mnist",
        version=1,
        model_store="oss://models-bucket/mlpipe",
        serving_image="tensorflow/serving:2.19.0",
        fetch_image="registry.example.com/mlpipe/fetch@" + DIGEST,
        oss_secret="mlpipe-oss",
        startup_timeout_seconds=900,
    )
    (server,) = template["spec"]["containers"]
    startup = server["startupProbe"]
    assert startup["tcpSocket"] == {"port": "http"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 900
    assert "initialDelaySeconds" not in server["livenessProbe"]


def test_two_replicas_spread_over_nodes_and_one_does_not() -> None:
    affinity = deployment(replicas=2)["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    (term,) = affinity["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    selector = deployment()["spec"]["selector"]["matchLabels"]
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == selector
    assert "affinity" not in deployment(replicas=1)["spec"]["template"]["spec"]
    pdb = ALL["pdb"]()
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": selector}}


def test_rollback_restores_the_replicas_too() -> None:
    before = deployment(3, replicas=2)
    after = jsonpatch.apply_patch(before, manifests.rollout_patch(before, deployment(4, replicas=5)))
    assert after["spec"]["replicas"] == 5
    patch = manifests.rollback_patch(after)
    assert patch is not None
    back = jsonpatch.apply_patch(after, patch)
    assert back["spec"]["replicas"] == 2 and back["spec"]["template"] == before["spec"]["template"]
    assert manifests.A_PREVIOUS_REPLICAS not in back["metadata"]["annotations"]
    for version in VERSIONS:
        kubernetes_validate.validate(back, version, strict=True)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch, as the API server applies `application/merge-patch+json`."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def test_service_patch_brings_an_existing_service_to_the_wanted_spec() -> None:
    wanted = service("LoadBalancer")
    assert manifests.service_patch(copy.deepcopy(wanted), wanted) is None
    # Left public, with the gRPC port, by another run or by hand.
    existing = service("LoadBalancer", address_type="internet", source_ranges=["0.0.0.0/0"], expose_grpc=True)
    patch = manifests.service_patch(existing, wanted)
    assert patch is not None
    merged = merge_patch(existing, patch)
    assert manifests.service_patch(merged, wanted) is None
    assert merged["metadata"]["annotations"][manifests.A_LB_ADDRESS_TYPE] == "intranet"
    assert [p["port"] for p in merged["spec"]["ports"]] == [manifests.REST_PORT]
    assert "loadBalancerSourceRanges" not in merged["spec"]


def test_image_pull_secrets_reach_both_pod_specs() -> None:
    pod = ALL["job-gpu-placed"]()["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "acr-pull"}]
    assert "imagePullSecrets" not in job()["spec"]["template"]["spec"]
    template = manifests.serving_pod_template(
        name="serve-x",
        model_name="fashion_mnist",
        version=1,
        model_store="oss://models-bucket/mlpipe",
        serving_image="tensorflow/serving:2.19.0",
        fetch_image="registry.example.com/mlpipe/fetch@" + DIGEST,
        oss_secret="mlpipe-oss",
        image_pull_secrets=["acr-pull", "mirror-pull"],
    )
    assert template["spec"]["imagePullSecrets"] == [{"name": "acr-pull"}, {"name": "mirror-pull"}]
