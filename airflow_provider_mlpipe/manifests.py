"""Kubernetes manifests of the `kubernetes` runtime, built as plain dicts by pure functions.

No I/O and no Kubernetes client here: the operators build a manifest, the hooks send it. Keeping them pure
lets the tests validate every manifest against the Kubernetes OpenAPI schemas (`kubernetes-validate
--strict`) without a cluster.

Credentials never appear in a manifest: pods get the OSS keys through `secretKeyRef` to a Secret. Where the
bucket lives (`OSS_REGION`, `OSS_ENDPOINT`) is not secret: it comes from the store's settings as plain values.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from typing import Any

from airflow_provider_mlpipe.exceptions import ConfigError
from airflow_provider_mlpipe.params import DIGEST_EXPECTED, DIGEST_RE
from airflow_provider_mlpipe.training import trainer_env

FETCH_MODULE = "airflow_provider_mlpipe.images.serving.fetch"
REST_PORT = 8501
GRPC_PORT = 8500
# The trainer's exit code for bad input (training_image/train.py EXIT_USAGE, argparse's too): a retry on
# another pod cannot fix it, so the Job's podFailurePolicy fails the Job at once.
TRAINER_USAGE_EXIT_CODE = 2
STARTUP_PROBE_PERIOD = 5
RUN_AS = 10001  # the uid/gid the training and fetch images create (Dockerfiles)
MODELS_DIR = "/models"
SCRATCH_DIR = "/scratch"

# Label and annotation keys (one prefix so `kubectl get -l mlpipe.io/model=...` finds everything).
L_NAME = "app.kubernetes.io/name"
L_COMPONENT = "app.kubernetes.io/component"
L_MANAGED_BY = "app.kubernetes.io/managed-by"
L_MODEL = "mlpipe.io/model"
L_VERSION = "mlpipe.io/model-version"
L_DAG = "mlpipe.io/dag-id"
L_RUN = "mlpipe.io/run"
L_ENDPOINT = "mlpipe.io/endpoint"
A_RUN_ID = "mlpipe.io/run-id"
A_IMAGE = "mlpipe.io/image"
A_VERSION = "mlpipe.io/model-version"
A_PREVIOUS_VERSION = "mlpipe.io/previous-version"
A_PREVIOUS_TEMPLATE = "mlpipe.io/previous-template"
A_PREVIOUS_REPLICAS = "mlpipe.io/previous-replicas"
# Alibaba Cloud (ACK) load balancer address type; ACK's own default is `internet`.
A_LB_ADDRESS_TYPE = "service.beta.kubernetes.io/alibaba-cloud-loadbalancer-address-type"
LB_ADDRESS_TYPES = ("intranet", "internet")

# OSS credentials: Secret keys -> environment variables the OSS store backend reads. Exactly the keys of
# README's Secret and deploy/oss-secret.example.yaml.
OSS_SECRET_KEYS = {
    "OSS_ACCESS_KEY_ID": "access_key_id",
    "OSS_ACCESS_KEY_SECRET": "access_key_secret",
}
# Where the bucket lives: plain env values (the store backend needs the region or the endpoint).
OSS_LOCATION_ENV = ("OSS_REGION", "OSS_ENDPOINT")

_DNS_LABEL_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def short_hash(text: str, length: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def dns_label(base: str, *, unique: str | None = None, max_len: int = 63) -> str:
    """A DNS-1035 label (valid for Jobs, Deployments and Services) from `base`.

    With `unique`, a short hash of it is appended; a base too long is cut and suffixed with a hash of
    itself, so two long names that share a prefix still differ.
    """
    name = re.sub(r"[^a-z0-9-]+", "-", base.lower()).strip("-") or "x"
    if not name[0].isalpha():
        name = f"x-{name}"
    suffix = f"-{short_hash(unique)}" if unique is not None else ""
    if len(name) + len(suffix) > max_len:
        suffix = f"-{short_hash(base + (unique or ''))}"
        name = name[: max_len - len(suffix)].rstrip("-")
    name += suffix
    if not _DNS_LABEL_RE.fullmatch(name) or len(name) > max_len:  # pragma: no cover - by construction
        raise ConfigError("kubernetes name", name, "a DNS-1035 label")
    return name


def label_value(value: object) -> str:
    """A valid label value: at most 63 of [A-Za-z0-9._-], alphanumeric at both ends (or empty)."""
    text = re.sub(r"[^A-Za-z0-9._-]+", "-", str(value))
    if len(text) > 63:
        text = f"{text[:54]}-{short_hash(str(value))}"
    return text.strip("-._")


def train_job_name(model_name: str, version: int, run_key: str) -> str:
    """Deterministic per run and version: a retried or restarted task finds the Job it created."""
    return dns_label(f"train-{model_name}-v{version}", unique=run_key)


def serving_name(endpoint_name: str) -> str:
    """Deployment and Service name of an endpoint (the runtime-neutral endpoint name when it fits)."""
    if len(endpoint_name) <= 63 and _DNS_LABEL_RE.fullmatch(endpoint_name):
        return endpoint_name
    return dns_label(endpoint_name)


def pinned_image(image: str, digest: str) -> str:
    """`repository@sha256:...`: what was pushed and tested is what runs, whatever happens to the tag."""
    repository, at, existing = image.partition("@")
    if at:
        if digest and existing != digest:
            raise ConfigError("digest", digest, f"the digest the image reference carries ({existing})")
        if not DIGEST_RE.fullmatch(existing):
            raise ConfigError("image", image, f"a reference pinned by {DIGEST_EXPECTED}")
        return image
    if not digest:
        raise ConfigError(
            "digest", digest, "the image's sha256 digest: the kubernetes runtime runs images by digest"
        )
    if not DIGEST_RE.fullmatch(digest):
        raise ConfigError("digest", digest, DIGEST_EXPECTED)
    last_slash = repository.rfind("/")
    tag_colon = repository.rfind(":")
    if tag_colon > last_slash:  # a tag, not a registry port
        repository = repository[:tag_colon]
    return f"{repository}@{digest}"


def labels(
    component: str, *, model_name: str, version: int | None, dag_id: str, run_key: str
) -> dict[str, str]:
    result = {
        L_NAME: "mlpipe",
        L_COMPONENT: component,
        L_MANAGED_BY: "airflow-provider-mlpipe",
        L_MODEL: label_value(model_name),
        L_DAG: label_value(dag_id),
        L_RUN: short_hash(run_key, 16),
    }
    if version is not None:
        result[L_VERSION] = str(version)
    return result


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def oss_env(
    secret_name: str, *, required: bool, location: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """OSS credentials as secretKeyRef env vars (`required=False` when nothing reads OSS: file:// store),
    then the bucket's `location` (`OSS_REGION` / `OSS_ENDPOINT` -> value) as plain values."""
    env: list[dict[str, Any]] = [
        {
            "name": name,
            "valueFrom": {"secretKeyRef": {"name": secret_name, "key": key, "optional": not required}},
        }
        for name, key in OSS_SECRET_KEYS.items()
    ]
    for name in OSS_LOCATION_ENV:
        if (location or {}).get(name):
            env.append({"name": name, "value": str((location or {})[name])})
    return env


def uses_oss(*uris: str | None) -> bool:
    return any(str(uri or "").startswith("oss://") for uri in uris)


def _pod_spec_common(service_account: str, image_pull_secrets: list[str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        # The pods never call the Kubernetes API: give them no token to steal.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
    }
    if service_account:
        spec["serviceAccountName"] = service_account
    if image_pull_secrets:
        # Registry credentials (e.g. a private ACR instance) by Secret name only.
        spec["imagePullSecrets"] = [{"name": name} for name in image_pull_secrets]
    return spec


def training_resources(cpu: str, memory: str, gpus: int) -> dict[str, Any]:
    limits: dict[str, Any] = {"memory": memory}
    if gpus > 0:
        # Extended resources are set as limits only (requests default to them).
        limits["nvidia.com/gpu"] = str(gpus)
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": limits}


def train_job(
    *,
    name: str,
    namespace: str,
    image: str,
    model_name: str,
    version: int,
    model_store: str,
    dataset: str | None,
    hyperparameters: dict[str, int | float],
    run_key: str,
    dag_id: str,
    digest: str,
    oss_secret: str,
    cpu: str = "2",
    memory: str = "4Gi",
    gpus: int = 0,
    node_selector: dict[str, str] | None = None,
    tolerations: list[dict[str, Any]] | None = None,
    backoff_limit: int = 1,
    active_deadline_seconds: int = 6 * 3600,
    ttl_seconds_after_finished: int = 24 * 3600,
    service_account: str = "",
    oss_location: dict[str, str] | None = None,
    image_pull_secrets: list[str] | None = None,
) -> dict[str, Any]:
    """batch/v1 Job running `image` (pinned by digest, its own entrypoint) for one model version."""
    meta_labels = labels("training", model_name=model_name, version=version, dag_id=dag_id, run_key=run_key)
    # The training contract (airflow_provider_mlpipe.training): the same variables the local runtime sets.
    contract = trainer_env(
        model_store=model_store,
        model_name=model_name,
        version=version,
        dataset=dataset,
        image=image,
        digest=digest,
        run_key=run_key,
        hyperparameters=hyperparameters,
    )
    env: list[dict[str, Any]] = [{"name": key, "value": value} for key, value in contract.items()]
    env += [
        {"name": "MLPIPE_SCRATCH_DIR", "value": SCRATCH_DIR},
        # Keras and TensorFlow write caches under HOME and TMPDIR: both are writable volumes.
        {"name": "HOME", "value": SCRATCH_DIR},
        {"name": "TMPDIR", "value": "/tmp"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    env.extend(oss_env(oss_secret, required=uses_oss(model_store, dataset), location=oss_location))
    tolerations = list(tolerations or [])
    if gpus > 0 and not any(t.get("key") == "nvidia.com/gpu" for t in tolerations):
        tolerations.append({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"})
    pod_spec: dict[str, Any] = {
        **_pod_spec_common(service_account, image_pull_secrets),
        "restartPolicy": "Never",
        "containers": [
            {
                "name": "trainer",
                "image": pinned_image(image, digest),
                "imagePullPolicy": "IfNotPresent",
                # No command: the image's own entrypoint is the trainer (any team's image, any language).
                "env": env,
                "resources": training_resources(cpu, memory, gpus),
                "securityContext": container_security_context(),
                "volumeMounts": [
                    {"name": "scratch", "mountPath": SCRATCH_DIR},
                    {"name": "tmp", "mountPath": "/tmp"},
                ],
            }
        ],
        "volumes": [
            {"name": "scratch", "emptyDir": {"sizeLimit": "8Gi"}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
        ],
    }
    if node_selector:
        pod_spec["nodeSelector"] = dict(node_selector)
    if tolerations:
        pod_spec["tolerations"] = tolerations
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": meta_labels,
            "annotations": {A_RUN_ID: run_key, A_IMAGE: image},
        },
        "spec": {
            "backoffLimit": backoff_limit,
            "activeDeadlineSeconds": active_deadline_seconds,
            "ttlSecondsAfterFinished": ttl_seconds_after_finished,
            "completions": 1,
            "parallelism": 1,
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": "trainer",
                            "operator": "In",
                            "values": [TRAINER_USAGE_EXIT_CODE],
                        },
                    },
                    # A pod evicted, preempted or deleted by a node drain is not the trainer's failure: it
                    # does not count against backoffLimit.
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                ]
            },
            # The replacement starts only once the old pod is gone: never two trainers writing one version.
            "podReplacementPolicy": "Failed",
            "template": {"metadata": {"labels": meta_labels}, "spec": pod_spec},
        },
    }


def serving_selector(name: str) -> dict[str, str]:
    """Stable across versions: a rollout changes the template, never the selector (it is immutable)."""
    return {L_NAME: "mlpipe-serving", L_ENDPOINT: name}


def serving_pod_template(
    *,
    name: str,
    model_name: str,
    version: int,
    model_store: str,
    serving_image: str,
    fetch_image: str,
    oss_secret: str,
    cpu: str = "500m",
    memory: str = "1Gi",
    service_account: str = "",
    oss_location: dict[str, str] | None = None,
    startup_timeout_seconds: int = 600,
    image_pull_secrets: list[str] | None = None,
) -> dict[str, Any]:
    """Pod template: fetch `version` from the store into an emptyDir, then TF Serving reads it.

    TF Serving opens its ports only once the model is loaded, which takes minutes for a large one: the
    startupProbe allows `startup_timeout_seconds` for that, and liveness starts only after it succeeds.
    """
    base_path = f"{MODELS_DIR}/{model_name}"
    mounts = [{"name": "models", "mountPath": MODELS_DIR}, {"name": "tmp", "mountPath": "/tmp"}]
    return {
        "metadata": {
            "labels": {**serving_selector(name), L_MODEL: label_value(model_name), L_VERSION: str(version)},
            "annotations": {A_VERSION: str(version)},
        },
        "spec": {
            **_pod_spec_common(service_account, image_pull_secrets),
            "initContainers": [
                {
                    "name": "fetch-model",
                    "image": fetch_image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["python", "-m", FETCH_MODULE],
                    "args": [
                        f"--model-store={model_store}",
                        f"--model-name={model_name}",
                        f"--version={version}",
                        f"--dest={base_path}",
                    ],
                    "env": [
                        {"name": "HOME", "value": "/tmp"},
                        *oss_env(oss_secret, required=uses_oss(model_store), location=oss_location),
                    ],
                    "resources": {
                        "requests": {"cpu": "100m", "memory": "256Mi"},
                        "limits": {"memory": "1Gi"},
                    },
                    "securityContext": container_security_context(),
                    "volumeMounts": mounts,
                }
            ],
            "containers": [
                {
                    "name": "tf-serving",
                    "image": serving_image,
                    "imagePullPolicy": "IfNotPresent",
                    # The binary itself, not the image's entrypoint script: the flags below are all of it.
                    "command": ["tensorflow_model_server"],
                    "args": [
                        f"--model_name={model_name}",
                        f"--model_base_path={base_path}",
                        f"--rest_api_port={REST_PORT}",
                        f"--port={GRPC_PORT}",
                        # The emptyDir never changes after the init container: polling would only cost.
                        "--file_system_poll_wait_seconds=0",
                    ],
                    "ports": [
                        {"name": "http", "containerPort": REST_PORT, "protocol": "TCP"},
                        {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
                    ],
                    "readinessProbe": {
                        "httpGet": {"path": f"/v1/models/{model_name}", "port": "http"},
                        "initialDelaySeconds": 2,
                        "periodSeconds": 5,
                        "timeoutSeconds": 3,
                        "failureThreshold": 3,
                    },
                    "startupProbe": {
                        "tcpSocket": {"port": "http"},
                        "periodSeconds": STARTUP_PROBE_PERIOD,
                        "failureThreshold": max(1, math.ceil(startup_timeout_seconds / STARTUP_PROBE_PERIOD)),
                    },
                    "livenessProbe": {
                        "tcpSocket": {"port": "http"},
                        "periodSeconds": 20,
                        "failureThreshold": 3,
                    },
                    "resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory}},
                    "securityContext": container_security_context(),
                    "volumeMounts": [
                        {"name": "models", "mountPath": MODELS_DIR, "readOnly": True},
                        {"name": "tmp", "mountPath": "/tmp"},
                    ],
                }
            ],
            "volumes": [
                {"name": "models", "emptyDir": {"sizeLimit": "2Gi"}},
                {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
            ],
        },
    }


def serving_deployment(
    *,
    name: str,
    namespace: str,
    endpoint: str,
    model_name: str,
    version: int,
    run_key: str,
    dag_id: str,
    template: dict[str, Any],
    replicas: int = 1,
    progress_deadline_seconds: int = 600,
) -> dict[str, Any]:
    meta_labels = labels("serving", model_name=model_name, version=version, dag_id=dag_id, run_key=run_key)
    meta_labels[L_ENDPOINT] = name
    if replicas >= 2:
        # Replicas spread over nodes when the cluster can (preferred, not required: a small cluster still
        # schedules them all), so one node going down does not take the endpoint with it.
        template = copy.deepcopy(template)
        template["spec"]["affinity"] = {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {
                            "labelSelector": {"matchLabels": serving_selector(name)},
                            "topologyKey": "kubernetes.io/hostname",
                        },
                    }
                ]
            }
        }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": meta_labels,
            "annotations": {A_VERSION: str(version), A_RUN_ID: run_key, "mlpipe.io/endpoint-kind": endpoint},
        },
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 5,
            "progressDeadlineSeconds": progress_deadline_seconds,
            "selector": {"matchLabels": serving_selector(name)},
            # Never below the wanted capacity: the old version serves until the new one is ready, which
            # is also what makes a rollback instant.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": template,
        },
    }


