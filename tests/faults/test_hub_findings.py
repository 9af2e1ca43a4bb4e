"""What the fault scenarios found in the hub's state history, each as a short,
deterministic test.

All three are about how the history treats an agent's outage and the records that arrive
late afterwards (a replay after a network cut, a broker restart, an agent restart).
DESIGN.md section 3: "late data from a replay corrects the past: a machine that ran while
the network was down shows as running, not offline"; and OFFLINE means no data.

1. ``/machines/{id}/states`` kept the hub's OFFLINE mark that a replay contradicts, while
   ``/utilization`` voided it. Fixed while this suite was written (commit ce55fd8,
   ``_INTERVALS_SQL_VOIDED``); the test stays as the regression test.
2. A "data is back" row asserts a stale state (strict xfail).
3. The void rule of 1 also voids the mark of an agent that was dead and restarted within
   ``stale_after_s``, so the dead time counts as the state before the kill (strict xfail).

The scenarios (``test_fault_scenarios.py``) count the seconds 2 and 3 cost
(``known_hub_bugs`` in their results, ``faultlib.KNOWN_HUB_BUGS``).

Each test runs the real hub (``open_hub`` with its HTTP app) on a private Mosquitto, with
the hub's clock under the test's control (so every ``received_at`` is known), and feeds it
the messages an agent sends around an outage, published with ``mosquitto_pub``. The open
ones are ``xfail(strict=True)``: when the hub is fixed they pass, which fails them as
XPASS: then remove the mark here and the entry in ``faultlib.KNOWN_HUB_BUGS``.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from shopfloor.contract import AgentStatus, Envelope, RecordKind, encode_envelope, encode_status
from shopfloor.hub.api.app import create_app
from shopfloor.hub.config import parse_config
from shopfloor.hub.runtime import Hub, open_hub

pytestmark = [pytest.mark.faults, pytest.mark.mqtt]

T0 = 1_800_000_000_000  # 2027: the agent's clock and the hub's agree
ROOT = "fl/v1"
AGENT = "pi-x"
MACHINE = "router"
KEY = f"{AGENT}:{MACHINE}"
MOSQUITTO_PUB = shutil.which("mosquitto_pub") or "/usr/bin/mosquitto_pub"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


class Feed:
    """Publishes what an agent would, one message at a time, each stored before the next."""

    def __init__(self, hub: Hub, port: int, clock: Clock) -> None:
        self.hub = hub
        self.port = port
        self.clock = clock
        self.sent = 0

    async def publish(self, topic: str, payload: bytes, *, at: int) -> None:
        self.clock.now = at  # the hub receives it at this time
        proc = await asyncio.create_subprocess_exec(
            MOSQUITTO_PUB,
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-q",
            "1",
            "-V",
            "mqttv5",
            "-t",
            topic,
            "-s",
            stdin=asyncio.subprocess.PIPE,
        )
        await proc.communicate(payload)
        assert proc.returncode == 0
        self.sent += 1
        ingest = self.hub.ingest
        assert ingest is not None
        for _ in range(200):
            counters = ingest.stats().counters
            if counters["received"] >= self.sent and counters["pending"] == 0:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)  # the batch and its derived rows are committed

    async def record(
        self,
        seq: int,
        kind: RecordKind,
        ts: int,
        body: dict[str, Any],
        *,
        at: int,
        replay: bool,
        epoch: int = 1,
    ) -> None:
        env = Envelope(
            kind=kind,
            agent=AGENT,
            machine=MACHINE,
            stream="s1",
            seq=seq,
            ts=ts,
            mono=ts - T0 + 1,
            body=body,
            replay=replay,
            epoch=epoch,
        )
        topic = f"{ROOT}/shop/{AGENT}/{MACHINE}/{kind}"
        await self.publish(topic, encode_envelope(env), at=at)

    async def state(
        self,
        seq: int,
        ts: int,
        state: str,
        *,
        at: int,
        replay: bool = False,
        detail: str | None = None,
        epoch: int = 1,
    ) -> None:
        body = {"state": state, "since": ts, "detail": detail or state.title()}
        await self.record(seq, RecordKind.STATE, ts, body, at=at, replay=replay, epoch=epoch)

    async def will(self, *, at: int) -> None:
        """The broker publishes the agent's will: it vanished (the network is cut)."""
        await self.status(online=False, epoch=1, at=at)

    async def status(self, *, online: bool, epoch: int, at: int) -> None:
        status = AgentStatus(agent=AGENT, online=online, epoch=epoch, ts=at)
        await self.publish(f"{ROOT}/shop/{AGENT}/_status", encode_status(status), at=at)


@pytest.fixture
async def feed(
    tmp_path: Path, private_broker: Callable[..., Any]
) -> AsyncIterator[tuple[Feed, httpx.AsyncClient]]:
    broker = private_broker()
    clock = Clock()
    config = parse_config(
        f'[hub]\nsite = "shop"\ntopic_root = "{ROOT}"\ndata_dir = "{tmp_path}"\n'
        f'stale_after_s = 60\n[mqtt]\nurl = "{broker.url}"\nclient_id = "hub-findings"\n',
        source="hub.toml",
    )
    async with open_hub(config, clock=clock, stale_check_s=3600) as hub:
        assert hub.ingest is not None
        await asyncio.wait_for(hub.ingest.wait_connected(), 10)
        app = create_app(hub.config, hub=hub)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://hub") as api:
            yield Feed(hub, broker.port, clock), api


