"""The record feed on PostgreSQL: stored records in insertion order, and consumer cursors.

The same contract as :mod:`.sqlite_feed`: a downstream copy (the metrics mirror) reads
``records_after(cursor)``, delivers, and only then commits its cursor. The cursor is
``records.id``, an identity column: the store has one writer (one connection, one
transaction at a time), so ids grow in commit order and a reader never sees a smaller id
commit after a larger one. Several hubs writing one database would break that; they are
not supported on one database (docs/architecture.md, "PostgreSQL").
"""

from __future__ import annotations

import time
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Final

from shopfloor.hub.store.base import StoredRecord
from shopfloor.hub.store.row_decoding import stored_record

if TYPE_CHECKING:
    from asyncpg import Record
    from asyncpg.pool import PoolConnectionProxy

#: Migration 5 (the number the SQLite store uses for the same table).
FEED_MIGRATION: Final = (
    5,
    """
    CREATE TABLE feed_cursors (
        name text PRIMARY KEY,
        cursor bigint NOT NULL CHECK (cursor >= 0),
        updated_at bigint NOT NULL
    );
    """,
)


class PostgresFeed:
    """Mixin for :class:`~shopfloor.hub.store.postgres.PostgresStore`: the record feed."""

    def _read(self) -> AbstractAsyncContextManager[PoolConnectionProxy[Record]]:
        raise NotImplementedError  # provided by PostgresStore

    def _writing(self) -> AbstractAsyncContextManager[PoolConnectionProxy[Record]]:
        raise NotImplementedError  # provided by PostgresStore

    async def records_after(self, cursor: int, limit: int) -> list[StoredRecord]:
        """Up to ``limit`` stored records with a cursor above ``cursor``, in cursor order."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        async with self._read() as conn:
            rows = await conn.fetch(
                "SELECT id, agent, stream, seq, machine, kind, ts, body::text FROM records"
                " WHERE id > $1 ORDER BY id LIMIT $2",
                cursor,
                limit,
            )
        return [stored_record(r) for r in rows]

    async def feed_head(self) -> int:
        """The highest cursor stored so far (0 when there are no records)."""
        async with self._read() as conn:
            value = await conn.fetchval("SELECT coalesce(max(id), 0) FROM records")
        return int(value)

    async def feed_cursor(self, name: str) -> int:
        """The cursor the consumer ``name`` last committed (0 = nothing delivered yet)."""
        async with self._read() as conn:
            value = await conn.fetchval("SELECT cursor FROM feed_cursors WHERE name = $1", name)
        return int(value) if value is not None else 0

    async def set_feed_cursor(self, name: str, cursor: int) -> None:
        """Commit ``cursor`` as consumer ``name``'s position, durably, before returning."""
        if cursor < 0:
            raise ValueError(f"a feed cursor is never negative, got {cursor}")
        async with self._writing() as conn:
            await conn.execute(
                "INSERT INTO feed_cursors (name, cursor, updated_at) VALUES ($1, $2, $3)"
                " ON CONFLICT (name) DO UPDATE SET"
                " cursor = excluded.cursor, updated_at = excluded.updated_at",
                name,
                cursor,
                time.time_ns() // 1_000_000,
            )
