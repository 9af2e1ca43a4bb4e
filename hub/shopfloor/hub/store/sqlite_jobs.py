"""Jobs in the SQLite store: the ``jobs`` table (migration 3) and the job book's calls.

:class:`SqliteJobs` is a mixin of :class:`~shopfloor.hub.store.sqlite.SqliteStore`: it uses
the store's writer connection under its lock for writes (one transaction per call) and the
reader connection for reads. Column names equal the fields of
:class:`~shopfloor.hub.store.job_records.JobRecord` (a
:class:`~shopfloor.hub.store.base.JobRow` plus the book's bookkeeping), so another backend
maps them one to one. The book's catch-up cursor is the ``records`` rowid of the last
record its stored jobs reflect, kept in ``counters`` as ``jobs_cursor``.

Every method raises :class:`~shopfloor.hub.errors.StoreError` when the database fails,
and also when a bound number does not fit SQLite's INTEGER (``OverflowError``): the book
and the API catch StoreError only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import aiosqlite

from shopfloor.hub.errors import StoreError
from shopfloor.hub.store.base import JobRow
from shopfloor.hub.store.job_records import (
    JobRecord,
    PastRunRow,
    StoredEvent,
    clamp_int64,
    is_int64,
    stored_event,
)
from shopfloor.hub.store.job_records import job_record as _record
from shopfloor.hub.store.job_records import job_row as _row
from shopfloor.hub.store.job_records import opt_float as _float
from shopfloor.hub.store.row_decoding import json_object as _obj

__all__ = ["JOBS_MIGRATION", "SqliteJobs"]

#: Migration 3 of the SQLite store (``store/sqlite.py`` MIGRATIONS).
JOBS_MIGRATION: Final = """
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY,
    machine_key TEXT NOT NULL,
    agent_job TEXT NOT NULL,
    program TEXT,
    unit TEXT NOT NULL,
    source TEXT,
    started_at INTEGER NOT NULL,
    ended_at INTEGER,
    outcome TEXT CHECK (outcome IS NULL OR outcome IN ('completed', 'aborted', 'failed')),
    done REAL,
    total REAL,
    detail TEXT NOT NULL DEFAULT '{}',
    eta_at INTEGER,
    eta_low_at INTEGER,
    eta_high_at INTEGER,
    eta_origin TEXT
        CHECK (eta_origin IS NULL OR eta_origin IN ('linear', 'history', 'schedule', 'firmware')),
    order_ref TEXT,
    updated_at INTEGER NOT NULL,
    started_known INTEGER NOT NULL DEFAULT 0,
    progress_ts INTEGER,
    end_reason TEXT CHECK (end_reason IS NULL OR end_reason IN ('event', 'superseded')),
    active_ms INTEGER,
    profile TEXT,
    header TEXT,
    UNIQUE (machine_key, agent_job)
) STRICT;
CREATE INDEX jobs_machine_started ON jobs (machine_key, started_at);
CREATE INDEX jobs_open ON jobs (machine_key) WHERE ended_at IS NULL;
CREATE INDEX jobs_order_ref ON jobs (order_ref, id) WHERE order_ref IS NOT NULL;
CREATE INDEX jobs_completed ON jobs (machine_key, program, ended_at)
    WHERE outcome = 'completed' AND end_reason = 'event';
