"""Every panel query of the dashboards, run on a real PostgreSQL over a known shop day.

The day (tests/dashboards/shop_day.py) is written through the real PostgreSQL store, in the
order the hub receives it, and every committed batch is handed to the hub's real job book
(as ingest does), so the panels read the store's own schema and the ``jobs`` table holds
what the hub would. Each panel's SQL is expanded like Grafana expands it
(tests/dashboards/grafana_sql.py) and the rows are compared with answers worked out by
hand from the day: a state carried in from before the range, an open last interval, an
OFFLINE gap while the agent was gone, a hub OFFLINE mark voided by replayed heartbeats, no
data before a machine's first record, a state across a shift change, jobs with linear,
history and schedule ETAs, jobs ended today, kiln telemetry.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import asyncpg
import pytest
import shop_day as day
from grafana_sql import QueryContext, Variable, expand, panel_range, variables_of
from shop_day import KILN, LASER, MACHINES, ROUTER1, ROUTER2, at

from shopfloor.hub.config import load_config
from shopfloor.hub.database_url import PostgresUrl
from shopfloor.hub.domain.shifts import shift_occurrences
from shopfloor.hub.jobs import JobBook
from shopfloor.hub.store.postgres import PostgresStore

pytestmark = pytest.mark.postgres

EXAMPLE_CONFIG = Path(__file__).resolve().parents[2] / "dashboards" / "hub-example.toml"
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
KEYS = [m.key for m in MACHINES]
OFFLINE, ALARM, RUNNING, PAUSED, SETUP, IDLE = range(6)


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(**PG, database="postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _fill(database: str, until: datetime | None) -> None:
    """Ingest the day's batches that arrived by ``until`` (all without): commit each through
    the real store, then hand what was new to the hub's job book, whose clock is the
    batch's arrival."""
    url = PostgresUrl(host=PG["host"], port=PG["port"], user=PG["user"], database=database)
    last = None if until is None else int(until.timestamp() * 1000)
    clock = [0]
    async with PostgresStore(url) as store:
        book = JobBook(store, settings=load_config(EXAMPLE_CONFIG).jobs, clock=lambda: clock[0])
        await book.load()
        for arrival, batch in day.BATCHES:
            if last is not None and arrival > last:
                break
            clock[0] = arrival
            result = await store.write(batch)
            await book.apply(result.new)