def _check_source_ranges(source_ranges: list[str]) -> list[str]:
    import ipaddress

    checked = []
    for cidr in source_ranges:
        try:
            checked.append(str(ipaddress.ip_network(str(cidr).strip(), strict=True)))
        except ValueError:
            raise ConfigError("load balancer source range", cidr, "a CIDR such as 203.0.113.0/24") from None
    return checked


def serving_service(
    *,
    name: str,
    namespace: str,
    service_type: str,
    model_name: str,
    run_key: str,
    dag_id: str,
    annotations: dict[str, str] | None = None,
    address_type: str = "intranet",
    source_ranges: list[str] | None = None,
    expose_grpc: bool = False,
) -> dict[str, Any]:
    """The endpoint's Service. TF Serving has no authentication: a LoadBalancer is an intranet one
    (ACK's address-type annotation) unless `address_type="internet"`, which needs `source_ranges` (the
    clients' CIDRs, as `loadBalancerSourceRanges`); only the REST port unless `expose_grpc`."""
    meta_labels = labels("serving", model_name=model_name, version=None, dag_id=dag_id, run_key=run_key)
    meta_labels[L_ENDPOINT] = name
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": meta_labels}
    wanted_annotations = dict(annotations or {})
    ranges = _check_source_ranges(list(source_ranges or []))
    spec: dict[str, Any] = {"type": service_type, "selector": serving_selector(name)}
    if service_type == "LoadBalancer":
        if address_type not in LB_ADDRESS_TYPES:
            raise ConfigError("load balancer address type", address_type, " or ".join(LB_ADDRESS_TYPES))
        given = wanted_annotations.get(A_LB_ADDRESS_TYPE, address_type)
        if given != address_type:
            raise ConfigError(
                f"service annotation {A_LB_ADDRESS_TYPE}",
                given,
                f"the address type set by [mlpipe] kubernetes_load_balancer_address_type ({address_type})",
            )
        if address_type == "internet" and not ranges:
            raise ConfigError(
                "load balancer source ranges",
                ranges,
                "the clients' CIDRs ([mlpipe] kubernetes_load_balancer_source_ranges): an internet load "
                "balancer in front of TF Serving, which has no authentication, must not be open to all",
            )
        wanted_annotations[A_LB_ADDRESS_TYPE] = address_type
        if ranges:
            spec["loadBalancerSourceRanges"] = ranges
    if wanted_annotations:
        metadata["annotations"] = wanted_annotations
    spec["ports"] = [{"name": "http", "port": REST_PORT, "targetPort": "http", "protocol": "TCP"}]
    if expose_grpc:
        spec["ports"].append({"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"})
    return {"apiVersion": "v1", "kind": "Service", "metadata": metadata, "spec": spec}