"""

#: The JobRow columns, in JobRow's order; a JobRecord adds the book's bookkeeping.
_SELECT_ROWS: Final = (
    "SELECT id, machine_key, agent_job, program, unit, source, started_at, ended_at, outcome,"
    " done, total, detail, eta_at, eta_low_at, eta_high_at, eta_origin, order_ref, updated_at"
    " FROM jobs"
)
_SELECT_RECORDS: Final = (
    "SELECT id, machine_key, agent_job, program, unit, source, started_at, ended_at, outcome,"
    " done, total, detail, eta_at, eta_low_at, eta_high_at, eta_origin, order_ref, updated_at,"
    " started_known, progress_ts, end_reason, active_ms, profile, header FROM jobs"
)
_JOBS_SQL: Final = (
    "SELECT id, machine_key, agent_job, program, unit, source, started_at, ended_at, outcome,"
    " done, total, detail, eta_at, eta_low_at, eta_high_at, eta_origin, order_ref, updated_at"
    " FROM jobs WHERE (:mk IS NULL OR machine_key = :mk)"
    " AND (:ref IS NULL OR order_ref = :ref)"
    " AND (:ids IS NULL OR id IN (SELECT value FROM json_each(:ids)))"
    " AND (:running IS NULL OR (ended_at IS NULL) = :running)"
    " AND (:since IS NULL OR ended_at IS NULL OR ended_at >= :since)"
    " AND (:until IS NULL OR started_at < :until)"
    " AND (:after IS NULL OR id < :after)"
    " ORDER BY id DESC LIMIT :limit"
)
_CURSOR: Final = "jobs_cursor"
_MAX_LIMIT: Final = 10_000

_UPSERT_SQL: Final = (
    "INSERT INTO jobs (machine_key, agent_job, program, unit, source, started_at, ended_at,"
    " outcome, done, total, detail, eta_at, eta_low_at, eta_high_at, eta_origin, order_ref,"
    " updated_at, started_known, progress_ts, end_reason, active_ms, profile, header)"
    " VALUES (:machine_key, :agent_job, :program, :unit, :source, :started_at, :ended_at,"
    " :outcome, :done, :total, :detail, :eta_at, :eta_low_at, :eta_high_at, :eta_origin,"
    " :order_ref, :updated_at, :started_known, :progress_ts, :end_reason, :active_ms,"
    " :profile, :header)"
    " ON CONFLICT (machine_key, agent_job) DO UPDATE SET program = excluded.program,"
    " unit = excluded.unit, source = excluded.source, started_at = excluded.started_at,"
    " ended_at = excluded.ended_at, outcome = excluded.outcome, done = excluded.done,"
    " total = excluded.total, detail = excluded.detail, eta_at = excluded.eta_at,"
    " eta_low_at = excluded.eta_low_at, eta_high_at = excluded.eta_high_at,"
    " eta_origin = excluded.eta_origin, order_ref = excluded.order_ref,"
    " updated_at = excluded.updated_at, started_known = excluded.started_known,"
    " progress_ts = excluded.progress_ts, end_reason = excluded.end_reason,"
    " active_ms = excluded.active_ms, profile = excluded.profile, header = excluded.header"
    " RETURNING id"
)


def _json(value: Mapping[str, Any] | None) -> str | None:
    if value is None:
        return None
    return json.dumps(dict(value), separators=(",", ":"), ensure_ascii=False)


def _params(job: JobRecord) -> dict[str, Any]:
    return {
        "machine_key": job.machine_key,
        "agent_job": job.agent_job,
        "program": job.program,
        "unit": job.unit,
        "source": job.source,
        "started_at": job.started_at,
        "ended_at": job.ended_at,
        "outcome": str(job.outcome) if job.outcome is not None else None,
        "done": job.done,
        "total": job.total,
        "detail": _json(job.detail) or "{}",
        "eta_at": job.eta_at,
        "eta_low_at": job.eta_low_at,
        "eta_high_at": job.eta_high_at,
        "eta_origin": str(job.eta_origin) if job.eta_origin is not None else None,
        "order_ref": job.order_ref,
        "updated_at": job.updated_at,
        "started_known": int(job.started_known),
        "progress_ts": job.progress_ts,
        "end_reason": str(job.end_reason) if job.end_reason is not None else None,
        "active_ms": job.active_ms,
        "profile": _json(job.profile),
        "header": job.header,
    }


class SqliteJobs:
    """The ``jobs`` half of :class:`~shopfloor.hub.store.sqlite.SqliteStore`."""

    if TYPE_CHECKING:
        path: Path
        _lock: asyncio.Lock

        @property
        def _w(self) -> aiosqlite.Connection: ...

        @property
        def _r(self) -> aiosqlite.Connection: ...

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """A database error, or a bound number beyond SQLite's INTEGER, as StoreError."""
        try:
            yield
        except (sqlite3.Error, OverflowError) as exc:
            raise StoreError(f"{doing} {self.path} failed: {exc}") from exc

    # -- Store protocol ----------------------------------------------------------------------

    async def jobs(
        self,
        *,
        machine_key: str | None = None,
        order_ref: str | None = None,
        ids: Sequence[int] | None = None,
        running: bool | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        after_id: int | None = None,
        limit: int = 100,
    ) -> list[JobRow]:
        """Jobs matching every given filter, newest (highest id) first; a job overlaps
        ``[since_ms, until_ms)`` when it started before ``until_ms`` and had not ended
        before ``since_ms`` (a running job has not ended)."""
        if ids is not None and not ids:
            return []
        wanted = None
        if ids is not None:
            # An id outside 64 bits names no job (clamping it could name one).
            wanted = [int(i) for i in ids if is_int64(int(i))]
            if not wanted:
                return []
        params = {
            "mk": machine_key,
            "ref": order_ref,
            "ids": json.dumps(wanted) if wanted is not None else None,
            "running": None if running is None else int(running),
            "since": clamp_int64(since_ms),
            "until": clamp_int64(until_ms),
            "after": clamp_int64(after_id),
            "limit": max(0, min(limit, _MAX_LIMIT)),
        }
        with self._errors("reading jobs from"):
            async with self._r.execute(_JOBS_SQL, params) as cur:
                rows = await cur.fetchall()
        return [_row(r) for r in rows]

    async def job(self, job_id: int) -> JobRow | None:
        if not is_int64(job_id):
            return None
        with self._errors("reading a job from"):
            async with self._r.execute(_SELECT_ROWS + " WHERE id = ?", (job_id,)) as cur:
                row = await cur.fetchone()
        return _row(row) if row is not None else None

    # -- the job book's calls ----------------------------------------------------------------

    async def open_jobs(self) -> list[JobRecord]:
        with self._errors("reading the open jobs from"):
            async with self._r.execute(
                _SELECT_RECORDS + " WHERE ended_at IS NULL ORDER BY started_at, id"
            ) as cur:
                rows = await cur.fetchall()
        return [_record(r) for r in rows]

    async def job_record(self, machine_key: str, agent_job: str) -> JobRecord | None:
        with self._errors("reading a job from"):
            async with self._r.execute(
                _SELECT_RECORDS + " WHERE machine_key = ? AND agent_job = ?",
                (machine_key, agent_job),
            ) as cur:
                row = await cur.fetchone()
        return _record(row) if row is not None else None

    async def next_job_start(
        self, machine_key: str, after_ms: int, *, exclude: tuple[str, str] | None = None
    ) -> int | None:
        skip = exclude[1] if exclude is not None and exclude[0] == machine_key else None
        with self._errors("reading job starts from"):
            async with self._r.execute(
                "SELECT min(started_at) FROM jobs WHERE machine_key = :mk AND started_at > :after"
                " AND (:skip IS NULL OR agent_job != :skip)",
                {"mk": machine_key, "after": after_ms, "skip": skip},
            ) as cur:
                row = await cur.fetchone()
        return int(row[0]) if row is not None and row[0] is not None else None

    async def save_jobs(
        self, records: Sequence[JobRecord], *, cursor: int | None
    ) -> list[JobRecord]:
        async with self._lock:
            conn = self._w
            out: list[JobRecord] = []
            try:
                await conn.execute("BEGIN IMMEDIATE")
                try:
                    for job in records:
                        async with conn.execute(_UPSERT_SQL, _params(job)) as cur:
                            row = await cur.fetchone()
                        assert row is not None
                        saved = _copy(job)
                        saved.id = int(row[0])
                        out.append(saved)
                    if cursor is not None:
                        await conn.execute(
                            "INSERT INTO counters (name, value) VALUES (?, ?)"
                            " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                            (_CURSOR, cursor),
                        )
                except BaseException:
                    await conn.execute("ROLLBACK")
                    raise
                await conn.execute("COMMIT")
            except (sqlite3.Error, OverflowError) as exc:
                raise StoreError(f"writing jobs to {self.path} failed: {exc}") from exc
            return out

    async def job_cursor(self) -> int:
        with self._errors("reading the job cursor from"):
            async with self._r.execute(
                "SELECT value FROM counters WHERE name = ?", (_CURSOR,)
            ) as cur:
                row = await cur.fetchone()
        return int(row[0]) if row is not None else 0

    async def record_cursor(self) -> int:
        with self._errors("reading the record cursor from"):
            async with self._r.execute("SELECT coalesce(max(rowid), 0) FROM records") as cur:
                row = await cur.fetchone()
        return int(row[0]) if row is not None else 0

    async def job_events_after(self, cursor: int, limit: int) -> list[StoredEvent]:
        with self._errors("reading the stored events from"):
            async with self._r.execute(
                "SELECT r.rowid, r.agent, r.stream, r.seq, r.machine, r.ts, r.mono, r.received_at,"
                " r.replay, r.body, coalesce(m.site, ''), r.kind"
                " FROM records r LEFT JOIN machines m ON m.key = r.agent || '/' || r.machine"
                # What the book replays: events, and the state snapshots that carry a job
                # (telemetry is too much to replay; the book re-applies the batch's own).
                " WHERE r.rowid > ? AND (r.kind = 'event'"
                "   OR (r.kind = 'state' AND json_type(r.body, '$.job') = 'object'))"
                " ORDER BY r.rowid LIMIT ?",
                (clamp_int64(cursor), limit),
            ) as cur:
                rows = await cur.fetchall()
        return [stored_event(r) for r in rows]

    async def past_runs(
        self,
        machine_key: str,
        *,
        program: str | None,
        total: float | None,
        unit: str,
        before_ms: int,
        limit: int,
    ) -> list[PastRunRow]:
        if program is None and total is None:
            return []
        with self._errors("reading past runs from"):
            async with self._r.execute(
                "SELECT id, started_at, ended_at, total, active_ms, profile FROM jobs"
                " WHERE machine_key = :mk AND outcome = 'completed' AND end_reason = 'event'"
                " AND ended_at <= :before AND unit = :unit AND active_ms > 0"
                " AND ((:program IS NOT NULL AND program = :program)"
                "   OR (:program IS NULL AND program IS NULL AND total = :total))"
                " ORDER BY ended_at DESC, id DESC LIMIT :limit",
                {
                    "mk": machine_key,
                    "before": before_ms,
                    "unit": unit,
                    "program": program,
                    "total": total,
                    "limit": limit,
                },
            ) as cur:
                rows = await cur.fetchall()
        return [
            PastRunRow(
                id=int(r[0]),
                started_at=int(r[1]),
                ended_at=int(r[2]),
                total=_float(r[3]),
                active_ms=int(r[4]),
                profile=_obj(r[5]),
            )
            for r in rows
        ]

    async def part_times(self, machine_key: str, limit: int) -> list[tuple[int, str | None]]:
        agent, _, machine = machine_key.partition("/")
        with self._errors("reading part times from"):
            async with self._r.execute(
                "SELECT ts, json_extract(body, '$.program') FROM records"
                " WHERE agent = ? AND machine = ? AND kind = 'event'"
                " AND json_extract(body, '$.event') = 'part_counted'"
                " ORDER BY ts DESC, rowid DESC LIMIT ?",
                (agent, machine, limit),
            ) as cur:
                rows = await cur.fetchall()
        times = [(int(ts), p if isinstance(p, str) and p else None) for ts, p in rows]
        # Oldest first; two parts at the same ts (one with a program, one without) must not
        # compare None with a str.
        return sorted(times, key=lambda t: (t[0], t[1] is not None, t[1] or ""))


def _copy(job: JobRecord) -> JobRecord:
    return replace(job, detail=dict(job.detail))
