"""The agent's durable outbox: every record is on disk before it is published.

One SQLite file (WAL) in ``data_dir``, shared with the stream identity of
:mod:`shopfloor.agent.seqstore` (table ``outbox``, schema version 2). Rows are appended in
small batched transactions, each record getting the next ``seq`` of the agent's stream, and
deleted only when the hub's retained ``_ack`` watermark covers them (DESIGN.md section 3): a
broker PUBACK proves nothing about durability.

Durability. A batch with any state, event or meta record commits with
``synchronous=FULL`` (survives a power cut); a batch of telemetry only commits with
``synchronous=NORMAL`` (survives a crash of the process, may lose the last batches on a
power cut, and then the hub's replay request is answered with a ``data_loss`` event for
the seqs that are gone). Seqs are handed out from blocks reserved with a FULL commit
*before* any seq of the block is used, so a seq is never reused, whatever is lost; a clean
close gives the unused rest of the block back.

Cap and drop policy. When the outbox holds more than ``max_rows`` rows or ``max_bytes``
payload bytes after an append, rows are dropped until it is a tenth below the cap (room
for the ``data_loss`` event that follows), in this order: the oldest
telemetry first; only when no telemetry is left, the oldest state, meta and event rows
(never a ``data_loss`` event). Every dropped seq is counted and returned, so that the
caller can publish a ``data_loss`` event naming the seq ranges the hub will never get.

Blocking sqlite calls run behind one boundary, :meth:`Outbox._in_thread`, one at a time.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Self, TypeVar

from shopfloor.agent.errors import StoreError
from shopfloor.agent.readings import Record
from shopfloor.agent.seqstore import DB_NAME, DEFAULT_BLOCK, _SeqDb
from shopfloor.contract.envelope import RecordKind

DEFAULT_MAX_ROWS: Final = 200_000
DEFAULT_MAX_BYTES: Final = 256 * 1024 * 1024
#: ``event`` body name of the record that declares seqs the hub will never receive.
DATA_LOSS_EVENT: Final = "data_loss"
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One record as stored: its seq, where it goes and the encoded envelope."""

    seq: int
    kind: RecordKind
    machine: str
    topic: str
    retain: bool
    payload: bytes


#: Turns a record and its seq into the row to store (topic, retain flag, envelope bytes).
RowMaker = Callable[[Record, int], OutboxRow]


@dataclass(slots=True)
class AppendResult:
    rows: list[OutboxRow]
    #: Seqs dropped to keep the cap, per machine, ascending.
    dropped: dict[str, list[int]] = field(default_factory=dict)


@dataclass(slots=True)
class OutboxStats:
    depth: int = 0
    bytes: int = 0
    appended: int = 0
    acked: int = 0
    dropped_telemetry: int = 0
    dropped_other: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "depth": self.depth,
            "bytes": self.bytes,
            "appended": self.appended,
            "acked": self.acked,
            "dropped_telemetry": self.dropped_telemetry,
            "dropped_other": self.dropped_other,
        }


def seq_ranges(seqs: Sequence[int]) -> list[list[int]]:
    """``[1, 2, 3, 7]`` -> ``[[1, 3], [7, 7]]`` (input ascending)."""
    out: list[list[int]] = []
    for seq in seqs:
        if out and out[-1][1] + 1 == seq:
            out[-1][1] = seq
        else:
            out.append([seq, seq])
    return out


