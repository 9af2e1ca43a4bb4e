"""Every panel query of the dashboards, run on a real PostgreSQL over a known shop day.

The day (tests/dashboards/shop_day.py) is written through the real PostgreSQL store, so the
panels read the store's own schema. Each panel's SQL is expanded like Grafana expands it
(tests/dashboards/grafana_sql.py) and the rows are compared with answers worked out by
hand from the day: a state carried in from before the range, an open last interval, an
OFFLINE gap while the agent was gone, no data before a machine's first record, a state
across a shift change, jobs with and without the machine's own ETA, kiln telemetry.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import shop_day as day
from grafana_sql import QueryContext, Variable, expand, panel_range, variables_of
from shop_day import KILN, LASER, MACHINES, ROUTER1, ROUTER2, at

from shopfloor.hub.config import load_config
from shopfloor.hub.database_url import PostgresUrl
from shopfloor.hub.domain.shifts import shift_occurrences
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


async def _fill(database: str) -> None:
    url = PostgresUrl(host=PG["host"], port=PG["port"], user=PG["user"], database=database)
    async with PostgresStore(url) as store:
        for batch in day.BATCHES:
            await store.write(batch)


@pytest.fixture(scope="module")
def shop_db() -> Iterator[str]:
    """A database of its own, holding the shop day; dropped afterwards."""
    name = f"shopfloor_dash_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(f"CREATE DATABASE {name}"))
    try:
        asyncio.run(_fill(name))
        yield name
    finally:
        asyncio.run(_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
async def conn(shop_db: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(**PG, database=shop_db)
    try:
        yield connection
    finally:
        await connection.close()


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
        ("Laser", at("00:00"), OFFLINE),
        ("Laser", at("07:00"), IDLE),
        ("Laser", at("12:00"), IDLE),
    }
    assert got == expected


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
        "Laser": (IDLE, at("07:00")),
        "Router 1": (RUNNING, at("11:00")),  # the heartbeat is the newest row
        "Router 2": (PAUSED, at("11:00")),
    }
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
    # Router 2: 06:10-08:00 and 08:40-11:00 RUNNING. The kiln fired all morning.
    assert {r["metric"]: r["utilization"] for r in util} == {
        "Kiln": approx(1.0),
        "Laser": approx(0.0),
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


async def test_jobs(conn: asyncpg.Connection, dashboards: dict[str, Any]) -> None:
    wall = dashboards["wall.json"]
    bars = await run(conn, wall, "Jobs", at("00:00"), at("12:00"))
    assert [(r["metric"], r["progress"], r["time"]) for r in bars] == [
        ("Kiln · cone6-glaze", approx(30000 / 36000), at("11:00")),
        ("Router 1 · sign.nc", approx(0.6), at("11:30")),
    ]  # router 2's job ended at 11:00
    table = await run(conn, wall, "Job ETA", at("00:00"), at("12:00"))
    assert table == [
        {
            "machine": "Kiln",
            "program": "cone6-glaze",
            "unit": "seconds",
            "progress": approx(30000 / 36000),
            "started": at("2026-11-23 20:00"),
            "eta": at("12:40"),  # the controller's own: 6000 s after 11:00
            "eta_origin": "firmware",
        },
        {
            "machine": "Router 1",
            "program": "sign.nc",
            "unit": "lines",
            "progress": approx(0.6),
            "started": at("10:00"),
            "eta": at("12:30"),  # 60 % in 90 minutes: 150 minutes in all
            "eta_origin": "linear",
        },
    ]
    later = await run(conn, wall, "Job ETA", at("12:00"), at("13:30"))
    assert [r["machine"] for r in later] == ["Router 1"]  # the firing ended at 13:00
    before = await run(conn, wall, "Job ETA", at("09:00"), at("10:15"))
    assert [(r["machine"], r["progress"], r["eta"]) for r in before] == [
        ("Kiln", None, None),  # no progress reported yet: no ETA, not a guess
        ("Router 1", None, None),
        ("Router 2", None, None),  # its job of the morning ends at 11:00
    ]


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
    ("2026-11-24", "Laser"): {"offline": 420, "idle": 660},
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
    ("2026-11-24 early", "Laser"): {"offline": 60, "idle": 420},
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
