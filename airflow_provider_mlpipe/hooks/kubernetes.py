"""Kubernetes runtime I/O through the cncf-kubernetes provider's KubernetesHook / AsyncKubernetesHook.

Objects travel as plain JSON dicts (camelCase, as the API serves them), not as the client's model classes:
the manifests are built as dicts (`airflow_provider_mlpipe.manifests`) and status is read from dicts, so
nothing is lost or renamed on the way. The module-level functions interpret status and do no I/O.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from contextlib import asynccontextmanager
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk.bases.hook import BaseHook

from airflow_provider_mlpipe import config
from airflow_provider_mlpipe.exceptions import KubernetesRuntimeError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from airflow.providers.cncf.kubernetes.hooks.kubernetes import AsyncKubernetesHook, KubernetesHook

DEFAULT_NAMESPACE = "mlpipe"
# kind -> (API class of the client, method suffix)
_KINDS: dict[str, tuple[str, str]] = {
    "Job": ("BatchV1Api", "namespaced_job"),
    "Deployment": ("AppsV1Api", "namespaced_deployment"),
    "Service": ("CoreV1Api", "namespaced_service"),
    "Pod": ("CoreV1Api", "namespaced_pod"),
}
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"

# Job states
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
# Rollout states
PROGRESSING = "progressing"
AVAILABLE = "available"


def _api_name(kind: str) -> tuple[str, str]:
    try:
        return _KINDS[kind]
    except KeyError:
        raise KubernetesRuntimeError(
            f"unsupported kind {kind!r}: expected one of {', '.join(_KINDS)}"
        ) from None


def _patch_content_type(patch: list[Any] | dict[str, Any]) -> str:
    # The client would label a dict body as JSON patch (its first listed type): always say what it is.
    return JSON_PATCH if isinstance(patch, list) else MERGE_PATCH


class KubernetesResourceHook(BaseHook):
    """Create, adopt, read, patch and delete namespaced objects, and read pod logs (synchronous).

    :param conn_id: the `kubernetes` connection (in-cluster, or a kubeconfig); `[mlpipe]
        kubernetes_conn_id` by default.
    :param namespace: default `[mlpipe] kubernetes_namespace`, else the connection's, else `mlpipe`.
    """

    hook_name = "MLPipe Kubernetes resources"

    def __init__(self, conn_id: str | None = None, namespace: str | None = None) -> None:
        super().__init__()
        self.conn_id = conn_id
        self._namespace = namespace

    @cached_property
    def kube(self) -> KubernetesHook:
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

        return KubernetesHook(conn_id=self.conn_id or config.kubernetes_conn_id())

    @cached_property
    def namespace(self) -> str:
        # The provider declares get_namespace as a cached property (a method in its protocol).
        from_connection = getattr(self.kube, "get_namespace", None)
        if not isinstance(from_connection, str):
            from_connection = None
        return self._namespace or config.kubernetes_namespace() or from_connection or DEFAULT_NAMESPACE

    def _api(self, kind: str) -> tuple[Any, str]:
        from kubernetes import client

        api_name, suffix = _api_name(kind)
        return getattr(client, api_name)(api_client=self.kube.api_client), suffix

    @staticmethod
    def _json(resp: Any) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(resp.data or b"{}")
        return data

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException

        try:
            return fn(*args, _preload_content=False, **kwargs)
        except ApiException as err:
            if err.status in (404, 409):
                raise
            raise KubernetesRuntimeError(f"{what} failed: HTTP {err.status} {_api_reason(err)}") from None

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        api, suffix = self._api(kind)
        try:
            return self._json(
                self._call(f"GET {kind} {name}", getattr(api, f"read_{suffix}"), name, self.namespace)
            )
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def create_or_adopt(self, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create `body`, or return the object of that name that already exists. Returns (object, created).

        GET first (the usual retry case costs no failed write); 409 on create means another attempt won
        the race, and its object is the one to adopt.
        """
        from kubernetes.client.exceptions import ApiException

        kind, name = body["kind"], body["metadata"]["name"]
        existing = self.get(kind, name)
        if existing is not None:
            self.log.info("Adopting existing %s %s/%s", kind, self.namespace, name)
            return existing, False
        api, suffix = self._api(kind)
        try:
            created = self._json(
                self._call(f"create {kind} {name}", getattr(api, f"create_{suffix}"), self.namespace, body)
            )
        except ApiException as err:
            if err.status != 409:
                raise
            adopted = self.get(kind, name)
            if adopted is None:
                raise KubernetesRuntimeError(
                    f"{kind} {name} conflicted on create but cannot be read"
                ) from None
            self.log.info("%s %s/%s was created concurrently: adopting it", kind, self.namespace, name)
            return adopted, False
        self.log.info("Created %s %s/%s", kind, self.namespace, name)
        return created, True

    def patch(self, kind: str, name: str, patch: list[Any] | dict[str, Any]) -> dict[str, Any]:
        api, suffix = self._api(kind)
        return self._json(
            self._call(
                f"patch {kind} {name}",
                getattr(api, f"patch_{suffix}"),
                name,
                self.namespace,
                patch,
                _content_type=_patch_content_type(patch),
            )
        )

    def delete(self, kind: str, name: str, *, propagation: str = "Foreground") -> bool:
        """Delete; True if it existed. Foreground: the Job's pods go before the Job does."""
        from kubernetes.client.exceptions import ApiException

        api, suffix = self._api(kind)
        try:
            self._call(
                f"delete {kind} {name}",
                getattr(api, f"delete_{suffix}"),
                name,
                self.namespace,
                body={"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": propagation},
            )
        except ApiException as err:
            if err.status == 404:
                return False
            raise
        self.log.info("Deleted %s %s/%s (propagation %s)", kind, self.namespace, name, propagation)
        return True

    def wait_deleted(self, kind: str, name: str, *, timeout: float = 120.0, interval: float = 1.0) -> None:
        deadline = time.monotonic() + timeout
        while self.get(kind, name) is not None:
            if time.monotonic() >= deadline:
                raise KubernetesRuntimeError(
                    f"{kind} {self.namespace}/{name} still exists {timeout:.0f} s after delete"
                )
            time.sleep(interval)

    def list_pods(self, selector: str) -> list[dict[str, Any]]:
        api, _ = self._api("Pod")
        body = self._json(
            self._call(
                f"list pods {selector}", api.list_namespaced_pod, self.namespace, label_selector=selector
            )
        )
        return list(body.get("items") or [])

    def pod_log(self, name: str, *, container: str | None = None, tail_lines: int | None = None) -> list[str]:
        from kubernetes.client.exceptions import ApiException

        api, _ = self._api("Pod")
        kwargs: dict[str, Any] = {}
        if container:
            kwargs["container"] = container
        if tail_lines:
            kwargs["tail_lines"] = tail_lines
        try:
            resp = self._call(
                f"log of pod {name}", api.read_namespaced_pod_log, name, self.namespace, **kwargs
            )
        except ApiException:
            return []
        return bytes(resp.data or b"").decode(errors="replace").splitlines()


