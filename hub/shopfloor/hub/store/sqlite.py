"""The embedded event store: one SQLite file in WAL mode, written in batches.

One writer connection (guarded by a lock, one transaction per batch) and one reader
connection: WAL lets readers see the last commit while a batch is being written.
Schema changes are numbered migrations recorded in ``schema_migrations``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import aiosqlite

from shopfloor.contract import MachineState, RecordKind, parse_data_loss
from shopfloor.hub.errors import StoreError
from shopfloor.hub.store.base import (
    AgentRow,
    BatchResult,
    DataLossRow,
    Incoming,
    Interval,
    MachineRow,
    RejectedRow,
    Rejection,
    StateRow,
    StatusUpdate,
    StreamLag,
    TimeWindow,
    WriteBatch,
    agent_state_rows,
    machine_key,
)
from shopfloor.hub.store.row_decoding import machine_row
from shopfloor.hub.store.sqlite_feed import FEED_MIGRATION, SqliteFeed
from shopfloor.hub.store.sqlite_jobs import JOBS_MIGRATION, SqliteJobs
from shopfloor.hub.store.sqlite_orders import ORDERS_MIGRATION, SqliteOrders

log = logging.getLogger(__name__)

#: Rejected payloads are kept for inspection up to this size.
MAX_REJECTED_PAYLOAD: Final = 64 * 1024
#: Only the newest rejected messages are kept; all are counted.
DEFAULT_KEEP_REJECTED: Final = 10_000
_INSERT_CHUNK: Final = 500

#: Numbered migrations. Append only; never edit one that has shipped.
MIGRATIONS: Final[tuple[tuple[int, str], ...]] = (
    (
        1,
        """
        CREATE TABLE records (
            agent TEXT NOT NULL,
            stream TEXT NOT NULL,
            seq INTEGER NOT NULL,
            machine TEXT NOT NULL,
            kind TEXT NOT NULL,
            ts INTEGER NOT NULL,
            mono INTEGER,
            received_at INTEGER NOT NULL,
            replay INTEGER NOT NULL,
            body TEXT NOT NULL,
            PRIMARY KEY (agent, stream, seq)
        ) STRICT;
        CREATE INDEX records_machine_kind_ts ON records (agent, machine, kind, ts);

        CREATE TABLE state_changes (
            id INTEGER PRIMARY KEY,
            machine_key TEXT NOT NULL,
            ts INTEGER NOT NULL,
            state TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT '',
            source TEXT NOT NULL CHECK (source IN ('agent', 'hub'))
        ) STRICT;
        CREATE INDEX state_changes_machine_ts ON state_changes (machine_key, ts);

        CREATE TABLE machines (
            key TEXT PRIMARY KEY,
            agent TEXT NOT NULL,
            machine TEXT NOT NULL,
            site TEXT NOT NULL,
            name TEXT NOT NULL,
            kind TEXT,
            protocol TEXT,
            firmware TEXT,
            last_seen INTEGER,
            meta TEXT NOT NULL DEFAULT '{}',
            meta_ts INTEGER,
            state_body TEXT,
            state_ts INTEGER
        ) STRICT;

        CREATE TABLE agents (
            id TEXT PRIMARY KEY,
            site TEXT NOT NULL,
            online INTEGER NOT NULL,
            epoch INTEGER NOT NULL,
            version TEXT NOT NULL,
            last_status_ts INTEGER NOT NULL,
            changed_at INTEGER NOT NULL
        ) STRICT;

        CREATE TABLE rejected (
            id INTEGER PRIMARY KEY,
            received_at INTEGER NOT NULL,
            topic TEXT NOT NULL,
            payload BLOB NOT NULL,
            reason TEXT NOT NULL
        ) STRICT;

        CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) STRICT;

        CREATE TABLE stream_progress (
            agent TEXT NOT NULL,
            stream TEXT NOT NULL,
            contiguous_seq INTEGER NOT NULL,
            max_seq INTEGER NOT NULL,
            PRIMARY KEY (agent, stream)
        ) STRICT;
        """,
    ),
    (
        2,
        """
        ALTER TABLE records ADD COLUMN clock TEXT
            CHECK (clock IS NULL OR clock IN ('corrected', 'flagged'));
        ALTER TABLE records ADD COLUMN agent_ts INTEGER;

        CREATE TABLE data_loss (
            id INTEGER PRIMARY KEY,
            agent TEXT NOT NULL,
            stream TEXT NOT NULL,
            from_seq INTEGER NOT NULL,
            to_seq INTEGER NOT NULL,
            reason TEXT NOT NULL,
            missing INTEGER NOT NULL,
            declared_seq INTEGER NOT NULL,
            received_at INTEGER NOT NULL
        ) STRICT;
        CREATE INDEX data_loss_stream ON data_loss (agent, stream, from_seq);
        """,
    ),
    (3, JOBS_MIGRATION),  # jobs (store/sqlite_jobs.py)
    FEED_MIGRATION,  # 5: feed_cursors (store/sqlite_feed.py)
    ORDERS_MIGRATION,  # 4: orders, webhooks and their outbox (store/sqlite_orders.py)
)

#: Time in state, computed in SQL: each change lasts until the next (lead), clipped to the
#: window; the last change at or before the window start is carried in; time before the
#: first change is OFFLINE ("no data").
_INTERVALS_SQL: Final = """
WITH seg AS (
    SELECT id, state, detail, ts,
           lead(ts) OVER (ORDER BY ts, id) AS next_ts
    FROM state_changes c
    WHERE machine_key = :key
      AND ts < :end
      AND ts >= coalesce(
            (SELECT max(x.ts) FROM state_changes x
             WHERE x.machine_key = :key AND x.ts <= :start AND NOT {void_x}),
            :start)
      AND NOT {void_c}
),
clipped AS (
    SELECT id, state, detail, ts,
           max(ts, :start) AS f,
           min(coalesce(next_ts, :end), :end) AS t
    FROM seg
    WHERE coalesce(next_ts, :end) > :start
)
SELECT 'OFFLINE' AS state, 'no data' AS detail, :start AS f,
       coalesce((SELECT min(f) FROM clipped), :end) AS t, -1 AS ts, -1 AS id
