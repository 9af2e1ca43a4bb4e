"""Which event store the configuration asks for: SQLite (a path) or PostgreSQL (a URL)."""

from __future__ import annotations

from shopfloor.hub.config import HubSection
from shopfloor.hub.store.base import Store
from shopfloor.hub.store.postgres import PostgresStore
from shopfloor.hub.store.sqlite import SqliteStore


def make_store(hub: HubSection) -> Store:
    """An unopened store for ``[hub] database``: ``await store.open()`` (or ``async with``)."""
    if hub.database_url is not None:
        return PostgresStore(hub.database_url, pool_size=hub.database_pool)
    return SqliteStore(hub.database)
