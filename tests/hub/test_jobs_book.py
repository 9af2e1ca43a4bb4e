"""The job book on each real store (SQLite, PostgreSQL: the ``store`` and ``new_store``
fixtures): crafted event sequences, replays, restarts; the same answers on both."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from typing import Any

import pytest
from pg_support import AnyStore, PgServer, StoreFactory

from shopfloor.contract import Envelope, MachineState, RecordKind
from shopfloor.hub.config import parse_config
from shopfloor.hub.jobs import JobBook, find_order_ref
from shopfloor.hub.store import Incoming, SqliteStore, StateRow, WriteBatch
from shopfloor.hub.store.base import EtaOrigin, JobOutcome, JobRow
from shopfloor.hub.trackers import Trackers

T0 = 1_764_000_000_000
S = 1000
MIN = 60 * S
ROUTER = "pi-1/router"


class Shop:
    """One agent's records, committed to the store and then handed to the book, as ingest
    does; ``clock`` is the hub's."""

    def __init__(self, store: AnyStore, *, trackers: Trackers | None = None) -> None:
        self.store = store
        self.trackers = trackers
        self.seq = 0
        self.clock = T0
        self.book = self.new_book()
        self.seen: list[JobRow] = []

    def new_book(self, **kw: Any) -> JobBook:
        book = JobBook(self.store, trackers=self.trackers, clock=lambda: self.clock, **kw)

        async def listen(row: JobRow) -> None:
            self.seen.append(row)

        book.add_listener(listen)
        return book

    def record(
        self,
        kind: RecordKind,
        ts: int,
        body: dict[str, Any],
        *,
        machine: str = "router",
        replay: bool = False,
        seq: int | None = None,
    ) -> Incoming:
        if seq is None:
            self.seq += 1
            seq = self.seq
        env = Envelope(
            kind=kind, agent="pi-1", machine=machine, stream="s1", seq=seq, ts=ts, body=body,
            mono=ts, replay=replay,
        )  # fmt: skip
        return Incoming(envelope=env, site="shop1", received_at=self.clock)

    def event(self, ts: int, event: str, machine: str = "router", **fields: Any) -> Incoming:
        body = {"event": event, "code": None, "text": "", **fields}
        return self.record(RecordKind.EVENT, ts, body, machine=machine, replay=False)

    def state(self, ts: int, state: str, machine: str = "router", **fields: Any) -> Incoming:
        body = {"state": state, "since": ts, "detail": "", **fields}
        return self.record(RecordKind.STATE, ts, body, machine=machine)

    async def commit(self, *records: Incoming) -> list[JobRow]:
        """Store, then hand the new records to the book; returns what the book changed."""
        result = await self.store.write(WriteBatch(records=list(records)))
        if self.trackers is not None:
            self.trackers.apply(result)
        return await self.book.apply(result.new)

    async def job(self, agent_job: str, key: str = ROUTER) -> JobRow:
        rows = [r for r in await self.store.jobs(machine_key=key) if r.agent_job == agent_job]
        assert len(rows) == 1, rows
        return rows[0]


def start(shop: Shop, ts: int, job: str, **fields: Any) -> Incoming:
    body = {"job": job, "program": "sign.nc", "unit": "lines", "total": 1000, "source": "proxy"}
    body.update(fields)
    return shop.event(ts, "job_started", **body)


def progress(shop: Shop, ts: int, job: str, done: float, **fields: Any) -> Incoming:
    body = {"job": job, "done": done, "total": 1000, "unit": "lines", **fields}
    return shop.event(ts, "job_progress", **body)


def end(shop: Shop, ts: int, job: str, outcome: str = "completed", done: float = 1000) -> Incoming:
    return shop.event(ts, "job_ended", job=job, outcome=outcome, done=done, total=1000)


@pytest.fixture
async def shop(store: AnyStore) -> Shop:
    s = Shop(store)
    await s.book.load()
    return s


