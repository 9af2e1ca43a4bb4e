"""The jobs part of the store (SQLite migration 3, store/sqlite_jobs.py; PostgreSQL
migration 3, store/postgres_jobs.py), called directly, on both backends (the ``store``
fixture): every case expects the same answer from each, ids and order included."""

from __future__ import annotations

import dataclasses
from typing import Any

import asyncpg
import pytest
from pg_support import AnyStore, PgServer, unique_schema

from shopfloor.contract import Envelope, RecordKind
from shopfloor.hub.errors import StoreError
from shopfloor.hub.store import Incoming, WriteBatch
from shopfloor.hub.store.base import EtaOrigin, JobOutcome
from shopfloor.hub.store.job_records import EndReason, JobRecord
from shopfloor.hub.store.postgres import PostgresStore

T0 = 1_764_000_000_000
MIN = 60_000
ROUTER = "pi-1/router"
LASER = "pi-1/laser"


def job(agent_job: str, started_at: int, **fields: Any) -> JobRecord:
    base: dict[str, Any] = {
        "id": None,
        "machine_key": ROUTER,
        "agent_job": agent_job,
        "program": "sign.nc",
        "unit": "lines",
        "source": "proxy",
        "started_at": started_at,
        "updated_at": started_at,
    }
    base.update(fields)
    return JobRecord(**base)


def ended(rec: JobRecord, at: int, outcome: JobOutcome = JobOutcome.COMPLETED) -> JobRecord:
    return dataclasses.replace(
        rec, ended_at=at, outcome=outcome, end_reason=EndReason.EVENT, active_ms=at - rec.started_at
    )


def event(seq: int, ts: int, body: dict[str, Any], *, machine: str = "router") -> Incoming:
    env = Envelope(
        kind=RecordKind.EVENT, agent="pi-1", machine=machine, stream="s1", seq=seq, ts=ts,
        body=body, mono=ts,
    )  # fmt: skip
    return Incoming(envelope=env, site="shop1", received_at=ts + 5)


async def test_saving_assigns_ids_once_and_reads_back_every_field(store: AnyStore) -> None:
    full = job(
        "j1",
        T0,
        done=250.0,
        total=1234.5678901234567,
        detail={"segment": 2, "errors": 0, "slip_s": 61, "end": "superseded"},
        eta_at=T0 + 8 * MIN,
        eta_low_at=T0 + 7 * MIN,
        eta_high_at=T0 + 9 * MIN,
        eta_origin=EtaOrigin.HISTORY,
        order_ref="1042",
        started_known=True,
        progress_ts=T0 + 2 * MIN,
        profile={"marks": [0, 1000, 2500], "last": [0.25, 120000]},
        header="(ORDER 1042)\nsign",
    )
    [saved] = await store.save_jobs([full], cursor=None)
    assert saved.id == 1
    assert saved is not full
    assert dataclasses.replace(saved, id=None) == full
    assert await store.job_record(ROUTER, "j1") == saved
    row = await store.job(1)
    assert row == saved.to_row()
    # An update of the same (machine, agent job) keeps the id, and uses none up: the next
    # new job gets the next id, as on SQLite.
    for n in range(3):
        [again] = await store.save_jobs(
            [dataclasses.replace(saved, id=None, done=300.0 + n, updated_at=T0 + n)], cursor=None
        )
        assert again.id == 1
    closed = ended(dataclasses.replace(again, profile=None, header=None, detail={}), T0 + 9 * MIN)
    [second, third] = await store.save_jobs(
        [job("j2", T0 + 10 * MIN, machine_key=LASER, program=None), closed], cursor=None
    )
    assert (second.id, third.id) == (2, 1)
    assert await store.job_record(ROUTER, "j1") == closed
    assert await store.job_record(LASER, "j2") == second
    assert await store.job_record(LASER, "j1") is None
    assert await store.job(3) is None
    assert [r.id for r in await store.jobs()] == [2, 1]


