"""Jobs on the PostgreSQL store: the ``jobs`` table (migration 3) and the job book's calls.

The same contract as :mod:`.sqlite_jobs`, column for column (the names of
:class:`~shopfloor.hub.store.job_records.JobRecord`'s fields): reads go through a reader
connection, :meth:`PostgresJobs.save_jobs` is one transaction on the store's single writer.
The book's catch-up cursor is ``records.id`` (the record feed's cursor, SQLite's rowid) of
the last record its stored jobs reflect, kept in ``counters`` as ``jobs_cursor``.

What differs from SQLite, and why:

- ``detail`` and ``profile`` are ``jsonb``; ``done`` and ``total`` are ``double precision``
  (SQLite's REAL); ``started_known`` is ``boolean``.
- A job is saved by ``UPDATE`` of its (machine, agent job) row, and inserted only when
  there is none: an ``INSERT ... ON CONFLICT DO UPDATE`` would draw an identity value on
  every progress update, and job ids would then differ from a SQLite hub's given the same
  events. (The insert still ends in ``ON CONFLICT``, for a writer that raced us.)
- Text that PostgreSQL cannot hold (NUL, unpaired surrogates) is stored with U+FFFD in
  their place, and filters are cleaned the same way, as everywhere in this store.
- Ids and times outside ``bigint`` (a cursor or id someone typed) select nothing or
  everything, as the comparison says, instead of failing the query. A value outside
  ``bigint`` that would be stored fails the save as asyncpg's ``DataError``, a
  :class:`~shopfloor.hub.errors.StoreError` like every database error here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final

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
from shopfloor.hub.store.postgres_text import pg_clean as _clean
from shopfloor.hub.store.postgres_text import pg_opt_text as _opt_text
from shopfloor.hub.store.postgres_text import pg_text as _text
from shopfloor.hub.store.row_decoding import json_object as _obj

if TYPE_CHECKING:
    from asyncpg import Record
    from asyncpg.pool import PoolConnectionProxy

    Conn = PoolConnectionProxy[Record]

__all__ = ["JOBS_MIGRATION", "PostgresJobs"]

#: Migration 3 (the number the SQLite store uses for the same table).
JOBS_MIGRATION: Final = (
    3,
    """
    CREATE TABLE jobs (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        machine_key text NOT NULL,
        agent_job text NOT NULL,
        program text,
        unit text NOT NULL,
        source text,
        started_at bigint NOT NULL,
        ended_at bigint,
        outcome text CHECK (outcome IS NULL OR outcome IN ('completed', 'aborted', 'failed')),
        done double precision,
        total double precision,
        detail jsonb NOT NULL DEFAULT '{}',
        eta_at bigint,
        eta_low_at bigint,
        eta_high_at bigint,
        eta_origin text CHECK (
            eta_origin IS NULL OR eta_origin IN ('linear', 'history', 'schedule', 'firmware')),
        order_ref text,
        updated_at bigint NOT NULL,
        started_known boolean NOT NULL DEFAULT false,
        progress_ts bigint,
        end_reason text CHECK (end_reason IS NULL OR end_reason IN ('event', 'superseded')),
        active_ms bigint,
        profile jsonb,
        header text,
        UNIQUE (machine_key, agent_job)
    );
    CREATE INDEX jobs_machine_started ON jobs (machine_key, started_at);
    CREATE INDEX jobs_open ON jobs (machine_key) WHERE ended_at IS NULL;
    CREATE INDEX jobs_order_ref ON jobs (order_ref, id) WHERE order_ref IS NOT NULL;
    CREATE INDEX jobs_completed ON jobs (machine_key, program, ended_at)
        WHERE outcome = 'completed' AND end_reason = 'event';
    """,
)

#: The JobRow columns, in JobRow's order; a JobRecord adds the book's bookkeeping.
_SELECT_ROWS: Final = (
    "SELECT id, machine_key, agent_job, program, unit, source, started_at, ended_at, outcome,"
    " done, total, detail::text, eta_at, eta_low_at, eta_high_at, eta_origin, order_ref,"
    " updated_at FROM jobs"
)
_SELECT_RECORDS: Final = (
    "SELECT id, machine_key, agent_job, program, unit, source, started_at, ended_at, outcome,"
    " done, total, detail::text, eta_at, eta_low_at, eta_high_at, eta_origin, order_ref,"
    " updated_at, started_known, progress_ts, end_reason, active_ms, profile::text, header"
    " FROM jobs"
)
_JOBS_SQL: Final = (
    "SELECT id, machine_key, agent_job, program, unit, source, started_at, ended_at, outcome,"
    " done, total, detail::text, eta_at, eta_low_at, eta_high_at, eta_origin, order_ref,"
    " updated_at FROM jobs WHERE ($1::text IS NULL OR machine_key = $1)"
    " AND ($2::text IS NULL OR order_ref = $2)"
    " AND ($3::bigint[] IS NULL OR id = ANY($3::bigint[]))"
    " AND ($4::boolean IS NULL OR (ended_at IS NULL) = $4)"
    " AND ($5::bigint IS NULL OR ended_at IS NULL OR ended_at >= $5)"
    " AND ($6::bigint IS NULL OR started_at < $6)"
    " AND ($7::bigint IS NULL OR id < $7)"
    " ORDER BY id DESC LIMIT $8"
)
#: A save binds $1 machine_key, $2 agent_job, then the other columns in this order (_args).
_UPDATE_SQL: Final = (
    "UPDATE jobs SET program = $3, unit = $4, source = $5, started_at = $6, ended_at = $7,"
    " outcome = $8, done = $9, total = $10, detail = $11::jsonb, eta_at = $12,"
    " eta_low_at = $13, eta_high_at = $14, eta_origin = $15, order_ref = $16,"
    " updated_at = $17, started_known = $18, progress_ts = $19, end_reason = $20,"
    " active_ms = $21, profile = $22::jsonb, header = $23"
    " WHERE machine_key = $1 AND agent_job = $2 RETURNING id"
)
_INSERT_SQL: Final = (
    "INSERT INTO jobs (machine_key, agent_job, program, unit, source, started_at, ended_at,"
    " outcome, done, total, detail, eta_at, eta_low_at, eta_high_at, eta_origin, order_ref,"
    " updated_at, started_known, progress_ts, end_reason, active_ms, profile, header)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb, $12, $13, $14, $15, $16,"
    " $17, $18, $19, $20, $21, $22::jsonb, $23)"
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
_CURSOR: Final = "jobs_cursor"
_MAX_LIMIT: Final = 10_000


def _json(value: Mapping[str, Any] | None) -> str | None:
    """``jsonb`` text (which refuses ``\\u0000`` and lone surrogates: cleaned first)."""
    if value is None:
        return None
    return json.dumps(_clean(dict(value)), separators=(",", ":"), ensure_ascii=False)


def _args(job: JobRecord) -> tuple[Any, ...]:
    """The bound values of a save, $1 to $23 of ``_UPDATE_SQL`` and ``_INSERT_SQL``."""
    return (
        _text(job.machine_key),
        _text(job.agent_job),
        _opt_text(job.program),
        _text(job.unit),
        _opt_text(job.source),
        job.started_at,
        job.ended_at,
        str(job.outcome) if job.outcome is not None else None,
        None if job.done is None else float(job.done),
        None if job.total is None else float(job.total),
        _json(job.detail) or "{}",
        job.eta_at,
        job.eta_low_at,
        job.eta_high_at,
        str(job.eta_origin) if job.eta_origin is not None else None,
        _opt_text(job.order_ref),
        job.updated_at,
        job.started_known,
        job.progress_ts,
        str(job.end_reason) if job.end_reason is not None else None,
        job.active_ms,
        _json(job.profile),
        _opt_text(job.header),
    )


class PostgresJobs:
    """Mixin for :class:`~shopfloor.hub.store.postgres.PostgresStore`: the ``jobs`` table.
    Reads go through a reader connection; every write is one transaction on the writer."""

    def _read(self) -> AbstractAsyncContextManager[Conn]:
        raise NotImplementedError  # provided by PostgresStore

    def _writing(self) -> AbstractAsyncContextManager[Conn]:
        raise NotImplementedError  # provided by PostgresStore

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
        async with self._read() as conn:
            rows = await conn.fetch(
                _JOBS_SQL,
                _opt_text(machine_key),
                _opt_text(order_ref),
                wanted,
                running,
                clamp_int64(since_ms),
                clamp_int64(until_ms),
                clamp_int64(after_id),
                max(0, min(limit, _MAX_LIMIT)),
            )
        return [_row(r) for r in rows]

    async def job(self, job_id: int) -> JobRow | None:
        if not is_int64(job_id):
            return None
        async with self._read() as conn:
            row = await conn.fetchrow(_SELECT_ROWS + " WHERE id = $1", job_id)
        return _row(row) if row is not None else None

    # -- the job book's calls ----------------------------------------------------------------

    async def open_jobs(self) -> list[JobRecord]:
        async with self._read() as conn:
            rows = await conn.fetch(
                _SELECT_RECORDS + " WHERE ended_at IS NULL ORDER BY started_at, id"
            )
        return [_record(r) for r in rows]

    async def job_record(self, machine_key: str, agent_job: str) -> JobRecord | None:
        async with self._read() as conn:
            row = await conn.fetchrow(
                _SELECT_RECORDS + " WHERE machine_key = $1 AND agent_job = $2",
                _text(machine_key),
                _text(agent_job),
            )
        return _record(row) if row is not None else None

    async def next_job_start(
        self, machine_key: str, after_ms: int, *, exclude: tuple[str, str] | None = None
    ) -> int | None:
        skip = exclude[1] if exclude is not None and exclude[0] == machine_key else None
        async with self._read() as conn:
            value = await conn.fetchval(
                "SELECT min(started_at) FROM jobs WHERE machine_key = $1 AND started_at > $2"
                " AND ($3::text IS NULL OR agent_job <> $3)",
                _text(machine_key),
                after_ms,
                _opt_text(skip),
            )
        return int(value) if value is not None else None

    async def save_jobs(
        self, records: Sequence[JobRecord], *, cursor: int | None
    ) -> list[JobRecord]:
        """Insert or update ``records`` (by machine key and agent job) and, if given, set
        the book's catch-up cursor, in one transaction; return copies with their ids."""
        out: list[JobRecord] = []
        try:
            # A number beyond double precision fails here, before asyncpg (which turns one
            # beyond bigint into a DataError, a StoreError from _writing()).
            saves = [(job, _args(job)) for job in records]
        except OverflowError as exc:
            raise StoreError(f"cannot store jobs: {exc}") from exc
        async with self._writing() as conn, conn.transaction():
            for job, args in saves:
                job_id = await conn.fetchval(_UPDATE_SQL, *args)
                if job_id is None:
                    job_id = await conn.fetchval(_INSERT_SQL, *args)
                out.append(replace(job, id=int(job_id), detail=dict(job.detail)))
            if cursor is not None:
                await conn.execute(
                    "INSERT INTO counters (name, value) VALUES ($1, $2)"
                    " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    _CURSOR,
                    cursor,
                )
        return out

    async def job_cursor(self) -> int:
        async with self._read() as conn:
            value = await conn.fetchval("SELECT value FROM counters WHERE name = $1", _CURSOR)
        return int(value) if value is not None else 0

    async def record_cursor(self) -> int:
        async with self._read() as conn:
            value = await conn.fetchval("SELECT coalesce(max(id), 0) FROM records")
        return int(value)

    async def job_events_after(self, cursor: int, limit: int) -> list[StoredEvent]:
        async with self._read() as conn:
            rows = await conn.fetch(
                "SELECT r.id, r.agent, r.stream, r.seq, r.machine, r.ts, r.mono, r.received_at,"
                " r.replay, r.body::text, coalesce(m.site, ''), r.kind"
                " FROM records r LEFT JOIN machines m ON m.key = r.agent || '/' || r.machine"
                " WHERE r.id > $1 AND (r.kind = 'event'"
                "   OR (r.kind = 'state' AND jsonb_typeof(r.body -> 'job') = 'object'))"
                " ORDER BY r.id LIMIT $2",
                clamp_int64(cursor),
                limit,
            )
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
        async with self._read() as conn:
            rows = await conn.fetch(
                "SELECT id, started_at, ended_at, total, active_ms, profile::text FROM jobs"
                " WHERE machine_key = $1 AND outcome = 'completed' AND end_reason = 'event'"
                " AND ended_at <= $2 AND unit = $3 AND active_ms > 0"
                " AND (($4::text IS NOT NULL AND program = $4)"
                "   OR ($4::text IS NULL AND program IS NULL AND total = $5::float8))"
                " ORDER BY ended_at DESC, id DESC LIMIT $6",
                _text(machine_key),
                before_ms,
                _text(unit),
                _opt_text(program),
                None if total is None else float(total),
                limit,
            )
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
        """The newest ``limit`` part_counted events of the machine, oldest first. Like
        SQLite's ``json_extract``, a ``program`` that is not a JSON string is no program."""
        agent, _, machine = machine_key.partition("/")
        async with self._read() as conn:
            rows = await conn.fetch(
                "SELECT ts, CASE WHEN jsonb_typeof(body -> 'program') = 'string'"
                " THEN body ->> 'program' END FROM records"
                " WHERE agent = $1 AND machine = $2 AND kind = 'event'"
                " AND body ->> 'event' = 'part_counted'"
                " ORDER BY ts DESC, id DESC LIMIT $3",
                _text(agent),
                _text(machine),
                limit,
            )
        times = [(int(ts), p if isinstance(p, str) and p else None) for ts, p in rows]
        # sorted() as SQLite's, but without comparing None to a str on a tie of ts.
        return sorted(times, key=lambda t: (t[0], t[1] is not None, t[1] or ""))
