"""Async wait for a training Job on Kubernetes, copying its pod's log into the task log."""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_mlpipe.exceptions import KubernetesRuntimeError
from airflow_provider_mlpipe.hooks.kubernetes_async import AsyncKubernetesResourceHook
from airflow_provider_mlpipe.hooks.kubernetes_status import (
    FAILED,
    SUCCEEDED,
    job_state,
    newest_pod,
    pod_problems,
    stuck_reasons,
)
from airflow_provider_mlpipe.retries import RetryPolicy
from airflow_provider_mlpipe.runtimes.base import FAILED as FAILED_EVENT
from airflow_provider_mlpipe.runtimes.base import GONE, SUCCESS, TIMEOUT, outcome_event

TAIL_LINES = 20
# Each poll after the first asks the kubelet for the lines of the last (time since the last line copied +
# this) seconds, and drops the ones already copied by their timestamps: the margin covers a node clock
# ahead of the triggerer's, at the price of re-reading that many seconds of log per poll.
LOG_OVERLAP_SECONDS = 60
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z$")
# The Job's delete on a user's kill: worst case 3 requests of 5 s and waits of 0.5 and 1 s, well inside
# Airflow's default `[triggerer] on_kill_timeout` of 30 s.
ON_KILL_RETRY = RetryPolicy(attempts=3, base_delay=0.5, max_delay=1.0)
ON_KILL_REQUEST_TIMEOUT = 5.0


