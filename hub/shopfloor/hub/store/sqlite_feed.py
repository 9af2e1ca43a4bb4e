"""The record feed on SQLite: stored records in insertion order, and named consumer cursors.

A downstream copy (the metrics mirror) follows the feed: it reads ``records_after(cursor)``,
delivers what it read, and only then moves its own cursor with ``set_feed_cursor``. The
store is that copy's durable outbox: a crash anywhere loses nothing, because the cursor
never moves past an undelivered record.

The cursor is the ``rowid`` of ``records``. The hub has one writer and never deletes
records, so rowids grow with every insert (SQLite picks ``max(rowid) + 1``) and a record
keeps its rowid. Note: ``VACUUM`` may renumber the rowids of a table without an
``INTEGER PRIMARY KEY`` (``records`` has none), so a hub database must not be vacuumed while
a consumer relies on its cursor (docs/operations.md, "Metrics mirror").
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Final

import aiosqlite

from shopfloor.hub.errors import StoreError
from shopfloor.hub.store.base import StoredRecord
from shopfloor.hub.store.row_decoding import stored_record

#: Migration 5: the named cursors of the feed's consumers.
FEED_MIGRATION: Final = (
    5,
    """
    CREATE TABLE feed_cursors (
        name TEXT PRIMARY KEY,
        cursor INTEGER NOT NULL CHECK (cursor >= 0),
        updated_at INTEGER NOT NULL
    ) STRICT;
    """,
)


class SqliteFeed:
    """Mixin for :class:`~shopfloor.hub.store.sqlite.SqliteStore`: the record feed."""

    path: Path
    _lock: asyncio.Lock

    @property
    def _r(self) -> aiosqlite.Connection:
        raise NotImplementedError

    @property
    def _w(self) -> aiosqlite.Connection:
        raise NotImplementedError

    async def records_after(self, cursor: int, limit: int) -> list[StoredRecord]:
        """Up to ``limit`` stored records with a cursor above ``cursor``, in cursor order."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        try:
            async with self._r.execute(
                "SELECT rowid, agent, stream, seq, machine, kind, ts, body FROM records"
                " WHERE rowid > ? ORDER BY rowid LIMIT ?",
                (cursor, limit),
            ) as cur:
                rows = await cur.fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"reading the record feed of {self.path} failed: {exc}") from exc
        return [stored_record(r) for r in rows]

    async def feed_head(self) -> int:
        """The highest cursor stored so far (0 when there are no records)."""
        async with self._r.execute("SELECT coalesce(max(rowid), 0) FROM records") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def feed_cursor(self, name: str) -> int:
        """The cursor the consumer ``name`` last committed (0 = nothing delivered yet)."""
        async with self._r.execute(
            "SELECT cursor FROM feed_cursors WHERE name = ?", (name,)
        ) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def set_feed_cursor(self, name: str, cursor: int) -> None:
        """Commit ``cursor`` as consumer ``name``'s position, durably, before returning."""
        if cursor < 0:
            raise ValueError(f"a feed cursor is never negative, got {cursor}")
        async with self._lock:
            try:
                await self._w.execute(
                    "INSERT INTO feed_cursors (name, cursor, updated_at) VALUES (?, ?, ?)"
                    " ON CONFLICT (name) DO UPDATE SET"
                    " cursor = excluded.cursor, updated_at = excluded.updated_at",
                    (name, cursor, int(time.time() * 1000)),
                )
            except sqlite3.Error as exc:
                raise StoreError(
                    f"saving the feed cursor {name!r} in {self.path} failed: {exc}"
                ) from exc