class AsyncKubernetesResourceHook(BaseHook):
    """The reads and deletes the triggers need, on the triggerer's event loop (AsyncKubernetesHook)."""

    hook_name = "MLPipe Kubernetes resources (async)"

    def __init__(self, conn_id: str, namespace: str) -> None:
        super().__init__()
        self.conn_id = conn_id
        self.namespace = namespace

    @cached_property
    def kube(self) -> AsyncKubernetesHook:
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import AsyncKubernetesHook

        return AsyncKubernetesHook(conn_id=self.conn_id)

    @asynccontextmanager
    async def _api(self, kind: str) -> AsyncIterator[tuple[Any, str]]:
        from kubernetes_asyncio import client

        api_name, suffix = _api_name(kind)
        async with self.kube.get_conn() as api_client:
            yield getattr(client, api_name)(api_client), suffix

    async def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any | None:
        """The raw response, or None on 404. kubernetes_asyncio raises on errors only when it decodes the
        body; with `_preload_content=False` the status is ours to check."""
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            resp = await fn(*args, _preload_content=False, **kwargs)
        except ApiException as err:
            if err.status == 404:
                return None
            raise KubernetesRuntimeError(f"{what} failed: HTTP {err.status} {_api_reason(err)}") from None
        if resp.status == 404:
            resp.release()
            return None
        if resp.status >= 400:
            body = await resp.text()
            raise KubernetesRuntimeError(f"{what} failed: HTTP {resp.status} {_body_reason(body)}")
        return resp

    async def get(self, kind: str, name: str) -> dict[str, Any] | None:
        async with self._api(kind) as (api, suffix):
            resp = await self._call(
                f"GET {kind} {name}", getattr(api, f"read_{suffix}"), name, self.namespace
            )
            if resp is None:
                return None
            data: dict[str, Any] = json.loads(await resp.read() or b"{}")
            return data

    async def list_pods(self, selector: str) -> list[dict[str, Any]]:
        async with self._api("Pod") as (api, _):
            resp = await self._call(
                f"list pods {selector}", api.list_namespaced_pod, self.namespace, label_selector=selector
            )
            if resp is None:
                return []
            return list(json.loads(await resp.read() or b"{}").get("items") or [])

    async def pod_log(self, name: str, *, tail_lines: int | None = None) -> list[str]:
        kwargs: dict[str, Any] = {"tail_lines": tail_lines} if tail_lines else {}
        async with self._api("Pod") as (api, _):
            try:
                resp = await self._call(
                    f"log of pod {name}", api.read_namespaced_pod_log, name, self.namespace, **kwargs
                )
            except KubernetesRuntimeError:
                # A pod still pulling its image has no log yet (400): not worth failing the wait.
                return []
            if resp is None:
                return []
            return bytes(await resp.read()).decode(errors="replace").splitlines()

    async def delete(self, kind: str, name: str, *, propagation: str = "Foreground") -> bool:
        async with self._api(kind) as (api, suffix):
            resp = await self._call(
                f"delete {kind} {name}",
                getattr(api, f"delete_{suffix}"),
                name,
                self.namespace,
                body={"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": propagation},
            )
            if resp is None:
                return False
            resp.release()
        self.log.info("Deleted %s %s/%s (propagation %s)", kind, self.namespace, name, propagation)
        return True


