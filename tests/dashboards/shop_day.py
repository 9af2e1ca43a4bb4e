"""A simulated shop day, written through the real PostgreSQL store, with hand-worked answers.

Tuesday 2026-11-24 in Europe/Berlin (UTC+1), the time zone of dashboards/hub-example.toml,
whose calendars the dashboards were generated with: the routers and the laser work the
``weekdays`` calendar (early 06:00-14:00, late 14:00-22:00), the kiln (group ``kilns``) its
own ``kilns`` calendar (the whole day). All times below are local.

router-1 (agent pi-wood)   IDLE from Monday 21:30 (carried in) · RUNNING 06:00 · ALARM
                           09:30 · IDLE 09:45 · RUNNING 10:00 · heartbeat RUNNING 11:00 ·
                           IDLE 15:00 (a state across the 14:00 shift change)
router-2 (agent pi-wood)   no data before 05:50 (OFFLINE) · IDLE 05:50 · RUNNING 06:10 ·
                           the hub marks it OFFLINE at 08:00 (agent lost) · RUNNING 08:40 ·
                           PAUSED 11:00, still paused (open last interval)
kiln (agent pi-ceramics)   RUNNING from Monday 20:00 (a firing) · IDLE 13:00; telemetry
                           10:00-10:10 every 30 s; job "firing-7" in seconds with the
                           controller's own ETA
laser (agent pi-laser)     first data IDLE 07:00

Jobs: router-1 runs "sign.nc" (lines) from 10:00, 1200 of 2000 lines at 11:30; router-2's
job of the morning ended at 11:00.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from zoneinfo import ZoneInfo

from shopfloor.contract import Envelope, MachineState, RecordKind
from shopfloor.hub.store.base import Incoming, StateRow, StateSource, WriteBatch, machine_key

TZ: Final = ZoneInfo("Europe/Berlin")
SITE: Final = "shop"


def at(text: str) -> datetime:
    """A local time, ``"2026-11-24 06:00"`` or just ``"06:00"`` (that Tuesday)."""
    if len(text) <= 8:
        text = f"2026-11-24 {text}"
    return datetime.fromisoformat(text).replace(tzinfo=TZ)


def ms(text: str) -> int:
    return int(at(text).timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class Machine:
    agent: str
    machine: str
    name: str
    kind: str
    protocol: str

    @property
    def key(self) -> str:
        return machine_key(self.agent, self.machine)


ROUTER1: Final = Machine("pi-wood", "router-1", "Router 1", "cnc_router", "grbl")
ROUTER2: Final = Machine("pi-wood", "router-2", "Router 2", "cnc_router", "grbl")
KILN: Final = Machine("pi-ceramics", "kiln", "Kiln", "kiln", "modbus_kiln")
LASER: Final = Machine("pi-laser", "laser", "Laser", "laser", "grbl")
MACHINES: Final = (ROUTER1, ROUTER2, KILN, LASER)

#: (machine, local time, state) of every state record an agent publishes.
STATES: Final = (
    (ROUTER1, "2026-11-23 21:30", MachineState.IDLE),
    (ROUTER1, "06:00", MachineState.RUNNING),
    (ROUTER1, "09:30", MachineState.ALARM),
    (ROUTER1, "09:45", MachineState.IDLE),
    (ROUTER1, "10:00", MachineState.RUNNING),
    (ROUTER1, "11:00", MachineState.RUNNING),  # heartbeat: same state again
    (ROUTER1, "15:00", MachineState.IDLE),
    (ROUTER2, "05:50", MachineState.IDLE),
    (ROUTER2, "06:10", MachineState.RUNNING),
    (ROUTER2, "08:40", MachineState.RUNNING),
    (ROUTER2, "11:00", MachineState.PAUSED),
    (KILN, "2026-11-23 20:00", MachineState.RUNNING),
    (KILN, "13:00", MachineState.IDLE),
    (LASER, "07:00", MachineState.IDLE),
)
#: The hub's own rows: pi-wood's will fired at 08:00, so router-2 went OFFLINE.
HUB_STATES: Final = ((ROUTER2, "08:00", MachineState.OFFLINE, "agent offline"),)

#: Kiln telemetry: a sample every 30 s from 10:00 to 10:09:30, in batches of two.
KILN_SAMPLES: Final = tuple((ms("10:00") + i * 30_000, 1000.0 + i, 1010.0) for i in range(20))

#: (machine, local time, body) of the job events.
EVENTS: Final[tuple[tuple[Machine, str, dict[str, Any]], ...]] = (
    (
        ROUTER2,
        "06:10",
        {
            "event": "job_started",
            "job": "j9",
            "program": "shelf.nc",
            "unit": "lines",
            "total": 800,
            "source": "proxy",
        },
    ),
    (
        ROUTER2,
        "11:00",
        {"event": "job_ended", "job": "j9", "outcome": "aborted", "done": 500, "total": 800},
    ),
    (
        ROUTER1,
        "10:00",
        {
            "event": "job_started",
            "job": "j1",
            "program": "sign.nc",
            "unit": "lines",
            "total": 2000,
            "source": "proxy",
        },
    ),
    (
        ROUTER1,
        "10:30",
        {"event": "job_progress", "job": "j1", "done": 500, "total": 2000, "unit": "lines"},
    ),
    (
        ROUTER1,
        "11:30",
        {"event": "job_progress", "job": "j1", "done": 1200, "total": 2000, "unit": "lines"},
    ),
    (
        KILN,
        "2026-11-23 20:00",
        {
            "event": "job_started",
            "job": "firing-7",
            "program": "cone6-glaze",
            "unit": "seconds",
            "total": 36000,
            "source": "schedule",
        },
    ),
    (
        KILN,
        "11:00",
        {
            "event": "job_progress",
            "job": "firing-7",
            "done": 30000,
            "total": 36000,
            "unit": "seconds",
            "eta_s": 6000,
            "segment": 4,
        },
    ),
    (
        KILN,
        "13:00",
        {
            "event": "job_ended",
            "job": "firing-7",
            "outcome": "completed",
            "done": 36000,
            "total": 36000,
        },
    ),
)


def _batches() -> Iterator[WriteBatch]:
    seqs = {m.agent: itertools.count(1) for m in MACHINES}

    def incoming(m: Machine, kind: RecordKind, ts: int, body: dict[str, Any]) -> Incoming:
        env = Envelope(
            kind=kind,
            agent=m.agent,
            machine=m.machine,
            stream=f"stream-{m.agent}",
            seq=next(seqs[m.agent]),
            ts=ts,
            body={**body},
        )
        return Incoming(envelope=env, site=SITE, received_at=ts + 150)

    yield WriteBatch(
        records=[
            incoming(
                m,
                RecordKind.META,
                ms("2026-11-23 19:00"),
                {
                    "protocol": m.protocol,
                    "firmware": "1.0",
                    "kind": m.kind,
                    "name": m.name,
                    "options": {},
                },
            )
            for m in MACHINES
        ]
    )
    for m, when, state in STATES:
        body = {
            "state": str(state),
            "since": ms(when),
            "detail": state.name.title(),
            "alarm": None,
            "program": None,
            "phase": None,
            "job": None,
        }
        yield WriteBatch(records=[incoming(m, RecordKind.STATE, ms(when), body)])
    yield WriteBatch(
        states=[
            StateRow(m.key, ms(when), state, detail, StateSource.HUB)
            for m, when, state, detail in HUB_STATES
        ]
    )
    for m, when, body in EVENTS:
        full = {"code": None, "text": "", **body}
        yield WriteBatch(records=[incoming(m, RecordKind.EVENT, ms(when), full)])
    for first in range(0, len(KILN_SAMPLES), 2):
        pair = KILN_SAMPLES[first : first + 2]
        samples = [
            {"ts": ts, "values": {"temperature_c": t, "setpoint_c": sp, "output_pct": 55.0}}
            for ts, t, sp in pair
        ]
        yield WriteBatch(
            records=[incoming(KILN, RecordKind.TELEMETRY, pair[-1][0], {"samples": samples})]
        )


BATCHES: Final = tuple(_batches())