async def test_filters_overlap_and_pages_newest_first(store: AnyStore) -> None:
    recs = [
        ended(job("a", T0, order_ref="7"), T0 + 10 * MIN),
        ended(job("b", T0 + 20 * MIN, machine_key=LASER), T0 + 30 * MIN, JobOutcome.ABORTED),
        job("c", T0 + 40 * MIN, order_ref="7"),
        job("d", T0 + 50 * MIN, machine_key=LASER),
    ]
    saved = await store.save_jobs(recs, cursor=None)
    a, b, c, d = (r.id for r in saved)
    assert [r.id for r in await store.jobs()] == [d, c, b, a]

    async def ids(**filters: Any) -> list[int | None]:
        return [r.id for r in await store.jobs(**filters)]

    assert await ids(machine_key=LASER) == [d, b]
    assert await ids(order_ref="7") == [c, a]
    assert await ids(order_ref="7", running=False) == [a]
    assert await ids(running=True) == [d, c]
    assert await ids(running=False) == [b, a]
    assert await ids(ids=[a, d, 999]) == [d, a]
    assert await ids(ids=[]) == []
    # Overlapping [since, until): not ended before since, started before until.
    assert await ids(since_ms=T0 + 15 * MIN, until_ms=T0 + 45 * MIN) == [c, b]
    assert await ids(since_ms=T0 + 30 * MIN) == [d, c, b]  # b ended exactly then
    assert await ids(until_ms=T0 + 20 * MIN) == [a]  # b started exactly then
    assert await ids(after_id=c) == [b, a]
    assert await ids(after_id=c, limit=1) == [b]
    assert await ids(limit=0) == []
    assert await ids(machine_key="pi-1/none") == []
    # A filter no stored text can equal answers nothing (PostgreSQL text cannot hold NUL).
    assert await ids(order_ref="7\x00") == []
    pages: list[int | None] = []
    after: int | None = None
    while True:
        page = await store.jobs(after_id=after, limit=3)
        pages += [r.id for r in page]
        if len(page) < 3:
            break
        after = page[-1].id
    assert pages == [d, c, b, a]


async def test_open_jobs_and_the_next_start(store: AnyStore) -> None:
    await store.save_jobs(
        [
            job("late", T0 + 30 * MIN),
            ended(job("done", T0), T0 + MIN),
            job("early", T0 + 10 * MIN, machine_key=LASER),
            job("tie", T0 + 10 * MIN),
        ],
        cursor=None,
    )
    assert [r.agent_job for r in await store.open_jobs()] == ["early", "tie", "late"]
    assert await store.next_job_start(ROUTER, T0) == T0 + 10 * MIN
    assert await store.next_job_start(ROUTER, T0, exclude=(ROUTER, "tie")) == T0 + 30 * MIN
    assert await store.next_job_start(ROUTER, T0, exclude=(LASER, "tie")) == T0 + 10 * MIN
    assert await store.next_job_start(ROUTER, T0 + 30 * MIN) is None
    assert await store.next_job_start(LASER, T0 + 10 * MIN) is None


async def test_cursors_and_the_stored_events_after_one(store: AnyStore) -> None:
    assert (await store.job_cursor(), await store.record_cursor()) == (0, 0)
    state = Envelope(
        kind=RecordKind.STATE, agent="pi-1", machine="router", stream="s1", seq=2, ts=T0 + 1,
        body={"state": "RUNNING", "since": T0 + 1, "detail": ""}, mono=T0 + 1,
    )  # fmt: skip
    body = {"event": "job_started", "code": None, "text": "", "job": "j1", "total": 10.5}
    records = [
        event(1, T0, body),
        Incoming(envelope=state, site="shop1", received_at=T0 + 6),
        event(3, T0 + 2, {"event": "message", "code": "E1", "text": "ü"}, machine="laser"),
    ]
    await store.write(WriteBatch(records=records))
    head = await store.record_cursor()
    assert head == 3
    events = await store.job_events_after(0, 10)
    assert [e.cursor for e in events] == [1, 3]
    assert [e.incoming for e in events] == [records[0], records[2]]
    assert [e.cursor for e in await store.job_events_after(1, 10)] == [3]
    assert [e.cursor for e in await store.job_events_after(0, 1)] == [1]
    assert await store.job_events_after(head, 10) == []
    await store.save_jobs([], cursor=head)
    assert await store.job_cursor() == head
    await store.save_jobs([job("j1", T0)], cursor=None)  # no cursor: left as it was
    assert await store.job_cursor() == head
    await store.save_jobs([], cursor=1)  # set as given, not max()
    assert await store.job_cursor() == 1


