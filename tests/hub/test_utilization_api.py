"""The utilization endpoints: shapes, definitions, groups, pagination, validation, auth,
and the shift-calendar config that feeds them."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable, Sequence

import httpx
import pytest

from shopfloor.contract import Envelope, RecordKind
from shopfloor.hub.api.app import create_app
from shopfloor.hub.config import HubConfig, parse_config
from shopfloor.hub.errors import ConfigError
from shopfloor.hub.runtime import Hub, open_hub
from shopfloor.hub.store import Incoming, WriteBatch

EnvFactory = Callable[..., Envelope]
MIN = 60_000
HOUR = 60 * MIN
#: Monday 2026-11-23 00:00 UTC; the hub's clock stands at 12:00 that day.
T0 = 1_795_392_000_000
NOW = T0 + 12 * HOUR

SHIFTS = """
[utilization]
timezone = "UTC"
productive_states = ["RUNNING", "SETUP"]

[groups]
cell = ["cnc-1", "cnc-2"]
ghosts = ["cnc-1", "never-seen"]

[calendars.weekdays]
groups = ["cell"]
holidays = ["2026-11-24"]

[[calendars.weekdays.shifts]]
name = "early"
days = ["mon-fri"]
start = "07:00"
end = "15:30"
"""


async def feed(hub: Hub, envelopes: Sequence[Envelope]) -> None:
    result = await hub.store.write(
        WriteBatch(records=[Incoming(e, "shop1", NOW) for e in envelopes])
    )
    await hub.store.add_states(hub.trackers.apply(result))
    hub.trackers.publish_pending()


def state(env: EnvFactory, machine: str, seq: int, minute: int, value: str) -> Envelope:
    ts = T0 + minute * MIN
    return env(
        RecordKind.STATE,
        machine=machine,
        seq=seq,
        ts=ts,
        stream=machine,
        body={"state": value, "detail": "", "since": ts},
    )


@pytest.fixture
async def hub(hub_config: Callable[..., HubConfig]) -> AsyncIterator[Hub]:
    async with open_hub(hub_config(SHIFTS), mqtt=False, clock=lambda: NOW) as running:
        yield running


@pytest.fixture
async def client(hub: Hub) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(hub.config, hub=hub)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://hub"
    ) as c:
        yield c


@pytest.fixture
async def timeline(hub: Hub, env: EnvFactory) -> None:
    # cnc-1: IDLE from 06:00, RUNNING 08:00-10:00, SETUP 10:00-11:00, IDLE since 11:00.
    # cnc-2: RUNNING from 09:00 on (still running at now = 12:00).
    await feed(
        hub,
        [
            state(env, "cnc-1", 1, 6 * 60, "IDLE"),
            state(env, "cnc-1", 2, 8 * 60, "RUNNING"),
            state(env, "cnc-1", 3, 10 * 60, "SETUP"),
            state(env, "cnc-1", 4, 11 * 60, "IDLE"),
            state(env, "cnc-2", 1, 9 * 60, "RUNNING"),
        ],
    )


@pytest.mark.usefixtures("timeline")
async def test_one_machine_today_with_definition(client: httpx.AsyncClient) -> None:
    resp = await client.get("/api/v1/machines/cnc-1/utilization")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    # Default window: start of today (site time zone) to now.
    assert (body["from"], body["to"], body["now"], body["bucket"]) == (T0, NOW, NOW, "none")
    assert body["definition"]["productive_states"] == ["RUNNING", "SETUP"]
    assert body["definition"]["timezone"] == "UTC"
    assert set(body["definition"]["denominators"]) == {"window", "planned"}
    [m] = body["machines"]
    assert (m["machine"], m["calendar"]) == ("cnc-1", "weekdays")
    t = m["total"]
    # 00:00-06:00 no data, IDLE 06-08 and 11-12, RUNNING 08-10, SETUP 10-11.
    assert t["states_ms"] == {
        "OFFLINE": 6 * HOUR,
        "ALARM": 0,
        "RUNNING": 2 * HOUR,
        "PAUSED": 0,
        "SETUP": HOUR,
        "IDLE": 3 * HOUR,
    }
    assert t["window_ms"] == 12 * HOUR
    assert t["productive_ms"] == 3 * HOUR
    # Planned so far: 07:00-12:00 = 5 h; productive inside it: 08-11 = 3 h.
    assert (t["planned_ms"], t["productive_planned_ms"]) == (5 * HOUR, 3 * HOUR)
    assert t["utilization"] == 0.25
    assert t["utilization_planned"] == 0.6
    assert t["coverage"] == 0.5


@pytest.mark.usefixtures("timeline")
async def test_group_by_hour_sums_members(client: httpx.AsyncClient) -> None:
    resp = await client.get(
        "/api/v1/utilization",
        params={"group": "cell", "from": T0 + 8 * HOUR, "to": T0 + 14 * HOUR, "bucket": "hour"},
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert [m["machine"] for m in body["machines"]] == ["cnc-1", "cnc-2"]
    g = body["group"]
    assert g["machines"] == ["cnc-1", "cnc-2"]
    # Hours 08..13; 12 and 13 are after now: empty (window 0, ratios null).
    assert [b["label"][11:16] for b in g["buckets"]] == [
        "08:00",
        "09:00",
        "10:00",
        "11:00",
        "12:00",
        "13:00",
    ]
    assert [b["productive_ms"] // MIN for b in g["buckets"]] == [60, 120, 120, 60, 0, 0]
    assert g["buckets"][4]["utilization"] is None
    assert g["total"]["window_ms"] == 8 * HOUR  # 4 elapsed hours x 2 machines
    assert g["total"]["utilization"] == 0.75


@pytest.mark.usefixtures("timeline")
async def test_shift_buckets_and_holiday(client: httpx.AsyncClient) -> None:
    resp = await client.get(
        "/api/v1/utilization",
        params={
            "machines": "cnc-2",
            "from": T0 - 24 * HOUR,
            "to": T0 + 48 * HOUR,
            "bucket": "shift",
        },
    )
    assert resp.status_code == 200, resp.text
    [m] = resp.json()["machines"]
    # Sunday has no shift, Monday's is under way, Tuesday is a holiday.
    [b] = m["buckets"]
    assert (b["label"], b["start"], b["end"]) == (
        "2026-11-23 early",
        T0 + 7 * HOUR,
        T0 + 15 * HOUR + 30 * MIN,
    )
    assert b["window_ms"] == 5 * HOUR  # 07:00 to now
    assert b["states_ms"]["RUNNING"] == 3 * HOUR
    assert b["states_ms"]["OFFLINE"] == 2 * HOUR
    assert b["utilization_planned"] == 0.6
    assert b["coverage"] == 0.6


@pytest.mark.usefixtures("timeline")
async def test_unknown_group_member_is_offline_not_idle(client: httpx.AsyncClient) -> None:
    body = (await client.get("/api/v1/utilization", params={"group": "ghosts"})).json()
    ghost = next(m for m in body["machines"] if m["machine"] == "never-seen")
    assert ghost["total"]["states_ms"]["OFFLINE"] == 12 * HOUR
    assert ghost["total"]["coverage"] == 0.0


@pytest.mark.usefixtures("timeline")
async def test_every_machine_paginated(client: httpx.AsyncClient) -> None:
    first = (await client.get("/api/v1/utilization", params={"limit": 1})).json()
    assert [m["machine"] for m in first["machines"]] == ["cnc-1"]
    assert (first["total_machines"], first["next_offset"]) == (2, 1)
    second = (await client.get("/api/v1/utilization", params={"limit": 1, "offset": 1})).json()
    assert [m["machine"] for m in second["machines"]] == ["cnc-2"]
    assert second["next_offset"] is None


@pytest.mark.usefixtures("timeline")
@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"from": T0 + HOUR, "to": T0}, "after 'to'"),
        ({"from": T0 - 400 * 24 * HOUR, "to": T0}, "longer than 366 days"),
        ({"from": T0 - 40 * 24 * HOUR, "to": T0, "bucket": "hour"}, "bucket=hour is limited"),
        ({"machines": "cnc-1,nope"}, "unknown machine(s): 'nope'"),
        ({"group": "nope"}, "no group 'nope'"),
        ({"group": "cell", "machines": "cnc-1"}, "not both"),
        ({"from": "yesterday"}, "neither epoch milliseconds nor ISO-8601"),
    ],
)
async def test_bad_requests_get_clear_422s(
    client: httpx.AsyncClient, params: dict[str, object], expected: str
) -> None:
    resp = await client.get("/api/v1/utilization", params=params)  # type: ignore[arg-type]
    assert resp.status_code == 422, resp.text
    assert expected in str(resp.json()["detail"])


async def test_bad_bucket_and_shift_without_calendar(
    client: httpx.AsyncClient, hub: Hub, env: EnvFactory
) -> None:
    await feed(hub, [state(env, "lonely", 1, 60, "RUNNING")])
    resp = await client.get("/api/v1/utilization", params={"bucket": "week"})
    assert resp.status_code == 422
    assert "bucket" in resp.text
    resp = await client.get("/api/v1/machines/lonely/utilization", params={"bucket": "shift"})
    assert resp.status_code == 422
    assert "needs a shift calendar" in resp.json()["detail"]
    # Without a calendar, only the window denominator applies.
    body = (await client.get("/api/v1/machines/lonely/utilization")).json()
    assert body["machines"][0]["total"]["utilization_planned"] is None
    assert (await client.get("/api/v1/machines/nope/utilization")).status_code == 404


async def test_openapi_documents_the_shapes(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    assert "/api/v1/utilization" in doc["paths"]
    assert "/api/v1/machines/{machine_id}/utilization" in doc["paths"]
    figures = doc["components"]["schemas"]["FiguresModel"]
    assert "example" in figures
    assert "utilization_planned" in figures["properties"]


async def test_read_scope_is_required_when_tokens_exist(
    hub_config: Callable[..., HubConfig],
) -> None:
    digest = hashlib.sha256(b"w-token").hexdigest()
    config = hub_config(f'[[api.tokens]]\nname = "w"\nsha256 = "{digest}"\nscopes = ["write"]\n')
    async with open_hub(config, mqtt=False, clock=lambda: NOW) as running:
        app = create_app(config, hub=running)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://hub"
        ) as c:
            assert (await c.get("/api/v1/utilization")).status_code == 401
            resp = await c.get("/api/v1/utilization", headers={"Authorization": "Bearer w-token"})
            assert resp.status_code == 403


# --- config ----------------------------------------------------------------------------------

BASE = '[hub]\nsite = "shop1"\n'


def test_default_is_utc_running_and_no_calendar() -> None:
    u = parse_config(BASE).utilization
    assert (u.timezone, sorted(u.productive_states), u.calendars) == ("UTC", ["RUNNING"], {})
    assert u.calendar_for("cnc-1") is None


def test_calendar_resolution_machine_then_group_then_default() -> None:
    text = (
        BASE
        + """
