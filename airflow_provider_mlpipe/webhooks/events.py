"""The durable log of ACR push events, a table in Airflow's metadata database.

Why the metadata database and not a file under `$AIRFLOW_HOME`: a production api-server runs as several
replicas behind a load balancer, and ACR's delivery (or its redelivery) may reach any of them. They share
nothing but the metadata database, so that is where the log must live for every replica to see every
event, deduplicate across replicas (the primary key is the deterministic run id) and retry events another
replica accepted. It is the same transactional store the DAG run ends up in, backed up with it, and on
PostgreSQL/MySQL as highly available as Airflow itself. A local file would lose events when a pod is
replaced and would let two replicas each create "the" run.

The table (`mlpipe_acr_webhook_event`) belongs to this provider, not to Airflow's schema: it has its own
SQLAlchemy `MetaData`, so Airflow's migrations and `airflow db reset` never touch it. It is created and
altered by the provider's versioned migrations (`airflow_provider_mlpipe.migrations`), never at request
time: the log checks the schema version once and refuses to work (the app answers 503) while it is behind.

The table is the webhook's inbox: an event is committed (durable by the database's own guarantees) before
the webhook answers 202, and the runs are created behind it by the dispatcher (`dispatch.Dispatcher`), in
batches. States:

- `received`: acknowledged; the dispatcher creates its run next;
- `pending`: the run could not be created yet (DAG not parsed or paused, database busy, routes
  misconfigured; `reason` says which); retried by every replica's retry pass until it succeeds;
- `run_created`: the run exists (`run_id`, `run_created_at`); terminal;
- `ignored`: no route matched; terminal, but a redelivery (e.g. the same digest pushed with a matching
  tag) is routed again;
- `rejected`: the DAG refused the conf (its Params); not retried by itself, a redelivery retries it.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from airflow_provider_mlpipe.migrations import EVENT_TABLE
from airflow_provider_mlpipe.migrations import check as check_schema

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine, RowMapping
    from sqlalchemy.orm import Session
    from sqlalchemy.sql.dml import Insert

    from airflow_provider_mlpipe.webhooks.acr import AcrPushEvent

log = logging.getLogger(__name__)

RECEIVED = "received"
PENDING = "pending"
RUN_CREATED = "run_created"
IGNORED = "ignored"
REJECTED = "rejected"
STATES = (RECEIVED, PENDING, RUN_CREATED, IGNORED, REJECTED)
TERMINAL = (RUN_CREATED, IGNORED, REJECTED)

TABLE_NAME = EVENT_TABLE

# The current shape of the table, for queries; `migrations` creates and alters it.
metadata = MetaData()
events_table = Table(
    TABLE_NAME,
    metadata,
    # The deterministic run id (acr__<hash of repository@digest>): one row, one run, per pushed image.
    Column("event_id", String(64), primary_key=True),
    Column("repo_full_name", String(255), nullable=False),
    Column("digest", String(71), nullable=False),
    Column("tag", String(128), nullable=False),
    Column("region", String(64), nullable=False),
    Column("pushed_at", String(32), nullable=False),
    Column("state", String(16), nullable=False),
    Column("dag_id", String(250)),
    Column("run_id", String(250)),
    Column("image", String(512)),
    Column("conf", Text),
    Column("reason", Text),
    Column("deliveries", Integer, nullable=False),
    Column("attempts", Integer, nullable=False),
    # When the event was committed, i.e. acknowledged (the answer follows the commit).
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("run_created_at", DateTime(timezone=True)),
    Index(f"idx_{TABLE_NAME}_state", "state", "updated_at"),
    Index(f"idx_{TABLE_NAME}_updated", "updated_at"),
    Index(f"idx_{TABLE_NAME}_claim", "state", "received_at"),
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything written here is UTC.
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class EventRecord:
    event_id: str
    repo_full_name: str
    digest: str
    tag: str
    region: str
    pushed_at: str
    state: str
    dag_id: str | None
    run_id: str | None
    image: str | None
    conf: dict[str, Any] | None
    reason: str | None
    deliveries: int
    attempts: int
    received_at: datetime
    updated_at: datetime
    run_created_at: datetime | None = None

    @classmethod
    def from_row(cls, row: RowMapping) -> EventRecord:
        received_at, updated_at = _aware(row["received_at"]), _aware(row["updated_at"])
        assert received_at is not None and updated_at is not None
        return cls(
            event_id=row["event_id"],
            repo_full_name=row["repo_full_name"],
            digest=row["digest"],
            tag=row["tag"],
            region=row["region"],
            pushed_at=row["pushed_at"],
            state=row["state"],
            dag_id=row["dag_id"],
            run_id=row["run_id"],
            image=row["image"],
            conf=json.loads(row["conf"]) if row["conf"] else None,
            reason=row["reason"],
            deliveries=row["deliveries"],
            attempts=row["attempts"],
            received_at=received_at,
            updated_at=updated_at,
            run_created_at=_aware(row["run_created_at"]),
        )

    @property
    def ack_to_run_created_ms(self) -> float | None:
        if self.run_created_at is None:
            return None
        return round((self.run_created_at - self.received_at).total_seconds() * 1000, 1)

    def to_api(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "repository": self.repo_full_name,
            "digest": self.digest,
            "tag": self.tag,
            "region": self.region,
            "pushed_at": self.pushed_at,
            "state": self.state,
            "dag_id": self.dag_id,
            # Known from the start (deterministic); the run exists once the state is run_created.
            "run_id": self.run_id or (self.event_id if self.state in (RECEIVED, PENDING) else None),
            "image": self.image,
            "reason": self.reason,
            "attempts": self.attempts,
            "received_at": self.received_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "run_created_at": self.run_created_at.isoformat() if self.run_created_at else None,
            "ack_to_run_created_ms": self.ack_to_run_created_ms,
        }


class EventLog:
    """Insert, update, claim and query events; one instance per engine, safe to share between threads."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._schema_ready = False
        self._schema_lock = threading.Lock()
        self._insert: Insert | None = None

    def ensure_schema(self) -> None:
        """Raise SchemaNotReadyError (naming the migration command) unless the migrations are applied;
        checked once per instance, then free."""
        if self._schema_ready:
            return
        with self._schema_lock:
            if not self._schema_ready:
                check_schema(self.engine)
                self._schema_ready = True

    # ------------------------------------------------------------------------------- the request path
    def _insert_statement(self) -> Insert | None:
        """INSERT ... ON CONFLICT DO NOTHING on PostgreSQL and SQLite (None elsewhere), built once: the
        values go in as parameters, so every delivery reuses one compiled statement instead of building
        and caching a new one (which cost more CPU than the round trip)."""
        if self._insert is None:
            dialect = self.engine.dialect.name
            if dialect not in ("postgresql", "sqlite"):
                return None
            from sqlalchemy.dialects import postgresql, sqlite

            # ON CONFLICT DO NOTHING: a redelivery costs no failed statement (nor an error line in the
            # server's log) and the first delivery exactly one round trip.
            dialect_insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
            self._insert = dialect_insert(events_table).on_conflict_do_nothing(
                index_elements=[events_table.c.event_id]
            )
        return self._insert

    def record(
        self,
        event: AcrPushEvent,
        event_id: str,
        *,
        state: str = RECEIVED,
        reason: str | None = None,
        dag_id: str | None = None,
        image: str | None = None,
    ) -> EventRecord | None:
        """Commit a first delivery (one INSERT); None if the event is already known (nothing written)."""
        self.ensure_schema()
        now = utcnow()
        values: dict[str, Any] = {
            "event_id": event_id,
            "repo_full_name": event.repo_full_name,
            "digest": event.digest,
            "tag": event.tag,
            "region": event.repository.region,
            "pushed_at": event.push_data.pushed_at,
            "state": state,
            "dag_id": dag_id,
            "run_id": None,
            "image": image,
            "conf": None,
            "reason": reason,
            "deliveries": 1,
            "attempts": 0,
            "received_at": now,
            "updated_at": now,
            "run_created_at": None,
        }
        stmt = self._insert_statement()
        if stmt is not None:
            # Autocommit: the INSERT commits itself (as durably: the same WAL flush), one round trip fewer
            # than BEGIN ... COMMIT on the path every delivery takes.
            with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                inserted = conn.execute(stmt, values).rowcount == 1
        else:
            try:
                with self.engine.begin() as conn:
                    conn.execute(insert(events_table), values)
                inserted = True
            except IntegrityError:
                inserted = False
        if not inserted:
            return None
        return EventRecord.from_row(values)  # type: ignore[arg-type]

    def redelivered(self, event_id: str) -> EventRecord:
        """The stored event, for answering a redelivery: a plain read, nothing written.

        Not even a delivery count: an UPDATE would wait for the row lock of a dispatcher that has the event
        in its batch (the whole batch's transaction), which is what made redeliveries the slow tail.
        """
        stored = self.get(event_id)
        if stored is None:  # pragma: no cover - only if someone deletes the row between our two statements
            raise RuntimeError(f"event {event_id} vanished while a redelivery was answered")
        return stored

    def rearm(self, event: AcrPushEvent, event_id: str, from_state: str) -> EventRecord | None:
        """Hand a finished event back to the dispatcher (`received`) with the redelivery's tag: an ignored
        digest pushed again with a routed tag, a rejected one after the route was fixed, a run that was
        deleted. None if another request changed its state first."""
        stmt = (
            update(events_table)
            .where(events_table.c.event_id == event_id, events_table.c.state == from_state)
            .values(
                state=RECEIVED,
                tag=event.tag,
                pushed_at=event.push_data.pushed_at,
                region=event.repository.region,
                reason=None,
                run_id=None,
                run_created_at=None,
                updated_at=utcnow(),
            )
        )
        with self.engine.begin() as conn:
            changed = conn.execute(stmt).rowcount == 1
        return self.get(event_id) if changed else None

    # ------------------------------------------------------------------------------ the dispatcher
    def claim(
        self,
        session: Session | Connection,
        states: tuple[str, ...],
        limit: int,
        event_ids: list[str] | None = None,
    ) -> list[EventRecord]:
        """The oldest events in `states`, locked for the rest of `session`'s transaction.

        PostgreSQL (and MySQL 8): `SELECT ... FOR UPDATE SKIP LOCKED`, so concurrent dispatchers (api-server
        workers, replicas) take disjoint batches and a crashed one's locks go with its connection. SQLite
        has no row locks: a no-op UPDATE of the candidates first takes its single database write lock,
        which another dispatcher then waits for, and it reads the batch only once it has it.
        """
        self.ensure_schema()
        where = [events_table.c.state.in_(states)]
        if event_ids is not None:
            where.append(events_table.c.event_id.in_(event_ids))
        query = select(events_table).where(*where).order_by(events_table.c.received_at).limit(limit)
        if self.engine.dialect.name == "sqlite":
            candidates = (
                select(events_table.c.event_id)
                .where(*where)
                .order_by(events_table.c.received_at)
                .limit(limit)
                .scalar_subquery()
            )
            session.execute(
                update(events_table)
                .where(events_table.c.event_id.in_(candidates))
                .values(attempts=events_table.c.attempts)
            )
        else:
            query = query.with_for_update(skip_locked=True)
        return [EventRecord.from_row(r) for r in session.execute(query).mappings()]

    def settle(self, session: Session | Connection, changes: list[dict[str, Any]]) -> None:
        """Write the dispatcher's outcome of each claimed event, in its transaction (one executemany).

        Each change names `b_event_id` and sets every column in `SETTLED_COLUMNS`.
        """
        if not changes:
            return
        now = utcnow()
        rows = [
            {
                **c,
                "b_conf": json.dumps(c["b_conf"], sort_keys=True) if c["b_conf"] is not None else None,
                "b_updated_at": now,
            }
            for c in changes
        ]
        session.execute(
            update(events_table)
            .where(events_table.c.event_id == bindparam("b_event_id"))
            .values({name: bindparam(f"b_{name}") for name in (*SETTLED_COLUMNS, "updated_at")}),
            rows,
        )

    def update(self, event_id: str, **values: Any) -> EventRecord:
        if "conf" in values and values["conf"] is not None:
            values["conf"] = json.dumps(values["conf"], sort_keys=True)
        values["updated_at"] = utcnow()
        stmt = update(events_table).where(events_table.c.event_id == event_id).values(**values)
        with self.engine.begin() as conn:
            if self.engine.dialect.update_returning:
                row = conn.execute(stmt.returning(*events_table.c)).mappings().first()
                if row is not None:
                    return EventRecord.from_row(row)
            else:
                conn.execute(stmt)
        stored = self.get(event_id)
        if stored is None:  # pragma: no cover
            raise RuntimeError(f"event {event_id} vanished while it was updated")
        return stored

    # ------------------------------------------------------------------------------------- queries
    def get(self, event_id: str) -> EventRecord | None:
        self.ensure_schema()
        # Autocommit: a single read needs no transaction, nor the ROLLBACK round trip that closes one.
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            row = conn.execute(select(events_table).where(events_table.c.event_id == event_id)).mappings()
            first = row.first()
        return EventRecord.from_row(first) if first else None

    def recent(self, limit: int = 50, state: str | None = None) -> list[EventRecord]:
        self.ensure_schema()
        query = select(events_table).order_by(events_table.c.updated_at.desc()).limit(limit)
        if state:
            query = query.where(events_table.c.state == state)
        with self.engine.connect() as conn:
            return [EventRecord.from_row(r) for r in conn.execute(query).mappings()]

    def ids_in(self, states: tuple[str, ...], limit: int) -> list[str]:
        """The oldest events' ids in `states`."""
        self.ensure_schema()
        query = (
            select(events_table.c.event_id)
            .where(events_table.c.state.in_(states))
            .order_by(events_table.c.received_at)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return list(conn.scalars(query))

    def count(self, *states: str) -> int:
        from sqlalchemy import func

        self.ensure_schema()
        query = select(func.count()).select_from(events_table)
        if states:
            query = query.where(events_table.c.state.in_(states))
        with self.engine.connect() as conn:
            return int(conn.scalar(query) or 0)

    def prune(self, older_than: timedelta) -> int:
        """Delete finished events not updated for `older_than`; pending ones are kept however old."""
        self.ensure_schema()
        cutoff = utcnow() - older_than
        with self.engine.begin() as conn:
            result = conn.execute(
                delete(events_table).where(
                    events_table.c.state.in_(TERMINAL), events_table.c.updated_at < cutoff
                )
            )
        return int(result.rowcount or 0)


# What the dispatcher sets on each event it settles.
SETTLED_COLUMNS = ("state", "dag_id", "run_id", "image", "conf", "reason", "attempts", "run_created_at")
