"""The real PostgreSQL on 127.0.0.1:5432 for the hub's tests (trust auth, user postgres).

One fresh database per test session, ``shopfloor_test_<pid>_<random>``, created on first use
and dropped at the end; each test works in a schema of its own inside it. No other database
is touched. Imported by ``conftest.py`` and by tests that need the types.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable

import pytest

from shopfloor.hub.database_url import PostgresUrl
from shopfloor.hub.store import SqliteStore
from shopfloor.hub.store.postgres import PostgresStore

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_USER = "postgres"
#: Every store test runs once per backend; ``-m "not postgres"`` runs only SQLite.
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
AnyStore = SqliteStore | PostgresStore
StoreFactory = Callable[..., AnyStore]


class PgServer:
    """The shared server, and this session's database on it (see the module docstring)."""

    def __init__(self) -> None:
        self.database: str | None = None
        self.extra: list[str] = []

    def psql(self, sql: str, *, database: str = "postgres") -> str:
        out = subprocess.run(
            [
                *("psql", "-h", PG_HOST, "-p", str(PG_PORT), "-U", PG_USER, "-d", database),
                *("-v", "ON_ERROR_STOP=1", "-qAtc", sql),
            ],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if out.returncode != 0:
            pytest.fail(f"psql failed ({sql!r}): {out.stderr.strip()}")
        return out.stdout

    def url(self) -> PostgresUrl:
        """The URL of this session's database (created now if it is not yet)."""
        if self.database is None:
            name = f"shopfloor_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
            self.psql(f"CREATE DATABASE {name}")
            self.database = name
        return PostgresUrl(host=PG_HOST, port=PG_PORT, user=PG_USER, database=self.database)

    def new_database(self) -> PostgresUrl:
        """Another fresh database of this session, for a test that needs ``public`` to itself
        (a hub configured by URL has no schema of its own)."""
        name = f"{self.url().database}_{len(self.extra) + 1}"
        self.psql(f"CREATE DATABASE {name}")
        self.extra.append(name)
        return self.url().with_database(name)

    def drop(self) -> None:
        for name in [*self.extra, self.database]:
            if name is not None:
                self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        self.database, self.extra = None, []


def unique_schema() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"