class Outbox:
    """``async with await Outbox.open(data_dir) as outbox:``; see the module docstring."""

    def __init__(
        self,
        db: _SeqDb,
        stream: str,
        epoch: int,
        next_free: int,
        *,
        block: int,
        max_rows: int,
        max_bytes: int,
    ) -> None:
        self._db = db
        self.stream = stream
        self.epoch = epoch
        self._next = next_free
        self._end = next_free  # nothing reserved yet in this process
        self._block = block
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.stats = OutboxStats()
        self._lock = asyncio.Lock()
        self._closed = False
        self.last_seq = 0  # highest seq written (0: none yet)

    @classmethod
    async def open(
        cls,
        data_dir: Path,
        *,
        block_size: int = DEFAULT_BLOCK,
        max_rows: int = DEFAULT_MAX_ROWS,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> Self:
        if block_size < 1 or max_rows < 1 or max_bytes < 1:
            raise ValueError("block_size, max_rows and max_bytes must be at least 1")
        path = Path(data_dir) / DB_NAME

        def start() -> tuple[_SeqDb, str, int, int, int, int, int]:
            db = _SeqDb(path)
            try:
                identity, next_free = db.start()
                depth, size, last = db.conn.execute(
                    "SELECT count(*), coalesce(sum(length(payload)), 0), coalesce(max(seq), 0)"
                    " FROM outbox"
                ).fetchone()
            except sqlite3.Error as exc:
                db.close()
                raise StoreError(f"{path} is not usable: {exc}", path=str(path)) from exc
            except BaseException:
                db.close()
                raise
            return db, identity.stream, identity.epoch, next_free, depth, size, last

        db, stream, epoch, next_free, depth, size, last = await asyncio.to_thread(start)
        outbox = cls(
            db,
            stream,
            epoch,
            max(next_free, last + 1),
            block=block_size,
            max_rows=max_rows,
            max_bytes=max_bytes,
        )
        outbox.stats.depth, outbox.stats.bytes, outbox.last_seq = depth, size, last
        return outbox

    @property
    def path(self) -> Path:
        return self._db.path

    @property
    def next_seq(self) -> int:
        """The seq the next appended record will get."""
        return self._next

    async def _in_thread(self, fn: Callable[[], _T]) -> _T:
        """The one place blocking sqlite work leaves the event loop (one call at a time)."""
        async with self._lock:
            if self._closed:
                raise StoreError(f"{self._db.path} is closed", path=str(self._db.path))
            try:
                return await asyncio.to_thread(fn)
            except sqlite3.Error as exc:
                raise StoreError(f"{self._db.path}: {exc}", path=str(self._db.path)) from exc

    # -- writing -----------------------------------------------------------------------------

    async def append(self, records: Sequence[Record], make: RowMaker) -> AppendResult:
        """Give every record its seq and store it, in one transaction; then apply the cap."""
        if not records:
            return AppendResult(rows=[])
        return await self._in_thread(lambda: self._append(records, make))

    def _append(self, records: Sequence[Record], make: RowMaker) -> AppendResult:
        c = self._db.conn
        durable = any(r.kind is not RecordKind.TELEMETRY for r in records)
        need = self._next + len(records)
        end = self._end
        if need > end:
            end = max(need, self._next + self._block)
            durable = True  # a reservation is always a FULL commit
        rows = [make(record, self._next + i) for i, record in enumerate(records)]
        c.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        c.execute("BEGIN IMMEDIATE")
        try:
            if end != self._end:
                c.execute("UPDATE meta SET value = ? WHERE key = 'next_block'", (end,))
            c.executemany(
                "INSERT INTO outbox (seq, kind, machine, topic, retain, payload)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(r.seq, str(r.kind), r.machine, r.topic, int(r.retain), r.payload) for r in rows],
            )
            depth = self.stats.depth + len(rows)
            size = self.stats.bytes + sum(len(r.payload) for r in rows)
            dropped, depth, size = self._enforce_cap(c, depth, size)
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        self._end = end
        self._next = need
        self.last_seq = need - 1
        self.stats.appended += len(rows)
        self.stats.depth, self.stats.bytes = depth, size
        result = AppendResult(rows=rows)
        for seq, machine, kind in dropped:
            result.dropped.setdefault(machine, []).append(seq)
            if kind == RecordKind.TELEMETRY:
                self.stats.dropped_telemetry += 1
            else:
                self.stats.dropped_other += 1
        kept = {r.seq for r in rows} - {seq for seq, _, _ in dropped}
        result.rows = [r for r in rows if r.seq in kept]
        return result

    def _enforce_cap(
        self, c: sqlite3.Connection, depth: int, size: int
    ) -> tuple[list[tuple[int, str, str]], int, int]:
        dropped: list[tuple[int, str, str]] = []
        if depth <= self.max_rows and size <= self.max_bytes:
            return dropped, depth, size
        # Once over, make a tenth of room: the data_loss event that follows must fit
        # without pushing out yet another row.
        max_rows = self.max_rows - max(1, self.max_rows // 10)
        max_bytes = self.max_bytes - max(1, self.max_bytes // 10)
        # Oldest telemetry first, then the oldest of the rest; data_loss events never.
        for where in (
            "kind = 'telemetry'",
            "kind != 'telemetry' AND NOT (kind = 'event' AND instr(payload, ?) > 0)",
        ):
            params: tuple[object, ...] = (
                () if "instr" not in where else (f'"event":"{DATA_LOSS_EVENT}"'.encode(),)
            )
            while depth > max_rows or size > max_bytes:
                excess = max(depth - max_rows, 1)
                victims = c.execute(
                    f"SELECT seq, machine, kind, length(payload) FROM outbox WHERE {where}"  # noqa: S608 - constant
                    " ORDER BY seq LIMIT ?",
                    (*params, max(excess, 64)),
                ).fetchall()
                if not victims:
                    break
                chosen = []
                for seq, machine, kind, length in victims:
                    if depth <= max_rows and size <= max_bytes:
                        break
                    chosen.append((int(seq), str(machine), str(kind)))
                    depth -= 1
                    size -= int(length)
                c.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s, _, _ in chosen])
                dropped.extend(chosen)
        dropped.sort()
        return dropped, depth, size

    async def ack(self, upto: int) -> int:
        """Delete every row with ``seq <= upto`` (the hub has committed them); return how many."""

        def delete() -> tuple[int, int]:
            c = self._db.conn
            c.execute("PRAGMA synchronous=NORMAL")  # losing a delete only means a duplicate
            c.execute("BEGIN IMMEDIATE")
            try:
                count, size = c.execute(
                    "SELECT count(*), coalesce(sum(length(payload)), 0) FROM outbox WHERE seq <= ?",
                    (upto,),
                ).fetchone()
                if count:
                    c.execute("DELETE FROM outbox WHERE seq <= ?", (upto,))
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            return int(count), int(size)

        count, size = await self._in_thread(delete)
        self.stats.depth -= count
        self.stats.bytes -= size
        self.stats.acked += count
        return count

    # -- reading -----------------------------------------------------------------------------

    async def read_from(self, seq: int, limit: int = 100) -> list[OutboxRow]:
        """Up to ``limit`` rows with ``seq >= seq``, in seq order."""

        def read() -> list[OutboxRow]:
            rows = self._db.conn.execute(
                "SELECT seq, kind, machine, topic, retain, payload FROM outbox"
                " WHERE seq >= ? ORDER BY seq LIMIT ?",
                (seq, limit),
            ).fetchall()
            return [
                OutboxRow(int(s), RecordKind(k), str(m), str(t), bool(r), bytes(p))
                for s, k, m, t, r, p in rows
            ]

        return await self._in_thread(read)

    async def holes(self, start: int, end: int, limit: int = 1000) -> list[tuple[int, int]]:
        """Inclusive ranges of seqs in ``[start, end]`` that are not in the outbox."""
        if end < start:
            return []
        sql = """
            WITH s AS (SELECT seq FROM outbox WHERE seq BETWEEN :start AND :end),
            gaps AS (
                SELECT prev + 1 AS a, seq - 1 AS b FROM (
                    SELECT seq, lag(seq, 1, :start - 1) OVER (ORDER BY seq) AS prev FROM s
                ) WHERE seq - prev > 1
                UNION ALL
                SELECT coalesce(max(seq), :start - 1) + 1, :end FROM s
                HAVING coalesce(max(seq), :start - 1) < :end
            )
            SELECT a, b FROM gaps ORDER BY a LIMIT :limit
        """

        def find() -> list[tuple[int, int]]:
            rows = self._db.conn.execute(
                sql, {"start": start, "end": end, "limit": limit}
            ).fetchall()
            return [(int(a), int(b)) for a, b in rows]

        return await self._in_thread(find)

    async def first_seq(self) -> int | None:
        """The lowest seq still in the outbox, or None if it is empty."""

        def first() -> int | None:
            row = self._db.conn.execute("SELECT min(seq) FROM outbox").fetchone()
            return None if row is None or row[0] is None else int(row[0])

        return await self._in_thread(first)

    # -- lifecycle ---------------------------------------------------------------------------

    async def close(self) -> None:
        """Give back the unused rest of the reserved block, then close the file."""
        async with self._lock:
            if self._closed:
                return
            self._closed = True

            def finish() -> None:
                try:
                    if self._end > self._next:
                        c = self._db.conn
                        c.execute("PRAGMA synchronous=FULL")
                        c.execute(
                            "UPDATE meta SET value = ? WHERE key = 'next_block'", (self._next,)
                        )
                finally:
                    self._db.close()

            await asyncio.to_thread(finish)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