async def test_a_job_starts_progresses_with_an_eta_and_completes(shop: Shop) -> None:
    changed = await shop.commit(start(shop, T0, "j1", program="sign (ORDER 1042).nc"))
    assert [r.agent_job for r in changed] == ["j1"]
    row = changed[0]
    assert (row.machine_key, row.program, row.unit, row.source) == (
        ROUTER,
        "sign (ORDER 1042).nc",
        "lines",
        "proxy",
    )
    assert (row.started_at, row.ended_at, row.outcome, row.total) == (T0, None, None, 1000)
    assert row.order_ref == "1042"
    assert row.eta_at is None  # nothing done yet: no estimate

    await shop.commit(progress(shop, T0 + 2 * MIN, "j1", 250))
    row = await shop.job("j1")
    assert row.done == 250
    assert row.progress == 0.25
    assert row.eta_origin is EtaOrigin.LINEAR
    assert row.eta_at == T0 + 8 * MIN
    assert row.eta_low_at is not None
    assert row.eta_high_at is not None
    assert row.eta_low_at < row.eta_at < row.eta_high_at

    await shop.commit(end(shop, T0 + 8 * MIN + 5 * S, "j1"))
    row = await shop.job("j1")
    assert (row.ended_at, row.outcome, row.done) == (
        T0 + 8 * MIN + 5 * S,
        JobOutcome.COMPLETED,
        1000,
    )
    assert row.eta_at is None
    assert row.eta_origin is None
    # Listeners saw every change, in order, with the stored id.
    assert [(r.agent_job, r.done, r.outcome) for r in shop.seen] == [
        ("j1", None, None),
        ("j1", 250, None),
        ("j1", 1000, JobOutcome.COMPLETED),
    ]
    assert {r.id for r in shop.seen} == {row.id}


async def test_the_next_run_of_the_same_program_learns_from_the_last(shop: Shop) -> None:
    # A program whose first half is slow (roughing): 75 % of the time for 50 % of the lines.
    await shop.commit(start(shop, T0, "j1"))
    for k in range(1, 11):
        t = T0 + round((0.75 * 40 * MIN) * k / 5) if k <= 5 else T0 + 30 * MIN + (k - 5) * 2 * MIN
        await shop.commit(progress(shop, t, "j1", k * 100))
    await shop.commit(end(shop, T0 + 40 * MIN, "j1"))

    t1 = T0 + 60 * MIN
    await shop.commit(start(shop, t1, "j2"))
    row = await shop.job("j2")
    assert row.eta_origin is EtaOrigin.HISTORY
    assert row.eta_at == t1 + 40 * MIN  # before any progress: the last run's duration
    await shop.commit(progress(shop, t1 + 30 * MIN, "j2", 500))
    row = await shop.job("j2")
    assert row.eta_origin is EtaOrigin.HISTORY
    assert row.eta_at is not None
    # Linear would say 30 more minutes; the profile knows only a quarter of the time is left.
    assert abs(row.eta_at - (t1 + 40 * MIN)) <= 30 * S


async def test_a_new_start_closes_a_job_that_never_ended_as_aborted(shop: Shop) -> None:
    await shop.commit(start(shop, T0, "j1"), progress(shop, T0 + MIN, "j1", 100))
    await shop.commit(start(shop, T0 + 5 * MIN, "j2"))
    old, new = await shop.job("j1"), await shop.job("j2")
    assert (old.ended_at, old.outcome) == (T0 + 5 * MIN, JobOutcome.ABORTED)
    assert old.detail["end"] == "superseded"
    assert old.done == 100
    assert old.eta_at is None
    assert new.ended_at is None
    assert [r.agent_job for r in await shop.store.jobs(running=True)] == ["j2"]


async def test_a_late_job_ended_corrects_the_superseded_job(shop: Shop) -> None:
    await shop.commit(start(shop, T0, "j1"))
    await shop.commit(start(shop, T0 + 5 * MIN, "j2"))
    # The agent's outbox replays the end it could not send before.
    replayed = end(shop, T0 + 4 * MIN, "j1", "completed")
    await shop.commit(replayed)
    row = await shop.job("j1")
    assert (row.ended_at, row.outcome) == (T0 + 4 * MIN, JobOutcome.COMPLETED)
    assert "end" not in row.detail
    assert (await shop.job("j2")).ended_at is None