def serving_pdb(*, name: str, namespace: str, model_name: str, run_key: str, dag_id: str) -> dict[str, Any]:
    """policy/v1 PodDisruptionBudget of an endpoint with replicas >= 2: a node drain evicts one replica at a
    time (maxUnavailable, so it stays right whatever the replica count)."""
    meta_labels = labels("serving", model_name=model_name, version=None, dag_id=dag_id, run_key=run_key)
    meta_labels[L_ENDPOINT] = name
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": name, "namespace": namespace, "labels": meta_labels},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": serving_selector(name)}},
    }


def _ports(service: dict[str, Any]) -> list[tuple[Any, ...]]:
    return sorted(
        (p.get("name"), p.get("port"), p.get("targetPort"), p.get("protocol", "TCP"))
        for p in (service.get("spec") or {}).get("ports") or []
    )


def service_patch(existing: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any] | None:
    """Merge patch bringing an existing Service to `wanted` (type, selector, ports, source ranges and the
    annotations `wanted` sets; others are left alone); None when it already is. A Service left by another
    run or by hand must not keep a public load balancer or a port the settings no longer expose."""
    have_spec, want_spec = existing.get("spec") or {}, wanted["spec"]
    have_annotations = (existing.get("metadata") or {}).get("annotations") or {}
    want_annotations = (wanted["metadata"].get("annotations")) or {}
    same = (
        have_spec.get("type") == want_spec["type"]
        and have_spec.get("selector") == want_spec["selector"]
        and _ports(existing) == _ports(wanted)
        and sorted(have_spec.get("loadBalancerSourceRanges") or [])
        == sorted(want_spec.get("loadBalancerSourceRanges") or [])
        and all(have_annotations.get(k) == v for k, v in want_annotations.items())
    )
    if same:
        return None
    spec: dict[str, Any] = {
        "type": want_spec["type"],
        "selector": want_spec["selector"],
        # A merge patch replaces the list: no port of the old spec survives.
        "ports": want_spec["ports"],
        "loadBalancerSourceRanges": want_spec.get("loadBalancerSourceRanges"),
    }
    patch: dict[str, Any] = {"spec": spec}
    if want_annotations:
        patch["metadata"] = {"annotations": dict(want_annotations)}
    return patch


