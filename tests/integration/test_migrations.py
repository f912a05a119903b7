"""The provider's migrations on a real PostgreSQL database (127.0.0.1:5432): concurrent migrators queue on
the advisory lock, so each step is applied and recorded exactly once."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import create_engine, inspect, select

from airflow_provider_mlpipe.migrations import (
    EVENT_TABLE,
    HEAD,
    STEPS,
    check,
    current_version,
    upgrade,
    version_table,
)
from airflow_provider_mlpipe.webhooks.events import events_table

pytestmark = [pytest.mark.integration]


def test_concurrent_upgrades_on_postgres_apply_each_step_once(postgres_database: Callable[[], str]) -> None:
    engine = create_engine(postgres_database(), pool_size=8)
    try:
        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(lambda _: upgrade(engine), range(6)))
        assert sorted(v for r in results for v in r) == [s.version for s in STEPS]
        assert current_version(engine) == HEAD
        check(engine)
        with engine.connect() as conn:
            assert sorted(conn.scalars(select(version_table.c.version))) == [s.version for s in STEPS]
        assert {c["name"] for c in inspect(engine).get_columns(EVENT_TABLE)} == set(events_table.c.keys())
    finally:
        engine.dispose()