WHERE coalesce((SELECT min(f) FROM clipped), :end) > :start
UNION ALL
SELECT state, detail, f, t, ts, id FROM clipped WHERE t > f
ORDER BY ts, id
"""


#: Time in state per window, for many windows (of one or many machines) in one query.
#: ``:windows`` is a JSON array of [id, machine_key, start, end] (end already clipped to now).
#: Per window: the last row at or before its start is carried in, each row lasts until the
#: next by (ts, id) (lead), every segment is clipped to the window and summed per state.
#: Each window is its own correlated subquery over the (machine_key, ts) index, so lead()
#: runs in index order without a sort (3x faster than one lead() partitioned over a join).
#: The answer per window is a JSON object {state: ms}; the time no row covers (before the
#: machine's first data) is OFFLINE, added by the caller. Nothing is cached: a late
#: (replayed) row changes the answer of every window it falls in on the next query.
#:
#: A hub-sourced OFFLINE row (agent lost, data stale) is void when the agent's own rows
#: show it kept observing: its previous and next agent-sourced rows are at most ``:gap`` ms
#: apart (the agent heartbeats its state; a replay after an outage brings those rows), and
#: the next one is not OFFLINE (a restarted agent's ``agent_started`` row: it saw nothing
#: in between). A negative ``:gap`` never voids.
_VOID_SQL: Final = """
    ({x}.source = 'hub' AND {x}.state = 'OFFLINE' AND :gap >= 0 AND coalesce(
     (SELECT n.state <> 'OFFLINE' AND n.ts - (
        SELECT p.ts FROM state_changes p WHERE p.machine_key = {x}.machine_key
        AND p.ts <= {x}.ts AND p.source = 'agent' ORDER BY p.ts DESC LIMIT 1) <= :gap
      FROM state_changes n WHERE n.machine_key = {x}.machine_key
        AND n.ts > {x}.ts AND n.source = 'agent' ORDER BY n.ts LIMIT 1), 0))
