"""Time in state and utilization against hand-computed answers on crafted timelines.

Every timeline is a handful of state rows; every expected figure below is worked out by
hand in the comment next to it. Times are minutes from T0 unless said otherwise. Every
database test runs on SQLite and on PostgreSQL (the ``store`` fixture), with the same answers.
"""

from __future__ import annotations

import asyncio
import itertools
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import date, time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pg_support import BACKENDS, AnyStore, PgServer

from shopfloor.contract import Envelope, MachineState, RecordKind
from shopfloor.hub.domain.shifts import (
    Bucket,
    ExtraShift,
    ShiftCalendar,
    WeeklyShift,
    buckets,
    shift_occurrences,
    to_ms,
)
from shopfloor.hub.domain.utilization import Figures, Planner, figures
from shopfloor.hub.store import Incoming, SqliteStore, StateRow, StateSource, WriteBatch
from shopfloor.hub.store.postgres import PostgresStore

R, IDLE, P, OFF, A = (
    MachineState.RUNNING,
    MachineState.IDLE,
    MachineState.PAUSED,
    MachineState.OFFLINE,
    MachineState.ALARM,
)
KEY = "pi-1/cnc-1"
MIN = 60_000
HOUR = 60 * MIN
UTC = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")
#: Monday 2026-11-23 00:00 UTC.
T0 = 1_795_392_000_000
EnvFactory = Callable[..., Envelope]

WEEKDAYS = ShiftCalendar(
    "weekdays", (WeeklyShift("early", frozenset(range(5)), time(7), time(15, 30)),)
)


def row(minute: float, state: MachineState, source: StateSource = StateSource.AGENT) -> StateRow:
    return StateRow(KEY, T0 + int(minute * MIN), state, source=source)


