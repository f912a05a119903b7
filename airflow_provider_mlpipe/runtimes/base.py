"""The runtime seam: what the operators need from a place that trains and serves models.

A runtime starts (or adopts) a training run, says how to wait for it, stops it; it deploys (or adopts) a
serving endpoint, says how to wait for it, undoes a failed deployment and tears an endpoint down. The
operators have one flow whichever runtime a run names; all I/O stays in the hooks the runtimes compose.

What crosses a deferral is primitive: a *handle* (a small JSON dict naming what was started, with a
human-readable `resource`) travels in the defer kwargs, and the trigger fires one event shape
(`outcome_event`) that `Outcome.from_event` reads back, whichever runtime's trigger fired it.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from airflow_provider_mlpipe.retries import RetryPolicy

if TYPE_CHECKING:
    from airflow.triggers.base import BaseTrigger

    from airflow_provider_mlpipe.hooks.model_store import ModelStoreHook
    from airflow_provider_mlpipe.modelstore.store import ModelStore

# The statuses a trigger's event may carry. Anything but SUCCESS fails the task; TIMEOUT also makes the
# operator stop what it waited for (a training run past its deadline must not go on using the machine).
SUCCESS = "success"
FAILED = "failed"
TIMEOUT = "timeout"
GONE = "gone"
STATUSES = (SUCCESS, FAILED, TIMEOUT, GONE)

# Statuses of events fired by triggers of 0.1.0 (before the events were normalised), read by from_event.
_LEGACY_STATUSES = {"available": SUCCESS, "lost": FAILED, "absent": GONE}
TAIL_LINES = 20

Handle = dict[str, Any]


def outcome_event(
    status: str, message: str, *, tail: list[str] | None = None, **details: Any
) -> dict[str, Any]:
    """The payload every trigger of the provider fires: `status` (one of STATUSES), `message` (the reason,
    complete enough for an error message), `tail` (the last output lines, possibly none) and, under
    `details`, what only its runtime knows (exit code, pods' problems, the Service's address...)."""
    if status not in STATUSES:
        raise ValueError(f"event status {status!r} is not one of {STATUSES}")
    return {"status": status, "message": message, "tail": list(tail or [])[-TAIL_LINES:], "details": details}


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """A trigger's event, read back by the operator."""

    status: str
    message: str
    tail: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        return self.status == SUCCESS

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> Outcome:
        if "details" in event:
            return cls(
                status=str(event.get("status")),
                message=str(event.get("message") or ""),
                tail=list(event.get("tail") or []),
                details=dict(event.get("details") or {}),
            )
        # An event fired by a 0.1.0 trigger before an upgrade and delivered after it: every key but the
        # common ones was a runtime detail.
        status = str(event.get("status"))
        common = ("status", "message", "tail")
        return cls(
            status=_LEGACY_STATUSES.get(status, status),
            message=str(event.get("message") or ""),
            tail=list(event.get("tail") or []),
            details={k: v for k, v in event.items() if k not in common},
        )


@dataclass(frozen=True)
class Wait:
    """How to wait for something a runtime started: the trigger to defer to, and the task's own backstop
    timeout (past the trigger's deadline, for when the triggerer itself is down)."""

    trigger: BaseTrigger
    timeout: timedelta


@dataclass(frozen=True, kw_only=True)
class TrainingSpec:
    """A training run as the operator configured it. `gpus`..`ttl_seconds_after_finished` are for runtimes
    that schedule pods; a runtime without such a thing ignores them. `store` is the hook, not the store:
    opened (and its credentials read) only by the runtime that needs it, after `check_training`."""

    model_name: str
    image: str
    digest: str
    store: ModelStoreHook
    dataset: str | None
    hyperparameters: dict[str, Any]
    timeout: timedelta
    poll_interval: float
    dag_id: str = ""
    # The local runtime's stand-in for the image (argv); empty: the trainer this repository ships. A Job
    # runs the image's own entrypoint.
    command: tuple[str, ...] = ()
    gpus: int | str = 0
    cpu: str = "2"
    memory: str = "4Gi"
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    backoff_limit: int = 1
    ttl_seconds_after_finished: int = 24 * 3600


@dataclass(frozen=True)
class TrainingStarted:
    """`wait` is None when an adopted run has already succeeded."""

    handle: Handle
    wait: Wait | None


