"""From acknowledged push events to DAG runs: configuration, routing, and the dispatcher.

The webhook only records an event (the inbox, `events.EventLog`) and answers 202; the dispatcher, a task in
every api-server process (the app's lifespan), creates the runs behind it, in batches. One batch is one
database transaction: claim the oldest `received` events (`EventLog.claim`: `FOR UPDATE SKIP LOCKED` on
PostgreSQL), create their runs the way `airflow dags trigger` does (latest serialized DAG, conf validated
against its Params, run inserted `queued`, with the deterministic run id of the pushed image), and record
each event's outcome; then commit. A process killed mid-batch commits nothing and its locks go with its
connection: the next dispatcher claims the same events again. The DagRun table's unique (dag_id, run_id)
is the backstop: an event is never given a second run, only found to have its run already.

Every `retry_interval` the same pass runs over `pending` events: DAG not parsed yet, DAG paused (its events
wait and get their runs once it is unpaused, rather than queuing runs nobody asked to start yet), a busy
database, unusable routes.

Deliveries first. Creating a run costs the api-server several times the CPU of acknowledging a push (the
DAG's Params validated, its task instances written), and the dispatcher shares the process, and Python's
GIL, with the requests: dispatching in the middle of a burst made every acknowledgement wait for it (the
p99 latency nearly doubled). So while this process keeps acknowledging pushes, the dispatcher waits for a
pause in them (`QUIET_SECONDS`), for at most `dispatch_max_delay`; if the pushes go on past that, it
creates runs in slices of `BUSY_SLICE` events and rests `BUSY_REST_FACTOR` times as long as each slice
took, so that run creation keeps going but takes at most a quarter of the process. Training runs for
hours; a run created seconds after its push costs nothing, a slow acknowledgement costs redeliveries.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow_provider_mlpipe.exceptions import RoutesConfigError
from airflow_provider_mlpipe.holds import hold
from airflow_provider_mlpipe.webhooks.acr import (
    DEFAULT_REGISTRY_HOST,
    AcrPushEvent,
    PushData,
    Repository,
    Route,
    image_reference,
    match_route,
    parse_routes,
    run_conf,
)
from airflow_provider_mlpipe.webhooks.events import (
    IGNORED,
    PENDING,
    RECEIVED,
    REJECTED,
    RUN_CREATED,
    EventLog,
    EventRecord,
    utcnow,
)

if TYPE_CHECKING:
    from airflow.models.dagbag import DBDagBag
    from sqlalchemy.engine import Engine
    from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

SECRET_VARIABLE = "mlpipe_acr_webhook_secret"
ROUTES_VARIABLE = "mlpipe_acr_routes"
CONFIG_SECTION = "mlpipe"
TRIGGERING_USER = "acr-webhook"
# The hold point of the crash tests (`holds.py`): runs and outcomes written, transaction not committed.
HOLD_POINT = "DISPATCH_BATCH"
# Deliveries first (module docstring): the pause in this process's deliveries that run creation waits for,
# and how it paces itself when deliveries do not pause.
QUIET_SECONDS = 0.25
BUSY_SLICE = 10
BUSY_REST_FACTOR = 3.0


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
    # How often a dispatcher looks for events another replica acknowledged; its own wake it at once.
    dispatch_interval: float = 1.0
    batch_size: int = 100
    # While this process keeps acknowledging pushes, run creation waits for a pause, at most this long.
    dispatch_max_delay: float = 5.0


def build_settings(
    secret: str | None,
    routes_json: str | None,
    registry_host: str = DEFAULT_REGISTRY_HOST,
    retry_interval: float = 10.0,
    ttl: float = 30.0,
    retention_days: float = 30.0,
    dispatch_interval: float = 1.0,
    batch_size: int = 100,
    dispatch_max_delay: float = 5.0,
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
        dispatch_interval=dispatch_interval,
        batch_size=batch_size,
        dispatch_max_delay=dispatch_max_delay,
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
        dispatch_interval=max(0.05, number("acr_webhook_dispatch_interval", 1.0)),
        batch_size=int(min(1000, max(1, number("acr_webhook_dispatch_batch", 100)))),
        dispatch_max_delay=max(0.0, number("acr_webhook_dispatch_max_delay", 5.0)),
    )


class CachedSettings:
    """`loader()` at most once per `ttl` seconds: a push burst costs one secrets-backend lookup."""

    def __init__(
        self, loader: Callable[[], WebhookSettings], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.loader = loader
        self.clock = clock
        self._lock = threading.Lock()
        # (value, loaded at): one attribute, so `fresh` reads both consistently without the lock.
        self._cached: tuple[WebhookSettings, float] | None = None

    def fresh(self) -> WebhookSettings | None:
        """The cached settings if they are still fresh, else None; never loads (so never blocks): the
        request path calls it on the event loop and goes to a thread only when a load is due."""
        cached = self._cached
        if cached is None or self.clock() - cached[1] >= cached[0].ttl:
            return None
        return cached[0]

    def __call__(self) -> WebhookSettings:
        with self._lock:
            value = self.fresh()
            if value is None:
                value = self.loader()
                self._cached = (value, self.clock())
            return value


# ------------------------------------------------------------------------------------- creating runs
@dataclass(frozen=True)
class RunRequest:
    dag_id: str
    run_id: str
    conf: dict[str, Any]


@dataclass(frozen=True)
class RunResult:
    """`created` or `existing` (the run is there), `pending` (not now: `reason`), `rejected` (never)."""

    outcome: str
    reason: str | None = None


CREATED, EXISTING = "created", "existing"
CreateRunsFn = Callable[["Session", list[RunRequest]], dict[str, RunResult]]
RunStatesFn = Callable[[list[tuple[str, str]]], dict[tuple[str, str], str]]


def airflow_create_runs(session: Session, requests: list[RunRequest]) -> dict[str, RunResult]:
    """Create the runs in `session`'s transaction (not committed here), one DAG lookup per DAG of the batch.

    What `airflow.api.common.trigger_dag.trigger_dag` does per run, done per batch: its cost is mostly the
    DAG model and serialized DAG lookups, so a batch of 100 pushes for one DAG does them once. A database
    error propagates (the caller rolls the batch back); Param validation refuses a run before it writes.
    """
    from airflow._shared.timezones import timezone
    from airflow.models import DagModel, DagRun
    from airflow.utils.state import DagRunState
    from airflow.utils.types import DagRunTriggeredByType, DagRunType
    from sqlalchemy import select

    results: dict[str, RunResult] = {}
    by_dag: dict[str, list[RunRequest]] = {}
    for request in requests:
        by_dag.setdefault(request.dag_id, []).append(request)
    dag_bag = _dag_bag()
    for dag_id, batch in by_dag.items():
        ids = [r.run_id for r in batch]
        existing = set(
            session.scalars(select(DagRun.run_id).where(DagRun.dag_id == dag_id, DagRun.run_id.in_(ids)))
        )
        for run_id in existing:
            results[run_id] = RunResult(EXISTING)
        missing = [r for r in batch if r.run_id not in existing]
        if not missing:
            continue
        dag_model = session.scalar(select(DagModel).where(DagModel.dag_id == dag_id))
        not_now = None
        if dag_model is None or dag_model.is_stale:
            not_now = f"DAG {dag_id!r} is not parsed yet (or its file is gone)"
        elif dag_model.has_import_errors:
            not_now = f"DAG {dag_id!r} has import errors"
        elif dag_model.is_paused:
            not_now = f"DAG {dag_id!r} is paused: the run is created when it is unpaused"
        elif dag_model.allowed_run_types is not None and DagRunType.MANUAL not in dag_model.allowed_run_types:
            for r in missing:
                results[r.run_id] = RunResult(REJECTED, f"DAG {dag_id!r} does not allow manual runs")
            continue
        dag = None if not_now else dag_bag.get_latest_version_of_dag(dag_id, session=session)
        if dag is None:
            for r in missing:
                results[r.run_id] = RunResult(PENDING, not_now or f"DAG {dag_id!r} is not parsed yet")
            continue
        partition_date = dag.timetable.resolve_partition_date(None)
        for r in missing:
            try:
                dag.create_dagrun(
                    run_id=r.run_id,
                    logical_date=None,
                    data_interval=None,
                    run_after=timezone.coerce_datetime(timezone.utcnow()),
                    conf=r.conf,
                    run_type=DagRunType.MANUAL,
                    triggered_by=DagRunTriggeredByType.REST_API,
                    triggering_user_name=TRIGGERING_USER,
                    state=DagRunState.QUEUED,
                    partition_key=None,
                    partition_date=partition_date,
                    session=session,
                )
            except ValueError as err:  # ParamValidationError is one: refused before anything is written
                results[r.run_id] = RunResult(REJECTED, str(err))
                continue
            results[r.run_id] = RunResult(CREATED)
    return results


@functools.cache
def _dag_bag() -> DBDagBag:
    """One DAG bag per process, Airflow's api-server kind (LRU + TTL, thread-safe): a DAG is deserialized
    once per version, not once per batch (batches are small while deliveries keep coming)."""
    from airflow.api_fastapi.common.dagbag import create_dag_bag

    return create_dag_bag()


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


# ---------------------------------------------------------------------------------------- dispatching
@dataclass
class Dispatcher:
    """Creates the runs of acknowledged events, in batches; `run_forever` is the app's lifespan task."""

    event_log: Callable[[], EventLog]
    settings: Callable[[], WebhookSettings]
    create_runs: CreateRunsFn = airflow_create_runs
    run_states: RunStatesFn = airflow_run_states
    # Injected by tests; the dispatcher reads the time and rests through these.
    clock: Callable[[], float] = time.monotonic
    rest: Callable[[float], None] = time.sleep
    _wake: asyncio.Event | None = field(default=None, repr=False)
    # When this process last acknowledged a push (`clock`); read by the dispatcher's thread.
    _last_delivery: float = field(default=float("-inf"), repr=False)
    _stopping: threading.Event = field(default_factory=threading.Event, repr=False)
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)
    # One batch at a time in this process: a second would only wait on the first one's locks.
    _batch_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _slots: threading.BoundedSemaphore | None = field(default=None, repr=False)
    _slots_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _db_slots(self, events: EventLog) -> threading.BoundedSemaphore:
        """How many deliveries may use the database at once: one less than the pool keeps (Airflow's
        `sql_alchemy_pool_size`), leaving one for the dispatcher. More would not go faster: each beyond the
        pool opens a new database connection (a server process on PostgreSQL) and closes it again after one
        INSERT, which under a burst cost more than the inserts themselves. The rest wait here, a few ms."""
        with self._slots_lock:
            if self._slots is None:
                size = getattr(events.engine.pool, "size", lambda: 5)()
                self._slots = threading.BoundedSemaphore(max(1, int(size) - 1))
            return self._slots

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Session]:
        from sqlalchemy.orm import Session

        # Airflow's own session settings; the engine is the metadata database the event log is in.
        with (
            Session(self.event_log().engine, expire_on_commit=False, autoflush=False) as session,
            session.begin(),
        ):
            yield session

    # --------------------------------------------------------------------------------- routing
    def route(self, repo_full_name: str, tag: str) -> tuple[Route | None, str | None]:
        """(route, None), (None, "ignored: ...") or (None, "routes configuration invalid: ...")."""
        settings = self.settings()
        if settings.routes is None:
            return None, f"routes configuration invalid: {settings.routes_error}"
        route = match_route(settings.routes, repo_full_name, tag)
        if route is None:
            return None, f"ignored: no route matches {repo_full_name}:{tag}"
        return route, None

    # ------------------------------------------------------------------------------ the request path
    def accept(self, event: AcrPushEvent, event_id: str) -> tuple[EventRecord, bool]:
        """Record a delivery durably (one INSERT for a new push); returns (event, new?).

        A push no route matches is recorded `ignored` right away. A redelivery writes nothing (a read answers
        it), except that it hands a finished event back to the dispatcher when that is what a redelivery is for:
        an ignored digest now pushed with a routed tag, a rejected one (the route may be fixed), a run that
        was deleted (someone wants the image run again).
        """
        events = self.event_log()
        with self._db_slots(events):
            return self._accept(events, event, event_id)

    def _accept(self, events: EventLog, event: AcrPushEvent, event_id: str) -> tuple[EventRecord, bool]:
        route, problem = self.route(event.repo_full_name, event.tag)
        ignored = route is None and problem is not None and problem.startswith("ignored")
        image = (
            image_reference(
                event.repository.region, event.repo_full_name, event.digest, self.settings().registry_host
            )
            if route is not None
            else None
        )
        record = events.record(
            event,
            event_id,
            state=IGNORED if ignored else RECEIVED,
            reason=problem if ignored else None,
            dag_id=route.dag_id if route is not None else None,
            image=image,
        )
        if record is not None:
            if ignored:
                log.info("ACR push %s@%s %s", event.repo_full_name, event.digest, problem)
            return record, True
        record = events.redelivered(event_id)
        again = (
            (record.state == IGNORED and route is not None)
            or record.state == REJECTED
            or (record.state == RUN_CREATED and not self._run_exists(record))
        )
        if again:
            record = events.rearm(event, event_id, record.state) or record
        return record, False

    def _run_exists(self, record: EventRecord) -> bool:
        """False only when the run was deleted; if its state cannot be read, assume it is there."""
        if not record.dag_id or not record.run_id:
            return False
        try:
            return (record.dag_id, record.run_id) in self.run_states([(record.dag_id, record.run_id)])
        except Exception:
            log.warning(
                "ACR event %s: cannot check its run; answering with it", record.event_id, exc_info=True
            )
            return True

    # ------------------------------------------------------------------------------- one batch
    def dispatch(
        self,
        states: tuple[str, ...] = (RECEIVED,),
        event_ids: list[str] | None = None,
        limit: int | None = None,
    ) -> int:
        """Claim up to `limit` (default `batch_size`) events in `states`, create their runs, record the
        outcomes, commit.

        Returns how many events it claimed (0: nothing to do). A failure rolls the whole batch back; the
        events are still there for the next pass.
        """
        settings = self.settings()
        with self._batch_lock, self._transaction() as session:
            events = self.event_log()
            records = events.claim(session, states, limit or settings.batch_size, event_ids)
            if not records:
                return 0
            changes: dict[str, dict[str, Any]] = {}
            requests: list[RunRequest] = []
            for record in records:
                route, problem = self.route(record.repo_full_name, record.tag)
                if route is None:
                    assert problem is not None
                    ignored = problem.startswith("ignored")
                    changes[record.event_id] = _change(
                        record, IGNORED if ignored else PENDING, reason=problem, dag_id=None
                    )
                    continue
                conf = run_conf(_event_of(record), route, settings.registry_host)
                changes[record.event_id] = _change(record, PENDING, dag_id=route.dag_id, conf=conf)
                requests.append(RunRequest(route.dag_id, record.event_id, conf))
            results = self.create_runs(session, requests) if requests else {}
            now = utcnow()
            for request in requests:
                result = results.get(request.run_id, RunResult(PENDING, "no outcome for this run"))
                change = changes[request.run_id]
                if result.outcome in (CREATED, EXISTING):
                    change.update(
                        b_state=RUN_CREATED, b_run_id=request.run_id, b_run_created_at=now, b_reason=None
                    )
                elif result.outcome == REJECTED:
                    change.update(
                        b_state=REJECTED, b_reason=f"rejected by DAG {request.dag_id}: {result.reason}"
                    )
                else:
                    change.update(b_state=PENDING, b_reason=result.reason)
            events.settle(session, list(changes.values()))
            hold(HOLD_POINT, log)
        outcomes: dict[str, int] = {}
        for record in records:
            change = changes[record.event_id]
            outcomes[change["b_state"]] = outcomes.get(change["b_state"], 0) + 1
            if change["b_state"] == RUN_CREATED:
                # Per event at DEBUG: at hundreds of pushes a second, a line each costs the api-server CPU.
                log.debug(
                    "ACR push %s@%s -> %s run %s (%s)",
                    record.repo_full_name,
                    record.digest,
                    change["b_dag_id"],
                    record.event_id,
                    results[record.event_id].outcome,
                )
            elif change["b_state"] != record.state or change["b_reason"] != record.reason:
                log.warning("ACR event %s %s: %s", record.event_id, change["b_state"], change["b_reason"])
        log.info("ACR dispatcher: batch of %d events: %s", len(records), outcomes)
        return len(records)

    def drain(self, states: tuple[str, ...] = (RECEIVED,), *, paced: bool = False) -> int:
        """Batches until fewer than a full one is left; a failing batch is retried event by event so that
        one bad event cannot hold back the others. Returns how many events were claimed.

        `paced` (the lifespan task): while this process is acknowledging pushes, small batches with a rest
        after each (module docstring); it also stops between batches once the app is shutting down (the
        events stay for the next dispatcher).
        """
        total = 0
        batch_size = self.settings().batch_size
        while not (paced and self._stopping.is_set()):
            busy = paced and self.quiet_left() > 0
            limit = min(BUSY_SLICE, batch_size) if busy else batch_size
            started = self.clock()
            try:
                claimed = self.dispatch(states, limit=limit)
            except Exception:
                log.exception("ACR dispatcher: batch failed and was rolled back; retrying event by event")
                return total + self._one_by_one(states)
            total += claimed
            if claimed < limit:
                break
            if busy:
                self.rest(BUSY_REST_FACTOR * (self.clock() - started))
        return total

    def _one_by_one(self, states: tuple[str, ...]) -> int:
        events = self.event_log()
        candidates = events.ids_in(states, self.settings().batch_size)
        done = 0
        for event_id in candidates:
            try:
                done += self.dispatch(states, event_ids=[event_id])
            except Exception as err:
                # The exception's type only: a database error's text may carry SQL and the event's conf.
                log.warning("ACR event %s: creating its run failed (%s); left pending", event_id, err)
                try:
                    current = events.get(event_id)
                    if current is not None and current.state in states:
                        events.update(
                            event_id,
                            state=PENDING,
                            attempts=current.attempts + 1,
                            reason=f"creating the run failed ({type(err).__name__}); retried",
                        )
                except Exception:
                    log.warning("ACR event %s: cannot mark it pending either; retried as it is", event_id)
        return done

    def retry_due(self, *, paced: bool = False) -> int:
        """One retry pass over pending events, then pruning; returns how many got out of pending."""
        events = self.event_log()
        before = events.count(PENDING)
        self.drain((PENDING,), paced=paced)
        retention = self.settings().retention_days
        if retention > 0:
            events.prune(timedelta(days=retention))
        return max(0, before - events.count(PENDING))

    # ----------------------------------------------------------------------------- the lifespan task
    def note_delivery(self) -> None:
        """Called by the request path for every delivery it answers (new, redelivered or ignored)."""
        self._last_delivery = self.clock()

    def wake(self) -> None:
        """Called by the request path after it recorded an event: dispatch soon rather than at the next
        poll (once deliveries pause: `quiet_left`)."""
        if self._wake is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def quiet_left(self) -> float:
        """Seconds until this process has gone `QUIET_SECONDS` without acknowledging a push (0: quiet)."""
        return max(0.0, QUIET_SECONDS - (self.clock() - self._last_delivery))

    def stop(self) -> None:
        """End `run_forever`'s current pass between two batches (the app is shutting down)."""
        self._stopping.set()
        if self._wake is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def _deliveries_first(self, max_delay: float) -> None:
        """Wait while this process keeps acknowledging pushes: until they pause, at most `max_delay`."""
        deadline = self.clock() + max_delay
        while not self._stopping.is_set():
            wait = min(self.quiet_left(), deadline - self.clock())
            if wait <= 0:
                return
            await asyncio.sleep(wait)

    async def run_forever(self) -> None:
        from starlette.concurrency import run_in_threadpool

        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._stopping.clear()
        last_retry = 0.0
        while not self._stopping.is_set():
            try:
                settings = await run_in_threadpool(self.settings)
                interval, retry_interval = settings.dispatch_interval, settings.retry_interval
                max_delay = settings.dispatch_max_delay
            except Exception:
                log.exception("ACR dispatcher: cannot read configuration")
                interval, retry_interval, max_delay = 10.0, 10.0, 0.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=interval)
            self._wake.clear()
            await self._deliveries_first(max_delay)
            try:
                await run_in_threadpool(functools.partial(self.drain, paced=True))
                if time.monotonic() - last_retry >= retry_interval:
                    last_retry = time.monotonic()
                    await run_in_threadpool(functools.partial(self.retry_due, paced=True))
            except Exception:
                # A database outage must not end the loop: the events are still there for the next pass.
                log.exception("ACR dispatcher: pass failed; trying again in %.1f s", interval)


def _change(
    record: EventRecord,
    state: str,
    *,
    reason: str | None = None,
    dag_id: str | None,
    conf: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "b_event_id": record.event_id,
        "b_state": state,
        "b_dag_id": dag_id,
        "b_run_id": None,
        "b_image": conf["image"] if conf else None,
        "b_conf": conf,
        "b_reason": reason,
        "b_attempts": record.attempts + 1,
        "b_run_created_at": None,
    }


def _event_of(record: EventRecord) -> AcrPushEvent:
    """The push as stored (validated when it was received), for building the conf."""
    return AcrPushEvent(
        push_data=PushData.model_construct(digest=record.digest, pushed_at=record.pushed_at, tag=record.tag),
        repository=Repository.model_construct(repo_full_name=record.repo_full_name, region=record.region),
    )