async def tis(
    store: AnyStore, start_min: float, end_min: float, now_min: float = 10_000
) -> dict[MachineState, int]:
    """Minutes in each state over [start, end) as the store sums them."""
    planner = Planner()
    plan = planner.plan(
        "cnc-1",
        KEY,
        bucket=Bucket.NONE,
        from_ms=T0 + int(start_min * MIN),
        to_ms=T0 + int(end_min * MIN),
        now_ms=T0 + int(now_min * MIN),
        tz=UTC,
        calendar=None,
    )
    sums = await store.time_in_state(planner.probes, now_ms=T0 + int(now_min * MIN))
    f = figures(plan.buckets[0], sums, {R})
    return {s: ms // MIN for s, ms in f.states_ms.items() if ms}


def test_bucket_boundaries_are_local_and_clipped() -> None:
    days = buckets(Bucket.DAY, T0 + 6 * HOUR, T0 + 3 * 24 * HOUR, UTC)
    assert [d.label for d in days] == ["2026-11-23", "2026-11-24", "2026-11-25"]
    assert days[0].start == T0 + 6 * HOUR  # clipped to the window
    assert [d.duration_ms for d in days] == [18 * HOUR, 24 * HOUR, 24 * HOUR]
    hours = buckets(Bucket.HOUR, T0 + 30 * MIN, T0 + 3 * HOUR, BERLIN)
    assert [h.duration_ms // MIN for h in hours] == [30, 60, 60]
    assert hours[1].label == "2026-11-23T02:00+0100"


async def test_carry_in_state_from_before_the_window(store: AnyStore) -> None:
    # IDLE since -60, RUNNING at 10: over [0, 60) IDLE 10, RUNNING 50; nothing is OFFLINE.
    await store.add_states([row(-60, IDLE), row(10, R)])
    assert await tis(store, 0, 60) == {IDLE: 10, R: 50}


async def test_time_before_the_first_data_is_offline(store: AnyStore) -> None:
    await store.add_states([row(20, R)])
    assert await tis(store, 0, 60) == {OFF: 20, R: 40}


async def test_open_last_interval_stops_at_now(store: AnyStore) -> None:
    # RUNNING since 30, still running; asked for [0, 120) at now = 60: 30 OFFLINE, 30 RUNNING,
    # and the 60 minutes after now are not in the answer at all.
    await store.add_states([row(30, R)])
    assert await tis(store, 0, 120, now_min=60) == {OFF: 30, R: 30}


async def test_window_in_the_future_is_empty(store: AnyStore) -> None:
    await store.add_states([row(0, R)])
    assert await tis(store, 100, 200, now_min=50) == {}


async def test_shift_boundary_in_the_middle_of_a_state(store: AnyStore) -> None:
    # RUNNING 06:00-08:00, then IDLE; shift 07:00-15:30. Day: productive 2 h of 24 h; planned
    # 8.5 h of which 1 h productive. Shift bucket: 07:00-15:30 with RUNNING 1 h, IDLE 7.5 h.
    await store.add_states([row(6 * 60, R), row(8 * 60, IDLE)])
    planner = Planner()
    now = T0 + 24 * HOUR
    day, shift = (
        planner.plan(
            "cnc-1",
            KEY,
            bucket=kind,
            calendar=WEEKDAYS,
            from_ms=T0,
            to_ms=T0 + 24 * HOUR,
            now_ms=now,
            tz=UTC,
        )
        for kind in (Bucket.DAY, Bucket.SHIFT)
    )
    sums = await store.time_in_state(planner.probes, now_ms=now)

    [d] = [figures(b, sums, {R}) for b in day.buckets]
    assert (d.window_ms, d.productive_ms) == (24 * HOUR, 2 * HOUR)
    assert (d.planned_ms, d.productive_planned_ms) == (8 * HOUR + 30 * MIN, 1 * HOUR)
    assert d.utilization == round(2 / 24, 6)
    assert d.utilization_planned == round(1 / 8.5, 6)
    assert d.states_ms[OFF] == 6 * HOUR  # before the first data
    assert d.coverage == 0.75

    [b] = shift.buckets
    assert b.window.label == "2026-11-23 early"
    s = figures(b, sums, {R})
    assert s.states_ms[R] == HOUR
    assert s.states_ms[IDLE] == 7 * HOUR + 30 * MIN
    assert s.utilization_planned == round(1 / 8.5, 6)
    assert s.coverage == 1.0


async def test_outage_without_replay_stays_offline(store: AnyStore) -> None:
    # RUNNING from 0; the hub loses the agent at 20 (hub row OFFLINE); data is back at 40.
    await store.add_states(
        [
            row(0, R),
            row(20, OFF, StateSource.HUB),
            row(40, R, StateSource.HUB),
        ]
    )
    assert await tis(store, 0, 60) == {R: 40, OFF: 20}


async def test_outage_with_replay_fills_the_gap(
    store: AnyStore, env: EnvFactory, incoming: Callable[..., Incoming]
) -> None:
    # Same outage; then the agent replays its outbox: heartbeats (RUNNING) every minute from
    # 20.5, a change to IDLE at 30, heartbeats of IDLE to 39.5. Only 20-20.5 stays unknown.
    await store.add_states(
        [row(0, R), row(20, OFF, StateSource.HUB), row(40, IDLE, StateSource.HUB)]
    )
    before = await tis(store, 0, 60)
    assert before == {R: 20, OFF: 20, IDLE: 20}

    def rec(seq: int, minute: float, state: MachineState) -> Incoming:
        ts = T0 + int(minute * MIN)
        body = {"state": str(state), "detail": "", "since": ts}
        e = env(RecordKind.STATE, seq=seq, ts=ts, body=body, replay=True)
        return incoming(e, received_at=T0 + 41 * MIN)

    replay = [rec(i, 20.5 + i, R) for i in range(10)] + [
        rec(10 + i, 30 + i, IDLE) if i == 0 else rec(10 + i, 29.5 + i, IDLE) for i in range(11)
    ]
    await store.write(WriteBatch(records=replay))
    planner = Planner()
    plan = planner.plan(
        "cnc-1",
        KEY,
        bucket=Bucket.NONE,
        from_ms=T0,
        to_ms=T0 + 60 * MIN,
        now_ms=T0 + 100 * MIN,
        tz=UTC,
        calendar=None,
    )
    sums = await store.time_in_state(planner.probes, now_ms=T0 + 100 * MIN)
    f = figures(plan.buckets[0], sums, {R})
    # RUNNING 0-20 and 20.5-30 = 29.5 min; OFFLINE 20-20.5; IDLE 30-60.
    assert f.states_ms[R] == 29 * MIN + 30_000
    assert f.states_ms[OFF] == 30_000
    assert f.states_ms[IDLE] == 30 * MIN
    assert f.coverage == round(1 - 0.5 / 60, 6)


async def test_hub_offline_inside_unbroken_agent_heartbeats_is_void(store: AnyStore) -> None:
    # The agent heartbeats RUNNING every minute, 0..19. The hub loses it (will) at 19.75 and
    # it is back at 40 (hub row). After the replay, heartbeats 20..39 are there too: no two
    # agent rows are more than 1 min apart, so with a 1 min gap the hub's mark is void and
    # the whole hour is RUNNING. Without the gap rule, 19.75-20 stays OFFLINE (15 s).
    beats = [row(m, R) for m in range(20)]
    await store.add_states([*beats, row(19.75, OFF, StateSource.HUB), row(40, R, StateSource.HUB)])
    await store.add_states([row(m, R) for m in range(20, 40)])

    async def offline(start: float, end: float, gap: int | None) -> int:
        planner = Planner()
        plan = planner.plan(
            "cnc-1",
            KEY,
            bucket=Bucket.NONE,
            from_ms=T0 + int(start * MIN),
            to_ms=T0 + int(end * MIN),
            now_ms=T0 + 100 * MIN,
            tz=UTC,
            calendar=None,
        )
        sums = await store.time_in_state(
            planner.probes, now_ms=T0 + 100 * MIN, heartbeat_gap_ms=gap
        )
        return figures(plan.buckets[0], sums, {R}).states_ms[OFF]

    assert await offline(0, 60, None) == 15_000
    assert await offline(0, 60, MIN) == 0
    # A window that starts inside the voided mark carries in the agent's row before it.
    assert await offline(19.8, 19.9, MIN) == 0
    assert await offline(19.8, 19.9, None) == 6_000
    # A gap shorter than the heartbeat keeps the mark.
    assert await offline(0, 60, 30_000) == 15_000


async def test_the_timeline_voids_the_same_hub_offline_rows_as_utilization(
    store: AnyStore,
) -> None:
    # The situation above: a hub mark at 19.75 inside unbroken (replayed) heartbeats, and a
    # real outage later (no agent rows 50..70).
    await store.add_states([*(row(m, R) for m in range(40)), row(19.75, OFF, StateSource.HUB)])
    await store.add_states([row(40, R, StateSource.HUB), row(50, OFF, StateSource.HUB)])
    await store.add_states([row(70, IDLE)])
    now = T0 + 100 * MIN

    async def offline_spans(start: float, gap: int | None) -> list[tuple[float, float]]:
        got = await store.state_intervals(
            KEY, T0 + int(start * MIN), T0 + 80 * MIN, now_ms=now, heartbeat_gap_ms=gap
        )
        assert got[0].start == T0 + int(start * MIN)
        assert got[-1].end == T0 + 80 * MIN
        assert all(a.end == b.start for a, b in itertools.pairwise(got))  # contiguous
        return [((i.start - T0) / MIN, (i.end - T0) / MIN) for i in got if i.state is OFF]

    assert await offline_spans(0, None) == [(19.75, 20), (50, 70)]
    assert await offline_spans(0, MIN) == [(50, 70)]  # the real outage stays
    # Starting inside the void mark carries in the agent's row before it, as utilization does.
    assert await offline_spans(19.8, MIN) == [(50, 70)]
    assert await offline_spans(19.8, None) == [(19.8, 20), (50, 70)]


async def test_a_killed_and_restarted_agent_keeps_the_hubs_offline_mark(store: AnyStore) -> None:
    # Heartbeats to 19, killed at 19.75 (the will: the hub's mark), restarted 9 s later:
    # its first row is its own OFFLINE agent_started (it saw nothing in between), then
    # IDLE. The agent's rows 19 and 19.9 are less than a minute apart, but the mark stands.
    await store.add_states([*(row(m, R) for m in range(20)), row(19.75, OFF, StateSource.HUB)])
    await store.add_states([row(19.9, OFF), row(20, IDLE)])
    now = T0 + 100 * MIN
    got = await store.state_intervals(KEY, T0, T0 + 30 * MIN, now_ms=now, heartbeat_gap_ms=MIN)
    offline = [((i.start - T0) / MIN, (i.end - T0) / MIN) for i in got if i.state is OFF]
    assert offline == [(19.75, 19.9), (19.9, 20)]
    planner = Planner()
    plan = planner.plan(
        "cnc-1", KEY, bucket=Bucket.NONE, from_ms=T0, to_ms=T0 + 30 * MIN, now_ms=now,
        tz=UTC, calendar=None,
    )  # fmt: skip
    sums = await store.time_in_state(planner.probes, now_ms=now, heartbeat_gap_ms=MIN)
    f = figures(plan.buckets[0], sums, {R})
    assert f.states_ms[OFF] == 15_000  # 19.75 to 20 min
    assert f.states_ms[R] == 19 * MIN + 45_000


async def test_outage_without_replay_stays_offline_with_the_gap_rule(store: AnyStore) -> None:
    # Heartbeats to 19, the mark at 19.75, nothing from the agent until live data at 41.
    await store.add_states([*(row(m, R) for m in range(20)), row(19.75, OFF, StateSource.HUB)])
    await store.add_states([row(40, R, StateSource.HUB), row(41, R)])
    planner = Planner()
    plan = planner.plan(
        "cnc-1",
        KEY,
        bucket=Bucket.NONE,
        from_ms=T0,
        to_ms=T0 + 60 * MIN,
        now_ms=T0 + 100 * MIN,
        tz=UTC,
        calendar=None,
    )
    sums = await store.time_in_state(planner.probes, now_ms=T0 + 100 * MIN, heartbeat_gap_ms=MIN)
    f = figures(plan.buckets[0], sums, {R})
    assert f.states_ms[OFF] == 20 * MIN + 15_000  # 19.75-40
    assert f.states_ms[R] == 39 * MIN + 45_000


async def test_a_replayed_row_at_the_same_ts_as_the_hub_offline_row_wins(
    store: AnyStore,
) -> None:
    # Rows with equal ts are ordered by arrival: the later (replayed) one holds.
    await store.add_states([row(0, R), row(20, OFF, StateSource.HUB)])
    await store.add_states([row(20, R)])
    assert await tis(store, 0, 60) == {R: 60}


async def test_overlapping_late_data_corrects_the_past(
    store: AnyStore, env: EnvFactory, incoming: Callable[..., Incoming]
) -> None:
    # Live: RUNNING at 0, IDLE at 30. Late, out of order and twice (two overlapping replays):
    # PAUSED at 10, RUNNING at 20, ALARM at 25. Over [0, 60): RUNNING 0-10 and 20-25 = 15,
    # PAUSED 10, ALARM 5, IDLE 30.
    def rec(seq: int, minute: int, state: MachineState, stream: str = "s1") -> Incoming:
        ts = T0 + minute * MIN
        body = {"state": str(state), "detail": "", "since": ts}
        return incoming(env(RecordKind.STATE, seq=seq, ts=ts, body=body, stream=stream))

    await store.write(WriteBatch(records=[rec(1, 0, R), rec(5, 30, IDLE)]))
    assert await tis(store, 0, 60) == {R: 30, IDLE: 30}
    await store.write(WriteBatch(records=[rec(4, 25, A), rec(2, 10, P)]))
    await store.write(WriteBatch(records=[rec(2, 10, P), rec(3, 20, R), rec(4, 25, A)]))
    assert await tis(store, 0, 60) == {R: 15, P: 10, A: 5, IDLE: 30}
    # A window that starts inside the corrected part carries in the late state.
    assert await tis(store, 12, 22) == {P: 8, R: 2}


def test_dst_days_have_23_and_25_hours() -> None:
    spring = to_ms_local(date(2026, 3, 29), BERLIN)
    [d] = buckets(Bucket.DAY, spring, spring + 23 * HOUR, BERLIN)
    assert d.label == "2026-03-29"
    assert d.duration_ms == 23 * HOUR
    autumn = to_ms_local(date(2026, 10, 25), BERLIN)
    days = buckets(Bucket.DAY, autumn, autumn + 48 * HOUR, BERLIN)
    assert [(x.label, x.duration_ms // HOUR) for x in days] == [
        ("2026-10-25", 25),
        ("2026-10-26", 23),  # the window ends 48 h after the start: 1 h short of midnight
    ]
    assert len(buckets(Bucket.HOUR, autumn, autumn + 25 * HOUR, BERLIN)) == 25
    # A night shift 22:00-06:00 across the autumn change lasts 9 hours.
    night = ShiftCalendar(
        "nights", (WeeklyShift("night", frozenset(range(7)), time(22), time(6), True),)
    )
    occ = shift_occurrences(night, autumn - 3 * HOUR, autumn + 12 * HOUR, BERLIN)
    assert [(w.label, w.duration_ms // HOUR) for w in occ] == [("2026-10-24 night", 9)]


async def test_dst_day_utilization_in_the_database(store: AnyStore) -> None:
    spring = to_ms_local(date(2026, 3, 29), BERLIN)
    await store.add_states([StateRow(KEY, spring - HOUR, R, source=StateSource.AGENT)])
    planner = Planner()
    plan = planner.plan(
        "cnc-1",
        KEY,
        bucket=Bucket.DAY,
        from_ms=spring,
        to_ms=spring + 23 * HOUR,
        now_ms=spring + 48 * HOUR,
        tz=BERLIN,
        calendar=None,
    )
    sums = await store.time_in_state(planner.probes, now_ms=spring + 48 * HOUR)
    [f] = [figures(b, sums, {R}) for b in plan.buckets]
    assert (f.window_ms, f.states_ms[R], f.utilization) == (23 * HOUR, 23 * HOUR, 1.0)


def to_ms_local(day: date, tz: ZoneInfo) -> int:
    from datetime import datetime

    return to_ms(datetime.combine(day, time(0), tzinfo=tz))


def test_holidays_remove_and_overtime_adds_planned_time() -> None:
    cal = ShiftCalendar(
        "x",
        WEEKDAYS.shifts,
        holidays=frozenset({date(2026, 11, 24)}),
        overtime=(ExtraShift(date(2026, 11, 28), time(8), time(12)),),
    )
    week = shift_occurrences(cal, T0, T0 + 7 * 24 * HOUR, UTC)
    assert [w.label for w in week] == [
        "2026-11-23 early",
        "2026-11-25 early",
        "2026-11-26 early",
        "2026-11-27 early",
        "2026-11-28 overtime",
    ]
    assert sum(w.duration_ms for w in week) == 4 * (8 * HOUR + 30 * MIN) + 4 * HOUR


def test_planned_ratio_is_none_without_planned_time() -> None:
    f = Figures(window_ms=HOUR, productive_ms=HOUR)
    assert f.utilization == 1.0
    assert f.utilization_planned is None
    assert Figures().coverage is None


# --- property: the states of any window sum to the window, and match a naive reference ----

STATES = list(MachineState)


def naive(rows: Sequence[tuple[int, int, MachineState]], start: int, end: int) -> dict[str, int]:
    """Time in state by walking rows in (ts, arrival) order in Python."""
    out: dict[str, int] = {}
    ordered = sorted(rows, key=lambda r: (r[0], r[1]))
    current, since = MachineState.OFFLINE, start
    for ts, _, state in ordered:
        if ts >= end:
            break
        if ts > since:
            out[current] = out.get(current, 0) + ts - since
            since = ts
        current = state
    if end > since:
        out[current] = out.get(current, 0) + end - since
    return {k: v for k, v in out.items() if v}


async def _sql(
    rows: Sequence[tuple[int, int, MachineState]],
    windows: Sequence[tuple[int, int]],
    now: int,
    pg: PgServer | None,
) -> dict[int, Mapping[MachineState, int]]:
    """The store's answer: a fresh SQLite file, or (``pg``) a machine key of its own in one
    PostgreSQL schema shared by the examples (a schema per example would migrate 60 times)."""
    with tempfile.TemporaryDirectory() as tmp:
        key = KEY if pg is None else f"pi-1/m{uuid.uuid4().hex[:12]}"
        store: AnyStore = (
            SqliteStore(Path(tmp) / "p.sqlite3")
            if pg is None
            else PostgresStore(pg.url(), schema="property_time_in_state")
        )
        async with store:
            # Inserted in arrival order: the row id breaks ts ties as ``naive`` does.
            await store.add_states(
                [StateRow(key, ts, s, source=StateSource.AGENT) for ts, _, s in rows]
            )
            planner = Planner()
            plans = [
                planner.plan(
                    "m",
                    key,
                    bucket=Bucket.NONE,
                    from_ms=a,
                    to_ms=b,
                    now_ms=now,
                    tz=UTC,
                    calendar=None,
                )
                for a, b in windows
            ]
            sums = await store.time_in_state(planner.probes, now_ms=now)
            out: dict[int, Mapping[MachineState, int]] = {}
            for i, p in enumerate(plans):
                out[i] = figures(p.buckets[0], sums, {R}).states_ms if p.buckets else {}
            return out


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=st.lists(
        st.tuples(st.integers(0, 1000), st.sampled_from(STATES)), min_size=0, max_size=30
    ),
    windows=st.lists(
        st.tuples(st.integers(-100, 1100), st.integers(0, 600)), min_size=1, max_size=4
    ),
    now=st.integers(0, 1200),
)
def test_time_in_all_states_equals_the_window(
    backend: str,
    pg: PgServer,
    events: list[tuple[int, MachineState]],
    windows: list[tuple[int, int]],
    now: int,
) -> None:
    rows = [(ts, i, s) for i, (ts, s) in enumerate(events)]
    spans = [(a, a + length) for a, length in windows]
    got = asyncio.run(_sql(rows, spans, now, pg if backend == "postgres" else None))
    for i, (a, b) in enumerate(spans):
        elapsed = max(0, min(b, now) - a)
        states = {str(k): v for k, v in got[i].items() if v}
        assert sum(states.values()) == elapsed
        assert states == (
            {str(k): v for k, v in naive(rows, a, min(b, now)).items()} if elapsed else {}
        )