async def test_replayed_events_correct_and_never_duplicate_or_reopen(shop: Shop) -> None:
    s1 = start(shop, T0, "j1")
    p1 = progress(shop, T0 + MIN, "j1", 100)
    p2 = progress(shop, T0 + 2 * MIN, "j1", 200)
    e1 = end(shop, T0 + 3 * MIN, "j1", "failed", done=250)
    await shop.commit(s1, p2, e1)
    # The same records again (a broker redelivery): nothing is new, nothing changes.
    assert await shop.commit(s1, p2, e1) == []
    # An older progress arrives late: its figures are older than the ones held.
    assert await shop.commit(p1) == []
    # A progress after the end, and a late start of the same job: no reopening.
    late = progress(shop, T0 + 4 * MIN, "j1", 300)
    await shop.commit(
        late, shop.event(T0, "job_started", job="j1", program="sign.nc", unit="lines")
    )
    row = await shop.job("j1")
    assert (row.ended_at, row.outcome, row.done) == (T0 + 3 * MIN, JobOutcome.FAILED, 250)
    assert len(await shop.store.jobs()) == 1


async def test_a_late_start_of_an_older_job_is_closed_by_the_next_one(shop: Shop) -> None:
    await shop.commit(start(shop, T0 + 10 * MIN, "j2"))
    # Replayed from before: j1 ran first and its end never arrived.
    await shop.commit(start(shop, T0, "j1"), progress(shop, T0 + MIN, "j1", 100))
    j1, j2 = await shop.job("j1"), await shop.job("j2")
    assert (j1.ended_at, j1.outcome, j1.detail.get("end")) == (
        T0 + 10 * MIN,
        JobOutcome.ABORTED,
        "superseded",
    )
    assert j2.ended_at is None
    assert [r.agent_job for r in await shop.store.jobs(running=True)] == ["j2"]
    assert j1.id > j2.id  # ids are the hub's, in order of arrival


async def test_progress_whose_start_was_lost_creates_the_job_and_the_start_fixes_it(
    shop: Shop,
) -> None:
    await shop.commit(progress(shop, T0 + 2 * MIN, "j1", 200))
    row = await shop.job("j1")
    assert (row.started_at, row.unit, row.program, row.done) == (T0 + 2 * MIN, "lines", None, 200)
    await shop.commit(start(shop, T0, "j1", program="(ORDER 77) sign.nc"))
    row = await shop.job("j1")
    assert (row.started_at, row.program, row.order_ref) == (T0, "(ORDER 77) sign.nc", "77")
    assert row.done == 200  # the start's zero is older than the progress


async def test_a_state_snapshot_carries_a_job_the_events_did_not(shop: Shop) -> None:
    snap = {"job": "k1", "program": "bracket", "unit": "lines", "total": 400, "done": 120,
            "started": T0}  # fmt: skip
    await shop.commit(shop.state(T0 + MIN, "RUNNING", job=snap))
    row = await shop.job("k1")
    assert (row.started_at, row.done, row.total, row.program) == (T0, 120, 400, "bracket")
    # A snapshot without a job says nothing about an end.
    await shop.commit(shop.state(T0 + 2 * MIN, "IDLE", job=None))
    assert (await shop.job("k1")).ended_at is None


async def test_an_offline_machine_keeps_its_job_as_last_known(shop: Shop) -> None:
    await shop.commit(start(shop, T0, "j1"), progress(shop, T0 + MIN, "j1", 100))
    before = await shop.job("j1")
    # The hub decides OFFLINE (agent lost): a hub state row, no record, no job change.
    await shop.store.add_states([StateRow(ROUTER, T0 + 3 * MIN, MachineState.OFFLINE, "no data")])
    await shop.commit(shop.state(T0 + 3 * MIN, "OFFLINE", detail="link_lost"))
    row = await shop.job("j1")
    assert (row.ended_at, row.outcome, row.done) == (None, None, 100)
    assert row.eta_at is not None
    assert before.eta_at is not None
    assert row.eta_at >= before.eta_at


