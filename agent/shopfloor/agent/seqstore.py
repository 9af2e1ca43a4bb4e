"""The agent's identity on the wire: its ``stream`` id, ``seq`` counter and boot ``epoch``.

One small SQLite file (WAL) in ``data_dir``. A new file is a new stream (uuid4 hex), so the
hub can never confuse seqs of an old outbox with a new one. ``seq`` is handed out from
blocks reserved on disk *before* any number of the block is used: a crash (even SIGKILL or
a power cut, with ``synchronous=FULL``) skips the rest of a block but never reuses a number.
``epoch`` counts agent starts.

The durable outbox (DESIGN.md section 3, :mod:`shopfloor.agent.outbox`) is a second table
in this file (schema version 2, ``PRAGMA user_version``; a version 1 file is upgraded in
place).

Blocking sqlite calls run behind one boundary, :meth:`SeqStore._in_thread`, and only once
per block of ``block_size`` seqs, never per message. Such a call runs to its end even when
the task awaiting it is cancelled (:func:`run_to_end`): a sqlite thread is never left running
on the connection while another call, or ``close()``, starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Self, TypeVar

from shopfloor.agent.errors import StoreError

DB_NAME: Final = "agent.sqlite3"
SCHEMA_VERSION: Final = 2
#: The outbox table: one row per record, written before it is published, deleted only
#: when the hub's ``_ack`` watermark covers its seq.
OUTBOX_DDL: Final = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    machine TEXT NOT NULL,
    topic TEXT NOT NULL,
    retain INTEGER NOT NULL,
    payload BLOB NOT NULL
) STRICT
"""
DEFAULT_BLOCK: Final = 1000
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class StoreIdentity:
    stream: str
    epoch: int


async def run_to_end(fn: Callable[[], _T], *, discard: Callable[[_T], object] | None = None) -> _T:
    """``await asyncio.to_thread(fn)``, but a cancelled caller still waits for ``fn`` to end.

    A thread cannot be stopped: if the awaiting task let go of its lock at once, the next
    call would start a second thread on the same connection (with stale counters), or close
    it under the running one. The cancellation is re-raised once ``fn`` has finished; its
    result goes to ``discard`` (to close what it opened, say), its error is dropped.
    """
    job = asyncio.ensure_future(asyncio.to_thread(fn))
    try:
        return await asyncio.shield(job)
    except asyncio.CancelledError:
        while not job.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([job])
        if not job.cancelled() and job.exception() is None and discard is not None:
            discard(job.result())
        raise


class _SeqDb:
    """The synchronous core. Every method blocks; call them only through ``_in_thread``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open {path}: {exc}", path=str(path)) from exc

    def start(self) -> tuple[StoreIdentity, int]:
        """Create or read the store, count this start; return identity and the next free seq."""
        c = self.conn
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA synchronous=FULL")
        c.execute("BEGIN IMMEDIATE")
        try:
            version = c.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                c.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value ANY) STRICT")
                c.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [("stream", uuid.uuid4().hex), ("next_block", 1), ("epoch", 0)],
                )
                c.execute(OUTBOX_DDL)
                c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version == 1:
                c.execute(OUTBOX_DDL)
                c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            else:
                self._check_version(version)
            values = dict(c.execute("SELECT key, value FROM meta").fetchall())
            epoch = int(values["epoch"]) + 1
            c.execute("UPDATE meta SET value = ? WHERE key = 'epoch'", (epoch,))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        return StoreIdentity(stream=str(values["stream"]), epoch=epoch), int(values["next_block"])

    def _check_version(self, version: int) -> None:
        if version != SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}, this agent knows "
                f"{SCHEMA_VERSION}; upgrade the agent or move the file aside",
                path=str(self.path),
            )

    def reserve(self, start: int, size: int) -> int:
        """Persist that seqs below ``start + size`` may be in use; return that bound."""
        end = start + size
        self.conn.execute("UPDATE meta SET value = ? WHERE key = 'next_block'", (end,))
        return end

    def close(self) -> None:
        self.conn.close()


class SeqStore:
    """``async with await SeqStore.open(data_dir) as store:`` then ``await store.next_seq()``."""

    def __init__(self, db: _SeqDb, identity: StoreIdentity, next_free: int, block: int) -> None:
        self._db = db
        self.stream = identity.stream
        self.epoch = identity.epoch
        self._next = next_free
        self._end = next_free  # nothing reserved yet in this process
        self._block = block
        self._lock = asyncio.Lock()
        self._closed = False

    @classmethod
    async def open(cls, data_dir: Path, *, block_size: int = DEFAULT_BLOCK) -> Self:
        """Open (or create) the store in ``data_dir`` and count one more boot epoch."""
        if block_size < 1:
            raise ValueError("block_size must be at least 1")
        path = Path(data_dir) / DB_NAME

        def start() -> tuple[_SeqDb, StoreIdentity, int]:
            db = _SeqDb(path)
            try:
                identity, next_free = db.start()
            except sqlite3.Error as exc:
                db.close()
                raise StoreError(f"{path} is not usable: {exc}", path=str(path)) from exc
            except BaseException:
                db.close()
                raise
            return db, identity, next_free

        db, identity, next_free = await run_to_end(start, discard=lambda r: r[0].close())
        return cls(db, identity, next_free, block_size)

    @property
    def path(self) -> Path:
        return self._db.path

    async def _in_thread(self, fn: Callable[[], _T]) -> _T:
        """The one place blocking sqlite work leaves the event loop."""
        try:
            return await run_to_end(fn)
        except sqlite3.Error as exc:
            raise StoreError(f"{self._db.path}: {exc}", path=str(self._db.path)) from exc

    async def next_seq(self) -> int:
        """The next never-used seq. Touches the disk once per block."""
        if self._next >= self._end:
            async with self._lock:
                if self._closed:
                    raise StoreError(f"{self._db.path} is closed", path=str(self._db.path))
                if self._next >= self._end:
                    start, block = self._next, self._block
                    self._end = await self._in_thread(lambda: self._db.reserve(start, block))
        seq = self._next
        self._next += 1
        return seq

    async def close(self) -> None:
        async with self._lock:
            if not self._closed:
                self._closed = True
                await run_to_end(self._db.close)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
