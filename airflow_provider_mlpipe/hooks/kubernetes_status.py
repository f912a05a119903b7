"""What the status of a Job, its pods, a Deployment or a Service means: pure functions over the objects
as the API serves them (JSON dicts, camelCase). No I/O: the hooks read, these decide, so the sync operators
and the async triggers decide alike."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# Job states
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
# Rollout states
PROGRESSING = "progressing"
AVAILABLE = "available"


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


# Waiting reasons that do not go away by waiting: a bad image or registry credentials, a missing Secret key.
STUCK_WAITING = frozenset(
    {
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)


def _event_time(event: dict[str, Any]) -> str:
    meta = event.get("metadata") or {}
    return str(event.get("lastTimestamp") or event.get("eventTime") or meta.get("creationTimestamp") or "")


def stuck_reasons(pods: Iterable[dict[str, Any]], job_events: Iterable[dict[str, Any]]) -> list[str]:
    """Why a Job's training has not started: pods not scheduled (`PodScheduled=False`: no GPU capacity, a
    node selector nothing matches, taints), pods whose containers cannot be created (STUCK_WAITING), or, with
    no pod at all, the Job's newest Warning event (FailedCreate: a ResourceQuota, a Pod Security
    rejection). Empty when nothing says it is stuck; a pod past Pending is never stuck."""
    pods = list(pods)
    reasons: list[str] = []
    for pod in pods:
        name = (pod.get("metadata") or {}).get("name", "?")
        status = pod.get("status") or {}
        if status.get("phase") not in (None, "Pending"):
            continue
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                reasons.append(
                    f"{name} not scheduled: {cond.get('reason') or 'Unschedulable'}"
                    + (f": {cond['message']}" if cond.get("message") else "")
                )
        for cs in list(status.get("initContainerStatuses") or []) + list(
            status.get("containerStatuses") or []
        ):
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK_WAITING:
                reasons.append(
                    f"{name}/{cs.get('name')}: {waiting['reason']}"
                    + (f": {waiting['message']}" if waiting.get("message") else "")
                )
    if not pods:
        warnings = sorted((e for e in job_events if e.get("type") == "Warning"), key=_event_time)
        if warnings:
            newest = warnings[-1]
            reasons.append(f"{newest.get('reason') or 'Warning'}: {newest.get('message') or ''}".rstrip(": "))
    return reasons


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
