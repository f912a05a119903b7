"""Every error the provider raises, in one place.

Messages name the resource (model, version, endpoint, file, field) and the reason, so an on-call engineer
can act on the task log line alone; `describe` is how a message tells the underlying error.

Imports nothing of the provider: every other module (retries included) depends on this one, never the
other way round.
"""

from __future__ import annotations


def describe(exc: BaseException) -> str:
    """A one-line account of an error for a message: HTTP status and reason when there was an answer."""
    status = getattr(exc, "status", None)
    if isinstance(status, int) and status > 0:
        reason = getattr(exc, "code", None) or getattr(exc, "reason", None) or ""
        return f"HTTP {status} {reason}".strip()
    return f"{type(exc).__name__}: {exc}"


class MlpipeError(Exception):
    """Base class of every error raised by airflow-provider-mlpipe."""


class ConfigError(MlpipeError, ValueError):
    """A parameter, flag or connection field has a value the pipeline cannot use."""

    def __init__(self, field: str, value: object, expected: str) -> None:
        self.field = field
        self.value = value
        self.expected = expected
        super().__init__(f"{field}={value!r} is invalid: expected {expected}")


class UnknownParamError(ConfigError):
    """A run's conf (or an ACR route's params) has a key that no param defines."""

    def __init__(self, field: str, value: object, known: list[str], suggestion: str | None) -> None:
        super().__init__(field, value, f"one of the params {', '.join(known)}")
        self.suggestion = suggestion
        hint = f"; did you mean {suggestion!r}?" if suggestion else ""
        # The key's name leads: a misspelling is what the reader has to spot.
        self.args = (f"unknown param {field!r}{hint} (the params are {', '.join(known)})",)


class DatasetError(MlpipeError, ValueError):
    """The dataset location is missing a file or holds data of the wrong shape."""


class ModelStoreError(MlpipeError):
    """A model store operation failed (missing version, corrupt file, unreadable manifest)."""


class AliasConflictError(ModelStoreError):
    """Another run changed an alias between our read and our write (compare-and-swap lost)."""


class StoreNotFound(ModelStoreError):
    """The bucket, or an object the store expected (manifest, alias record, model file), does not exist."""


class StoreBucketNotFound(StoreNotFound):
    """The bucket itself does not exist (wrong name, region or endpoint): retrying cannot help."""


class StoreAccessDenied(ModelStoreError):
    """The object store refused the credentials or the request (HTTP 403): retrying cannot help."""


class StoreUnavailable(ModelStoreError):
    """The object store kept failing with transient errors (5xx, throttling, network) after every retry."""


class TrainingError(MlpipeError):
    """The training process or Job failed; the message carries the reason and the last log lines."""


class ServingError(MlpipeError):
    """A serving endpoint could not be started, did not become AVAILABLE, or answered with an error.

    `status` is the HTTP status of the endpoint's answer, None when there was no answer at all.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class KubernetesRuntimeError(MlpipeError):
    """A Kubernetes API call failed (other than the not-found / already-exists cases the runtime handles)."""


class KubernetesConflict(KubernetesRuntimeError):
    """A write guarded by a resourceVersion found the object changed since it was read (HTTP 409): read it
    again and decide anew."""


class RetriesExhausted(MlpipeError):
    """The last transient error after `attempts` tries; callers turn it into an error naming their
    resource (StoreUnavailable, KubernetesRuntimeError, ServingError)."""

    def __init__(self, attempts: int, last: BaseException) -> None:
        super().__init__(f"{attempts} attempts, last error: {describe(last)}")
        self.attempts = attempts
        self.last = last


class RoutesConfigError(MlpipeError, ValueError):
    """The ACR routes configuration (Variable `mlpipe_acr_routes`) cannot be used; the message names the
    entry and field."""


class PendingError(MlpipeError):
    """The run of an ACR push event cannot be created now but may be later (DAG not parsed, database busy).

    Deliberately not a ValueError: the webhook's trigger turns ValueErrors (Airflow's Param validation)
    into RejectedError, which would drop an event that only needed a retry.
    """


class RejectedError(MlpipeError):
    """Airflow refused the run of an ACR push event for good (the DAG's Params reject the conf, manual runs
    not allowed)."""


class SchemaNotReadyError(MlpipeError):
    """The provider's tables in the metadata database are missing or behind its migrations; the message
    names the command that brings them up to date."""


class NotificationError(MlpipeError):
    """A notification channel (DingTalk robot, SMTP server) refused or could not take a message; the
    notifier logs it and the pipeline goes on."""
