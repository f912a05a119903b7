"""Kubernetes runtime I/O of the operators, through the cncf-kubernetes provider's KubernetesHook.

Objects travel as plain JSON dicts (camelCase, as the API serves them), not as the client's model classes:
the manifests are built as dicts (`airflow_provider_mlpipe.manifests`) and status is read from dicts
(`hooks.kubernetes_status`), so nothing is lost or renamed on the way. The triggers' twin of this hook is
`hooks.kubernetes_async`; what both share (call naming, error translation, secrets of the connection) is in
`hooks.kubernetes_common`.

Every API call runs under a `retries.RetryPolicy`: transient failures (no answer, a reset connection, a
timeout, 408/429/5xx) are retried with capped exponential backoff, then reported as a KubernetesRuntimeError
naming the object, the attempts and the last error; permanent ones (403 Forbidden, 404 on an object that
must exist, 422 Invalid, ...) fail on the first attempt, naming the object and the API's reason. Loading
the connection registers the kubeconfig and the credentials in it with Airflow's secrets masker.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk.bases.hook import BaseHook

from airflow_provider_mlpipe import config
from airflow_provider_mlpipe.exceptions import KubernetesConflict, KubernetesRuntimeError, RetriesExhausted
from airflow_provider_mlpipe.hooks import kubernetes_common as common
from airflow_provider_mlpipe.retries import RetryPolicy, call_with_retry

if TYPE_CHECKING:
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

DEFAULT_NAMESPACE = "mlpipe"
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"


def _patch_content_type(patch: list[Any] | dict[str, Any]) -> str:
    # The client would label a dict body as JSON patch (its first listed type): always say what it is.
    return JSON_PATCH if isinstance(patch, list) else MERGE_PATCH


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
        request_timeout: float = common.DEFAULT_REQUEST_TIMEOUT,
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
        for secret in common.kube_connection_secrets(hook.conn_extras):
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

        api_class, suffix = common.api_name(kind)
        return getattr(client, api_class)(api_client=self.api_client), suffix

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
            raise common.exhausted_error(what, exhausted) from exhausted.last
        except ApiException as err:
            if err.status in passthrough:
                raise
            raise common.refused_error(what, err) from None

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        api, suffix = self._api(kind)
        try:
            data = self._call(
                common.call_name("GET", kind, self.namespace, name),
                getattr(api, f"read_{suffix}"),
                name,
                self.namespace,
                passthrough=(404,),
            )
        except ApiException:
            return None
        return common.parse_json(data)

    def get_live(self, kind: str, name: str) -> dict[str, Any] | None:
        """`get`, except that an object being deleted (a deletionTimestamp) is waited out and reported as
        absent: adopting or patching it would hand the caller something the garbage collector removes."""
        obj = self.get(kind, name)
        if obj is not None and common.being_deleted(obj):
            self.log.info(
                "%s %s/%s is being deleted (since %s): waiting until it is gone",
                kind,
                self.namespace,
                name,
                obj["metadata"]["deletionTimestamp"],
            )
            self.wait_deleted(kind, name)
            return None
        return obj

    def create_or_adopt(self, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create `body`, or return the object of that name that already exists. Returns (object, created).

        GET first (the usual retry case costs no failed write). 409 AlreadyExists on create means that
        another attempt won the race, or that this create landed and its answer was lost (a POST retried
        after a reset or a timeout): either way the object of that name is the one to adopt.
        """
        from kubernetes.client.exceptions import ApiException

        kind, name = body["kind"], body["metadata"]["name"]
        existing = self.get_live(kind, name)
        if existing is not None:
            self.log.info("Adopting existing %s %s/%s", kind, self.namespace, name)
            return existing, False
        api, suffix = self._api(kind)
        try:
            created = common.parse_json(
                self._call(
                    common.call_name("create", kind, self.namespace, name),
                    getattr(api, f"create_{suffix}"),
                    self.namespace,
                    body,
                    passthrough=(409,),
                )
            )
        except ApiException:
            adopted = self.get(kind, name)
            if common.being_deleted(adopted):
                # Deleted between the GET and the create: wait for it to go, then create ours.
                self.wait_deleted(kind, name)
                return self.create_or_adopt(body)
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

    def patch(
        self,
        kind: str,
        name: str,
        patch: list[Any] | dict[str, Any],
        *,
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        """Patch `kind`/`name`. With `resource_version` (the one the patch was computed from) the patch
        applies only to that version of the object: if it changed since (another task's write), the API
        answers 409 and this raises KubernetesConflict, for the caller to read it again and decide."""
        from kubernetes.client.exceptions import ApiException

        if resource_version:
            # Optimistic concurrency, as the apiserver does it for any write carrying a resourceVersion.
            if isinstance(patch, list):
                guard = {"op": "replace", "path": "/metadata/resourceVersion", "value": resource_version}
                patch = [guard, *patch]
            else:
                meta = {**(patch.get("metadata") or {}), "resourceVersion": resource_version}
                patch = {**patch, "metadata": meta}
        api, suffix = self._api(kind)
        what = common.call_name("patch", kind, self.namespace, name)
        try:
            data = self._call(
                what,
                getattr(api, f"patch_{suffix}"),
                name,
                self.namespace,
                patch,
                _content_type=_patch_content_type(patch),
                passthrough=(409,),
            )
        except ApiException:
            raise KubernetesConflict(
                f"{what} (computed from resourceVersion {resource_version}) failed: HTTP 409, the object "
                "changed since it was read"
            ) from None
        return common.parse_json(data)

    def delete(self, kind: str, name: str, *, propagation: str = "Foreground") -> bool:
        """Delete; True if it existed. Foreground: the Job's pods go before the Job does."""
        from kubernetes.client.exceptions import ApiException

        api, suffix = self._api(kind)
        try:
            self._call(
                common.call_name("delete", kind, self.namespace, name),
                getattr(api, f"delete_{suffix}"),
                name,
                self.namespace,
                body=common.delete_options(propagation),
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
        body = common.parse_json(
            self._call(
                common.list_pods_name(self.namespace, selector),
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
                common.call_name("read the log of", "Pod", self.namespace, name),
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