def rollout_patch(deployment: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """JSON patch moving `deployment` to `new`'s template, remembering the current one for a rollback.

    A JSON patch (not a strategic merge) so the template is replaced exactly: no env var or volume of the
    previous version survives by merge.
    """
    meta = deployment.get("metadata") or {}
    annotations = dict(meta.get("annotations") or {})
    annotations.update(new["metadata"].get("annotations") or {})
    annotations[A_PREVIOUS_VERSION] = str((meta.get("annotations") or {}).get(A_VERSION, ""))
    annotations[A_PREVIOUS_TEMPLATE] = json.dumps(deployment["spec"]["template"], sort_keys=True)
    annotations[A_PREVIOUS_REPLICAS] = str(deployment["spec"].get("replicas", 1))
    return [
        {"op": "replace", "path": "/spec/template", "value": new["spec"]["template"]},
        {"op": "replace", "path": "/spec/replicas", "value": new["spec"]["replicas"]},
        {"op": "add", "path": "/metadata/labels", "value": new["metadata"]["labels"]},
        {"op": "add", "path": "/metadata/annotations", "value": annotations},
    ]


def rollback_patch(deployment: dict[str, Any]) -> list[dict[str, Any]] | None:
    """JSON patch restoring the template recorded by `rollout_patch`, and the version annotation and label
    with it (`kubectl get -l mlpipe.io/model-version=...` must find what runs); None when there is none."""
    meta = deployment.get("metadata") or {}
    annotations = dict(meta.get("annotations") or {})
    raw = annotations.pop(A_PREVIOUS_TEMPLATE, None)
    previous_version = annotations.pop(A_PREVIOUS_VERSION, "")
    previous_replicas = annotations.pop(A_PREVIOUS_REPLICAS, "")
    if not raw:
        return None
    annotations[A_VERSION] = previous_version
    meta_labels = dict(meta.get("labels") or {})
    if previous_version:
        meta_labels[L_VERSION] = label_value(previous_version)
    else:
        # The version before is unknown: no label rather than the failed version's.
        meta_labels.pop(L_VERSION, None)
    patch: list[dict[str, Any]] = [{"op": "replace", "path": "/spec/template", "value": json.loads(raw)}]
    if previous_replicas.isdigit():
        patch.append({"op": "replace", "path": "/spec/replicas", "value": int(previous_replicas)})
    return [
        *patch,
        {"op": "add", "path": "/metadata/labels", "value": meta_labels},
        {"op": "add", "path": "/metadata/annotations", "value": annotations},
    ]