[utilization]
calendar = "b"
[groups]
g = ["m2"]
[calendars.a]
machines = ["m1"]
shifts = [{name = "x", days = ["mon"], start = "22:00", end = "06:00"}]
[calendars.b]
shifts = [{days = ["sat-sun"], start = "08:00", end = "24:00"}]
[calendars.c]
groups = ["g"]
overtime = [{date = 2026-12-19, start = "08:00", end = "12:00"}]
"""
    )
    u = parse_config(text).utilization
    assert u.calendar_for("m1") is not None
    assert [u.calendar_for(m).name for m in ("m1", "m2", "m3")] == ["a", "c", "b"]  # type: ignore[union-attr]
    night = u.calendars["a"].shifts[0]
    assert night.ends_next_day
    assert u.calendars["b"].shifts[0].days == frozenset({5, 6})


@pytest.mark.parametrize(
    ("extra", "key", "words"),
    [
        ('[utilization]\ntimezone = "Mars/Olympus"', "utilization.timezone", "IANA"),
        (
            '[utilization]\nproductive_states = ["OFFLINE"]',
            "utilization.productive_states",
            "never",
        ),
        ('[utilization]\nproductive_states = ["RUN"]', "utilization.productive_states", "unknown"),
        ('[utilization]\ncalender = "x"', "utilization.calender", "did you mean 'calendar'"),
        ('[utilization]\ncalendar = "x"', "utilization.calendar", "no calendar named"),
        ("[groups]\ng = []", "groups.g", "is empty"),
        (
            '[calendars.a]\ngroups = ["nope"]\n'
            'shifts = [{days=["mon"], start="07:00", end="15:00"}]',
            "calendars.a.groups",
            "define it under [groups]",
        ),
        (
            '[calendars.a]\nshifts = [{days=["mon"], start="7", end="15:00"}]',
            "calendars.a.shifts[0].start",
            "HH:MM",
        ),
        (
            '[calendars.a]\nshifts = [{days=["monday"], start="07:00", end="15:00"}]',
            "calendars.a.shifts[0].days",
            "mon-fri",
        ),
        ('[calendars.a]\nholidays = ["24.12.2026"]', "calendars.a.holidays", "2026-12-24"),
        ("[calendars.a]\nmachines = []", "calendars.a.shifts", "plans no time"),
        (
            '[calendars.a]\nmachines=["m"]\nshifts=[{days=["mon"], start="07:00", end="08:00"}]\n'
            '[calendars.b]\nmachines=["m"]\nshifts=[{days=["mon"], start="07:00", end="08:00"}]',
            "calendars.b.machines",
            "already on calendar 'a'",
        ),
    ],
)
def test_config_errors_name_key_and_fix(extra: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE + extra, source="hub.toml")
    assert info.value.path == "hub.toml"
    assert info.value.key == key
    assert words in str(info.value)
    assert info.value.fix
