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
laser (agent pi-laser)     first data IDLE 07:00 · RUNNING 07:30 · IDLE 08:30 · RUNNING
                           11:00; heartbeats every 25 s from 11:10:00; pi-laser's Wi-Fi
                           drops after the 11:10:00 one, so the hub marks the laser
                           OFFLINE ("no data") at 11:11:00 (stale_after_s = 60 s after the
                           last record); the link is back at 11:12:10 and the agent's
                           outbox replays the heartbeats of 11:10:25 to 11:12:05. The
                           agent's rows around the mark are 25 s apart (11:10:50, 11:11:15):
                           it kept observing, so the mark is void. · IDLE 12:30

Jobs (fed to the hub's real job book in the order the records arrive, see ``BATCHES``):
router-1 runs "sign.nc" (lines) from 10:00, 1200 of 2000 lines at 11:30, completed at
15:00; router-2's job of the morning ran from 06:10 and was aborted at 11:00; the kiln's
firing (seconds, the controller's own ETA) completed at 13:00; the laser ran
"logo (ORDER 1042).nc" 07:30-08:30 (completed: history for the next run) and again from
11:00, 250 of 1000 lines at 11:25, completed at 12:30.
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
    (LASER, "07:30", MachineState.RUNNING),
    (LASER, "08:30", MachineState.IDLE),
    (LASER, "11:00", MachineState.RUNNING),
    (LASER, "12:30", MachineState.IDLE),
)
#: The laser's heartbeats during pi-laser's Wi-Fi outage (RUNNING since 11:00), every 25 s.
LASER_HEARTBEATS: Final = tuple(f"11:{10 + s // 60:02d}:{s % 60:02d}" for s in range(0, 130, 25))
#: The first heartbeat arrives live; the others are replayed when the link is back.
LASER_LINK_BACK: Final = "11:12:10"
#: The hub's own rows: pi-wood's will fired at 08:00, so router-2 went OFFLINE; the laser's
#: data went stale at 11:11:00 (its last record 11:10:00 + stale_after_s).
HUB_STATES: Final = (
    (ROUTER2, "08:00", MachineState.OFFLINE, "agent offline"),
    (LASER, "11:11:00", MachineState.OFFLINE, "no data"),
)

#: Kiln telemetry: a sample every 30 s from 10:00 to 10:09:30, in batches of two.
KILN_SAMPLES: Final = tuple((ms("10:00") + i * 30_000, 1000.0 + i, 1010.0) for i in range(20))

#: The laser's program, run twice (the first run is history for the second).
LASER_JOB: Final = {
    "program": "logo (ORDER 1042).nc",
    "unit": "lines",
    "total": 1000,
    "source": "proxy",
}

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
    (
        ROUTER1,
        "15:00",
        {"event": "job_ended", "job": "j1", "outcome": "completed", "done": 2000, "total": 2000},
    ),
    (LASER, "07:30", {"event": "job_started", "job": "L1", **LASER_JOB}),
    (LASER, "11:00", {"event": "job_started", "job": "L2", **LASER_JOB}),
    (
        LASER,
        "08:30",
        {"event": "job_ended", "job": "L1", "outcome": "completed", "done": 1000, "total": 1000},
    ),
    (
        LASER,
        "11:25",
        {"event": "job_progress", "job": "L2", "done": 250, "total": 1000, "unit": "lines"},
    ),
    (
        LASER,
        "12:30",
        {"event": "job_ended", "job": "L2", "outcome": "completed", "done": 1000, "total": 1000},
    ),
)


@dataclass(frozen=True, slots=True)
class _Sent:
    """A record an agent made at ``ts`` that reaches the hub at ``arrival`` (epoch ms)."""

    machine: Machine
    kind: RecordKind
    ts: int
    body: dict[str, Any]
    arrival: int

    @property
    def replay(self) -> bool:
        return self.arrival - self.ts > 1000


def _sent() -> list[_Sent]:
    """Every agent record of the day, in the order they are listed here (states, job
    events, telemetry); each arrives 150 ms after it was made, unless replayed."""
    out = [
        _Sent(
            m,
            RecordKind.META,
            ms("2026-11-23 19:00"),
            {"protocol": m.protocol, "firmware": "1.0", "kind": m.kind, "name": m.name,
             "options": {}},
            ms("2026-11-23 19:00") + 150,
        )
        for m in MACHINES
    ]  # fmt: skip

    def state(m: Machine, ts: int, state: MachineState, since: int, arrival: int) -> _Sent:
        body = {
            "state": str(state),
            "since": since,
            "detail": state.name.title(),
            "alarm": None,
            "program": None,
            "phase": None,
            "job": None,
        }
        return _Sent(m, RecordKind.STATE, ts, body, arrival)

    for m, when, st in STATES:
        out.append(state(m, ms(when), st, ms(when), ms(when) + 150))
    for i, when in enumerate(LASER_HEARTBEATS):
        arrival = ms(when) + 150 if i == 0 else ms(LASER_LINK_BACK)
        out.append(state(LASER, ms(when), MachineState.RUNNING, ms("11:00"), arrival))
    for m, when, body in EVENTS:
        full = {"code": None, "text": "", **body}
        out.append(_Sent(m, RecordKind.EVENT, ms(when), full, ms(when) + 150))
    for first in range(0, len(KILN_SAMPLES), 2):
        pair = KILN_SAMPLES[first : first + 2]
        samples = [
            {"ts": ts, "values": {"temperature_c": t, "setpoint_c": sp, "output_pct": 55.0}}
            for ts, t, sp in pair
        ]
        ts = pair[-1][0]
        out.append(_Sent(KILN, RecordKind.TELEMETRY, ts, {"samples": samples}, ts + 150))
    return out


def _batches() -> Iterator[tuple[int, WriteBatch]]:
    """(arrival, batch) in the order the hub receives them: each agent numbers its records
    (seq) in the order it made them; the records that arrive together (a replay) are one
    batch; the hub's own OFFLINE rows are written when it decides them."""
    sent = _sent()
    seqs = {m.agent: itertools.count(1) for m in MACHINES}
    seq_of: dict[int, int] = {}
    for i in sorted(range(len(sent)), key=lambda i: sent[i].ts):  # stable: listed order
        seq_of[i] = next(seqs[sent[i].machine.agent])
    arrivals: dict[int, list[Incoming]] = {}
    for i in sorted(range(len(sent)), key=lambda i: sent[i].arrival):
        r = sent[i]
        env = Envelope(
            kind=r.kind,
            agent=r.machine.agent,
            machine=r.machine.machine,
            stream=f"stream-{r.machine.agent}",
            seq=seq_of[i],
            ts=r.ts,
            body={**r.body},
            replay=r.replay,
        )
        arrivals.setdefault(r.arrival, []).append(
            Incoming(envelope=env, site=SITE, received_at=r.arrival)
        )
    out = [(arrival, WriteBatch(records=records)) for arrival, records in arrivals.items()]
    out += [
        (ms(when), WriteBatch(states=[StateRow(m.key, ms(when), state, detail, StateSource.HUB)]))
        for m, when, state, detail in HUB_STATES
    ]
    yield from sorted(out, key=lambda b: b[0])


#: (arrival in epoch ms, batch), in the order the hub receives them.
BATCHES: Final = tuple(_batches())