async def test_past_runs_are_completed_runs_of_the_same_program_newest_first(
    store: AnyStore,
) -> None:
    profile = {"marks": [0, 100], "last": [1.0, 60000]}
    runs = [
        ended(job("r1", T0, total=1000.0, profile=profile), T0 + 10 * MIN),
        ended(job("r2", T0 + 20 * MIN, total=900.0), T0 + 25 * MIN),
        ended(job("aborted", T0 + 30 * MIN), T0 + 31 * MIN, JobOutcome.ABORTED),
        dataclasses.replace(
            ended(job("superseded", T0 + 32 * MIN), T0 + 33 * MIN),
            end_reason=EndReason.SUPERSEDED,
        ),
        ended(job("bytes", T0 + 34 * MIN, unit="bytes"), T0 + 35 * MIN),
        dataclasses.replace(ended(job("idle", T0 + 36 * MIN), T0 + 37 * MIN), active_ms=0),
        ended(job("laser", T0 + 38 * MIN, machine_key=LASER), T0 + 39 * MIN),
        ended(job("other", T0 + 40 * MIN, program="lid.nc"), T0 + 41 * MIN),
        ended(job("anon1", T0 + 42 * MIN, program=None, total=500.0), T0 + 43 * MIN),
        ended(job("anon2", T0 + 44 * MIN, program=None, total=600.0), T0 + 45 * MIN),
        ended(job("later", T0 + 50 * MIN), T0 + 60 * MIN),
        job("running", T0 + 61 * MIN),
    ]
    saved = {r.agent_job: r for r in await store.save_jobs(runs, cursor=None)}

    async def past(**kw: Any) -> list[tuple[int, int, float | None, int]]:
        args: dict[str, Any] = {
            "program": "sign.nc",
            "total": None,
            "unit": "lines",
            "before_ms": T0 + 59 * MIN,
            "limit": 5,
        }
        args.update(kw)
        rows = await store.past_runs(ROUTER, **args)
        return [(r.id, r.ended_at, r.total, r.active_ms) for r in rows]

    r1, r2 = saved["r1"], saved["r2"]
    assert await past() == [
        (r2.id, T0 + 25 * MIN, 900.0, 5 * MIN),
        (r1.id, T0 + 10 * MIN, 1000.0, 10 * MIN),
    ]
    assert await past(limit=1) == [(r2.id, T0 + 25 * MIN, 900.0, 5 * MIN)]
    [row] = await store.past_runs(
        ROUTER, program="sign.nc", total=None, unit="lines", before_ms=T0 + 10 * MIN, limit=5
    )
    assert (row.id, row.started_at, row.profile) == (r1.id, T0, profile)
    assert await past(program=None, total=600.0) == [(saved["anon2"].id, T0 + 45 * MIN, 600.0, MIN)]
    assert await past(program=None, total=None) == []
    assert await past(unit="bytes") == [(saved["bytes"].id, T0 + 35 * MIN, None, MIN)]


async def test_part_times_are_the_newest_part_events_oldest_first(store: AnyStore) -> None:
    part = {"event": "part_counted", "code": None, "text": ""}
    records = [
        event(1, T0 + 1000, {**part, "count": 1, "program": "O1234"}, machine="mill"),
        event(2, T0 + 2000, {**part, "count": 2, "program": 1234}, machine="mill"),
        event(3, T0 + 500, {**part, "count": 3, "program": ""}, machine="mill"),
        event(4, T0 + 3000, {**part, "count": 4}, machine="mill"),
        event(5, T0 + 4000, {**part, "count": 5, "program": "O1"}, machine="lathe"),
        event(6, T0 + 5000, {"event": "message", "code": None, "text": "x"}, machine="mill"),
    ]
    await store.write(WriteBatch(records=records))
    assert await store.part_times("pi-1/mill", 10) == [
        (T0 + 500, None),
        (T0 + 1000, "O1234"),
        (T0 + 2000, None),  # a program that is not a string is no program
        (T0 + 3000, None),
    ]
    assert await store.part_times("pi-1/mill", 2) == [(T0 + 2000, None), (T0 + 3000, None)]
    assert await store.part_times("pi-1/lathe", 10) == [(T0 + 4000, "O1")]
    assert await store.part_times("pi-1/drill", 10) == []
    # Two parts at the same ts, one with a program and one without: no crash, same order.
    await store.write(
        WriteBatch(
            records=[
                event(7, T0 + 6000, {**part, "count": 6, "program": "O7"}, machine="saw"),
                event(8, T0 + 6000, {**part, "count": 7}, machine="saw"),
            ]
        )
    )
    assert await store.part_times("pi-1/saw", 10) == [(T0 + 6000, None), (T0 + 6000, "O7")]


async def test_text_with_nul_is_stored_not_refused(store: AnyStore, backend: str) -> None:
    """The contract refuses NUL in envelopes, so only a caller's own text can hold one."""
    odd = job("j\x00", T0, program="a\x00b", header="h\x00", detail={"n\x00": "x\x00"})
    [saved] = await store.save_jobs([odd], cursor=None)
    stored = await store.job_record(ROUTER, "j\x00")
    assert stored is not None
    assert stored.id == saved.id == 1
    if backend == "sqlite":
        assert dataclasses.replace(stored, id=None) == odd
    else:  # PostgreSQL text cannot hold NUL: U+FFFD in its place; lookups cleaned the same
        assert (stored.agent_job, stored.program, stored.header, stored.detail) == (
            "j\ufffd",
            "a\ufffdb",
            "h\ufffd",
            {"n\ufffd": "x\ufffd"},
        )