def _database(until: datetime | None) -> Iterator[str]:
    name = f"shopfloor_dash_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(f"CREATE DATABASE {name}"))
    try:
        asyncio.run(_fill(name, until))
        yield name
    finally:
        asyncio.run(_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture(scope="module")
def shop_db() -> Iterator[str]:
    """A database of its own, holding the whole shop day; dropped afterwards."""
    yield from _database(None)


@pytest.fixture(scope="module")
def noon_db() -> Iterator[str]:
    """The hub's database as it stood at noon: what had arrived by 12:00."""
    yield from _database(at("12:00"))


async def _connect(database: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(**PG, database=database)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def conn(shop_db: str) -> AsyncIterator[asyncpg.Connection]:
    async for connection in _connect(shop_db):
        yield connection


@pytest.fixture
async def noon(noon_db: str) -> AsyncIterator[asyncpg.Connection]:
    async for connection in _connect(noon_db):
        yield connection


async def run(
    conn: asyncpg.Connection,
    dashboard: dict[str, Any],
    title: str,
    start: datetime,
    end: datetime,
    *,
    interval: timedelta = timedelta(minutes=1),
    **selected: str | list[str],
) -> list[dict[str, Any]]:
    """The rows Grafana would get for the panel called ``title``."""
    (panel,) = [p for p in dashboard["panels"] if p["title"] == title]
    variables = variables_of(dashboard, **selected)
    # A query variable's options come from its own query, run here too.
    rows = await conn.fetch(dashboard_var_query(dashboard))
    variables["machine"] = Variable(
        "machine",
        selected.get("machine", "$__all"),
        multi=True,
        include_all=True,
        options=[r["__value"] for r in rows],
    )
    s, e = panel_range(panel, start, end, dashboard["timezone"])
    (target,) = panel["targets"]
    sql = expand(target["rawSql"], QueryContext(s, e, interval, variables))
    out = [dict(r) for r in await conn.fetch(sql)]
    if target["format"] == "time_series" and out:
        assert next(iter(out[0])) == "time", "a time series query starts with its time column"
        times = [r["time"] for r in out]
        assert times == sorted(times), "Grafana needs time series rows sorted by time"
    return out


def dashboard_var_query(dashboard: dict[str, Any]) -> str:
    (var,) = [v for v in dashboard["templating"]["list"] if v["name"] == "machine"]
    return str(var["query"])


def approx(value: float) -> Any:
    return pytest.approx(value, abs=1e-9)


@dataclass(frozen=True, slots=True)
class Probe:
    """A window for the hub's ``time_in_state`` (its ``TimeWindow``)."""

    id: int
    key: str
    start: int
    end: int


# -- the wall ----------------------------------------------------------------------------------


async def test_machine_variable_lists_every_machine(
    conn: asyncpg.Connection, dashboards: dict[str, Any]
) -> None:
    rows = await conn.fetch(dashboard_var_query(dashboards["wall.json"]))
    assert [(r["__text"], r["__value"]) for r in rows] == [
        ("Kiln", KILN.key),
        ("Laser", LASER.key),
        ("Router 1", ROUTER1.key),
        ("Router 2", ROUTER2.key),
    ]


async def test_state_timeline(conn: asyncpg.Connection, dashboards: dict[str, Any]) -> None:
    rows = await run(conn, dashboards["wall.json"], "States", at("00:00"), at("12:00"))
    got = {(r["metric"], r["time"], r["state"]) for r in rows}
    assert len(got) == len(rows)
    expected = {
        # carried in from Monday 21:30; the 11:00 heartbeat repeats RUNNING and is dropped;
        # the row at 12:00 draws the interval still open at the end of the range
        ("Router 1", at("00:00"), IDLE),
        ("Router 1", at("06:00"), RUNNING),
        ("Router 1", at("09:30"), ALARM),
        ("Router 1", at("09:45"), IDLE),
        ("Router 1", at("10:00"), RUNNING),
        ("Router 1", at("12:00"), RUNNING),
        # no data before 05:50: OFFLINE; the hub's OFFLINE while the agent was gone
        ("Router 2", at("00:00"), OFFLINE),
        ("Router 2", at("05:50"), IDLE),
        ("Router 2", at("06:10"), RUNNING),
        ("Router 2", at("08:00"), OFFLINE),
        ("Router 2", at("08:40"), RUNNING),
        ("Router 2", at("11:00"), PAUSED),
        ("Router 2", at("12:00"), PAUSED),
        ("Kiln", at("00:00"), RUNNING),
        ("Kiln", at("12:00"), RUNNING),
        # the hub's OFFLINE at 11:11:00 is void: the replayed heartbeats around it are
        # 25 s apart, within stale_after_s (60 s); the heartbeats repeat RUNNING
        ("Laser", at("00:00"), OFFLINE),
        ("Laser", at("07:00"), IDLE),
        ("Laser", at("07:30"), RUNNING),
        ("Laser", at("08:30"), IDLE),
        ("Laser", at("11:00"), RUNNING),
        ("Laser", at("12:00"), RUNNING),
    }
    assert got == expected


def _built_with(build: ModuleType, tmp_path: Path, hub_section: str) -> dict[str, Any]:
    """The dashboards generated from hub-example.toml with ``[hub]`` replaced."""
    text = EXAMPLE_CONFIG.read_text(encoding="utf-8").replace(
        '[hub]\nsite = "shop"\n', f"[hub]\n{hub_section}\n"
    )
    assert hub_section in text
    config = tmp_path / "hub.toml"
    config.write_text(text, encoding="utf-8")
    return {name: json.loads(doc) for name, doc in build.render(config).items()}


async def test_the_heartbeat_gap_comes_from_the_hub_config(
    conn: asyncpg.Connection, build: ModuleType, tmp_path: Path
) -> None:
    # A hub that goes stale after 20 s: the laser's heartbeats, 25 s apart, no longer prove
    # it kept observing across the hub's mark, so the mark stands (11:11:00 to 11:11:15).
    wall = _built_with(build, tmp_path, 'site = "shop"\nstale_after_s = 20')["wall.json"]
    rows = await run(conn, wall, "States", at("11:00"), at("11:30"), machine=[LASER.key])
    assert [(r["time"], r["state"]) for r in rows] == [
        (at("11:00"), RUNNING),
        (at("11:11:00"), OFFLINE),
        (at("11:11:15"), RUNNING),
        (at("11:30"), RUNNING),
    ]
    # Utilization and coverage drop by those 15 s.
    start, now = at("2026-11-23 23:00"), at("12:00")
    util = await run(conn, wall, "Utilization today", start, now, machine=[LASER.key])
    assert [r["utilization"] for r in util] == [approx((120 - 0.25) / 720)]
    cov = await run(conn, wall, "Coverage today", start, now, machine=[LASER.key])
    assert [r["coverage"] for r in cov] == [approx((300 - 0.25) / 720)]
    report = _built_with(build, tmp_path, 'site = "shop"\nstale_after_s = 20')
    days = await run(
        conn, report["utilization.json"], "By day, per machine", *REPORT_RANGE,
        machine=[LASER.key],
    )  # fmt: skip
    assert [(r["day"], r["offline_s"], r["running_s"]) for r in days] == [
        ("2026-11-23", 360 * 60.0, 0.0),
        ("2026-11-24", 420 * 60.0 + 15, 150 * 60.0 - 15),
    ]


async def test_the_dashboards_sum_time_in_state_like_the_hub(shop_db: str) -> None:
    """The report's SQL and the hub's own ``time_in_state`` (with the API's heartbeat gap)
    agree on every machine and day of the report range."""
    url = PostgresUrl(host=PG["host"], port=PG["port"], user=PG["user"], database=shop_db)
    config = load_config(EXAMPLE_CONFIG)
    gap = int(config.hub.stale_after_s * 1000)
    windows = {
        ("2026-11-23", "Laser"): (at("2026-11-23 18:00"), at("00:00")),
        ("2026-11-24", "Laser"): (at("00:00"), at("18:00")),
        ("2026-11-24", "Router 2"): (at("00:00"), at("18:00")),
    }
    keys = {"Laser": LASER.key, "Router 2": ROUTER2.key}
    probes = [
        Probe(i, keys[m], int(s.timestamp() * 1000), int(e.timestamp() * 1000))
        for i, ((_, m), (s, e)) in enumerate(windows.items())
    ]
    async with PostgresStore(url) as store:
        sums = await store.time_in_state(
            probes, now_ms=int(at("18:00").timestamp() * 1000), heartbeat_gap_ms=gap
        )
    for i, key in enumerate(windows):
        minutes = {str(s).lower(): ms / 60_000 for s, ms in sums[i].items()}
        assert minutes == DAYS[key], key


async def test_state_timeline_of_chosen_machines(
    conn: asyncpg.Connection, dashboards: dict[str, Any]
) -> None:
    rows = await run(
        conn,
        dashboards["wall.json"],
        "States",
        at("09:40"),
        at("10:30"),
        machine=[ROUTER1.key],
    )
    assert [(r["metric"], r["time"], r["state"]) for r in rows] == [
        ("Router 1", at("09:40"), ALARM),  # carried in from 09:30
        ("Router 1", at("09:45"), IDLE),
        ("Router 1", at("10:00"), RUNNING),
        ("Router 1", at("10:30"), RUNNING),
    ]


async def test_current_state(conn: asyncpg.Connection, dashboards: dict[str, Any]) -> None:
    rows = await run(conn, dashboards["wall.json"], "Now", at("00:00"), at("12:00"))
    assert {r["metric"]: (r["state"], r["time"]) for r in rows} == {
        "Kiln": (RUNNING, at("2026-11-23 20:00")),
        "Laser": (RUNNING, at("11:12:05")),  # the last replayed heartbeat
        "Router 1": (RUNNING, at("11:00")),  # the heartbeat is the newest row
        "Router 2": (PAUSED, at("11:00")),
    }
    # Between the hub's void OFFLINE mark (11:11:00) and the next replayed heartbeat, the
    # tile shows what the timeline ends with: the heartbeat before the mark.
    between = await run(
        conn, dashboards["wall.json"], "Now", at("11:00"), at("11:11:05"), machine=[LASER.key]
    )
    assert [(r["metric"], r["state"], r["time"]) for r in between] == [
        ("Laser", RUNNING, at("11:10:50"))
    ]
    # Rows after the end of the range are not "now" yet.
    early = await run(conn, dashboards["wall.json"], "Now", at("00:00"), at("05:00"))
    assert {r["metric"]: r["state"] for r in early} == {
        "Kiln": RUNNING,
        "Laser": OFFLINE,
        "Router 1": IDLE,
        "Router 2": OFFLINE,
    }


async def test_utilization_and_coverage_today(
    conn: asyncpg.Connection, dashboards: dict[str, Any]
) -> None:
    wall = dashboards["wall.json"]
    # The dashboard shows the last 12 h; these panels override it with "today so far".
    start, now = at("2026-11-23 23:00"), at("12:00")
    util = await run(conn, wall, "Utilization today", start, now)
    assert {r["time"] for r in util} == {now}
    # 720 minutes since midnight. Router 1: 06:00-09:30 and 10:00-12:00 RUNNING.
    # Router 2: 06:10-08:00 and 08:40-11:00 RUNNING. The kiln fired all morning. The laser:
    # 07:30-08:30 and 11:00-12:00 RUNNING (the hub's void OFFLINE mark takes nothing).
    assert {r["metric"]: r["utilization"] for r in util} == {
        "Kiln": approx(1.0),
        "Laser": approx(120 / 720),
        "Router 1": approx((210 + 120) / 720),
        "Router 2": approx((110 + 140) / 720),
    }
    cov = await run(conn, wall, "Coverage today", start, now)
    # Router 2: no data until 05:50 and OFFLINE 08:00-08:40; the laser: no data until 07:00.
    assert {r["metric"]: r["coverage"] for r in cov} == {
        "Kiln": approx(1.0),
        "Laser": approx(300 / 720),
        "Router 1": approx(1.0),
        "Router 2": approx((720 - 350 - 40) / 720),
    }


def _jobs(rows: list[dict[str, Any]]) -> dict[str, tuple[Any, ...]]:
    return {
        r["machine"]: (r["program"], r["order_ref"], r["unit"], r["progress"], r["status"])
        for r in rows
    }


async def test_jobs_at_noon(noon: asyncpg.Connection, dashboards: dict[str, Any]) -> None:
    """The wall at noon, over the jobs table the hub's job book filled from what had
    arrived by then."""
    wall = dashboards["wall.json"]
    start, now = at("00:00"), at("12:00")
    bars = await run(noon, wall, "Jobs", start, now)
    assert [(r["time"], r["metric"], r["progress"]) for r in bars] == [
        (at("2026-11-23 20:00"), "Kiln · cone6-glaze", approx(30000 / 36000)),
        (at("06:10"), "Router 2 · shelf.nc (aborted)", approx(500 / 800)),  # ended today
        (at("10:00"), "Router 1 · sign.nc", approx(0.6)),
        (at("11:00"), "Laser · logo (ORDER 1042).nc", approx(0.25)),  # not its 07:30 run
    ]
    table = await run(noon, wall, "Job ETA", start, now)
    assert _jobs(table) == {
        "Kiln": ("cone6-glaze", None, "seconds", approx(30000 / 36000), "running"),
        "Laser": ("logo (ORDER 1042).nc", "1042", "lines", approx(0.25), "running"),
        "Router 1": ("sign.nc", None, "lines", approx(0.6), "running"),
        "Router 2": ("shelf.nc", None, "lines", approx(500 / 800), "aborted"),
    }
    eta = {r["machine"]: (r["eta_low"], r["eta"], r["eta_high"], r["eta_origin"]) for r in table}
    assert eta == {
        # A firing: the schedule's 6000 s left at 11:00 (the controller's own estimate
        # agrees, but a firing's schedule wins); never earlier, up to 5 % of that later.
        "Kiln": (at("12:40"), at("12:40"), at("12:45"), "schedule"),
        # Past runs of the program: the 07:30 run took 60 working minutes, evenly. At 25 %
        # after 25 minutes, history says 45 minutes left and this run's pace 75; blended
        # half and half at 25 %: 60 minutes after 11:25; the range +-15 % (one run).
        "Laser": (at("11:25") + timedelta(minutes=51), at("12:25"),
                  at("11:25") + timedelta(minutes=69), "history"),
        # No past run of sign.nc: linear, 90 working minutes for 60 %, so 60 more after
        # 11:30; the range is remaining / k to remaining * k with k = 1.25 + 3 * 0.4.
        "Router 1": (at("11:30") + timedelta(seconds=round(3600 / 2.45)), at("12:30"),
                     at("11:30") + timedelta(minutes=60 * 2.45), "linear"),
        "Router 2": (None, None, None, None),  # ended: no estimate
    }  # fmt: skip
    assert {r["machine"]: (r["started"], r["ended"]) for r in table} == {
        "Kiln": (at("2026-11-23 20:00"), None),
        "Laser": (at("11:00"), None),
        "Router 1": (at("10:00"), None),
        "Router 2": (at("06:10"), at("11:00")),
    }
    assert [r["machine"] for r in table] == sorted(eta)
    # The job running at the end of the range, else the last one ended that day before it:
    # at 10:00 the laser's second run had not started; its first had ended at 08:30.
    early = await run(noon, wall, "Job ETA", at("00:00"), at("10:00"), machine=[LASER.key])
    assert [(r["status"], r["started"], r["ended"]) for r in early] == [
        ("completed", at("07:30"), at("08:30"))
    ]


async def test_jobs_at_the_end_of_the_day(
    conn: asyncpg.Connection, dashboards: dict[str, Any]
) -> None:
    wall = dashboards["wall.json"]
    table = await run(conn, wall, "Job ETA", at("06:00"), at("18:00"))
    # Every job has ended: each machine shows the last one that ended today.
    assert _jobs(table) == {
        "Kiln": ("cone6-glaze", None, "seconds", approx(1.0), "completed"),
        "Laser": ("logo (ORDER 1042).nc", "1042", "lines", approx(1.0), "completed"),
        "Router 1": ("sign.nc", None, "lines", approx(1.0), "completed"),
        "Router 2": ("shelf.nc", None, "lines", approx(500 / 800), "aborted"),
    }
    assert {r["machine"]: r["ended"] for r in table} == {
        "Kiln": at("13:00"),
        "Laser": at("12:30"),
        "Router 1": at("15:00"),
        "Router 2": at("11:00"),
    }
    assert {(r["eta"], r["eta_low"], r["eta_high"], r["eta_origin"]) for r in table} == {
        (None, None, None, None)
    }
    bars = await run(conn, wall, "Jobs", at("06:00"), at("18:00"), machine=[KILN.key])
    assert [(r["metric"], r["progress"]) for r in bars] == [
        ("Kiln · cone6-glaze (completed)", approx(1.0))
    ]
    # The next morning, yesterday's jobs are gone from the wall.
    tomorrow = at("2026-11-25 07:00")
    assert await run(conn, wall, "Job ETA", tomorrow - timedelta(hours=12), tomorrow) == []
    assert await run(conn, wall, "Jobs", tomorrow - timedelta(hours=12), tomorrow) == []


async def test_kiln_temperature(conn: asyncpg.Connection, dashboards: dict[str, Any]) -> None:
    rows = await run(conn, dashboards["wall.json"], "Kiln temperature", at("10:00"), at("10:10"))
    # Two samples a minute (1000 + i every 30 s), averaged per 1-minute bucket.
    expected = []
    for minute in range(10):
        t = at("10:00") + timedelta(minutes=minute)
        expected += [
            (t, "Kiln set point", approx(1010.0)),
            (t, "Kiln temperature", approx(1000.5 + 2 * minute)),
        ]
    assert [(r["time"], r["metric"], r["value"]) for r in rows] == expected
    coarse = await run(
        conn,
        dashboards["wall.json"],
        "Kiln temperature",
        at("10:00"),
        at("10:10"),
        interval=timedelta(minutes=5),
    )
    assert [(r["time"], r["metric"], r["value"]) for r in coarse] == [
        (at("10:00"), "Kiln set point", approx(1010.0)),
        (at("10:00"), "Kiln temperature", approx(1004.5)),
        (at("10:05"), "Kiln set point", approx(1010.0)),
        (at("10:05"), "Kiln temperature", approx(1014.5)),
    ]
    none = await run(conn, dashboards["wall.json"], "Kiln temperature", at("11:00"), at("12:00"))
    assert none == []


# -- the utilization report ----------------------------------------------------------------

#: Hand-worked minutes per state for the report range, Monday 18:00 to Tuesday 18:00.
DAYS = {
    ("2026-11-23", "Kiln"): {"offline": 120, "running": 240},
    ("2026-11-23", "Laser"): {"offline": 360},
    ("2026-11-23", "Router 1"): {"offline": 210, "idle": 150},
    ("2026-11-23", "Router 2"): {"offline": 360},
    ("2026-11-24", "Kiln"): {"running": 780, "idle": 300},
    ("2026-11-24", "Laser"): {"offline": 420, "idle": 510, "running": 150},
    ("2026-11-24", "Router 1"): {"running": 510, "alarm": 15, "idle": 555},
    ("2026-11-24", "Router 2"): {"offline": 390, "idle": 20, "running": 250, "paused": 420},
}
#: The same by shift: the kiln follows the "kilns" calendar (whole days), the others the
#: "weekdays" one (early 06-14, late 14-22), clipped to the range.
SHIFTS = {
    ("2026-11-23 day", "Kiln"): {"offline": 120, "running": 240},
    ("2026-11-23 late", "Laser"): {"offline": 240},
    ("2026-11-23 late", "Router 1"): {"offline": 210, "idle": 30},
    ("2026-11-23 late", "Router 2"): {"offline": 240},
    ("2026-11-24 day", "Kiln"): {"running": 780, "idle": 300},
    ("2026-11-24 early", "Laser"): {"offline": 60, "idle": 270, "running": 150},
    ("2026-11-24 early", "Router 1"): {"running": 450, "alarm": 15, "idle": 15},
    ("2026-11-24 early", "Router 2"): {"idle": 10, "running": 250, "offline": 40, "paused": 180},
    ("2026-11-24 late", "Laser"): {"idle": 240},
    ("2026-11-24 late", "Router 1"): {"running": 60, "idle": 180},  # RUNNING across 14:00
    ("2026-11-24 late", "Router 2"): {"paused": 240},  # still paused at the end
}
GROUP_OF = {"Router 1": "routers", "Router 2": "routers", "Kiln": "kilns", "Laser": "(no group)"}
STATES = ("alarm", "running", "paused", "setup", "idle", "offline")


def expected_row(minutes: dict[str, int]) -> dict[str, Any]:
    seconds = {s: 60.0 * minutes.get(s, 0) for s in STATES}
    window = sum(seconds.values())
    return {
        "productive_s": seconds["running"],
        **{f"{s}_s": seconds[s] for s in STATES},
        "window_s": window,
        "utilization": approx(seconds["running"] / window),
        "coverage": approx((window - seconds["offline"]) / window),
    }


def grouped(table: dict[tuple[str, str], dict[str, int]]) -> dict[tuple[str, str], Any]:
    out: dict[tuple[str, str], dict[str, int]] = {}
    members: dict[tuple[str, str], int] = {}
    for (label, machine), minutes in table.items():
        key = (label, GROUP_OF[machine])
        total = out.setdefault(key, {})
        for state, value in minutes.items():
            total[state] = total.get(state, 0) + value
        members[key] = members.get(key, 0) + 1
    return {k: {"machines": members[k], **expected_row(v)} for k, v in out.items()}


REPORT_RANGE = (at("2026-11-23 18:00"), at("18:00"))


async def test_report_by_day_per_machine(
    conn: asyncpg.Connection, dashboards: dict[str, Any]
) -> None:
    rows = await run(conn, dashboards["utilization.json"], "By day, per machine", *REPORT_RANGE)
    got = {(r.pop("day"), r.pop("machine")): r for r in rows}
    assert got == {k: expected_row(v) for k, v in DAYS.items()}
    assert list(got) == sorted(got)


async def test_report_by_shift_per_machine(
    conn: asyncpg.Connection, dashboards: dict[str, Any]
) -> None:
    rows = await run(conn, dashboards["utilization.json"], "By shift, per machine", *REPORT_RANGE)
    got = {(r.pop("shift"), r.pop("machine")): r for r in rows}
    assert got == {k: expected_row(v) for k, v in SHIFTS.items()}


async def test_report_per_group(conn: asyncpg.Connection, dashboards: dict[str, Any]) -> None:
    report = dashboards["utilization.json"]
    by_day = await run(conn, report, "By day, per group", *REPORT_RANGE)
    assert {(r.pop("day"), r.pop("group")): r for r in by_day} == grouped(DAYS)
    by_shift = await run(conn, report, "By shift, per group", *REPORT_RANGE)
    assert {(r.pop("shift"), r.pop("group")): r for r in by_shift} == grouped(SHIFTS)


async def test_report_variables_pick_machines_and_groups(
    conn: asyncpg.Connection, dashboards: dict[str, Any]
) -> None:
    report = dashboards["utilization.json"]
    routers = await run(conn, report, "By day, per machine", *REPORT_RANGE, group=["routers"])
    assert {r["machine"] for r in routers} == {"Router 1", "Router 2"}
    ungrouped = await run(conn, report, "By shift, per group", *REPORT_RANGE, group=["__none__"])
    assert {(r["shift"], r["group"]) for r in ungrouped} == {
        ("2026-11-23 late", "(no group)"),
        ("2026-11-24 early", "(no group)"),
        ("2026-11-24 late", "(no group)"),
    }
    one = await run(
        conn, report, "By day, per group", *REPORT_RANGE, machine=[ROUTER2.key], group="$__all"
    )
    assert [(r["day"], r["group"], r["machines"]) for r in one] == [
        ("2026-11-23", "routers", 1),
        ("2026-11-24", "routers", 1),
    ]
    assert one[1]["utilization"] == approx(250 / 1080)


async def test_daily_utilization_series(
    conn: asyncpg.Connection, dashboards: dict[str, Any]
) -> None:
    rows = await run(conn, dashboards["utilization.json"], "Utilization per day", *REPORT_RANGE)
    got = {(r["time"], r["metric"]): r["utilization"] for r in rows}
    starts = {"2026-11-23": at("2026-11-23 18:00"), "2026-11-24": at("00:00")}
    assert got == {
        (starts[d], m): approx(v.get("running", 0) / sum(v.values())) for (d, m), v in DAYS.items()
    }


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("2026-10-19 00:00", "2026-11-02 00:00"),  # summer time ends on 25 October
        ("2026-12-14 00:00", "2026-12-28 00:00"),  # holidays, and a Saturday of overtime
    ],
)
async def test_planned_shifts_match_the_hubs_calendar(
    conn: asyncpg.Connection, dashboards: dict[str, Any], start: str, end: str
) -> None:
    util = load_config(EXAMPLE_CONFIG).utilization
    s, e = at(start), at(end)
    rows = await run(conn, dashboards["utilization.json"], "Planned shifts", s, e)
    got = [(r["calendar"], r["shift"], r["start"], r["end"], r["hours"]) for r in rows]
    from_ms, to_ms = int(s.timestamp() * 1000), int(e.timestamp() * 1000)
    expected = []
    for name, calendar in util.calendars.items():
        for w in shift_occurrences(calendar, from_ms, to_ms, util.tz):
            begin = datetime.fromtimestamp(w.start / 1000, tz=UTC)
            finish = datetime.fromtimestamp(w.end / 1000, tz=UTC)
            expected.append((name, w.label, begin, finish, approx(w.duration_ms / 3_600_000)))
    assert sorted(got, key=lambda r: (r[2], r[0], r[1])) == got
    assert got == sorted(expected, key=lambda r: (r[2], r[0], r[1]))
    labels = {r[1] for r in got}
    if start.startswith("2026-10"):
        hours = {r[1]: r[4] for r in got if r[0] == "kilns"}
        assert hours["2026-10-25 day"] == approx(25.0)  # the day the clocks go back
        assert hours["2026-10-24 day"] == approx(24.0)
    else:
        assert "2026-12-19 saturday" in labels  # overtime on a Saturday
        assert "2026-12-23 early" in labels
        assert "2026-12-24 early" not in labels  # a holiday
