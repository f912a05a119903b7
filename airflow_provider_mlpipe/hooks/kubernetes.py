"""Kubernetes runtime I/O through the cncf-kubernetes provider's KubernetesHook / AsyncKubernetesHook.

Objects travel as plain JSON dicts (camelCase, as the API serves them), not as the client's model classes:
the manifests are built as dicts (`airflow_provider_mlpipe.manifests`) and status is read from dicts, so
nothing is lost or renamed on the way. The module-level functions interpret status and do no I/O.

Every API call runs under a `retries.RetryPolicy`: transient failures (no answer, a reset connection, a
timeout, 408/429/5xx) are retried with capped exponential backoff, then reported as a KubernetesRuntimeError
naming the object, the attempts and the last error; permanent ones (403 Forbidden, 404 on an object that
must exist, 422 Invalid, ...) fail on the first attempt, naming the object and the API's reason. Loading
the connection registers the kubeconfig and the credentials in it with Airflow's secrets masker.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk.bases.hook import BaseHook

from airflow_provider_mlpipe import config
from airflow_provider_mlpipe.exceptions import KubernetesRuntimeError, RetriesExhausted
from airflow_provider_mlpipe.retries import (
    RetryPolicy,
    call_with_retry,
    call_with_retry_async,
    describe,
)

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


# Seconds to wait for the answer to one API call (the provider's default too): a half-open connection must
# fail the attempt, not hang the task.
DEFAULT_REQUEST_TIMEOUT = 60.0
# Keys of a kubeconfig whose values are credentials: token (and access-, id-, refresh-token), password,
# client-key-data, an auth provider's client-secret.
_CREDENTIAL_MARKERS = ("token", "password", "secret", "key-data")


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


class KubernetesResourceHook(BaseHook):
    """Create, adopt, read, patch and delete namespaced objects, and read pod logs (synchronous).

    :param conn_id: the `kubernetes` connection (in-cluster, or a kubeconfig); `[mlpipe]
        kubernetes_conn_id` by default.
    :param namespace: default `[mlpipe] kubernetes_namespace`, else the connection's, else `mlpipe`.
    :param retry: how transient API errors are retried; default `RetryPolicy()`.
    :param request_timeout: seconds to wait for the answer to each API call.
    """

    hook_name = "MLPipe Kubernetes resources"

    def __init__(
        self,
        conn_id: str | None = None,
        namespace: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> None:
        super().__init__()
        self.conn_id = conn_id
        self._namespace = namespace
        self.retry = retry or RetryPolicy()
        self.request_timeout = request_timeout

    @cached_property
    def kube(self) -> KubernetesHook:
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook
        from airflow.sdk.log import mask_secret

        hook = KubernetesHook(conn_id=self.conn_id or config.kubernetes_conn_id())
        for secret in kube_connection_secrets(hook.conn_extras):
            mask_secret(secret)
        return hook

    @cached_property
    def api_client(self) -> Any:
        from kubernetes.client.rest import RESTClientObject

        api_client = self.kube.api_client
        # urllib3 would retry a failed connection three more times on its own, silently and without
        # backoff: switched off (on this client's own copy of the configuration), every attempt is one of
        # the policy's, so the number of requests a fault costs is the policy's.
        api_client.configuration.retries = False
        api_client.rest_client = RESTClientObject(api_client.configuration)
        return api_client

    @cached_property
    def namespace(self) -> str:
        """The operator's namespace, else `[mlpipe] kubernetes_namespace`, else the connection's extra
        `namespace`, else `mlpipe` (the order the README's settings table documents)."""
        explicit = self._namespace or config.kubernetes_namespace()
        if explicit:
            return explicit
        # Loaded only when needed: an explicit namespace must not cost a connection lookup.
        from_connection = self.kube.get_namespace()
        return str(from_connection) if from_connection else DEFAULT_NAMESPACE

    def _api(self, kind: str) -> tuple[Any, str]:
        from kubernetes import client

        api_name, suffix = _api_name(kind)
        return getattr(client, api_name)(api_client=self.api_client), suffix

    def _call(
        self,
        what: str,
        fn: Callable[..., Any],
        *args: Any,
        passthrough: tuple[int, ...] = (),
        **kwargs: Any,
    ) -> bytes:
        """`fn(*args, **kwargs)` under the retry policy; the response body.

        An ApiException whose status is in `passthrough` (404 on a read, 409 on a create) is re-raised for
        the caller to handle; any other failure becomes a KubernetesRuntimeError naming `what`.
        """
        from kubernetes.client.exceptions import ApiException

        def attempt() -> bytes:
            resp = fn(*args, _preload_content=False, _request_timeout=self.request_timeout, **kwargs)
            # Read inside the attempt: a connection that breaks in the middle of the body is retried too.
            data = bytes(resp.data or b"")
            resp.release_conn()
            return data

        try:
            return call_with_retry(attempt, policy=self.retry, what=what)
        except RetriesExhausted as exhausted:
            raise _exhausted(what, exhausted) from exhausted.last
        except ApiException as err:
            if err.status in passthrough:
                raise
            raise _refused(what, err) from None

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        api, suffix = self._api(kind)
        try:
            data = self._call(
                _what("GET", kind, self.namespace, name),
                getattr(api, f"read_{suffix}"),
                name,
                self.namespace,
                passthrough=(404,),
            )
        except ApiException:
            return None
        return _json(data)

    def create_or_adopt(self, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create `body`, or return the object of that name that already exists. Returns (object, created).

        GET first (the usual retry case costs no failed write). 409 AlreadyExists on create means that
        another attempt won the race, or that this create landed and its answer was lost (a POST retried
        after a reset or a timeout): either way the object of that name is the one to adopt.
        """
        from kubernetes.client.exceptions import ApiException

        kind, name = body["kind"], body["metadata"]["name"]
        existing = self.get(kind, name)
        if existing is not None:
            self.log.info("Adopting existing %s %s/%s", kind, self.namespace, name)
            return existing, False
        api, suffix = self._api(kind)
        try:
            created = _json(
                self._call(
                    _what("create", kind, self.namespace, name),
                    getattr(api, f"create_{suffix}"),
                    self.namespace,
                    body,
                    passthrough=(409,),
                )
            )
        except ApiException:
            adopted = self.get(kind, name)
            if adopted is None:
                raise KubernetesRuntimeError(
                    f"{kind} {self.namespace}/{name} conflicted on create (409) but cannot be read"
                ) from None
            self.log.info(
                "%s %s/%s already exists (created by a concurrent attempt, or by this one before its answer "
                "was lost): adopting it",
                kind,
                self.namespace,
                name,
            )
            return adopted, False
        self.log.info("Created %s %s/%s", kind, self.namespace, name)
        return created, True

    def patch(self, kind: str, name: str, patch: list[Any] | dict[str, Any]) -> dict[str, Any]:
        api, suffix = self._api(kind)
        return _json(
            self._call(
                _what("patch", kind, self.namespace, name),
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
                _what("delete", kind, self.namespace, name),
                getattr(api, f"delete_{suffix}"),
                name,
                self.namespace,
                body={"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": propagation},
                passthrough=(404,),
            )
        except ApiException:
            return False
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
        body = _json(
            self._call(
                f"list Pods in {self.namespace} with labels {selector}",
                api.list_namespaced_pod,
                self.namespace,
                label_selector=selector,
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
            data = self._call(
                _what("read the log of", "Pod", self.namespace, name),
                api.read_namespaced_pod_log,
                name,
                self.namespace,
                # A pod still pulling its image has no log yet (400), a deleted one none at all (404).
                passthrough=(400, 404),
                **kwargs,
            )
        except ApiException:
            return []
        return data.decode(errors="replace").splitlines()


class AsyncKubernetesResourceHook(BaseHook):
    """The reads and deletes the triggers need, on the triggerer's event loop (AsyncKubernetesHook).

    :param retry: how transient API errors are retried; default `RetryPolicy()` (its waits never block
        the loop).
    :param request_timeout: seconds to wait for the answer to each API call.
    """

    hook_name = "MLPipe Kubernetes resources (async)"

    def __init__(
        self,
        conn_id: str,
        namespace: str,
        *,
        retry: RetryPolicy | None = None,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> None:
        super().__init__()
        self.conn_id = conn_id
        self.namespace = namespace
        self.retry = retry or RetryPolicy()
        self.request_timeout = request_timeout
        self._masked = False

    @cached_property
    def kube(self) -> AsyncKubernetesHook:
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import AsyncKubernetesHook

        return AsyncKubernetesHook(conn_id=self.conn_id)

    async def _mask_connection_secrets(self) -> None:
        if self._masked:
            return
        # amask_secret: the synchronous variant would block the triggerer's loop on its supervisor.
        from airflow.sdk.log import amask_secret

        for secret in kube_connection_secrets(await self.kube.get_conn_extras()):
            await amask_secret(secret)
        self._masked = True

    @asynccontextmanager
    async def _api(self, kind: str) -> AsyncIterator[tuple[Any, str]]:
        from kubernetes_asyncio import client

        api_name, suffix = _api_name(kind)
        await self._mask_connection_secrets()
        async with self.kube.get_conn() as api_client:
            # aiohttp silently resends an idempotent request once when its connection breaks (RFC 9112
            # 9.3.1): switched off, as aiohttp's own test client does, every attempt is one of the policy's.
            session: Any = getattr(getattr(api_client, "rest_client", None), "pool_manager", None)
            if hasattr(session, "_retry_connection"):
                session._retry_connection = False
            yield getattr(client, api_name)(api_client), suffix

    async def _call(
        self,
        what: str,
        fn: Callable[..., Awaitable[Any]],
        *args: Any,
        passthrough: tuple[int, ...] = (),
        **kwargs: Any,
    ) -> bytes | None:
        """`fn(*args, **kwargs)` under the retry policy: the response body, or None on 404.

        kubernetes_asyncio raises on an error status only when it decodes the body itself; with
        `_preload_content=False` the status is ours to check, and an error status is raised as the
        client's ApiException so that the one classifier judges both clients alike. An ApiException whose
        status is in `passthrough` is re-raised for the caller; any other failure becomes a
        KubernetesRuntimeError naming `what`.
        """
        from kubernetes_asyncio.client.exceptions import ApiException

        async def attempt() -> bytes | None:
            resp = await fn(*args, _preload_content=False, _request_timeout=self.request_timeout, **kwargs)
            try:
                if resp.status == 404:
                    return None
                # Read inside the attempt: a connection that breaks in the middle of the body is retried.
                body = bytes(await resp.read())
                if resp.status >= 400:
                    err = ApiException(status=resp.status, reason=resp.reason)
                    err.body, err.headers = body, resp.headers
                    raise err
                return body
            finally:
                resp.release()

        try:
            return await call_with_retry_async(attempt, policy=self.retry, what=what)
        except RetriesExhausted as exhausted:
            raise _exhausted(what, exhausted) from exhausted.last
        except ApiException as err:
            if err.status == 404:
                return None
            if err.status in passthrough:
                raise
            raise _refused(what, err) from None

    async def get(self, kind: str, name: str) -> dict[str, Any] | None:
        async with self._api(kind) as (api, suffix):
            data = await self._call(
                _what("GET", kind, self.namespace, name), getattr(api, f"read_{suffix}"), name, self.namespace
            )
        return None if data is None else _json(data)

    async def list_pods(self, selector: str) -> list[dict[str, Any]]:
        async with self._api("Pod") as (api, _):
            data = await self._call(
                f"list Pods in {self.namespace} with labels {selector}",
                api.list_namespaced_pod,
                self.namespace,
                label_selector=selector,
            )
        return [] if data is None else list(_json(data).get("items") or [])

    async def pod_log(
        self,
        name: str,
        *,
        tail_lines: int | None = None,
        since_seconds: int | None = None,
        timestamps: bool = False,
    ) -> list[str]:
        """The pod's log lines (the last `tail_lines`, those of the last `since_seconds`, each prefixed with
        the kubelet's RFC 3339 timestamp and a space with `timestamps`); none when it has no log yet (400:
        its container is still waiting) or no longer (404). Any other failure (403 without `pods/log`, a
        server still failing after the retries) is raised as a KubernetesRuntimeError: the caller decides
        whether it matters."""
        from kubernetes_asyncio.client.exceptions import ApiException

        kwargs: dict[str, Any] = {"tail_lines": tail_lines} if tail_lines else {}
        if since_seconds:
            kwargs["since_seconds"] = since_seconds
        if timestamps:
            kwargs["timestamps"] = True
        async with self._api("Pod") as (api, _):
            try:
                data = await self._call(
                    _what("read the log of", "Pod", self.namespace, name),
                    api.read_namespaced_pod_log,
                    name,
                    self.namespace,
                    passthrough=(400,),
                    **kwargs,
                )
            except ApiException:
                return []
        return [] if data is None else data.decode(errors="replace").splitlines()

    async def delete(self, kind: str, name: str, *, propagation: str = "Foreground") -> bool:
        async with self._api(kind) as (api, suffix):
            data = await self._call(
                _what("delete", kind, self.namespace, name),
                getattr(api, f"delete_{suffix}"),
                name,
                self.namespace,
                body={"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": propagation},
            )
        if data is None:
            return False
        self.log.info("Deleted %s %s/%s (propagation %s)", kind, self.namespace, name, propagation)
        return True


def _what(verb: str, kind: str, namespace: str, name: str) -> str:
    return f"{verb} {kind} {namespace}/{name}"


def _exhausted(what: str, exhausted: RetriesExhausted) -> KubernetesRuntimeError:
    """The error of a call whose transient failures outlasted the retry policy (both hooks)."""
    return KubernetesRuntimeError(
        f"{what} failed after {exhausted.attempts} attempts: {_describe(exhausted.last)}"
    )


def _refused(what: str, err: Any) -> KubernetesRuntimeError:
    """The error of a call the API refused for good (both hooks)."""
    return KubernetesRuntimeError(f"{what} failed: HTTP {err.status} {_api_reason(err)}")


def _json(data: bytes) -> dict[str, Any]:
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