async def test_a_pause_is_not_working_time(shop: Shop) -> None:
    await shop.commit(shop.state(T0, "RUNNING"), start(shop, T0, "j1"))
    await shop.commit(shop.state(T0 + 5 * MIN, "PAUSED"))
    await shop.commit(shop.state(T0 + 15 * MIN, "RUNNING"))
    await shop.commit(progress(shop, T0 + 15 * MIN, "j1", 250))
    row = await shop.job("j1")
    assert row.eta_at == T0 + 15 * MIN + 15 * MIN  # 5 min of work per 25 %, not 15
    # Held again: the ETA slides with the machine's heartbeats.
    await shop.commit(shop.state(T0 + 16 * MIN, "PAUSED"))
    await shop.commit(shop.state(T0 + 20 * MIN, "PAUSED"))
    row = await shop.job("j1")
    assert row.eta_at == T0 + 20 * MIN + 14 * MIN
    await shop.commit(shop.state(T0 + 21 * MIN, "RUNNING"), end(shop, T0 + 40 * MIN, "j1"))
    stored = await shop.store.job_record(ROUTER, "j1")
    assert stored is not None
    assert stored.active_ms == 40 * MIN - 10 * MIN - 5 * MIN


async def test_restart_rebuilds_the_book_from_the_store(shop: Shop) -> None:
    await shop.commit(start(shop, T0, "j1"), progress(shop, T0 + MIN, "j1", 100))
    # The hub crashes after the records' commit, before the jobs' commit:
    lost = [progress(shop, T0 + 2 * MIN, "j1", 200), end(shop, T0 + 3 * MIN, "j1")]
    await shop.store.write(WriteBatch(records=lost))
    assert (await shop.job("j1")).ended_at is None
    # A new book on the same store catches up on the stored events, and tells its listeners.
    shop.seen.clear()
    shop.book = shop.new_book()
    changed = await shop.book.load()
    assert [(r.agent_job, r.outcome) for r in changed] == [("j1", JobOutcome.COMPLETED)]
    assert [r.outcome for r in shop.seen] == [JobOutcome.COMPLETED]
    row = await shop.job("j1")
    assert (row.done, row.ended_at) == (1000, T0 + 3 * MIN)
    # Open jobs come back too, and later events continue them.
    await shop.commit(start(shop, T0 + 10 * MIN, "j2"))
    shop.book = shop.new_book()
    await shop.book.load()
    assert await shop.book.load() == []
    await shop.commit(progress(shop, T0 + 12 * MIN, "j2", 500))
    row = await shop.job("j2")
    assert (row.done, row.eta_origin) == (500, EtaOrigin.HISTORY)


async def test_a_fresh_jobs_table_is_rebuilt_from_every_stored_event(
    new_store: StoreFactory,
) -> None:
    async with new_store() as store:
        shop = Shop(store)
        await store.write(WriteBatch(records=[start(shop, T0, "j1"), end(shop, T0 + MIN, "j1")]))
        await store.write(WriteBatch(records=[start(shop, T0 + 2 * MIN, "j2")]))
        await shop.book.load()
        assert [(r.agent_job, r.outcome) for r in await store.jobs()] == [
            ("j2", None),
            ("j1", JobOutcome.COMPLETED),
        ]