async def intervals(api: httpx.AsyncClient, start: int, end: int) -> list[tuple[str, int, int]]:
    answer = await api.get(f"/api/v1/machines/{KEY}/states", params={"from": start, "to": end})
    assert answer.status_code == 200, answer.text
    merged: list[tuple[str, int, int]] = []  # one interval per stored row: merge neighbours
    for i in answer.json()["intervals"]:
        if merged and merged[-1][0] == i["state"] and merged[-1][2] == i["from"] - T0:
            merged[-1] = (i["state"], merged[-1][1], i["to"] - T0)
        else:
            merged.append((i["state"], i["from"] - T0, i["to"] - T0))
    return merged


async def states_ms(api: httpx.AsyncClient, start: int, end: int) -> dict[str, int]:
    answer = await api.get(f"/api/v1/machines/{KEY}/utilization", params={"from": start, "to": end})
    assert answer.status_code == 200, answer.text
    ms: dict[str, int] = answer.json()["machines"][0]["total"]["states_ms"]
    return {k: v for k, v in ms.items() if v}


async def test_states_void_a_hub_offline_mark_that_the_replay_contradicts(
    feed: tuple[Feed, httpx.AsyncClient],
) -> None:
    f, api = feed
    await f.state(1, T0, "RUNNING", at=T0 + 100)  # live
    await f.will(at=T0 + 10_000)  # the network is cut: the broker sends the will
    # The network is back: the agent replays what it saw meanwhile (a heartbeat snapshot,
    # RUNNING all along), then live data follows.
    await f.state(2, T0 + 15_000, "RUNNING", at=T0 + 30_000, replay=True)
    await f.state(3, T0 + 31_000, "RUNNING", at=T0 + 31_100)
    f.clock.now = T0 + 60_000
    window = (T0, T0 + 40_000)
    # What the hub's utilization says (voided mark): RUNNING the whole window.
    assert await states_ms(api, *window) == {"RUNNING": 40_000}
    # What its state history says must agree (today: OFFLINE from 10 s to 15 s).
    assert await intervals(api, *window) == [("RUNNING", 0, 40_000)]


async def test_data_is_back_row_does_not_assert_a_stale_state(
    feed: tuple[Feed, httpx.AsyncClient],
) -> None:
    """Fixed in 9a47460 for a replay that comes first (the regression test)."""
    f, api = feed
    await f.state(1, T0, "RUNNING", at=T0 + 100)
    await f.will(at=T0 + 10_000)
    # Back at 30 s: the first replayed record is telemetry from 12 s; the state change to
    # IDLE (at 20 s, during the cut) comes right after it.
    telemetry = {"samples": [{"ts": T0 + 12_000, "values": {"feed": 1000}}]}
    await f.record(2, RecordKind.TELEMETRY, T0 + 12_000, telemetry, at=T0 + 30_000, replay=True)
    await f.state(3, T0 + 20_000, "IDLE", at=T0 + 30_050, replay=True)
    # The machine was IDLE from 20 s on, and the agent said so; no live row since.
    f.clock.now = T0 + 60_000
    window = (T0 + 20_000, T0 + 40_000)
    assert await intervals(api, *window) == [("IDLE", 20_000, 40_000)]
    assert await states_ms(api, *window) == {"IDLE": 20_000}


async def test_live_telemetry_first_does_not_bring_back_a_stale_state(
    feed: tuple[Feed, httpx.AsyncClient],
) -> None:
    """Fixed by storing no "data is back" row (the regression test)."""
    f, api = feed
    await f.state(1, T0, "RUNNING", at=T0 + 100)
    await f.will(at=T0 + 10_000)
    # Back at 30 s: live telemetry first (the agent sends new rows ahead of the backlog),
    # then the backlog: the machine went IDLE at 20 s, during the cut.
    telemetry = {"samples": [{"ts": T0 + 30_000, "values": {"feed": 0}}]}
    await f.record(3, RecordKind.TELEMETRY, T0 + 30_000, telemetry, at=T0 + 30_010, replay=False)
    await f.state(2, T0 + 20_000, "IDLE", at=T0 + 30_050, replay=True)
    f.clock.now = T0 + 60_000
    window = (T0 + 20_000, T0 + 40_000)
    assert await intervals(api, *window) == [("IDLE", 20_000, 40_000)]
    assert await states_ms(api, *window) == {"IDLE": 20_000}


async def test_a_dead_agent_stays_offline_until_it_restarts(
    feed: tuple[Feed, httpx.AsyncClient],
) -> None:
    """Fixed in 9a47460 (the regression test)."""
    f, api = feed
    await f.state(1, T0, "RUNNING", at=T0 + 100)
    await f.will(at=T0 + 10_000)  # SIGKILL: the socket closes, the broker sends the will
    # Restarted 8 s later: a new epoch, seqs from a new block, OFFLINE until it has read the
    # machine, then what the machine says.
    await f.status(online=True, epoch=2, at=T0 + 18_000)
    await f.state(1001, T0 + 18_000, "OFFLINE", at=T0 + 18_050, detail="agent_started", epoch=2)
    await f.state(1002, T0 + 18_500, "IDLE", at=T0 + 18_550, epoch=2)
    f.clock.now = T0 + 60_000
    window = (T0, T0 + 30_000)
    assert await intervals(api, *window) == [
        ("RUNNING", 0, 10_000),
        ("OFFLINE", 10_000, 18_500),
        ("IDLE", 18_500, 30_000),
    ]
    assert await states_ms(api, *window) == {"RUNNING": 10_000, "OFFLINE": 8_500, "IDLE": 11_500}
