"""The provider's versioned migrations on a real SQLite file: fresh database, re-runs, a table created by
the webhook before it had migrations, concurrent migrators, the version check and the CLI."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import MetaData, Table, create_engine, insert, inspect, select
from sqlalchemy.engine import Engine

from airflow_provider_mlpipe.exceptions import SchemaNotReadyError
from airflow_provider_mlpipe.migrations import (
    COMMAND,
    EVENT_TABLE,
    HEAD,
    STEPS,
    VERSION_TABLE,
    _v1_event_table,
    check,
    current_version,
    main,
    upgrade,
)
from airflow_provider_mlpipe.webhooks.events import EventLog, events_table


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return create_engine(f"sqlite:///{tmp_path / 'airflow.db'}", connect_args={"timeout": 30})


def test_fresh_database_gets_every_step_once(engine: Engine) -> None:
    with pytest.raises(SchemaNotReadyError, match="migrations upgrade"):
        check(engine)
    assert upgrade(engine) == [s.version for s in STEPS]
    assert current_version(engine) == HEAD
    check(engine)
    # The migrated table has every column the webhook's queries use.
    columns = {c["name"] for c in inspect(engine).get_columns(EVENT_TABLE)}
    assert columns == set(events_table.c.keys())
    assert upgrade(engine) == []


def test_table_made_before_migrations_is_adopted_with_its_rows(engine: Engine) -> None:
    # The webhook used to `CREATE TABLE IF NOT EXISTS` the version-1 table itself, with no version table.
    with engine.begin() as conn:
        _v1_event_table(conn)
    table = Table(EVENT_TABLE, MetaData(), autoload_with=engine)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            insert(table).values(
                event_id="acr__old",
                repo_full_name="a/b",
                digest="sha256:" + "0" * 64,
                tag="t",
                region="r",
                pushed_at="2016-11-29 12:25:46",
                state="queued",
                deliveries=1,
                attempts=1,
                received_at=now,
                updated_at=now,
            )
        )
    assert upgrade(engine) == [s.version for s in STEPS]
    with engine.connect() as conn:
        # Step 2 renamed the state of an event whose run exists; the row is otherwise as it was.
        assert conn.scalar(select(table.c.state).where(table.c.event_id == "acr__old")) == "run_created"
    (old,) = EventLog(engine).recent()
    assert old.run_created_at is None and old.deliveries == 1


def test_concurrent_migrators_apply_each_step_once(engine: Engine) -> None:
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: upgrade(engine), range(4)))
    applied = sorted(v for r in results for v in r)
    assert set(applied) == {s.version for s in STEPS}
    with engine.connect() as conn:
        from airflow_provider_mlpipe.migrations import version_table

        rows = conn.execute(select(version_table.c.version)).scalars().all()
    assert sorted(rows) == [s.version for s in STEPS]


def test_event_log_refuses_an_unmigrated_database_naming_the_command(engine: Engine) -> None:
    events = EventLog(engine)
    with pytest.raises(SchemaNotReadyError) as err:
        events.recent()
    assert COMMAND in str(err.value)
    # Nothing was created at request time.
    assert not inspect(engine).has_table(EVENT_TABLE)
    upgrade(engine)
    assert events.recent() == []


def test_cli_upgrades_and_checks(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert main(["check", "--sql-alchemy-conn", url]) == 1
    assert main(["upgrade", "--sql-alchemy-conn", url]) == 0
    assert main(["check", "--sql-alchemy-conn", url]) == 0
    assert inspect(create_engine(url)).has_table(VERSION_TABLE)
