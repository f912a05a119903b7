"""What the sync and async Kubernetes hooks share: which API class serves a kind, how a call is named in
messages, how a failed call becomes a KubernetesRuntimeError, and which connection extras are secrets.

No client import here: `kubernetes` and `kubernetes_asyncio` raise look-alike ApiExceptions, and both are
read by their attributes (status, reason, body), so one translation serves both hooks.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from airflow_provider_mlpipe.exceptions import KubernetesRuntimeError, RetriesExhausted, describe

# kind -> (API class of the client, method suffix)
KINDS: dict[str, tuple[str, str]] = {
    "Job": ("BatchV1Api", "namespaced_job"),
    "Deployment": ("AppsV1Api", "namespaced_deployment"),
    "Service": ("CoreV1Api", "namespaced_service"),
    "Pod": ("CoreV1Api", "namespaced_pod"),
    "PodDisruptionBudget": ("PolicyV1Api", "namespaced_pod_disruption_budget"),
    "Event": ("CoreV1Api", "namespaced_event"),
}
# Seconds to wait for the answer to one API call (the provider's default too): a half-open connection must
# fail the attempt, not hang the task.
DEFAULT_REQUEST_TIMEOUT = 60.0
# Keys of a kubeconfig whose values are credentials: token (and access-, id-, refresh-token), password,
# client-key-data, an auth provider's client-secret.
_CREDENTIAL_MARKERS = ("token", "password", "secret", "key-data")


def api_name(kind: str) -> tuple[str, str]:
    """(API class name, method suffix) of `kind`, e.g. ("BatchV1Api", "namespaced_job") for a Job."""
    try:
        return KINDS[kind]
    except KeyError:
        raise KubernetesRuntimeError(
            f"unsupported kind {kind!r}: expected one of {', '.join(KINDS)}"
        ) from None


def being_deleted(obj: dict[str, Any] | None) -> bool:
    """Whether `obj` carries a deletionTimestamp: it is going away (finalizers, foreground deletion of its
    dependents) and must not be adopted or patched."""
    return bool(((obj or {}).get("metadata") or {}).get("deletionTimestamp"))


def delete_options(propagation: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": propagation}


def call_name(verb: str, kind: str, namespace: str, name: str) -> str:
    """How a call is named in retry logs and errors, e.g. `GET Job mlpipe/train-x`."""
    return f"{verb} {kind} {namespace}/{name}"


def list_pods_name(namespace: str, selector: str) -> str:
    return f"list Pods in {namespace} with labels {selector}"


def exhausted_error(what: str, exhausted: RetriesExhausted) -> KubernetesRuntimeError:
    """The error of a call whose transient failures outlasted the retry policy."""
    return KubernetesRuntimeError(
        f"{what} failed after {exhausted.attempts} attempts: {_describe(exhausted.last)}"
    )


def refused_error(what: str, err: Any) -> KubernetesRuntimeError:
    """The error of a call the API refused for good."""
    return KubernetesRuntimeError(f"{what} failed: HTTP {err.status} {_api_reason(err)}")


def parse_json(data: bytes) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(data or b"{}")
    return parsed


def _api_reason(err: Any) -> str:
    """`Reason: message` of an API error, from its Status body when there is one."""
    try:
        body = json.loads(err.body or "{}")
    except (TypeError, ValueError):
        return str(err.reason or "")
    if not isinstance(body, dict):
        return str(err.reason or "")
    return f"{body.get('reason') or err.reason}: {body.get('message') or ''}".strip(": ")


def _describe(err: BaseException) -> str:
    status = getattr(err, "status", None)
    if isinstance(status, int) and status > 0 and hasattr(err, "body"):
        return f"HTTP {status} {_api_reason(err)}"
    return describe(err)


def kube_connection_secrets(extras: Mapping[str, Any]) -> list[str]:
    """What of a `kubernetes` connection's extras must never reach a log: an inline kubeconfig as stored
    (YAML or JSON text, or the dict as the provider writes it out) and every credential inside it.

    Airflow masks extras by key name only, and `kube_config` is not a sensitive name: the token in a
    kubeconfig given as text would be shown in clear wherever it is logged on its own.
    """
    import yaml

    found: list[str] = []
    for key, value in extras.items():
        bare = str(key).removeprefix("extra__kubernetes__")
        if bare == "kube_config" and value:
            if isinstance(value, str):
                found.append(value)
                try:
                    value = yaml.safe_load(value)
                except yaml.YAMLError:
                    continue
            else:
                found.append(json.dumps(value))
            found.extend(_credentials(value))
        elif isinstance(value, str) and any(marker in bare.lower() for marker in _CREDENTIAL_MARKERS):
            found.append(value)
    return [secret for secret in found if secret]


def _credentials(node: Any, key: str = "") -> list[str]:
    if isinstance(node, dict):
        return [secret for k, v in node.items() for secret in _credentials(v, str(k))]
    if isinstance(node, list):
        return [secret for item in node for secret in _credentials(item, key)]
    if isinstance(node, str) and any(marker in key.lower() for marker in _CREDENTIAL_MARKERS):
        return [node]
    return []
