"""The provider's own versioned schema migrations, for the tables it keeps in Airflow's metadata database.

The provider's tables (today: the ACR webhook's event inbox) are not part of Airflow's schema, so
`airflow db migrate` neither creates nor upgrades them. They get their own numbered steps here, recorded in
`mlpipe_schema_version` (one row per applied step). Run them after `airflow db migrate`, with the same
Airflow configuration (`sql_alchemy_conn`), before starting a new version of the api-server::

    python -m airflow_provider_mlpipe.migrations upgrade      # apply what is missing; idempotent
    python -m airflow_provider_mlpipe.migrations check        # exit 1 if a step is missing
    python -m airflow_provider_mlpipe.migrations upgrade --sql-alchemy-conn postgresql+psycopg2://...

Nothing creates or alters a table at request time: the webhook checks the version once and answers 503,
naming this command, while the schema is behind. Several processes (replicas' init containers, tests) may
upgrade at once: on PostgreSQL they serialize on an advisory lock, and every step checks what exists before
it changes anything, so a loser re-running it (SQLite has no such lock) changes nothing.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import (
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from airflow_provider_mlpipe.exceptions import SchemaNotReadyError

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

log = logging.getLogger(__name__)

VERSION_TABLE = "mlpipe_schema_version"
EVENT_TABLE = "mlpipe_acr_webhook_event"
COMMAND = "python -m airflow_provider_mlpipe.migrations upgrade"
# pg_advisory_xact_lock key: "mlpipe" in ASCII, so it cannot collide with Airflow's own migration lock.
_PG_LOCK_KEY = 0x6D6C70697065

_version_metadata = MetaData()
version_table = Table(
    VERSION_TABLE,
    _version_metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("description", String(255), nullable=False),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True)
class Step:
    version: int
    description: str
    apply: Callable[[Connection], None]


def _columns(conn: Connection, table: str) -> set[str]:
    return {c["name"] for c in inspect(conn).get_columns(table)}


def _indexes(conn: Connection, table: str) -> set[str]:
    return {str(i["name"]) for i in inspect(conn).get_indexes(table)}


def _v1_event_table(conn: Connection) -> None:
    """The event table as the webhook created it before it had migrations: adopted if it is already there."""
    if inspect(conn).has_table(EVENT_TABLE):
        return
    # Frozen as of version 1: later steps alter it, they never edit this definition.
    frozen = MetaData()
    Table(
        EVENT_TABLE,
        frozen,
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
        Index(f"idx_{EVENT_TABLE}_state", "state", "updated_at"),
        Index(f"idx_{EVENT_TABLE}_updated", "updated_at"),
    )
    frozen.create_all(conn)


def _v2_inbox(conn: Connection) -> None:
    """The table becomes the webhook's inbox: runs are created behind it, so an event records when its run
    was created (acknowledgement to run, on the events endpoint), the state that says so is `run_created`
    (was `queued`), and dispatchers claim the oldest `received` events through an index."""
    if "run_created_at" not in _columns(conn, EVENT_TABLE):
        conn.execute(text(f"ALTER TABLE {EVENT_TABLE} ADD COLUMN run_created_at {_timestamp(conn)}"))
    conn.execute(text(f"UPDATE {EVENT_TABLE} SET state = 'run_created' WHERE state = 'queued'"))
    if f"idx_{EVENT_TABLE}_claim" not in _indexes(conn, EVENT_TABLE):
        table = Table(EVENT_TABLE, MetaData(), autoload_with=conn)
        Index(f"idx_{EVENT_TABLE}_claim", table.c.state, table.c.received_at).create(conn)


def _timestamp(conn: Connection) -> str:
    # What DateTime(timezone=True) is on each dialect (the type version 1 created received_at with).
    return str(DateTime(timezone=True).compile(dialect=conn.dialect))


STEPS: tuple[Step, ...] = (
    Step(1, "ACR webhook event table", _v1_event_table),
    Step(2, "ACR webhook inbox: run_created_at, state run_created, claim index", _v2_inbox),
)
HEAD = STEPS[-1].version


def applied_versions(conn: Connection) -> set[int]:
    if not inspect(conn).has_table(VERSION_TABLE):
        return set()
    return {int(v) for v in conn.scalars(select(version_table.c.version))}


def current_version(engine: Engine) -> int:
    """The highest applied step (0: none)."""
    with engine.connect() as conn:
        return max(applied_versions(conn), default=0)


def check(engine: Engine) -> None:
    """Raise SchemaNotReadyError unless every step is applied (what the webhook checks before its first use)."""
    try:
        with engine.connect() as conn:
            missing = sorted({s.version for s in STEPS} - applied_versions(conn))
    except (OperationalError, ProgrammingError) as err:
        raise SchemaNotReadyError(
            f"cannot read {VERSION_TABLE}: {type(err).__name__}; run `{COMMAND}`"
        ) from err
    if missing:
        raise SchemaNotReadyError(
            f"{VERSION_TABLE} lacks step(s) {missing} of {HEAD} (the provider's tables are behind); "
            f"run `{COMMAND}`"
        )


def upgrade(engine: Engine) -> list[int]:
    """Apply the missing steps in order, each in its own transaction with its version row; returns them."""
    done: list[int] = []
    for step in STEPS:
        for attempt in range(1, _SQLITE_TRIES + 1):
            try:
                applied = _apply(engine, step)
                break
            except (OperationalError, IntegrityError):
                # SQLite only (PostgreSQL migrators queue on the lock): another migrator created the same
                # thing between our check and our DDL. The steps check first, so a re-run sees it and skips.
                if engine.dialect.name != "sqlite" or attempt == _SQLITE_TRIES:
                    raise
        if applied:
            log.info("mlpipe schema: applied step %d (%s)", step.version, step.description)
            done.append(step.version)
    return done


_SQLITE_TRIES = 5


def _apply(engine: Engine, step: Step) -> bool:
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Held to the end of this transaction: a second migrator waits here, then sees the step done.
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        _version_metadata.create_all(conn, checkfirst=True)
        if step.version in applied_versions(conn):
            return False
        step.apply(conn)
        conn.execute(
            insert(version_table).values(
                version=step.version, description=step.description, applied_at=datetime.now(UTC)
            )
        )
    return True


def _airflow_engine() -> Engine:
    from airflow import settings

    if settings.engine is None:
        settings.configure_orm()
    assert settings.engine is not None
    return settings.engine


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_mlpipe.migrations",
        description="The provider's own tables in Airflow's metadata database (run after `airflow db migrate`).",
    )
    parser.add_argument("command", choices=("upgrade", "check", "current"))
    parser.add_argument(
        "--sql-alchemy-conn", help="database URL; default: Airflow's [database] sql_alchemy_conn"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    if args.sql_alchemy_conn:
        from sqlalchemy import create_engine

        engine = create_engine(args.sql_alchemy_conn)
    else:
        engine = _airflow_engine()
    if args.command == "upgrade":
        applied = upgrade(engine)
        log.info("mlpipe schema at version %d (applied now: %s)", current_version(engine), applied or "none")
        return 0
    if args.command == "current":
        log.info("%d", current_version(engine))
        return 0
    try:
        check(engine)
    except SchemaNotReadyError as err:
        log.error("%s", err)
        return 1
    log.info("mlpipe schema up to date (version %d)", HEAD)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
