"""What the job book (:mod:`shopfloor.hub.jobs`) stores, and the store calls it needs.

A :class:`JobRecord` is a :class:`~shopfloor.hub.store.base.JobRow` plus what the book
needs to apply late events correctly and to learn from finished runs. Its stored columns
carry the same names as its fields (``jobs`` table, SQLite migration 3), so another
backend maps them one to one. :class:`JobBookStore` is what a store implements for the
book, on top of the read-only :class:`~shopfloor.hub.store.base.Store` calls.

This module imports nothing but the store's plain types: the stores import it, and it
must not import the job book (which imports the stores' package).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, runtime_checkable

from shopfloor.contract import Envelope, RecordKind
from shopfloor.hub.store.base import EtaOrigin, Incoming, Interval, JobOutcome, JobRow
from shopfloor.hub.store.row_decoding import Columns, json_object

__all__ = ["EndReason", "JobBookStore", "JobRecord", "PastRunRow", "StoredEvent"]


class EndReason(enum.StrEnum):
    EVENT = "event"  # the agent's job_ended
    SUPERSEDED = "superseded"  # a later job started on the machine first (outcome aborted)


@dataclass(slots=True)
class JobRecord:
    """A job as the book keeps it. ``id`` is None until it is first stored."""

    id: int | None
    machine_key: str
    agent_job: str
    program: str | None
    unit: str
    source: str | None
    started_at: int
    ended_at: int | None = None
    outcome: JobOutcome | None = None
    done: float | None = None
    total: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    eta_at: int | None = None
    eta_low_at: int | None = None
    eta_high_at: int | None = None
    eta_origin: EtaOrigin | None = None
    order_ref: str | None = None
    updated_at: int = 0
    # -- bookkeeping (stored, not in JobRow) ---------------------------------------------
    #: The agent's job_started was seen (else started_at was inferred from another record).
    started_known: bool = False
    #: ts of the record the progress figures (done, total, detail) come from.
    progress_ts: int | None = None
    end_reason: EndReason | None = None
    #: Working time (not PAUSED, not ALARM) from start to end; set when the job ends.
    active_ms: int | None = None
    #: The progress profile (:class:`~shopfloor.hub.jobs.eta.ProfileRecorder` JSON).
    profile: dict[str, Any] | None = None
    #: The program's header comment, if the agent sent one (bounded by the agent).
    header: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.machine_key, self.agent_job)

    @property
    def running(self) -> bool:
        return self.ended_at is None

    def to_row(self) -> JobRow:
        if self.id is None:
            raise ValueError("a job has no id until it is stored")
        return JobRow(
            id=self.id,
            machine_key=self.machine_key,
            agent_job=self.agent_job,
            program=self.program,
            unit=self.unit,
            source=self.source,
            started_at=self.started_at,
            ended_at=self.ended_at,
            outcome=self.outcome,
            done=self.done,
            total=self.total,
            detail=dict(self.detail),
            eta_at=self.eta_at,
            eta_low_at=self.eta_low_at,
            eta_high_at=self.eta_high_at,
            eta_origin=self.eta_origin,
            order_ref=self.order_ref,
            updated_at=self.updated_at,
        )

    def public(self) -> tuple[Any, ...]:
        """Every JobRow field but ``updated_at``: what a listener would see change."""
        return (
            self.machine_key,
            self.agent_job,
            self.program,
            self.unit,
            self.source,
            self.started_at,
            self.ended_at,
            self.outcome,
            self.done,
            self.total,
            tuple(sorted(self.detail.items())),
            self.eta_at,
            self.eta_low_at,
            self.eta_high_at,
            self.eta_origin,
            self.order_ref,
        )


@dataclass(frozen=True, slots=True)
class PastRunRow:
    """A completed run, as the history estimate reads it back."""

    id: int
    started_at: int
    ended_at: int
    total: float | None
    active_ms: int
    profile: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """A stored record read back for the book's catch-up, with its insertion cursor."""

    cursor: int
    incoming: Incoming


