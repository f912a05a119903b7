"""The Kubernetes reads and deletes the triggers need, on the triggerer's event loop, through the
cncf-kubernetes provider's AsyncKubernetesHook (kubernetes_asyncio on aiohttp).

The async twin of `hooks.kubernetes` (same objects as JSON dicts, same retry policy, same error messages
from `hooks.kubernetes_common`); its retry waits never block the loop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk.bases.hook import BaseHook

from airflow_provider_mlpipe.exceptions import RetriesExhausted
from airflow_provider_mlpipe.hooks import kubernetes_common as common
from airflow_provider_mlpipe.retries import RetryPolicy, call_with_retry_async

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from airflow.providers.cncf.kubernetes.hooks.kubernetes import AsyncKubernetesHook


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
        request_timeout: float = common.DEFAULT_REQUEST_TIMEOUT,
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

        for secret in common.kube_connection_secrets(await self.kube.get_conn_extras()):
            await amask_secret(secret)
        self._masked = True

    @asynccontextmanager
    async def _api(self, kind: str) -> AsyncIterator[tuple[Any, str]]:
        from kubernetes_asyncio import client

        api_class, suffix = common.api_name(kind)
        await self._mask_connection_secrets()
        async with self.kube.get_conn() as api_client:
            # aiohttp silently resends an idempotent request once when its connection breaks (RFC 9112
            # 9.3.1): switched off, as aiohttp's own test client does, every attempt is one of the policy's.
            session: Any = getattr(getattr(api_client, "rest_client", None), "pool_manager", None)
            if hasattr(session, "_retry_connection"):
                session._retry_connection = False
            yield getattr(client, api_class)(api_client), suffix

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
            raise common.exhausted_error(what, exhausted) from exhausted.last
        except ApiException as err:
            if err.status == 404:
                return None
            if err.status in passthrough:
                raise
            raise common.refused_error(what, err) from None

    async def get(self, kind: str, name: str) -> dict[str, Any] | None:
        async with self._api(kind) as (api, suffix):
            data = await self._call(
                common.call_name("GET", kind, self.namespace, name),
                getattr(api, f"read_{suffix}"),
                name,
                self.namespace,
            )
        return None if data is None else common.parse_json(data)

    async def list_pods(self, selector: str) -> list[dict[str, Any]]:
        async with self._api("Pod") as (api, _):
            data = await self._call(
                common.list_pods_name(self.namespace, selector),
                api.list_namespaced_pod,
                self.namespace,
                label_selector=selector,
            )
        return [] if data is None else list(common.parse_json(data).get("items") or [])

    async def list_events(self, kind: str, name: str) -> list[dict[str, Any]]:
        """Events about object `kind`/`name` (core/v1, by field selector on involvedObject): why a Job
        creates no pod (FailedCreate: a quota, a Pod Security rejection) lives only there."""
        selector = f"involvedObject.kind={kind},involvedObject.name={name}"
        async with self._api("Event") as (api, _):
            data = await self._call(
                f"list Events in {self.namespace} about {kind} {name}",
                api.list_namespaced_event,
                self.namespace,
                field_selector=selector,
            )
        return [] if data is None else list(common.parse_json(data).get("items") or [])

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
                    common.call_name("read the log of", "Pod", self.namespace, name),
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
                common.call_name("delete", kind, self.namespace, name),
                getattr(api, f"delete_{suffix}"),
                name,
                self.namespace,
                body=common.delete_options(propagation),
            )
        if data is None:
            return False
        self.log.info("Deleted %s %s/%s (propagation %s)", kind, self.namespace, name, propagation)
        return True