async def test_listeners_run_in_order_and_a_failing_one_does_not_stop_the_rest(
    shop: Shop, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    async def first(row: JobRow) -> None:
        calls.append(f"first:{row.agent_job}")
        raise RuntimeError("boom")

    async def second(row: JobRow) -> None:
        calls.append(f"second:{row.agent_job}")

    shop.book.add_listener(first)
    shop.book.add_listener(second)
    with caplog.at_level(logging.ERROR, logger="shopfloor.hub.jobs.book"):
        await shop.commit(start(shop, T0, "j1"))
    assert calls == ["first:j1", "second:j1"]
    assert "a job listener failed" in caplog.text
    assert shop.book.counters["listener_errors"] == 1
    assert [r.agent_job for r in shop.seen] == ["j1"]  # registered first, still called


async def test_the_order_reference_comes_from_the_name_or_the_header(
    new_store: StoreFactory,
) -> None:
    async with new_store() as store:
        shop = Shop(store)
        header = "Program: sign.nc\nCustomer: Meyer\nORDER 5521"
        await shop.commit(start(shop, T0, "j1", program="sign.nc", header=header))
        assert (await shop.job("j1")).order_ref == "5521"
        config = parse_config('[hub]\nsite = "s"\n[jobs]\norder_pattern = "WO-(?P<ref>\\\\d+)"\n')
        shop.book = shop.new_book(settings=config.jobs)
        await shop.commit(start(shop, T0 + MIN, "j2", program="WO-88 lid.nc"))
        assert (await shop.job("j2")).order_ref == "88"
    pattern = parse_config('[hub]\nsite = "s"\n').jobs.order_pattern
    assert find_order_ref(pattern, "lid.nc", "(ORDER 1042)") == "1042"
    assert find_order_ref(pattern, "in order to", None) is None
    assert find_order_ref(None, "(ORDER 1042)") is None


async def test_a_kiln_eta_follows_the_schedule_and_slips_when_the_controller_waits(
    shop: Shop,
) -> None:
    kiln = "pi-1/kiln"
    total = 10 * 3600
    await shop.commit(
        shop.event(T0, "job_started", machine="kiln", job="f1", program="bisque",
                   unit="seconds", total=total, source="schedule")
    )  # fmt: skip
    await shop.commit(
        shop.event(T0 + 3600 * S, "job_progress", machine="kiln", job="f1", done=3600,
                   total=total, unit="seconds", segment=1)
    )  # fmt: skip
    row = await shop.job("f1", kiln)
    assert (row.eta_origin, row.eta_at) == (EtaOrigin.SCHEDULE, T0 + total * S)

    def sample(ts: int, left_s: float) -> dict[str, Any]:
        return {"ts": ts, "values": {"segment": 1.0, "segment_remaining_s": left_s}}

    # The controller holds its segment clock for 20 minutes (the kiln cannot keep up).
    t = T0 + 3600 * S
    samples = [sample(t, 1800), sample(t + 10 * MIN, 1800), sample(t + 20 * MIN, 1800)]
    await shop.commit(
        shop.record(RecordKind.TELEMETRY, t + 20 * MIN, {"samples": samples}, machine="kiln")
    )
    row = await shop.job("f1", kiln)
    assert row.detail["slip_s"] == pytest.approx(20 * 60, abs=2)
    assert row.eta_at is not None
    assert abs(row.eta_at - (T0 + total * S + 20 * MIN)) <= 2 * S
    assert row.eta_high_at is not None
    assert row.eta_high_at - row.eta_at >= 20 * MIN - 2 * S


async def test_a_haas_batch_eta_is_parts_left_times_the_median_cycle(shop: Shop) -> None:
    mill = "pi-1/mill"
    await shop.commit(
        shop.event(T0, "job_started", machine="mill", job="h1", program="O1234", unit="parts",
                   total=20, source="counter")
    )  # fmt: skip
    cycle = 3 * MIN
    for n in range(1, 6):
        t = T0 + n * cycle + (n % 2) * 5 * S  # a little noise
        await shop.commit(
            shop.event(t, "part_counted", machine="mill", count=100 + n, program="O1234"),
            shop.event(t, "job_progress", machine="mill", job="h1", done=n, total=20,
                       unit="parts"),
        )  # fmt: skip
    row = await shop.job("h1", mill)
    assert row.eta_origin is EtaOrigin.LINEAR  # only this job's own cycles so far
    assert row.eta_at is not None
    last = T0 + 5 * cycle + 5 * S
    assert abs(row.eta_at - (last + 15 * cycle)) <= 2 * MIN
    assert row.eta_low_at is not None
    assert row.eta_high_at is not None
    assert row.eta_low_at < row.eta_at < row.eta_high_at


async def test_a_haas_job_learns_its_program_and_order_from_a_later_progress(
    shop: Shop,
) -> None:
    # A Haas seen first while cutting: Q500 names no program until the mill is idle
    # between parts, so the agent sends it in a job_progress (docs/contract.md).
    mill = "pi-1/mill"
    await shop.commit(
        shop.event(T0, "job_started", machine="mill", job="h1", program=None, unit="parts",
                   total=4, source="counter")
    )  # fmt: skip
    assert (await shop.job("h1", mill)).program is None
    await shop.commit(
        shop.event(T0 + MIN, "job_progress", machine="mill", job="h1", done=1, total=4,
                   unit="parts", program="O01234 (ORDER 1042)")
    )  # fmt: skip
    row = await shop.job("h1", mill)
    assert row.program == "O01234 (ORDER 1042)"
    assert row.order_ref == "1042"
    # A later event never overwrites what is known.
    await shop.commit(
        shop.event(T0 + 2 * MIN, "job_progress", machine="mill", job="h1", done=2, total=4,
                   unit="parts", program="O09999")
    )  # fmt: skip
    assert (await shop.job("h1", mill)).program == "O01234 (ORDER 1042)"


async def test_the_live_view_shows_the_eta_of_its_job(new_store: StoreFactory) -> None:
    async with new_store() as store:
        trackers = Trackers(stale_after_ms=60_000)
        shop = Shop(store, trackers=trackers)
        await shop.book.load()
        snap = {"job": "j1", "program": "sign.nc", "unit": "lines", "total": 1000, "done": 0,
                "started": T0}  # fmt: skip
        await shop.commit(shop.state(T0, "RUNNING", job=snap), start(shop, T0, "j1"))
        await shop.commit(progress(shop, T0 + 2 * MIN, "j1", 250))
        view = trackers.get("router")
        assert view is not None
        assert view.job is not None
        row = await shop.job("j1")
        assert view.job["id"] == row.id
        assert view.job["eta_at"] == row.eta_at == T0 + 8 * MIN
        assert view.job["eta_origin"] == "linear"
        # A heartbeat snapshot replaces the agent's figures; the ETA stays.
        await shop.commit(shop.state(T0 + 3 * MIN, "RUNNING", job={**snap, "done": 300}))
        view = trackers.get("router")
        assert view is not None
        assert view.job is not None
        assert view.job["done"] == 300
        assert view.job["eta_origin"] == "linear"
        await shop.commit(end(shop, T0 + 9 * MIN, "j1"))
        view = trackers.get("router")
        assert view is not None
        assert view.job is None


async def test_a_snapshot_start_before_2020_or_after_the_snapshot_is_not_believed(
    shop: Shop,
) -> None:
    """``job.started`` of a snapshot is the agent's word: one that cannot be (before 2020,
    after the snapshot, beyond any database integer) is replaced by the snapshot's ts,
    instead of failing the store or making a 1970 job that is closed at once."""
    starts = {"huge": -(2**70), "epoch": 5, "future": T0 + MIN, "beyond": 2**70}
    starts["fine"] = T0 - 10 * MIN
    for machine, started in starts.items():
        await shop.commit(
            shop.state(T0, "RUNNING", machine=machine, job={"job": "j", "started": started})
        )
    assert not shop.book.stale
    assert shop.book.counters["store_errors"] == 0
    for machine in starts:
        row = await shop.job("j", f"pi-1/{machine}")
        expected = starts["fine"] if machine == "fine" else T0
        assert (row.started_at, row.ended_at) == (expected, None), machine


class FailingSaves:
    """A real database trigger that makes every write to ``jobs`` fail while it exists."""

    def __init__(self, store: AnyStore, pg: PgServer) -> None:
        self.store = store
        self.pg = pg

    def _sql(self, sql: str) -> None:
        if isinstance(self.store, SqliteStore):
            with contextlib.closing(sqlite3.connect(self.store.path)) as conn:
                conn.executescript(sql)
        else:
            schema = self.store.schema
            self.pg.psql(f"SET search_path TO {schema}; {sql}", database=self.pg.url().database)

    def __enter__(self) -> None:
        if isinstance(self.store, SqliteStore):
            self._sql(
                "CREATE TRIGGER fail_jobs BEFORE INSERT ON jobs"
                " BEGIN SELECT RAISE(ABORT, 'injected'); END;"
                "CREATE TRIGGER fail_jobs_update BEFORE UPDATE ON jobs"
                " BEGIN SELECT RAISE(ABORT, 'injected'); END;"
            )
        else:
            self._sql(
                "CREATE FUNCTION fail_jobs() RETURNS trigger LANGUAGE plpgsql"
                " AS $$ BEGIN RAISE EXCEPTION 'injected'; END $$;"
                "CREATE TRIGGER fail_jobs BEFORE INSERT OR UPDATE ON jobs"
                " FOR EACH ROW EXECUTE FUNCTION fail_jobs();"
            )

    def __exit__(self, *exc: object) -> None:
        if isinstance(self.store, SqliteStore):
            self._sql("DROP TRIGGER fail_jobs; DROP TRIGGER fail_jobs_update;")
        else:
            self._sql("DROP TRIGGER fail_jobs ON jobs; DROP FUNCTION fail_jobs();")


@pytest.mark.parametrize("background", [False, True], ids=["load", "start"])
async def test_a_rebuild_after_a_failed_save_keeps_snapshot_jobs_and_kiln_telemetry(
    shop: Shop, pg: PgServer, background: bool
) -> None:
    """The rebuild after a failed save replays the stored events and job snapshots (the
    failed batch's too) and then applies the batch's telemetry: nothing of either is lost."""
    if background:
        await shop.book.start()  # as ingest does
    kiln = "pi-1/kiln"
    total = 10 * 3600
    await shop.commit(
        shop.event(T0, "job_started", machine="kiln", job="f1", program="bisque",
                   unit="seconds", total=total, source="schedule"),
        shop.event(T0 + 3600 * S, "job_progress", machine="kiln", job="f1", done=3600,
                   total=total, unit="seconds", segment=1),
    )  # fmt: skip
    await shop.book.caught_up()
    with FailingSaves(shop.store, pg):
        snap = {"job": "a", "started": T0 + MIN, "program": "lid.nc"}
        assert (
            await shop.commit(shop.state(T0 + 2 * MIN, "RUNNING", machine="laser", job=snap)) == []
        )
    assert shop.book.stale
    assert shop.book.counters["store_errors"] == 1

    def sample(ts: int, left_s: float) -> dict[str, Any]:
        return {"ts": ts, "values": {"segment": 1.0, "segment_remaining_s": left_s}}

    t = T0 + 3600 * S
    samples = [sample(t, 1800), sample(t + 10 * MIN, 1800), sample(t + 20 * MIN, 1800)]
    await shop.commit(
        shop.state(T0 + 3 * MIN, "RUNNING", job={"job": "b", "started": T0 + 150 * S}),
        shop.record(RecordKind.TELEMETRY, t + 20 * MIN, {"samples": samples}, machine="kiln"),
    )
    await shop.book.caught_up()
    assert [shop.book.stale] == [False]  # rebuilt
    a = await shop.job("a", "pi-1/laser")
    assert (a.started_at, a.ended_at, a.program) == (T0 + MIN, None, "lid.nc")
    b = await shop.job("b")
    assert (b.started_at, b.ended_at) == (T0 + 150 * S, None)
    f1 = await shop.job("f1", kiln)
    assert f1.detail.get("slip_s") == pytest.approx(20 * 60, abs=2)
    # The rebuilt book carries on normally.
    await shop.commit(shop.state(T0 + 4 * MIN, "RUNNING", job={"job": "b", "done": 5, "total": 10}))
    assert (await shop.job("b")).done == 5
