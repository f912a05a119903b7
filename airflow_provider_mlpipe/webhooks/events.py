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

An event is committed (durable by the database's own guarantees) before the webhook answers 2xx.
States:

- `received`: recorded, being processed by a request right now;
- `pending`: recorded, the run could not be created yet (DAG not parsed, database busy, routes
  misconfigured); retried by every replica's retry loop until it succeeds;
- `queued`: the run exists (`run_id`); terminal;
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
    delete,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from airflow_provider_mlpipe.migrations import EVENT_TABLE
from airflow_provider_mlpipe.migrations import check as check_schema

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine, RowMapping

    from airflow_provider_mlpipe.webhooks.acr import AcrPushEvent

log = logging.getLogger(__name__)

RECEIVED = "received"
PENDING = "pending"
QUEUED = "queued"
IGNORED = "ignored"
REJECTED = "rejected"
STATES = (RECEIVED, PENDING, QUEUED, IGNORED, REJECTED)
TERMINAL = (QUEUED, IGNORED, REJECTED)

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
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index(f"idx_{TABLE_NAME}_state", "state", "updated_at"),
    Index(f"idx_{TABLE_NAME}_updated", "updated_at"),
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything written here is UTC.
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

    @classmethod
    def from_row(cls, row: RowMapping) -> EventRecord:
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
            received_at=_aware(row["received_at"]),
            updated_at=_aware(row["updated_at"]),
        )

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
            "run_id": self.run_id,
            "image": self.image,
            "reason": self.reason,
            "deliveries": self.deliveries,
            "attempts": self.attempts,
            "received_at": self.received_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


class EventLog:
    """Insert, update and query events; one instance per engine, safe to share between threads."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._schema_ready = False
        self._schema_lock = threading.Lock()

    def ensure_schema(self) -> None:
        """Raise SchemaNotReadyError (naming the migration command) unless the migrations are applied;
        checked once per instance, then free."""
        if self._schema_ready:
            return
        with self._schema_lock:
            if not self._schema_ready:
                check_schema(self.engine)
                self._schema_ready = True

    def record(self, event: AcrPushEvent, event_id: str) -> tuple[EventRecord, bool]:
        """Commit the delivery; returns the stored event and whether this delivery created it.

        A repeated delivery increments `deliveries` and, unless a run already exists, takes the new
        tag (the same digest pushed under a tag that a route matches is routed again).
        """
        self.ensure_schema()
        now = utcnow()
        values = {
            "event_id": event_id,
            "repo_full_name": event.repo_full_name,
            "digest": event.digest,
            "tag": event.tag,
            "region": event.repository.region,
            "pushed_at": event.push_data.pushed_at,
            "state": RECEIVED,
            "deliveries": 1,
            "attempts": 0,
            "received_at": now,
            "updated_at": now,
        }
        try:
            with self.engine.begin() as conn:
                stmt = insert(events_table).values(**values)
                if self.engine.dialect.insert_returning:
                    # One round trip instead of insert + select: the hot path of a burst of pushes.
                    row = conn.execute(stmt.returning(*events_table.c)).mappings().first()
                    if row is not None:
                        return EventRecord.from_row(row), True
                else:
                    conn.execute(stmt)
            created = True
        except IntegrityError:
            created = False
            with self.engine.begin() as conn:
                conn.execute(
                    update(events_table)
                    .where(events_table.c.event_id == event_id)
                    .values(deliveries=events_table.c.deliveries + 1)
                )
                conn.execute(
                    update(events_table)
                    .where(events_table.c.event_id == event_id, events_table.c.state != QUEUED)
                    .values(
                        tag=event.tag, pushed_at=event.push_data.pushed_at, region=event.repository.region
                    )
                )
        stored = self.get(event_id)
        if stored is None:  # pragma: no cover - only if someone deletes the row between our two statements
            raise RuntimeError(f"event {event_id} vanished right after it was recorded")
        return stored, created

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

    def get(self, event_id: str) -> EventRecord | None:
        self.ensure_schema()
        with self.engine.connect() as conn:
            row = conn.execute(select(events_table).where(events_table.c.event_id == event_id)).mappings()
            first = row.first()
        return EventRecord.from_row(first) if first else None

    def due(self, stale_after: timedelta, limit: int = 100) -> list[EventRecord]:
        """Events to retry: pending ones, and `received` ones whose request died before it finished."""
        self.ensure_schema()
        cutoff = utcnow() - stale_after
        query = (
            select(events_table)
            .where(
                or_(
                    events_table.c.state == PENDING,
                    (events_table.c.state == RECEIVED) & (events_table.c.updated_at < cutoff),
                )
            )
            .order_by(events_table.c.received_at)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [EventRecord.from_row(r) for r in conn.execute(query).mappings()]

    def recent(self, limit: int = 50, state: str | None = None) -> list[EventRecord]:
        self.ensure_schema()
        query = select(events_table).order_by(events_table.c.updated_at.desc()).limit(limit)
        if state:
            query = query.where(events_table.c.state == state)
        with self.engine.connect() as conn:
            return [EventRecord.from_row(r) for r in conn.execute(query).mappings()]

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
