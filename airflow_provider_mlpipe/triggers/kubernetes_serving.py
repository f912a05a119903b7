"""Async wait for a serving Deployment's rollout and, for a LoadBalancer Service, its external address."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_mlpipe.exceptions import KubernetesRuntimeError
from airflow_provider_mlpipe.hooks.kubernetes_async import AsyncKubernetesResourceHook
from airflow_provider_mlpipe.hooks.kubernetes_status import (
    AVAILABLE,
    FAILED,
    pod_problems,
    rollout_state,
    selector_string,
    service_address,
)
from airflow_provider_mlpipe.manifests import A_VERSION
from airflow_provider_mlpipe.retries import RetryPolicy
from airflow_provider_mlpipe.runtimes.base import FAILED as FAILED_EVENT
from airflow_provider_mlpipe.runtimes.base import GONE, SUCCESS, TIMEOUT, outcome_event


class KubernetesServingTrigger(BaseTrigger):
    """Wait until Deployment `deployment` has rolled out `generation`, then (with `wait_for_address`)
    until Service `service` has an external IP or hostname.

    Events (`runtimes.base.outcome_event`): `success` (details: `address`, None for ClusterIP), `failed`
    (rollout: ProgressDeadlineExceeded, with the pods' reasons), `timeout` (details: `stage`, rollout or
    address), `gone`. Details also name the `deployment`, `service`, `namespace`, and `pod_problems`.

    :param transient_retry: how each API call retries transient errors (`RetryPolicy.as_conf()`; None: the
        defaults). A check that still fails is logged and the wait goes on until `timeout_at`.
    :param version: the model version this rollout is for (the Deployment's `mlpipe.io/model-version`
        annotation); when another deploy changes it meanwhile, the wait fails at once (details
        `superseded: true`) instead of reporting that other rollout as this one. Empty: not checked (a
        deferral from before this parameter).
    """

    def __init__(
        self,
        *,
        deployment: str,
        service: str,
        namespace: str,
        conn_id: str,
        generation: int,
        pod_selector: dict[str, str],
        wait_for_address: bool,
        timeout_at: float,
        poll_interval: float = 5.0,
        transient_retry: dict[str, Any] | None = None,
        version: str = "",
    ) -> None:
        super().__init__()
        self.deployment = deployment
        self.service = service
        self.namespace = namespace
        self.conn_id = conn_id
        self.generation = generation
        self.pod_selector = pod_selector
        self.wait_for_address = wait_for_address
        self.timeout_at = timeout_at
        self.poll_interval = poll_interval
        self.transient_retry = transient_retry
        self.version = version

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "deployment": self.deployment,
                "service": self.service,
                "namespace": self.namespace,
                "conn_id": self.conn_id,
                "generation": self.generation,
                "pod_selector": self.pod_selector,
                "wait_for_address": self.wait_for_address,
                "timeout_at": self.timeout_at,
                "poll_interval": self.poll_interval,
                "transient_retry": self.transient_retry,
                "version": self.version,
            },
        )

    def _event(self, status: str, message: str, **extra: Any) -> TriggerEvent:
        return TriggerEvent(
            outcome_event(
                status,
                message,
                deployment=self.deployment,
                service=self.service,
                namespace=self.namespace,
                **extra,
            )
        )

    async def _problems(self, hook: AsyncKubernetesResourceHook) -> list[str]:
        """Why the new pods are not ready, for the final event; none when the pods cannot be read: the
        verdict is known by now, and must not be lost (nor delayed to the deadline) for want of details."""
        try:
            return pod_problems(await hook.list_pods(selector_string(self.pod_selector)))
        except KubernetesRuntimeError as err:
            self.log.warning("%s: cannot list the pods for the final event: %s", self.deployment, err)
            return []

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = AsyncKubernetesResourceHook(
            self.conn_id, self.namespace, retry=RetryPolicy.from_conf(self.transient_retry)
        )
        rolled_out = False
        last = "no status read yet"
        while True:
            try:
                if not rolled_out:
                    deployment = await hook.get("Deployment", self.deployment)
                    if deployment is None:
                        yield self._event(GONE, f"Deployment {self.namespace}/{self.deployment} is gone")
                        return
                    served = ((deployment.get("metadata") or {}).get("annotations") or {}).get(A_VERSION)
                    if self.version and served != self.version:
                        yield self._event(
                            FAILED_EVENT,
                            f"Deployment {self.namespace}/{self.deployment} was changed to v{served} by "
                            f"another deploy while v{self.version} rolled out",
                            superseded=True,
                            pod_problems=[],
                        )
                        return
                    state, last = rollout_state(deployment, self.generation)
                    if state == FAILED:
                        yield self._event(FAILED_EVENT, last, pod_problems=await self._problems(hook))
                        return
                    rolled_out = state == AVAILABLE
                    if rolled_out:
                        self.log.info("Deployment %s: %s", self.deployment, last)
                if rolled_out:
                    if not self.wait_for_address:
                        yield self._event(SUCCESS, last, address=None)
                        return
                    service = await hook.get("Service", self.service)
                    if service is None:
                        yield self._event(GONE, f"Service {self.namespace}/{self.service} is gone")
                        return
                    address = service_address(service)
                    if address:
                        yield self._event(SUCCESS, last, address=address)
                        return
                    last = "the load balancer has no external IP or hostname yet"
            except KubernetesRuntimeError as err:
                last = f"status check failed: {err}"
                self.log.warning("%s: %s", self.deployment, last)
            if time.time() >= self.timeout_at:
                stage = "address" if rolled_out else "rollout"
                what = (
                    "rolled out, but the Service got no external address"
                    if rolled_out
                    else "rollout not done"
                )
                yield self._event(
                    TIMEOUT,
                    f"{what} by {time.ctime(self.timeout_at)}: {last}",
                    stage=stage,
                    pod_problems=[] if rolled_out else await self._problems(hook),
                )
                return
            await asyncio.sleep(self.poll_interval)
