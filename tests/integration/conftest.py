"""Fixtures shared by the integration tests: a fresh PostgreSQL database for production-like stacks."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest


@pytest.fixture(scope="module")
def postgres_database() -> Iterator[Callable[[], str]]:
    """Factory of fresh databases on the machine's PostgreSQL (127.0.0.1:5432, trust auth); each is
    dropped when the module ends."""
    import psycopg2

    created: list[str] = []
    admin = psycopg2.connect(host="127.0.0.1", user="postgres", dbname="postgres")
    admin.autocommit = True

    def create() -> str:
        name = f"mlpipe_test_{uuid.uuid4().hex[:10]}"
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"

    yield create
    with admin.cursor() as cur:
        for name in created:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()
