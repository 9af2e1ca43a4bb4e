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
telemetry first; only when no telemetry is left, the oldest state, meta and event rows.
Never dropped: a ``data_loss`` event, and the newest state of a machine in the batch just
appended. In the same transaction the dropped seqs are declared in one ``data_loss`` event
(reason ``outbox_full``, made by the caller's ``declare``) that replaces, and covers, the
stream's pending ``outbox_full`` events (their ranges and their own seqs, less what the
last ``ack`` covers): however long the cap holds, there is one such event in the outbox
(more only past ``MAX_LOSS_RANGES`` ranges), and the depth stays within the cap (one over
it when the cap is so small that the newest states alone fill it). Dropped seqs are
counted and returned.

Blocking sqlite calls run behind one boundary, :meth:`Outbox._in_thread`, one at a time;
a call runs to its end even if the task awaiting it is cancelled
(:func:`~shopfloor.agent.seqstore.run_to_end`), and ``close()`` waits for it.
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
from shopfloor.agent.seqstore import DB_NAME, DEFAULT_BLOCK, _SeqDb, run_to_end
from shopfloor.contract.envelope import RecordKind, decode_envelope, parse_data_loss
from shopfloor.contract.errors import ContractError

DEFAULT_MAX_ROWS: Final = 200_000
DEFAULT_MAX_BYTES: Final = 256 * 1024 * 1024
#: ``event`` body name of the record that declares seqs the hub will never receive.
DATA_LOSS_EVENT: Final = "data_loss"
#: ``data_loss`` reason of seqs the outbox cap dropped.
OUTBOX_FULL: Final = "outbox_full"
_DATA_LOSS_MARK: Final = f'"event":"{DATA_LOSS_EVENT}"'.encode()
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
#: Makes the ``data_loss`` event record(s) of a machine for inclusive seq ranges
#: (reason ``outbox_full``); runs in the outbox thread, so it must be pure.
LossMaker = Callable[[str, list[tuple[int, int]]], list[Record]]


@dataclass(slots=True)
class AppendResult:
    rows: list[OutboxRow]
    #: Seqs dropped to keep the cap, per machine, ascending.
    dropped: dict[str, list[int]] = field(default_factory=dict)
    #: The ``data_loss`` rows written (in the same transaction) to declare them.
    declared: list[OutboxRow] = field(default_factory=list)


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