@dataclass(frozen=True, kw_only=True)
class ServingSpec:
    """An endpoint deployment as the operator configured it; fields a runtime has no use for are ignored
    (`port` by Kubernetes, `replicas`..`service_annotations` by the local runtime)."""

    endpoint: str
    model_name: str
    store: ModelStore
    ready_timeout: timedelta
    poll_interval: float
    dag_id: str = ""
    port: int | None = None
    replicas: int | str = 1
    cpu: str = "500m"
    memory: str = "1Gi"
    service_type: str | None = None
    service_annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ServingStarted:
    """`previous` is the version the endpoint served before (None: a new endpoint)."""

    handle: Handle
    previous: int | None
    wait: Wait


@dataclass(frozen=True)
class Teardown:
    """`resource`: the endpoint's name on the runtime; `was`: what it was before (a runtime's word)."""

    resource: str
    was: str


class Runtime(ABC):
    """One place training and serving run. Constructed per task (no I/O in `__init__`), from settings
    every runtime accepts, each using those it has a use for.

    :param retry: in-task retries of transient errors; the triggers get it too.
    :param kubernetes_conn_id: / :param namespace: where a cluster runtime works.
    :param state_dir: where the local runtime keeps its process directories (default: its hook's).
    """

    name: ClassVar[str]

    def __init__(
        self,
        *,
        retry: RetryPolicy | None = None,
        kubernetes_conn_id: str | None = None,
        namespace: str | None = None,
        state_dir: str | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self.kubernetes_conn_id = kubernetes_conn_id
        self.namespace = namespace
        self.state_dir = state_dir

    # --- training ----------------------------------------------------------------------------------

    def check_training(self, spec: TrainingSpec) -> None:  # noqa: B027  (most runtimes need no check)
        """Refuse what this runtime cannot run, before the run reserves a model version."""

    @abstractmethod
    def start_training(self, spec: TrainingSpec, *, version: int, run_key: str) -> TrainingStarted:
        """Start the training of `version`, or adopt the one an earlier attempt of this run started (a
        failed one is replaced)."""

    @abstractmethod
    def stop_training(self, handle: Handle) -> None:
        """Stop a training run (its deadline passed); idempotent."""

    @abstractmethod
    def cancel(self) -> None:
        """The task is being killed before it deferred: stop what this instance started, if anything."""

    @abstractmethod
    def legacy_training_handle(self, model_name: str, version: int, kwargs: dict[str, Any]) -> Handle:
        """The handle of a training a 0.1.0 task deferred on, from the defer kwargs it stored."""

    # --- serving -----------------------------------------------------------------------------------

    @abstractmethod
    def served_version(self, name: str) -> int | None:
        """The version endpoint `name` serves (None: no endpoint)."""

    @abstractmethod
    def deploy_serving(self, spec: ServingSpec, *, name: str, version: int, run_key: str) -> ServingStarted:
        """Serve `version` at endpoint `name`: create it, adopt it when it already serves `version`, or
        roll the new version out."""

    @abstractmethod
    def serving_result(self, handle: Handle, outcome: Outcome) -> dict[str, Any]:
        """What a ready endpoint adds to the task's XCom: `url` and where it runs (`name`, ...)."""

    @abstractmethod
    def abandon_serving(self, handle: Handle, outcome: Outcome) -> str | None:
        """The endpoint did not become ready: undo what can be undone; returns what was done, for the
        error message (None: nothing worth saying)."""

    @abstractmethod
    def teardown_serving(self, name: str) -> Teardown:
        """Stop endpoint `name` and remove what the runtime created for it; idempotent."""

    @abstractmethod
    def legacy_serving_handle(self, kwargs: dict[str, Any]) -> Handle:
        """The handle of a deployment a 0.1.0 task deferred on, from the defer kwargs it stored."""

    # --- shared helpers ----------------------------------------------------------------------------

    def reason(self, outcome: Outcome) -> str:
        """Why a wait ended as it did, for an error message: the event's message, and what the runtime's
        details add to it."""
        return outcome.message

    @staticmethod
    def deadline(timeout: timedelta) -> float:
        """A trigger's wall-clock deadline, `timeout` from now."""
        return time.time() + timeout.total_seconds()
