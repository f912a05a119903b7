"""Async wait for a training Job on Kubernetes, copying its pod's log into the task log."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_mlpipe.exceptions import KubernetesRuntimeError
from airflow_provider_mlpipe.hooks.kubernetes import (
    FAILED,
    SUCCEEDED,
    AsyncKubernetesResourceHook,
    job_state,
    newest_pod,
    pod_problems,
)
from airflow_provider_mlpipe.retries import RetryPolicy

TAIL_LINES = 20


class KubernetesJobTrigger(BaseTrigger):
    """Poll Job `job_name` until it succeeds, fails or `timeout_at` passes.

    Events: `success`; `failed` with the Job's reason (BackoffLimitExceeded, DeadlineExceeded ...), the
    pods' termination reasons and the last log lines; `timeout`; `gone` (the Job was deleted under us).

    :param log_pod: / :param log_offset: the pod whose log was being copied and how many of its lines
        were shown, so a restarted triggerer resumes there instead of repeating the log.
    :param transient_retry: how each API call retries transient errors (`RetryPolicy.as_conf()`; None: the
        defaults). A check that still fails is logged and the wait goes on until `timeout_at`.
    """

    def __init__(
        self,
        *,
        job_name: str,
        namespace: str,
        conn_id: str,
        timeout_at: float,
        poll_interval: float = 10.0,
        log_pod: str = "",
        log_offset: int = 0,
        transient_retry: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.job_name = job_name
        self.namespace = namespace
        self.conn_id = conn_id
        self.timeout_at = timeout_at
        self.poll_interval = poll_interval
        self.log_pod = log_pod
        self.log_offset = log_offset
        self.transient_retry = transient_retry

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "job_name": self.job_name,
                "namespace": self.namespace,
                "conn_id": self.conn_id,
                "timeout_at": self.timeout_at,
                "poll_interval": self.poll_interval,
                "log_pod": self.log_pod,
                "log_offset": self.log_offset,
                "transient_retry": self.transient_retry,
            },
        )

    def _hook(self) -> AsyncKubernetesResourceHook:
        return AsyncKubernetesResourceHook(
            self.conn_id, self.namespace, retry=RetryPolicy.from_conf(self.transient_retry)
        )

    async def _pods(self, hook: AsyncKubernetesResourceHook) -> list[dict[str, Any]]:
        return await hook.list_pods(f"job-name={self.job_name}")

    async def _copy_log(self, hook: AsyncKubernetesResourceHook, pods: list[dict[str, Any]]) -> None:
        pod = newest_pod(pods)
        if pod is None:
            return
        name = pod["metadata"]["name"]
        if name != self.log_pod:
            # A new pod (the Job retried after a failed one): its log starts from the beginning.
            self.log_pod, self.log_offset = name, 0
            self.log.info("Following the log of pod %s/%s", self.namespace, name)
        lines = await hook.pod_log(name)
        for line in lines[self.log_offset :]:
            self.log.info("[%s] %s", name, line)
        self.log_offset = max(self.log_offset, len(lines))

    async def _event(self, hook: AsyncKubernetesResourceHook, status: str, message: str) -> TriggerEvent:
        pods = await self._pods(hook)
        pod = newest_pod(pods)
        tail = await hook.pod_log(pod["metadata"]["name"], tail_lines=TAIL_LINES) if pod else []
        return TriggerEvent(
            {
                "status": status,
                "job_name": self.job_name,
                "namespace": self.namespace,
                "message": message,
                "pod_problems": pod_problems(pods),
                "tail": tail[-TAIL_LINES:],
            }
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = self._hook()
        errors = 0
        while True:
            try:
                job = await hook.get("Job", self.job_name)
                if job is None:
                    yield TriggerEvent(
                        {
                            "status": "gone",
                            "job_name": self.job_name,
                            "namespace": self.namespace,
                            "message": f"Job {self.namespace}/{self.job_name} no longer exists",
                            "pod_problems": [],
                            "tail": [],
                        }
                    )
                    return
                state, reason = job_state(job)
                await self._copy_log(hook, await self._pods(hook))
                errors = 0
            except KubernetesRuntimeError as err:
                # Still failing after the hook's retries (an API server down for longer, RBAC changed under
                # us): keep waiting, within the deadline.
                errors += 1
                self.log.warning("Job %s: status check failed (%d in a row): %s", self.job_name, errors, err)
                state, reason = "unknown", str(err)
            if state == SUCCEEDED:
                yield await self._event(hook, "success", reason)
                return
            if state == FAILED:
                yield await self._event(hook, "failed", reason)
                return
            if time.time() >= self.timeout_at:
                yield await self._event(
                    hook, "timeout", f"still {state} ({reason}) at the deadline {time.ctime(self.timeout_at)}"
                )
                return
            await asyncio.sleep(self.poll_interval)

    async def on_kill(self) -> None:
        """A user killed the deferred task: delete the Job and its pods.

        (Not `cleanup()`: that also runs when a triggerer restarts, when the training must go on.)"""
        self.log.info("Task killed by a user: deleting Job %s/%s", self.namespace, self.job_name)
        await self._hook().delete("Job", self.job_name, propagation="Foreground")
