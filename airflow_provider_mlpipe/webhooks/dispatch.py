"""From a recorded push event to a DAG run: configuration, routing, run creation, retries.

Runs are created in-process, through the same function Airflow's own `airflow dags trigger` uses
(`airflow.api.common.trigger_dag.trigger_dag`: find the latest serialized DAG, validate the conf against
its Params, insert the run as `queued`), with the deterministic run id of the pushed image. The DagRun
table's unique (dag_id, run_id) constraint is what makes "one run per image" hold across threads and
api-server replicas; the losers of a race read the winner's run.

A run for a paused DAG is created (queued) like Airflow does for any manual trigger: the scheduler starts
it when the DAG is unpaused, so the event is neither lost nor held somewhere else, and the answer says the
DAG is paused. A DAG that is not parsed yet, a busy or unreachable database, or unusable routes leave the
event `pending`; the app's retry loop tries again.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow_provider_mlpipe.exceptions import PendingError, RejectedError, RoutesConfigError
from airflow_provider_mlpipe.webhooks.acr import (
    DEFAULT_REGISTRY_HOST,
    AcrPushEvent,
    PushData,
    Repository,
    Route,
    match_route,
    parse_routes,
    run_conf,
)
from airflow_provider_mlpipe.webhooks.events import (
    IGNORED,
    PENDING,
    QUEUED,
    RECEIVED,
    REJECTED,
    EventLog,
    EventRecord,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

SECRET_VARIABLE = "mlpipe_acr_webhook_secret"
ROUTES_VARIABLE = "mlpipe_acr_routes"
CONFIG_SECTION = "mlpipe"
TRIGGERING_USER = "acr-webhook"


# ------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class WebhookSettings:
    """What the webhook needs from configuration, read at request time (cached for `ttl` seconds)."""

    secret: str | None
    routes: tuple[Route, ...] | None
    routes_error: str | None = None
    registry_host: str = DEFAULT_REGISTRY_HOST
    retry_interval: float = 10.0
    ttl: float = 30.0
    retention_days: float = 30.0


def build_settings(
    secret: str | None,
    routes_json: str | None,
    registry_host: str = DEFAULT_REGISTRY_HOST,
    retry_interval: float = 10.0,
    ttl: float = 30.0,
    retention_days: float = 30.0,
) -> WebhookSettings:
    try:
        routes: tuple[Route, ...] | None = parse_routes(routes_json)
        error = None
    except RoutesConfigError as err:
        routes, error = None, str(err)
        # Once per load (the settings are cached): the events endpoint shows it too, as `routes_error`.
        log.error("ACR webhook: Variable %s is unusable, pushes stay pending: %s", ROUTES_VARIABLE, error)
    return WebhookSettings(
        secret=secret.strip() if secret and secret.strip() else None,
        routes=routes,
        routes_error=error,
        registry_host=registry_host or DEFAULT_REGISTRY_HOST,
        retry_interval=retry_interval,
        ttl=ttl,
        retention_days=retention_days,
    )


def airflow_settings() -> WebhookSettings:
    """Secret and routes from Airflow Variables (so any secrets backend, `AIRFLOW_VAR_*` or the
    metastore), the rest from `[mlpipe]` in airflow.cfg / `AIRFLOW__MLPIPE__*`."""
    from airflow.configuration import conf
    from airflow.models.variable import Variable

    def number(key: str, fallback: float) -> float:
        try:
            return float(conf.get(CONFIG_SECTION, key, fallback=str(fallback)))
        except ValueError:
            log.error("[%s] %s is not a number; using %s", CONFIG_SECTION, key, fallback)
            return fallback

    return build_settings(
        secret=Variable.get(SECRET_VARIABLE, default_var=None),
        routes_json=Variable.get(ROUTES_VARIABLE, default_var=None),
        registry_host=conf.get(CONFIG_SECTION, "acr_registry_host", fallback=DEFAULT_REGISTRY_HOST),
        retry_interval=max(0.5, number("acr_webhook_retry_interval", 10.0)),
        ttl=max(0.0, number("acr_webhook_config_ttl", 30.0)),
        retention_days=number("acr_webhook_event_retention_days", 30.0),
    )


class CachedSettings:
    """`loader()` at most once per `ttl` seconds: a push burst costs one secrets-backend lookup."""

    def __init__(self, loader: Callable[[], WebhookSettings]) -> None:
        self.loader = loader
        self._lock = threading.Lock()
        self._value: WebhookSettings | None = None
        self._loaded_at = 0.0

    def __call__(self) -> WebhookSettings:
        with self._lock:
            now = time.monotonic()
            if self._value is None or now - self._loaded_at >= self._value.ttl:
                self._value = self.loader()
                self._loaded_at = now
            return self._value


# ------------------------------------------------------------------------------------------ triggering
@dataclass(frozen=True)
class TriggerOutcome:
    run_id: str
    created: bool
    dag_paused: bool = False


TriggerFn = Callable[[str, str, dict[str, Any]], TriggerOutcome]
RunStatesFn = Callable[[list[tuple[str, str]]], dict[tuple[str, str], str]]


def airflow_trigger(dag_id: str, run_id: str, conf: dict[str, Any]) -> TriggerOutcome:
    """Create the run the way `airflow dags trigger` does; the existing run if it is already there."""
    from airflow.api.common.trigger_dag import trigger_dag
    from airflow.exceptions import DagNotFound, DagRunAlreadyExists
    from airflow.models import DagModel, DagRun
    from airflow.utils.session import create_session
    from airflow.utils.types import DagRunTriggeredByType
    from sqlalchemy import select
    from sqlalchemy.exc import IntegrityError, SQLAlchemyError

    def existing() -> TriggerOutcome | None:
        with create_session() as session:
            found = session.scalar(
                select(DagRun.run_id).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)
            )
        return TriggerOutcome(run_id, created=False, dag_paused=paused) if found else None

    try:
        # One session for both checks: each checkout costs a pool ping, and this is the hot path.
        with create_session() as session:
            dag_model = session.scalar(select(DagModel).where(DagModel.dag_id == dag_id))
            if dag_model is None or dag_model.is_stale:
                raise PendingError(f"DAG {dag_id!r} is not parsed yet (or its file is gone)")
            if dag_model.has_import_errors:
                raise PendingError(f"DAG {dag_id!r} has import errors")
            paused = bool(dag_model.is_paused)
            exists = session.scalar(
                select(DagRun.run_id).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)
            )
        if exists:
            return TriggerOutcome(run_id, created=False, dag_paused=paused)
        trigger_dag(
            dag_id,
            run_id=run_id,
            conf=conf,
            triggered_by=DagRunTriggeredByType.REST_API,
            triggering_user_name=TRIGGERING_USER,
        )
        return TriggerOutcome(run_id, created=True, dag_paused=paused)
    except DagRunAlreadyExists:
        return TriggerOutcome(run_id, created=False, dag_paused=paused)
    except DagNotFound as err:
        raise PendingError(f"DAG {dag_id!r} is not parsed yet: {err}") from None
    except IntegrityError:
        # Another replica inserted the same run id between our check and our insert.
        if (winner := existing()) is not None:
            return winner
        raise PendingError(f"could not create run {run_id} of {dag_id}: conflicting insert") from None
    except SQLAlchemyError as err:
        raise PendingError(f"database error creating run {run_id} of {dag_id}: {type(err).__name__}") from err
    except ValueError as err:  # ParamValidationError is one; so are "manual runs not allowed" & co.
        raise RejectedError(str(err)) from None


def airflow_run_states(keys: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """State of each (dag_id, run_id) that exists."""
    from airflow.models import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select, tuple_

    if not keys:
        return {}
    with create_session() as session:
        rows = session.execute(
            select(DagRun.dag_id, DagRun.run_id, DagRun.state).where(
                tuple_(DagRun.dag_id, DagRun.run_id).in_(keys)
            )
        ).all()
    return {(dag_id, run_id): str(state) for dag_id, run_id, state in rows}


def airflow_engine() -> Engine:
    from airflow import settings

    if settings.engine is None:  # pragma: no cover - the api-server configures the ORM at start
        settings.configure_orm()
    assert settings.engine is not None
    return settings.engine


# ----------------------------------------------------------------------------------------- processing
@dataclass
class Dispatcher:
    """Route a recorded event and create its run; shared by the request path and the retry loop."""

    event_log: Callable[[], EventLog]
    settings: Callable[[], WebhookSettings]
    trigger: TriggerFn = airflow_trigger
    run_states: RunStatesFn = airflow_run_states
    # Serializes this process's work on one event: a burst of identical deliveries becomes one insert and
    # N reads instead of N racing inserts. Different events go ahead in parallel, except on SQLite, whose
    # single database lock would only turn parallel writers into "database is locked" errors.
    lock: threading.Lock = field(default_factory=threading.Lock)
    stale_after: timedelta = timedelta(seconds=60)
    _event_locks: weakref.WeakValueDictionary[str, threading.Lock] = field(
        default_factory=weakref.WeakValueDictionary, repr=False
    )

    def _lock_for(self, event_id: str) -> threading.Lock:
        if self.event_log().engine.dialect.name == "sqlite":
            return self.lock
        with self.lock:
            found = self._event_locks.get(event_id)
            if found is None:
                # Held strongly by the caller while in use; dropped from the map once nobody holds it.
                found = self._event_locks[event_id] = threading.Lock()
            return found

    def process(self, record: EventRecord) -> tuple[EventRecord, TriggerOutcome | None]:
        """Bring one recorded event as far as it can go now; never raises for a routing/run problem."""
        events = self.event_log()
        settings = self.settings()
        if settings.routes is None:
            log.error("ACR event %s stays pending: %s", record.event_id, settings.routes_error)
            return self._pending(
                events, record, f"routes configuration invalid: {settings.routes_error}"
            ), None
        route = match_route(settings.routes, record.repo_full_name, record.tag)
        if route is None:
            reason = f"ignored: no route matches {record.repo_full_name}:{record.tag}"
            log.info("ACR push %s@%s %s", record.repo_full_name, record.digest, reason)
            return events.update(record.event_id, state=IGNORED, reason=reason, dag_id=None), None
        conf = run_conf(_event_of(record), route, settings.registry_host)
        try:
            outcome = self.trigger(route.dag_id, record.event_id, conf)
        except PendingError as err:
            log.warning("ACR event %s pending (%s run): %s", record.event_id, route.dag_id, err)
            return self._pending(events, record, str(err), dag_id=route.dag_id, conf=conf), None
        except RejectedError as err:
            log.error("ACR event %s rejected by DAG %s: %s", record.event_id, route.dag_id, err)
            updated = events.update(
                record.event_id,
                state=REJECTED,
                reason=f"rejected by DAG {route.dag_id}: {err}",
                dag_id=route.dag_id,
                conf=conf,
                image=conf["image"],
                attempts=record.attempts + 1,
            )
            return updated, None
        except Exception as err:
            # Whatever went wrong, the event is recorded; keeping it pending is what keeps it from being lost.
            log.exception(
                "ACR event %s: creating the run of %s failed; will retry", record.event_id, route.dag_id
            )
            return self._pending(
                events, record, f"{type(err).__name__}: {err}", dag_id=route.dag_id, conf=conf
            ), None
        note = "DAG is paused: the run starts when it is unpaused" if outcome.dag_paused else None
        updated = events.update(
            record.event_id,
            state=QUEUED,
            dag_id=route.dag_id,
            run_id=outcome.run_id,
            conf=conf,
            image=conf["image"],
            reason=note,
            attempts=record.attempts + 1,
        )
        log.info(
            "ACR push %s:%s (%s) -> %s run %s%s",
            record.repo_full_name,
            record.tag,
            record.digest,
            route.dag_id,
            outcome.run_id,
            " (created)" if outcome.created else " (existing)",
        )
        return updated, outcome

    def accept(self, event: AcrPushEvent, event_id: str) -> tuple[EventRecord, bool, TriggerOutcome | None]:
        """Record the delivery durably, then process it. Returns (event, new delivery?, outcome)."""
        with self._lock_for(event_id):
            record, created = self.event_log().record(event, event_id)
            if record.state == QUEUED and self._run_exists(record):
                return record, created, None
            try:
                updated, outcome = self.process(record)
            except Exception as err:
                return self._left_for_retry(record, err), created, None
            return updated, created, outcome

    def _left_for_retry(self, record: EventRecord, err: Exception) -> EventRecord:
        """The event is recorded but processing it failed (e.g. the database dropped mid-request): make
        sure the retry loop gets it, and return the `pending` event the answer reports."""
        # The exception's type only: a database error's text may carry SQL and the event's conf.
        reason = f"recorded, but processing failed ({type(err).__name__}); the run is created by a retry"
        log.error(
            "ACR event %s recorded; processing failed (%s), left for the retry loop",
            record.event_id,
            err,
            exc_info=err,
        )
        try:
            return self._pending(self.event_log(), record, reason)
        except Exception as mark_err:
            if record.state not in (RECEIVED, PENDING):
                # A redelivery of a queued, ignored or rejected event: the retry loop never looks at those,
                # so "pending" would promise a retry nobody makes. Failing makes the app answer 503 and the
                # sender deliver again.
                log.error(
                    "ACR event %s: cannot mark it pending (%s); it stays %s, answering 503",
                    record.event_id,
                    mark_err,
                    record.state,
                )
                raise
            # The database is still down, so the event keeps the state it was recorded with. `pending` is
            # retried on the next pass; `received` only once it is older than `stale_after` (a request
            # that is still processing it must not race the retry loop), so that is the fallback here.
            log.warning(
                "ACR event %s: cannot mark it pending (%s); it stays %s, retried once older than %s",
                record.event_id,
                mark_err,
                record.state,
                self.stale_after,
            )
            return replace(record, state=PENDING, reason=reason)

    def retry_due(self) -> int:
        """One pass of the retry loop; returns how many events it moved out of pending."""
        events = self.event_log()
        done = 0
        for record in events.due(self.stale_after):
            # One event's failure (its row, its update, the database blinking) must not hold back the
            # rest of the pass or the pruning: that event is still due and the next pass tries it again.
            try:
                with self._lock_for(record.event_id):
                    current = events.get(record.event_id)
                    if current is None or current.state not in (PENDING, record.state):
                        continue
                    updated, _ = self.process(current)
            except Exception as err:
                log.warning(
                    "ACR event %s: retry failed (%s: %s); trying again on the next pass",
                    record.event_id,
                    type(err).__name__,
                    err,
                    exc_info=True,
                )
                continue
            if updated.state != PENDING:
                done += 1
                log.info("ACR event %s retried: now %s", updated.event_id, updated.state)
        retention = self.settings().retention_days
        if retention > 0:
            events.prune(timedelta(days=retention))
        return done

    def _run_exists(self, record: EventRecord) -> bool:
        """False only when the run was deleted (someone wants the image run again): then re-create it."""
        if not record.dag_id or not record.run_id:
            return False
        try:
            return (record.dag_id, record.run_id) in self.run_states([(record.dag_id, record.run_id)])
        except Exception:
            log.warning(
                "ACR event %s: cannot check its run; answering with it", record.event_id, exc_info=True
            )
            return True

    def _pending(
        self,
        events: EventLog,
        record: EventRecord,
        reason: str,
        dag_id: str | None = None,
        conf: dict[str, Any] | None = None,
    ) -> EventRecord:
        values: dict[str, Any] = {"state": PENDING, "reason": reason, "attempts": record.attempts + 1}
        if dag_id is not None:
            values["dag_id"] = dag_id
        if conf is not None:
            values["conf"] = conf
            values["image"] = conf["image"]
        return events.update(record.event_id, **values)


def _event_of(record: EventRecord) -> AcrPushEvent:
    """The push as stored (validated when it was received), for building the conf again on retry."""
    return AcrPushEvent(
        push_data=PushData.model_construct(digest=record.digest, pushed_at=record.pushed_at, tag=record.tag),
        repository=Repository.model_construct(repo_full_name=record.repo_full_name, region=record.region),
    )