@pytest.mark.postgres
async def test_postgres_stores_lone_surrogates_as_replacement_characters(pg: PgServer) -> None:
    async with PostgresStore(pg.url(), schema=unique_schema()) as store:
        odd = job("j1", T0, header="lone \ud800", detail={"k": "x\udfff"}, order_ref="7\udc00")
        await store.save_jobs([odd], cursor=None)
        stored = await store.job_record(ROUTER, "j1")
        assert stored is not None
        assert (stored.header, stored.detail, stored.order_ref) == (
            "lone \ufffd",
            {"k": "x\ufffd"},
            "7\ufffd",
        )
        assert [r.order_ref for r in await store.jobs(order_ref="7\ud800")] == ["7\ufffd"]


@pytest.mark.postgres
async def test_a_postgres_database_from_before_the_jobs_port_gets_migration_3(
    pg: PgServer,
) -> None:
    """A hub that ran on PostgreSQL before jobs were ported has versions 1, 2, 4 and 5; the
    next start adds 3, and the jobs answer."""
    schema = unique_schema()
    async with PostgresStore(pg.url(), schema=schema) as store:
        await store.save_jobs([job("j1", T0)], cursor=7)
    u = pg.url()
    conn = await asyncpg.connect(
        host=u.host, port=u.port, user=u.user, database=u.database,
        server_settings={"search_path": schema},
    )  # fmt: skip
    try:
        await conn.execute("DROP TABLE jobs; DELETE FROM schema_migrations WHERE version = 3")
        await conn.execute("DELETE FROM counters WHERE name = 'jobs_cursor'")
        async with PostgresStore(pg.url(), schema=schema) as store:
            versions = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
            assert [r[0] for r in versions] == [1, 2, 3, 4, 5]
            assert await store.jobs() == []
            assert await store.job_cursor() == 0
            [saved] = await store.save_jobs([job("j1", T0)], cursor=None)
            assert saved.id == 1
    finally:
        await conn.close()


@pytest.mark.postgres
async def test_postgres_ids_beyond_bigint_name_no_job(pg: PgServer) -> None:
    """A typed cursor or id outside ``bigint`` answers as the comparison says."""
    async with PostgresStore(pg.url(), schema=unique_schema()) as store:
        [saved] = await store.save_jobs([job("j1", T0)], cursor=None)
        huge = 10**20
        assert await store.job(huge) is None
        assert [r.id for r in await store.jobs(after_id=huge)] == [saved.id]
        assert await store.jobs(after_id=-huge) == []
        assert await store.jobs(ids=[huge]) == []
        assert [r.id for r in await store.jobs(since_ms=-huge, until_ms=huge)] == [saved.id]


async def test_numbers_beyond_the_database_are_a_store_error(store: AnyStore) -> None:
    """A time or figure that does not fit (SQLite INTEGER/REAL, PostgreSQL bigint/float8)
    fails as StoreError, which the job book catches, never as OverflowError."""
    huge = 2**70
    for bad in (
        job("j1", huge),
        job("j1", T0, progress_ts=-huge),
        job("j1", T0, eta_at=huge),
        job("j1", T0, done=10**400),
    ):
        with pytest.raises(StoreError):
            await store.save_jobs([bad], cursor=None)
    with pytest.raises(StoreError):
        await store.save_jobs([], cursor=huge)
    with pytest.raises(StoreError):
        await store.next_job_start(ROUTER, huge)
    with pytest.raises(StoreError):
        await store.past_runs(
            ROUTER, program="p", total=None, unit="lines", before_ms=huge, limit=5
        )
    # Nothing was stored, and the store still works; a typed cursor or id beyond the
    # database selects as the comparison says.
    assert await store.jobs() == []
    [saved] = await store.save_jobs([job("j1", T0)], cursor=None)
    assert await store.job(huge) is None
    assert await store.jobs(ids=[huge]) == []
    assert [r.id for r in await store.jobs(since_ms=-huge, until_ms=huge, after_id=huge)] == [
        saved.id
    ]
    assert await store.job_events_after(huge, 10) == []


async def test_the_replay_includes_state_snapshots_that_carry_a_job(store: AnyStore) -> None:
    def state(seq: int, **body: Any) -> Incoming:
        env = Envelope(
            kind=RecordKind.STATE, agent="pi-1", machine="router", stream="s1", seq=seq,
            ts=T0 + seq, body={"state": "RUNNING", "since": T0, "detail": "", **body},
            mono=T0 + seq,
        )  # fmt: skip
        return Incoming(envelope=env, site="shop1", received_at=T0 + seq + 5)

    records = [
        state(1),
        state(2, job={"job": "j1", "started": T0}),
        state(3, job="j1"),  # not an object: nothing the book reads
        event(4, T0 + 4, {"event": "job_progress", "code": None, "text": "", "job": "j1"}),
    ]
    await store.write(WriteBatch(records=records))
    replayed = await store.job_events_after(0, 10)
    assert [e.cursor for e in replayed] == [2, 4]
    assert [e.incoming for e in replayed] == [records[1], records[3]]