def merge_ranges(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Inclusive ranges, sorted, overlapping and adjacent ones merged."""
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def subtract_ranges(
    ranges: Sequence[tuple[int, int]], minus: Sequence[tuple[int, int]]
) -> list[tuple[int, int]]:
    """The seqs of inclusive ``ranges`` that are in none of ``minus``, as ranges."""
    out: list[tuple[int, int]] = []
    cut = merge_ranges(minus)
    for first, last in merge_ranges(ranges):
        a = first
        for c, d in cut:
            if d < a or c > last:
                continue
            if c > a:
                out.append((a, c - 1))
            a = d + 1
            if a > last:
                break
        if a <= last:
            out.append((a, last))
    return out


def _loss_in(payload: bytes, stream: str) -> tuple[str, list[tuple[int, int]]] | None:
    """(reason, ranges) if ``payload`` is a ``data_loss`` event of ``stream``."""
    try:
        loss = parse_data_loss(decode_envelope(payload).body)
    except ContractError:
        return None
    if loss is None or loss.stream != stream:
        return None
    return loss.reason, list(loss.ranges)


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
        self._acked_upto = 0  # the highest ack() of this process

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

        db, stream, epoch, next_free, depth, size, last = await run_to_end(
            start, discard=lambda r: r[0].close()
        )
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
        """The one place blocking sqlite work leaves the event loop (one call at a time).

        The lock is held until ``fn`` has returned, even if the caller is cancelled.
        """
        async with self._lock:
            if self._closed:
                raise StoreError(f"{self._db.path} is closed", path=str(self._db.path))
            try:
                return await run_to_end(fn)
            except sqlite3.Error as exc:
                raise StoreError(f"{self._db.path}: {exc}", path=str(self._db.path)) from exc

    # -- writing -----------------------------------------------------------------------------

    async def append(
        self, records: Sequence[Record], make: RowMaker, declare: LossMaker | None = None
    ) -> AppendResult:
        """Give every record its seq and store it, in one transaction; then apply the cap.

        Whatever the cap drops is declared in the same transaction with the records
        ``declare`` makes (required whenever the cap may be reached).
        """
        if not records:
            return AppendResult(rows=[])
        return await self._in_thread(lambda: self._append(records, make, declare))

    def _append(
        self, records: Sequence[Record], make: RowMaker, declare: LossMaker | None
    ) -> AppendResult:
        c = self._db.conn
        rows = [make(record, self._next + i) for i, record in enumerate(records)]
        depth = self.stats.depth + len(rows)
        size = self.stats.bytes + sum(len(r.payload) for r in rows)
        over = depth > self.max_rows or size > self.max_bytes
        if over and declare is None:
            raise ValueError("the outbox is full: append needs `declare` to declare the loss")
        need = self._next + len(rows)
        # A reservation, a drop (and its data_loss event) or anything but telemetry: FULL.
        durable = over or need > self._end or any(r.kind is not RecordKind.TELEMETRY for r in rows)
        c.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        c.execute("BEGIN IMMEDIATE")
        try:
            self._insert(c, rows)
            dropped: list[tuple[int, str, str]] = []
            declared: list[OutboxRow] = []
            if over:
                dropped, (replaced, replaced_machine), depth, size = self._enforce_cap(
                    c, depth, size, self._protected(rows)
                )
                if declare is not None and (dropped or replaced):
                    # Seqs at or below the watermark need no declaration: the hub got them,
                    # or an earlier data_loss event naming them.
                    lost = subtract_ranges(
                        [(seq, seq) for seq, _, _ in dropped] + replaced, [(0, self._acked_upto)]
                    )
                    machine = dropped[-1][1] if dropped else replaced_machine
                    declared = [
                        make(record, need + i) for i, record in enumerate(declare(machine, lost))
                    ]
                    self._insert(c, declared)
                    need += len(declared)
                    depth += len(declared)
                    size += sum(len(r.payload) for r in declared)
            end = self._end
            if need > end:
                end = max(need, self._next + self._block)
                c.execute("UPDATE meta SET value = ? WHERE key = 'next_block'", (end,))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        self._end = end
        self._next = need
        self.last_seq = need - 1
        self.stats.appended += len(rows) + len(declared)
        self.stats.depth, self.stats.bytes = depth, size
        result = AppendResult(rows=rows, declared=declared)
        for seq, machine, kind in dropped:
            result.dropped.setdefault(machine, []).append(seq)
            if kind == RecordKind.TELEMETRY:
                self.stats.dropped_telemetry += 1
            else:
                self.stats.dropped_other += 1
        gone = {seq for seq, _, _ in dropped}
        result.rows = [r for r in rows if r.seq not in gone]
        return result

    @staticmethod
    def _insert(c: sqlite3.Connection, rows: Sequence[OutboxRow]) -> None:
        c.executemany(
            "INSERT INTO outbox (seq, kind, machine, topic, retain, payload)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [(r.seq, str(r.kind), r.machine, r.topic, int(r.retain), r.payload) for r in rows],
        )

    def _protected(self, rows: Sequence[OutboxRow]) -> set[int]:
        """Rows of the batch the cap never drops: each machine's newest state, declarations."""
        newest_state: dict[str, int] = {}
        keep: set[int] = set()
        for row in rows:
            if row.kind is RecordKind.STATE:
                newest_state[row.machine] = row.seq
            elif row.kind is RecordKind.EVENT and _DATA_LOSS_MARK in row.payload:
                keep.add(row.seq)
        return keep | set(newest_state.values())

    def _enforce_cap(
        self, c: sqlite3.Connection, depth: int, size: int, protected: set[int]
    ) -> tuple[list[tuple[int, str, str]], tuple[list[tuple[int, int]], str], int, int]:
        """Drop rows to a tenth below the cap.

        Returns the dropped rows (seq, machine, kind), the replaced ranges and their machine,
        and the new depth and size. The stream's pending ``outbox_full`` events are taken
        out first: the caller's new one covers what they declared and their own seqs.
        """
        replaced: list[tuple[int, int]] = []
        replaced_machine = ""
        pending = c.execute(
            "SELECT seq, machine, payload FROM outbox"
            " WHERE kind = 'event' AND instr(payload, ?) > 0 ORDER BY seq",
            (_DATA_LOSS_MARK,),
        ).fetchall()
        for seq, machine, payload in pending:
            loss = _loss_in(bytes(payload), self.stream)
            if loss is None or loss[0] != OUTBOX_FULL or int(seq) in protected:
                continue
            c.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
            replaced.extend([*loss[1], (int(seq), int(seq))])
            replaced_machine = str(machine)
            depth -= 1
            size -= len(payload)
        # Once over, make a tenth of room: the data_loss event that follows must fit.
        max_rows = self.max_rows - max(1, self.max_rows // 10)
        max_bytes = self.max_bytes - max(1, self.max_bytes // 10)
        dropped: list[tuple[int, str, str]] = []
        # Oldest telemetry first, then the oldest of the rest; data_loss events never.
        for where, params in (
            ("kind = 'telemetry'", ()),
            (
                "kind != 'telemetry' AND NOT (kind = 'event' AND instr(payload, ?) > 0)",
                (_DATA_LOSS_MARK,),
            ),
        ):
            if depth <= max_rows and size <= max_bytes:
                break
            chosen: list[tuple[int, str, str]] = []
            cursor = c.execute(
                f"SELECT seq, machine, kind, length(payload) FROM outbox WHERE {where}"  # noqa: S608 - constant
                " ORDER BY seq",
                params,
            )
            for seq, machine, kind, length in cursor:
                if depth <= max_rows and size <= max_bytes:
                    break
                if int(seq) in protected:
                    continue
                chosen.append((int(seq), str(machine), str(kind)))
                depth -= 1
                size -= int(length)
            cursor.close()
            c.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s, _, _ in chosen])
            dropped.extend(chosen)
        dropped.sort()
        return dropped, (replaced, replaced_machine), depth, size

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
        self._acked_upto = max(self._acked_upto, upto)
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

    async def declared_lost(self) -> list[tuple[int, int]]:
        """Seqs of this stream declared lost by ``data_loss`` events still in the outbox.

        Those events have not been acknowledged, so they go out again with any replay that
        covers them: their seqs need no second declaration.
        """

        def find() -> list[tuple[int, int]]:
            rows = self._db.conn.execute(
                "SELECT payload FROM outbox WHERE kind = 'event' AND instr(payload, ?) > 0",
                (_DATA_LOSS_MARK,),
            ).fetchall()
            out: list[tuple[int, int]] = []
            for (payload,) in rows:
                loss = _loss_in(bytes(payload), self.stream)
                if loss is not None:
                    out.extend(loss[1])
            return merge_ranges(out)

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

            await run_to_end(finish)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