def _body_reason(body: str) -> str:
    try:
        data = json.loads(body or "{}")
    except ValueError:
        return body[:200]
    return f"{data.get('reason', '')}: {data.get('message', '')}".strip(": ")


def _api_reason(err: Any) -> str:
    try:
        body = json.loads(err.body or "{}")
    except (TypeError, ValueError):
        return str(err.reason or "")
    return f"{body.get('reason') or err.reason}: {body.get('message') or ''}".strip()


# --- status interpretation (pure) ---------------------------------------------------------------------


def _conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c.get("type", ""): c for c in (obj.get("status") or {}).get("conditions") or []}


def job_state(job: dict[str, Any]) -> tuple[str, str]:
    """(state, reason) of a batch/v1 Job: running, succeeded, or failed with the condition's reason."""
    conditions = _conditions(job)
    for kind in ("Complete", "SuccessCriteriaMet"):
        if conditions.get(kind, {}).get("status") == "True":
            return SUCCEEDED, conditions[kind].get("reason") or "Complete"
    # FailureTarget precedes Failed (Kubernetes >= 1.31) while pods terminate: the outcome is decided.
    for kind in ("Failed", "FailureTarget"):
        cond = conditions.get(kind, {})
        if cond.get("status") == "True":
            reason = cond.get("reason") or "Failed"
            message = cond.get("message") or ""
            return FAILED, f"{reason}: {message}" if message else reason
    status = job.get("status") or {}
    return RUNNING, f"active={status.get('active', 0)} failed={status.get('failed', 0)}"


def pod_problems(pods: Iterable[dict[str, Any]]) -> list[str]:
    """Why containers of these pods ended or cannot start: 'pod/container: reason (exit code N): message'."""
    problems: list[str] = []
    for pod in pods:
        name = (pod.get("metadata") or {}).get("name", "?")
        status = pod.get("status") or {}
        if status.get("reason"):  # e.g. Evicted, DeadlineExceeded
            problems.append(f"{name}: {status['reason']}: {status.get('message', '')}".rstrip(": "))
        statuses = list(status.get("initContainerStatuses") or []) + list(
            status.get("containerStatuses") or []
        )
        for cs in statuses:
            state = cs.get("state") or {}
            last = (cs.get("lastState") or {}).get("terminated")
            terminated = state.get("terminated") or last
            waiting = state.get("waiting")
            if terminated and (terminated.get("exitCode") or 0) != 0:
                problems.append(
                    f"{name}/{cs.get('name')}: {terminated.get('reason', 'Error')} "
                    f"(exit code {terminated.get('exitCode')})"
                    + (f": {terminated['message']}" if terminated.get("message") else "")
                )
            elif waiting and waiting.get("reason") not in (None, "ContainerCreating", "PodInitializing"):
                problems.append(
                    f"{name}/{cs.get('name')}: {waiting['reason']}"
                    + (f": {waiting['message']}" if waiting.get("message") else "")
                )
    return problems


def newest_pod(pods: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    ordered = sorted(
        pods, key=lambda p: ((p.get("metadata") or {}).get("creationTimestamp") or "", p["metadata"]["name"])
    )
    return ordered[-1] if ordered else None


def rollout_state(deployment: dict[str, Any], min_generation: int = 0) -> tuple[str, str]:
    """(state, message) of a Deployment rollout, the way `kubectl rollout status` decides it."""
    meta = deployment.get("metadata") or {}
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    wanted = int(spec.get("replicas", 1))
    generation = max(int(meta.get("generation") or 0), min_generation)
    observed = int(status.get("observedGeneration") or 0)
    if observed < generation:
        return PROGRESSING, f"waiting for the controller to observe generation {generation} (at {observed})"
    progressing = _conditions(deployment).get("Progressing", {})
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        return FAILED, f"ProgressDeadlineExceeded: {progressing.get('message', '')}".rstrip(": ")
    updated = int(status.get("updatedReplicas") or 0)
    total = int(status.get("replicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    if updated >= wanted and total == updated and available >= wanted:
        return AVAILABLE, f"{available}/{wanted} replicas of generation {observed} available"
    return PROGRESSING, f"{updated}/{wanted} updated, {available} available, {max(total - updated, 0)} old"


def service_address(service: dict[str, Any]) -> str | None:
    """External IP or hostname of a LoadBalancer Service, once the cloud assigned one."""
    for ingress in ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []:
        address = ingress.get("ip") or ingress.get("hostname")
        if address:
            return str(address)
    return None


def selector_string(labels: dict[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))