class KubernetesJobTrigger(BaseTrigger):
    """Poll Job `job_name` until it succeeds, fails or `timeout_at` passes.

    Events (`runtimes.base.outcome_event`): `success`; `failed` with the Job's reason (BackoffLimitExceeded,
    DeadlineExceeded ...) as the message and the last log lines as the tail; `timeout`; `gone` (the Job was
    deleted under us). Details: `job_name`, `namespace`, `pod_problems` (the pods' termination reasons).

    Each poll copies the newest pod's new log lines into the task log. The first poll of a pod reads its
    whole log, with the kubelet's timestamps; later polls read only the last seconds since the last line
    copied (`sinceSeconds`, plus LOG_OVERLAP_SECONDS) and skip what was copied already by timestamp, so an
    hours-long training's log is not downloaded again on every poll. Airflow stores a trigger's kwargs
    once, when the task defers, and a restarted triggerer rebuilds the trigger from them: the progress
    lives in this instance only, so after a restart the log is copied again from its first line (lines
    shown before the restart appear twice).

    :param log_pod: / :param log_since: / :param log_seen: the pod whose log is being copied, the timestamp
        of the last line copied (RFC 3339, as the kubelet wrote it), and how many lines carrying exactly that
        timestamp were copied (in memory; as stored at defer time after a triggerer restart, see above).
    :param stuck_after: seconds a Job may stay unable to start (`hooks.kubernetes_status.stuck_reasons`:
        pods not scheduled, images that cannot be pulled, no pod created because of a quota or Pod
        Security) before the wait fails with that reason (details `stuck: true`); None: wait until
        `timeout_at`. Counted from the first poll of this trigger instance that saw it stuck; a poll
        that no longer does starts the count over.
    :param transient_retry: how each API call retries transient errors (`RetryPolicy.as_conf()`; None: the
        defaults). A status check that still fails is logged and the wait goes on until `timeout_at`; a
        pod listing or log read that fails is logged and skipped (the Job's status decides the outcome).
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
        log_since: str = "",
        log_seen: int = 0,
        transient_retry: dict[str, Any] | None = None,
        stuck_after: float | None = None,
    ) -> None:
        super().__init__()
        self.job_name = job_name
        self.namespace = namespace
        self.conn_id = conn_id
        self.timeout_at = timeout_at
        self.poll_interval = poll_interval
        self.log_pod = log_pod
        self.log_since = log_since
        self.log_seen = log_seen
        self.transient_retry = transient_retry
        self.stuck_after = stuck_after
        # time.monotonic() of the first poll that found the Job stuck (None: not stuck).
        self._stuck_since: float | None = None
        # The last error of copying the log, so that a lasting one is logged once.
        self._log_error = ""

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
                "log_since": self.log_since,
                "log_seen": self.log_seen,
                "transient_retry": self.transient_retry,
                "stuck_after": self.stuck_after,
            },
        )

    def _hook(self) -> AsyncKubernetesResourceHook:
        return AsyncKubernetesResourceHook(
            self.conn_id, self.namespace, retry=RetryPolicy.from_conf(self.transient_retry)
        )

    def _kill_hook(self) -> AsyncKubernetesResourceHook:
        # Airflow gives on_kill `[triggerer] on_kill_timeout` (30 s by default): the full policy (5
        # attempts, waits up to 30 s, 60 s per request) would be cut off mid-way, without a word of why.
        return AsyncKubernetesResourceHook(
            self.conn_id, self.namespace, retry=ON_KILL_RETRY, request_timeout=ON_KILL_REQUEST_TIMEOUT
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
            self.log_pod, self.log_since, self.log_seen = name, "", 0
            self.log.info("Following the log of pod %s/%s", self.namespace, name)
        since = _parse_stamp(self.log_since)
        window = None
        if since is not None:
            window = max(1, math.ceil(datetime.now(UTC).timestamp() - since[0])) + LOG_OVERLAP_SECONDS
        lines = await hook.pod_log(name, since_seconds=window, timestamps=True)
        for stamp, text in _new_lines(lines, self.log_since, self.log_seen):
            self.log.info("[%s] %s", name, text)
            if stamp == self.log_since:
                self.log_seen += 1
            else:
                self.log_since, self.log_seen = stamp, 1

    async def _follow_log(self, hook: AsyncKubernetesResourceHook) -> list[dict[str, Any]] | None:
        """Copy the newest pod's new log lines; the Job's pods (None when they could not be listed)."""
        pods = None
        try:
            pods = await self._pods(hook)
            await self._copy_log(hook, pods)
        except KubernetesRuntimeError as err:
            # The log is a courtesy: without it (pods/log forbidden, the kubelet unreachable) the Job's
            # status still decides the outcome, so the wait goes on. Said once per distinct error, not on
            # every poll.
            if str(err) != self._log_error:
                self.log.warning("Job %s: cannot copy the pod's log: %s", self.job_name, err)
            self._log_error = str(err)
        else:
            self._log_error = ""
        return pods

    async def _stuck(self, hook: AsyncKubernetesResourceHook, pods: list[dict[str, Any]]) -> str | None:
        """The reason to give up on a Job that cannot start, once it has been stuck for `stuck_after`."""
        events: list[dict[str, Any]] = []
        if not pods:
            try:
                events = await hook.list_events("Job", self.job_name)
            except KubernetesRuntimeError as err:
                self.log.warning("Job %s: cannot read its events: %s", self.job_name, err)
        reasons = stuck_reasons(pods, events)
        if not reasons:
            self._stuck_since = None
            return None
        now = time.monotonic()
        if self._stuck_since is None:
            self._stuck_since = now
            self.log.warning(
                "Job %s cannot start: %s (giving up after %.0f s of this)",
                self.job_name,
                "; ".join(reasons),
                self.stuck_after or 0,
            )
        if self.stuck_after is not None and now - self._stuck_since >= self.stuck_after:
            return (
                f"Job {self.namespace}/{self.job_name} could not start for {now - self._stuck_since:.0f} s: "
                + "; ".join(reasons)
            )
        return None

    async def _event(
        self, hook: AsyncKubernetesResourceHook, status: str, message: str, **extra: Any
    ) -> TriggerEvent:
        # The outcome is known by now: a failure to read the pods or their log must not lose it (nor the
        # Job's reason), only the details below. Any error, not only the API's: the event matters more.
        pods: list[dict[str, Any]] = []
        tail: list[str] = []
        try:
            pods = await self._pods(hook)
        except Exception as err:
            self.log.warning("Job %s: cannot list its pods for the %s event: %s", self.job_name, status, err)
        pod = newest_pod(pods)
        if pod is not None:
            try:
                tail = await hook.pod_log(pod["metadata"]["name"], tail_lines=TAIL_LINES)
            except Exception as err:
                self.log.warning(
                    "Job %s: cannot read the log of pod %s for the %s event: %s",
                    self.job_name,
                    pod["metadata"]["name"],
                    status,
                    err,
                )
        return TriggerEvent(
            outcome_event(
                status,
                message,
                tail=tail,
                job_name=self.job_name,
                namespace=self.namespace,
                pod_problems=pod_problems(pods),
                **extra,
            )
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = self._hook()
        errors = 0
        while True:
            try:
                job = await hook.get("Job", self.job_name)
                if job is None:
                    yield TriggerEvent(
                        outcome_event(
                            GONE,
                            f"Job {self.namespace}/{self.job_name} no longer exists",
                            job_name=self.job_name,
                            namespace=self.namespace,
                            pod_problems=[],
                        )
                    )
                    return
                state, reason = job_state(job)
                errors = 0
            except KubernetesRuntimeError as err:
                # Still failing after the hook's retries (an API server down for longer, RBAC changed under
                # us): keep waiting, within the deadline.
                errors += 1
                self.log.warning("Job %s: status check failed (%d in a row): %s", self.job_name, errors, err)
                state, reason = "unknown", str(err)
            else:
                # Also on the last poll: the lines written since the previous one reach the task log too.
                pods = await self._follow_log(hook)
                if state not in (SUCCEEDED, FAILED) and pods is not None and self.stuck_after is not None:
                    stuck = await self._stuck(hook, pods)
                    if stuck is not None:
                        yield await self._event(hook, FAILED_EVENT, stuck, stuck=True)
                        return
            if state == SUCCEEDED:
                yield await self._event(hook, SUCCESS, reason)
                return
            if state == FAILED:
                yield await self._event(hook, FAILED_EVENT, reason)
                return
            if time.time() >= self.timeout_at:
                yield await self._event(
                    hook, TIMEOUT, f"still {state} ({reason}) at the deadline {time.ctime(self.timeout_at)}"
                )
                return
            await asyncio.sleep(self.poll_interval)

    async def on_kill(self) -> None:
        """A user killed the deferred task: delete the Job and its pods.

        (Not `cleanup()`: that also runs when a triggerer restarts, when the training must go on.)"""
        self.log.info("Task killed by a user: deleting Job %s/%s", self.namespace, self.job_name)
        await self._kill_hook().delete("Job", self.job_name, propagation="Foreground")


def _parse_stamp(stamp: str) -> tuple[float, int] | None:
    """(whole seconds since the epoch, nanoseconds) of a kubelet timestamp; None for anything else.

    Go's RFC3339Nano drops the fraction's trailing zeros, so the strings do not sort as text."""
    match = _STAMP.match(stamp)
    if match is None:
        return None
    seconds = datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    return seconds, int((match.group(2) or "").ljust(9, "0"))


def _new_lines(lines: list[str], since: str, seen: int) -> list[tuple[str, str]]:
    """(timestamp, text) of the lines after the `seen` lines stamped exactly `since` (all, when `since` is
    empty). A line without a timestamp (a runtime that writes none) counts as stamped like the one before.
    """
    after = _parse_stamp(since)
    out: list[tuple[str, str]] = []
    stamp, key = "", after
    skip = seen
    for line in lines:
        head, _, text = line.partition(" ")
        parsed = _parse_stamp(head)
        if parsed is not None:
            stamp, key = head, parsed
        else:
            text = line
        if after is not None and key is not None:
            if key < after:
                continue
            if key == after and skip > 0:
                skip -= 1
                continue
        out.append((stamp, text))
    return out