"""
_INTERVALS_SQL_VOIDED: Final = _INTERVALS_SQL.replace(
    "{void_x}", _VOID_SQL.replace("{x}", "x")
).replace("{void_c}", _VOID_SQL.replace("{x}", "c"))  # constant fragments only

_TIME_IN_STATE_SQL: Final = """
WITH w AS MATERIALIZED (
    SELECT json_extract(value, '$[0]') AS wid, json_extract(value, '$[1]') AS key,
           json_extract(value, '$[2]') AS s, json_extract(value, '$[3]') AS e
    FROM json_each(:windows)
),
lo AS MATERIALIZED (
    SELECT wid, key, s, e,
           coalesce((SELECT x.ts FROM state_changes x
                     WHERE x.machine_key = w.key AND x.ts <= w.s AND NOT {void_x}
                     ORDER BY x.ts DESC LIMIT 1), w.s) AS lo
    FROM w
)
SELECT lo.wid, lo.e - lo.s, (
    SELECT json_group_object(state, ms) FROM (
        SELECT state, sum(max(0, min(coalesce(next_ts, lo.e), lo.e) - max(ts, lo.s))) AS ms
        FROM (
            SELECT c.state, c.ts, lead(c.ts) OVER (ORDER BY c.ts, c.id) AS next_ts
            FROM state_changes c
            WHERE c.machine_key = lo.key AND c.ts >= lo.lo AND c.ts < lo.e
              AND NOT {void_c}
        )
        GROUP BY state
    )
)
FROM lo
""".replace("{void_x}", _VOID_SQL.replace("{x}", "x")).replace(
    "{void_c}", _VOID_SQL.replace("{x}", "c")
)  # only constant SQL fragments are joined; every value is bound


_INSERT_RECORDS_SQL: Final = (
    "INSERT INTO records (agent, stream, seq, machine, kind, ts, mono, received_at, replay, body,"
    " clock, agent_ts) VALUES {values} ON CONFLICT DO NOTHING RETURNING agent, stream, seq"
)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _dumps(obj: Mapping[str, Any]) -> str:
    return json.dumps(dict(obj), separators=(",", ":"), ensure_ascii=False)


def _opt_str(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    return value if isinstance(value, str) and value else None


class SqliteStore(SqliteFeed, SqliteOrders, SqliteJobs):
    """:class:`~shopfloor.hub.store.base.Store` on one SQLite file."""

    def __init__(self, path: str | Path, *, keep_rejected: int = DEFAULT_KEEP_REJECTED) -> None:
        self.path = Path(path)
        self.keep_rejected = keep_rejected
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> SqliteStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = await self._connect()
            await self._writer.execute("PRAGMA journal_mode=WAL")
            await self._migrate(self._writer)
            self._reader = await self._connect()
        except (OSError, sqlite3.Error) as exc:
            await self.close()
            raise StoreError(f"cannot open the database {self.path}: {exc}") from exc

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        for pragma in (
            "PRAGMA synchronous=NORMAL",
            "PRAGMA busy_timeout=5000",
            "PRAGMA foreign_keys=ON",
            "PRAGMA temp_store=MEMORY",
        ):
            await conn.execute(pragma)
        return conn

    async def close(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None

    async def _migrate(self, conn: aiosqlite.Connection) -> None:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)"
        )
        async with conn.execute("SELECT version FROM schema_migrations") as cur:
            applied = {row[0] for row in await cur.fetchall()}
        known = {version for version, _ in MIGRATIONS}
        if applied - known:
            raise StoreError(
                f"the database {self.path} has schema versions {sorted(applied - known)} that "
                "this hub does not know; it was written by a newer hub - upgrade this one"
            )
        for version, sql in MIGRATIONS:
            if version in applied:
                continue
            log.info("migrating %s to schema version %d", self.path, version)
            await conn.executescript(
                f"BEGIN;\n{sql}\nINSERT INTO schema_migrations VALUES ({version}, {_now_ms()});\n"
                "COMMIT;"
            )

    @property
    def _w(self) -> aiosqlite.Connection:
        if self._writer is None:
            raise StoreError("the store is not open")
        return self._writer

    @property
    def _r(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise StoreError("the store is not open")
        return self._reader

    async def schema_version(self) -> int:
        async with self._r.execute("SELECT max(version) FROM schema_migrations") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    async def ping(self) -> bool:
        try:
            async with self._r.execute("SELECT 1") as cur:
                return await cur.fetchone() is not None
        except (sqlite3.Error, StoreError, ValueError):
            return False

    # -- writing -----------------------------------------------------------------------------

    async def insert_batch(self, records: Sequence[Incoming]) -> int:
        return len((await self.write(WriteBatch(records=records))).new)

    async def add_states(self, rows: Sequence[StateRow]) -> None:
        if rows:
            await self.write(WriteBatch(states=rows))

    async def write(self, batch: WriteBatch) -> BatchResult:
        async with self._lock:
            conn = self._w
            try:
                await conn.execute("BEGIN IMMEDIATE")
                try:
                    result = await self._write(conn, batch)
                except BaseException:
                    await conn.execute("ROLLBACK")
                    raise
                await conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError(f"writing a batch to {self.path} failed: {exc}") from exc
            return result

    async def _write(self, conn: aiosqlite.Connection, batch: WriteBatch) -> BatchResult:
        new = await self._insert_records(conn, batch.records)
        await self._update_machines(conn, new)
        await self._insert_states(conn, [*agent_state_rows(new), *batch.states])
        await self._insert_data_losses(conn, new)
        watermarks = await self._advance_streams(conn, batch.records)
        applied = [s for s in batch.statuses if await self._apply_status(conn, s)]
        await self._insert_rejections(conn, batch.rejections)
        return BatchResult(
            new=new,
            duplicates=len(batch.records) - len(new),
            watermarks=watermarks,
            statuses=applied,
        )

    async def _insert_records(
        self, conn: aiosqlite.Connection, records: Sequence[Incoming]
    ) -> list[Incoming]:
        inserted: set[tuple[str, str, int]] = set()
        for start in range(0, len(records), _INSERT_CHUNK):
            chunk = records[start : start + _INSERT_CHUNK]
            params: list[Any] = []
            for inc in chunk:
                e = inc.envelope
                params += [
                    e.agent,
                    e.stream,
                    e.seq,
                    e.machine,
                    str(e.kind),
                    e.ts,
                    e.mono,
                    inc.received_at,
                    int(e.replay),
                    _dumps(e.body),
                    inc.clock,
                    inc.agent_ts,
                ]
            # Only placeholders are joined into the SQL; every value is bound.
            values = ",".join(["(?,?,?,?,?,?,?,?,?,?,?,?)"] * len(chunk))
            sql = _INSERT_RECORDS_SQL.replace("{values}", values)
            async with conn.execute(sql, params) as cur:
                inserted.update((a, s, q) for a, s, q in await cur.fetchall())
        new = []
        for inc in records:
            key = (inc.envelope.agent, inc.envelope.stream, inc.envelope.seq)
            if key in inserted:
                inserted.discard(key)  # a key repeated inside one batch is new only once
                new.append(inc)
        return new

    async def _update_machines(self, conn: aiosqlite.Connection, new: Sequence[Incoming]) -> None:
        if not new:
            return
        await conn.executemany(
            "INSERT INTO machines (key, agent, machine, site, name, last_seen)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET"
            " site = excluded.site,"
            " last_seen = max(coalesce(last_seen, 0), excluded.last_seen)",
            [
                (
                    machine_key(i.envelope.agent, i.envelope.machine),
                    i.envelope.agent,
                    i.envelope.machine,
                    i.site,
                    i.envelope.machine,
                    i.received_at,
                )
                for i in new
            ],
        )
        metas = [i for i in new if i.envelope.kind is RecordKind.META]
        await conn.executemany(
            "UPDATE machines SET kind = ?, protocol = ?, firmware = ?, name = ?, meta = ?,"
            " meta_ts = ? WHERE key = ? AND coalesce(meta_ts, -1) <= ?",
            [
                (
                    _opt_str(i.envelope.body, "kind"),
                    _opt_str(i.envelope.body, "protocol"),
                    _opt_str(i.envelope.body, "firmware"),
                    _opt_str(i.envelope.body, "name") or i.envelope.machine,
                    _dumps(i.envelope.body),
                    i.envelope.ts,
                    machine_key(i.envelope.agent, i.envelope.machine),
                    i.envelope.ts,
                )
                for i in metas
            ],
        )
        await conn.executemany(
            "UPDATE machines SET state_body = ?, state_ts = ?"
            " WHERE key = ? AND coalesce(state_ts, -1) <= ?",
            [
                (
                    _dumps(i.envelope.body),
                    i.envelope.ts,
                    machine_key(i.envelope.agent, i.envelope.machine),
                    i.envelope.ts,
                )
                for i in new
                if i.envelope.kind is RecordKind.STATE
            ],
        )

    async def _insert_states(self, conn: aiosqlite.Connection, rows: Iterable[StateRow]) -> None:
        await conn.executemany(
            "INSERT INTO state_changes (machine_key, ts, state, detail, source)"
            " VALUES (?, ?, ?, ?, ?)",
            [(r.machine_key, r.ts, str(r.state), r.detail, str(r.source)) for r in rows],
        )

    async def _insert_data_losses(
        self, conn: aiosqlite.Connection, new: Sequence[Incoming]
    ) -> None:
        """Record every newly stored ``data_loss`` event's ranges (its own stream only)."""
        for inc in new:
            e = inc.envelope
            if e.kind is not RecordKind.EVENT:
                continue
            loss = parse_data_loss(e.body)
            if loss is None or loss.stream != e.stream:
                continue
            for first, last in loss.ranges:
                if first >= e.seq:
                    continue  # an agent cannot declare seqs after its own declaration
                last = min(last, e.seq - 1)  # noqa: PLW2901 - clipped in place
                async with conn.execute(
                    "SELECT count(*) FROM records WHERE agent = ? AND stream = ?"
                    " AND seq BETWEEN ? AND ?",
                    (e.agent, e.stream, first, last),
                ) as cur:
                    row = await cur.fetchone()
                stored = int(row[0]) if row else 0
                await conn.execute(
                    "INSERT INTO data_loss (agent, stream, from_seq, to_seq, reason, missing,"
                    " declared_seq, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        e.agent,
                        e.stream,
                        first,
                        last,
                        loss.reason,
                        last - first + 1 - stored,
                        e.seq,
                        inc.received_at,
                    ),
                )

    async def _advance_streams(
        self, conn: aiosqlite.Connection, records: Sequence[Incoming]
    ) -> dict[str, dict[str, int]]:
        top: dict[tuple[str, str], int] = {}
        for inc in records:
            key = (inc.envelope.agent, inc.envelope.stream)
            top[key] = max(top.get(key, 0), inc.envelope.seq)
        for (agent, stream), max_seq in top.items():
            await conn.execute(
                "INSERT INTO stream_progress (agent, stream, contiguous_seq, max_seq)"
                " VALUES (?, ?, 0, ?) ON CONFLICT (agent, stream) DO UPDATE SET"
                " max_seq = max(max_seq, excluded.max_seq)",
                (agent, stream, max_seq),
            )
            async with conn.execute(
                "SELECT contiguous_seq FROM stream_progress WHERE agent = ? AND stream = ?",
                (agent, stream),
            ) as cur:
                row = await cur.fetchone()
            contiguous = int(row[0]) if row else 0
            moved = await self._contiguous_from(conn, agent, stream, contiguous)
            if moved != contiguous:
                await conn.execute(
                    "UPDATE stream_progress SET contiguous_seq = ? WHERE agent = ? AND stream = ?",
                    (moved, agent, stream),
                )
        out: dict[str, dict[str, int]] = {}
        for agent in {a for a, _ in top}:
            async with conn.execute(
                "SELECT stream, contiguous_seq FROM stream_progress WHERE agent = ?", (agent,)
            ) as cur:
                out[agent] = {s: int(c) for s, c in await cur.fetchall()}
        return out

    async def _contiguous_from(
        self, conn: aiosqlite.Connection, agent: str, stream: str, contiguous: int
    ) -> int:
        """Advance ``contiguous`` over stored seqs and over ranges declared lost."""
        while True:
            # The run that starts right after the watermark ends at the first seq whose
            # successor is missing; if the next seq itself is missing, nothing moves.
            async with conn.execute(
                "SELECT r.seq FROM records r WHERE r.agent = :a AND r.stream = :s"
                " AND r.seq > :c AND EXISTS (SELECT 1 FROM records f WHERE f.agent = :a"
                "   AND f.stream = :s AND f.seq = :c + 1)"
                " AND NOT EXISTS (SELECT 1 FROM records n WHERE n.agent = :a"
                "   AND n.stream = :s AND n.seq = r.seq + 1)"
                " ORDER BY r.seq LIMIT 1",
                {"a": agent, "s": stream, "c": contiguous},
            ) as cur:
                row = await cur.fetchone()
            if row is not None:
                contiguous = int(row[0])
                continue
            # A range the agent declared lost counts as filled.
            async with conn.execute(
                "SELECT max(to_seq) FROM data_loss WHERE agent = :a AND stream = :s"
                " AND from_seq <= :c + 1 AND to_seq >= :c + 1",
                {"a": agent, "s": stream, "c": contiguous},
            ) as cur:
                row = await cur.fetchone()
            if row is not None and row[0] is not None:
                contiguous = int(row[0])
                continue
            return contiguous

    async def _apply_status(self, conn: aiosqlite.Connection, update: StatusUpdate) -> bool:
        """Record an agent status unless it is from an older boot than the one we know."""
        status = update.status
        async with conn.execute("SELECT epoch FROM agents WHERE id = ?", (status.agent,)) as cur:
            row = await cur.fetchone()
        if row is not None and status.epoch < int(row[0]):
            return False
        await conn.execute(
            "INSERT INTO agents (id, site, online, epoch, version, last_status_ts, changed_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET site = excluded.site,"
            " online = excluded.online, epoch = excluded.epoch, version = excluded.version,"
            " last_status_ts = excluded.last_status_ts, changed_at = excluded.changed_at",
            (
                status.agent,
                update.site,
                int(status.online),
                status.epoch,
                status.version,
                status.ts,
                update.received_at,
            ),
        )
        return True

    async def _insert_rejections(
        self, conn: aiosqlite.Connection, rejections: Sequence[Rejection]
    ) -> None:
        if not rejections:
            return
        await conn.executemany(
            "INSERT INTO rejected (received_at, topic, payload, reason) VALUES (?, ?, ?, ?)",
            [
                (r.received_at, r.topic, r.payload[:MAX_REJECTED_PAYLOAD], r.reason)
                for r in rejections
            ],
        )
        await conn.execute(
            "INSERT INTO counters (name, value) VALUES ('rejected_total', ?)"
            " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            (len(rejections),),
        )
        await conn.execute(
            "DELETE FROM rejected WHERE id <= (SELECT max(id) FROM rejected) - ?",
            (self.keep_rejected,),
        )

    # -- reading -----------------------------------------------------------------------------

    async def watermarks(self, agent: str) -> dict[str, int]:
        async with self._r.execute(
            "SELECT stream, contiguous_seq FROM stream_progress WHERE agent = ?", (agent,)
        ) as cur:
            return {s: int(c) for s, c in await cur.fetchall()}

    async def stream_progress(self, agent: str, stream: str) -> tuple[int, int] | None:
        async with self._r.execute(
            "SELECT contiguous_seq, max_seq FROM stream_progress WHERE agent = ? AND stream = ?",
            (agent, stream),
        ) as cur:
            row = await cur.fetchone()
        return (int(row[0]), int(row[1])) if row else None

    async def lagging_streams(self) -> list[StreamLag]:
        async with self._r.execute(
            "SELECT agent, stream, contiguous_seq, max_seq FROM stream_progress"
            " WHERE contiguous_seq < max_seq ORDER BY agent, stream"
        ) as cur:
            rows = await cur.fetchall()
        return [StreamLag(a, s, int(c), int(m)) for a, s, c, m in rows]

    async def data_losses(self, agent: str | None = None) -> list[DataLossRow]:
        async with self._r.execute(
            "SELECT agent, stream, from_seq, to_seq, reason, missing, received_at FROM data_loss"
            " WHERE :a IS NULL OR agent = :a ORDER BY id",
            {"a": agent},
        ) as cur:
            rows = await cur.fetchall()
        return [
            DataLossRow(a, s, int(f), int(t), str(r), int(m), int(at))
            for a, s, f, t, r, m, at in rows
        ]

    async def agent_sites(self) -> dict[str, str]:
        async with self._r.execute(
            "SELECT agent, site FROM machines UNION SELECT id, site FROM agents"
        ) as cur:
            rows = await cur.fetchall()
        return {str(a): str(s) for a, s in rows}

    async def state_intervals(
        self,
        key: str,
        from_ms: int,
        to_ms: int,
        *,
        now_ms: int,
        heartbeat_gap_ms: int | None = None,
    ) -> list[Interval]:
        end = min(to_ms, now_ms)
        if end <= from_ms:
            return []
        gap = -1 if heartbeat_gap_ms is None else heartbeat_gap_ms
        async with self._r.execute(
            _INTERVALS_SQL_VOIDED, {"key": key, "start": from_ms, "end": end, "gap": gap}
        ) as cur:
            rows = await cur.fetchall()
        return [Interval(MachineState(s), str(d), int(f), int(t)) for s, d, f, t, _, _ in rows]

    async def time_in_state(
        self, windows: Sequence[TimeWindow], *, now_ms: int, heartbeat_gap_ms: int | None = None
    ) -> dict[int, dict[MachineState, int]]:
        """Milliseconds in each state per window, summed in SQL (see ``_TIME_IN_STATE_SQL``).

        Each window is clipped to ``now_ms``; its states sum to exactly its clipped length
        (time without data is OFFLINE). Windows that are empty after clipping are absent.
        With ``heartbeat_gap_ms``, a hub-sourced OFFLINE row is ignored when the agent's own
        rows around it are at most that far apart (it kept observing; a replay proved it)."""
        spans = [
            [w.id, w.key, w.start, min(w.end, now_ms)]
            for w in windows
            if min(w.end, now_ms) > w.start
        ]
        out: dict[int, dict[MachineState, int]] = {}
        if not spans:
            return out
        async with self._r.execute(
            _TIME_IN_STATE_SQL,
            {
                "windows": json.dumps(spans, separators=(",", ":")),
                "gap": -1 if heartbeat_gap_ms is None else heartbeat_gap_ms,
            },
        ) as cur:
            rows = await cur.fetchall()
        for wid, length, sums in rows:
            per = {MachineState(k): int(v) for k, v in json.loads(sums or "{}").items() if v}
            unknown = int(length) - sum(per.values())  # before the first data: OFFLINE
            if unknown:
                per[MachineState.OFFLINE] = per.get(MachineState.OFFLINE, 0) + unknown
            out[int(wid)] = per
        return out

    async def machines(self) -> list[MachineRow]:
        async with self._r.execute(
            "SELECT m.key, m.agent, m.machine, m.site, m.name, m.kind, m.protocol, m.firmware,"
            " m.last_seen, m.meta, m.state_body, m.state_ts,"
            " s.ts, s.state, s.detail, s.source"
            " FROM machines m LEFT JOIN state_changes s ON s.id = ("
            "   SELECT id FROM state_changes WHERE machine_key = m.key"
            "   ORDER BY ts DESC, id DESC LIMIT 1)"
            " ORDER BY m.key"
        ) as cur:
            rows = await cur.fetchall()
        return [machine_row(r) for r in rows]

    async def agents(self) -> list[AgentRow]:
        async with self._r.execute(
            "SELECT id, site, online, epoch, version, last_status_ts FROM agents ORDER BY id"
        ) as cur:
            rows = await cur.fetchall()
        return [AgentRow(r[0], r[1], bool(r[2]), int(r[3]), r[4], int(r[5])) for r in rows]

    async def rejected(self, limit: int) -> list[RejectedRow]:
        async with self._r.execute(
            "SELECT id, received_at, topic, payload, reason FROM rejected ORDER BY id DESC LIMIT ?",
            (limit,),
        ) as cur:
            rows = await cur.fetchall()
        return [RejectedRow(int(r[0]), int(r[1]), r[2], bytes(r[3]), r[4]) for r in rows]

    async def rejected_total(self) -> int:
        async with self._r.execute(
            "SELECT value FROM counters WHERE name = 'rejected_total'"
        ) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0