@runtime_checkable
class JobBookStore(Protocol):
    """The store calls the job book makes (SQLite: ``store/sqlite_jobs.py``)."""

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
    ) -> list[JobRow]: ...

    async def open_jobs(self) -> list[JobRecord]:
        """Every job that has not ended."""
        ...

    async def job_record(self, machine_key: str, agent_job: str) -> JobRecord | None: ...

    async def next_job_start(
        self, machine_key: str, after_ms: int, *, exclude: tuple[str, str] | None = None
    ) -> int | None:
        """The earliest ``started_at`` of a job of the machine that started after
        ``after_ms`` (``exclude``: a job key to leave out), or None."""
        ...

    async def save_jobs(
        self, records: Sequence[JobRecord], *, cursor: int | None
    ) -> list[JobRecord]:
        """Insert or update ``records`` (by machine key and agent job) in one transaction,
        and, if given, set the book's catch-up cursor; return them with their ids."""
        ...

    async def job_cursor(self) -> int:
        """The insertion cursor of the last record the stored jobs reflect."""
        ...

    async def record_cursor(self) -> int:
        """The insertion cursor of the newest stored record."""
        ...

    async def job_events_after(self, cursor: int, limit: int) -> list[StoredEvent]:
        """Up to ``limit`` stored records with a cursor above ``cursor``, in order, of
        those the book replays: every event, and every state snapshot whose ``job`` is an
        object (telemetry and job-less states are not replayed)."""
        ...

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
        """The newest ``limit`` runs of the machine that completed (by their own
        job_ended) before ``before_ms``: of the same program, or, when ``program`` is None,
        without a program and with the same ``total``; in the same unit."""
        ...

    async def part_times(self, machine_key: str, limit: int) -> list[tuple[int, str | None]]:
        """The newest ``limit`` part_counted events of the machine: (ts, program), oldest
        first."""
        ...

    async def state_intervals(
        self, key: str, from_ms: int, to_ms: int, *, now_ms: int
    ) -> list[Interval]: ...


def opt_float(value: object) -> float | None:
    """A numeric column as a float, None for NULL (or anything not a number)."""
    return float(value) if isinstance(value, int | float) else None


def job_row(r: Columns) -> JobRow:
    """A ``jobs`` row in the column order both stores select (``_COLUMNS``) as a JobRow."""
    return JobRow(
        id=int(r[0]),
        machine_key=r[1],
        agent_job=r[2],
        program=r[3],
        unit=r[4],
        source=r[5],
        started_at=int(r[6]),
        ended_at=r[7],
        outcome=JobOutcome(r[8]) if r[8] is not None else None,
        done=opt_float(r[9]),
        total=opt_float(r[10]),
        detail=json_object(r[11]) or {},
        eta_at=r[12],
        eta_low_at=r[13],
        eta_high_at=r[14],
        eta_origin=EtaOrigin(r[15]) if r[15] is not None else None,
        order_ref=r[16],
        updated_at=int(r[17]),
    )


def job_record(r: Columns) -> JobRecord:
    """The same row with the book's bookkeeping columns (18 on) as a JobRecord."""
    row = job_row(r)
    return JobRecord(
        id=row.id,
        machine_key=row.machine_key,
        agent_job=row.agent_job,
        program=row.program,
        unit=row.unit,
        source=row.source,
        started_at=row.started_at,
        ended_at=row.ended_at,
        outcome=row.outcome,
        done=row.done,
        total=row.total,
        detail=dict(row.detail),
        eta_at=row.eta_at,
        eta_low_at=row.eta_low_at,
        eta_high_at=row.eta_high_at,
        eta_origin=row.eta_origin,
        order_ref=row.order_ref,
        updated_at=row.updated_at,
        started_known=bool(r[18]),
        progress_ts=r[19],
        end_reason=EndReason(r[20]) if r[20] is not None else None,
        active_ms=r[21],
        profile=json_object(r[22]),
        header=r[23],
    )


#: Both stores keep ids and times as 64-bit integers (SQLite INTEGER, PostgreSQL bigint).
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1


def clamp_int64(value: int | None) -> int | None:
    """``value`` clamped into 64 bits: every stored id and time is inside, so a bound beyond
    it (a typed cursor or time) compares the same as the limit itself."""
    return None if value is None else max(INT64_MIN, min(INT64_MAX, value))


def is_int64(value: int) -> bool:
    """An id outside 64 bits names no row (clamping it could name one)."""
    return INT64_MIN <= value <= INT64_MAX


def stored_event(r: Columns) -> StoredEvent:
    """A row of the job book's replay query (both stores select the same columns): cursor,
    agent, stream, seq, machine, ts, mono, received_at, replay, body, site, kind."""
    envelope = Envelope(
        kind=RecordKind(r[11]),
        agent=r[1],
        machine=r[4],
        stream=r[2],
        seq=int(r[3]),
        ts=int(r[5]),
        body=json_object(r[9]) or {},
        mono=r[6],
        replay=bool(r[8]),
    )
    return StoredEvent(
        cursor=int(r[0]),
        incoming=Incoming(envelope=envelope, site=r[10], received_at=int(r[7])),
    )
