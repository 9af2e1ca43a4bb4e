"""Machine trackers and the change feed, with time passed in."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from shopfloor.contract import AgentStatus, Envelope, MachineState, RecordKind
from shopfloor.hub.config import HubConfig
from shopfloor.hub.runtime import open_hub
from shopfloor.hub.store import BatchResult, Incoming, StateRow, StatusUpdate, WriteBatch
from shopfloor.hub.trackers import ChangeFeed, MachineView, Trackers

EnvFactory = Callable[..., Envelope]


def batch(*items: Incoming | StatusUpdate) -> BatchResult:
    return BatchResult(
        new=[i for i in items if isinstance(i, Incoming)],
        duplicates=0,
        statuses=[i for i in items if isinstance(i, StatusUpdate)],
    )


def inc(envelope: Envelope, received_at: int) -> Incoming:
    return Incoming(envelope=envelope, site="shop1", received_at=received_at)


def status(online: bool, received_at: int, epoch: int = 1) -> StatusUpdate:
    return StatusUpdate(AgentStatus("pi-1", online, epoch, 0), "shop1", received_at)


async def test_staleness_takes_a_machine_offline_and_data_brings_it_back(
    env: EnvFactory,
) -> None:
    trackers = Trackers(stale_after_ms=30_000)
    body = {"state": "RUNNING", "since": 900, "program": "O42", "alarm": None}
    assert trackers.apply(batch(inc(env(seq=1, ts=1_000, body=body), 1_000))) == []
    view = trackers.get("cnc-1")
    assert view is not None
    assert (view.state, view.since, view.program) == (MachineState.RUNNING, 900, "O42")

    assert trackers.check_stale(30_999) == []
    rows = trackers.check_stale(31_000)
    assert rows == [StateRow("pi-1/cnc-1", 31_000, MachineState.OFFLINE, "no data")]
    assert trackers.check_stale(60_000) == [], "already offline: no second row"
    view = trackers.get("cnc-1")
    assert view is not None
    assert (view.state, view.detail, view.since) == (MachineState.OFFLINE, "no data", 31_000)

    # Data is back: the live view shows the machine again; no row is stored (the
    # history resumes with the agent's next state row, see Trackers._record).
    rows = trackers.apply(batch(inc(env(RecordKind.TELEMETRY, seq=2), 70_000)))
    assert rows == []
    view = trackers.get("cnc-1")
    assert view is not None
    assert (view.state, view.last_seen, view.since) == (MachineState.RUNNING, 70_000, 70_000)


async def test_agent_offline_takes_all_its_machines_offline(env: EnvFactory) -> None:
    trackers = Trackers(stale_after_ms=30_000)
    trackers.apply(
        batch(
            inc(env(seq=1, machine="cnc-1"), 1_000),
            inc(env(seq=2, machine="laser"), 1_000),
            inc(env(seq=3, machine="kiln", agent="pi-2"), 1_000),
        )
    )
    rows = trackers.apply(batch(status(False, 5_000)))
    assert sorted(r.machine_key for r in rows) == ["pi-1/cnc-1", "pi-1/laser"]
    assert {(r.ts, r.state, r.detail) for r in rows} == {
        (5_000, MachineState.OFFLINE, "agent offline")
    }
    states = {v.id: (v.state, v.online) for v in trackers.views()}
    assert states == {
        "cnc-1": (MachineState.OFFLINE, False),
        "laser": (MachineState.OFFLINE, False),
        "kiln": (MachineState.RUNNING, True),
    }


async def test_late_state_does_not_override_the_live_view(env: EnvFactory) -> None:
    trackers = Trackers(stale_after_ms=30_000)
    trackers.apply(batch(inc(env(seq=2, ts=5_000), 6_000)))
    trackers.apply(batch(inc(env(seq=1, ts=1_000, body={"state": "IDLE"}), 7_000)))
    view = trackers.get("cnc-1")
    assert view is not None
    assert view.state is MachineState.RUNNING


async def test_same_machine_id_on_two_agents_gets_long_ids(env: EnvFactory) -> None:
    trackers = Trackers(stale_after_ms=30_000)
    trackers.apply(batch(inc(env(seq=1), 1), inc(env(seq=1, agent="pi-2", stream="x"), 1)))
    assert sorted(v.id for v in trackers.views()) == ["pi-1:cnc-1", "pi-2:cnc-1"]
    assert trackers.get("cnc-1") is None
    assert trackers.key_of("pi-2:cnc-1") == "pi-2/cnc-1"


async def test_alarm_events_set_and_clear_the_alarm(env: EnvFactory) -> None:
    trackers = Trackers(stale_after_ms=30_000)
    raised = {"event": "alarm_raised", "code": 9, "text": "limit"}
    trackers.apply(batch(inc(env(RecordKind.EVENT, seq=1, body=raised), 1)))
    view = trackers.get("cnc-1")
    assert view is not None
    assert view.to_json()["alarm"] == {"code": 9, "text": "limit"}
    cleared = {"event": "alarm_cleared"}
    trackers.apply(batch(inc(env(RecordKind.EVENT, seq=2, body=cleared), 2)))
    view = trackers.get("cnc-1")
    assert view is not None
    assert view.alarm is None


async def test_feed_drops_the_oldest_when_a_reader_is_slow(env: EnvFactory) -> None:
    feed = ChangeFeed(queue_size=2)
    trackers = Trackers(stale_after_ms=30_000, feed=feed)
    async with feed.subscribe() as sub:
        for seq in range(1, 5):
            trackers.apply(batch(inc(env(seq=seq, ts=seq), seq)))
            trackers.publish_pending()
        assert sub.dropped == 2
        assert feed.dropped == 2
        first = await sub.get()
        assert isinstance(first, MachineView)
        assert first.last_seen == 3
        feed.close()
        assert await sub.get() is not None
        assert await sub.get() is None


async def test_view_json_has_exactly_the_wall_shape(env: EnvFactory) -> None:
    trackers = Trackers(stale_after_ms=30_000)
    trackers.apply(batch(inc(env(seq=1, ts=10), 20)))
    view = trackers.get("cnc-1")
    assert view is not None
    assert view.to_json() == {
        "id": "cnc-1",
        "agent": "pi-1",
        "site": "shop1",
        "name": "cnc-1",
        "kind": None,
        "protocol": None,
        "state": "RUNNING",
        "detail": "",
        "since": 10,
        "last_seen": 20,
        "program": "O1",
        "phase": None,
        "job": None,
        "alarm": None,
        "online": True,
    }


async def test_the_staleness_task_stores_offline_and_notifies(
    hub_config: Callable[..., HubConfig], env: EnvFactory
) -> None:
    now = {"ms": 1_000_000}
    async with open_hub(
        hub_config(), mqtt=False, clock=lambda: now["ms"], stale_check_s=0.02
    ) as hub:
        result = await hub.store.write(WriteBatch(records=[inc(env(seq=1), now["ms"])]))
        hub.trackers.apply(result)
        async with hub.trackers.feed.subscribe() as sub:
            now["ms"] += 30_000
            change = await asyncio.wait_for(sub.get(), 5)
        assert change is not None
        assert (change.id, change.state, change.since) == ("cnc-1", MachineState.OFFLINE, 1_030_000)
        intervals = await hub.store.state_intervals(
            "pi-1/cnc-1", 1_000_000, 1_040_000, now_ms=1_040_000
        )
        assert [(i.state, i.start, i.end) for i in intervals] == [
            (MachineState.RUNNING, 1_000_000, 1_030_000),
            (MachineState.OFFLINE, 1_030_000, 1_040_000),
        ]


async def test_retained_data_of_an_offline_agent_is_not_a_sign_of_life(env: EnvFactory) -> None:
    trackers = Trackers(stale_after_ms=30_000)
    trackers.apply(batch(status(False, 1_000)))
    old = Incoming(env(seq=1, ts=500), "shop1", 2_000, retained=True)
    rows = trackers.apply(batch(old))
    assert rows == [StateRow("pi-1/cnc-1", 2_000, MachineState.OFFLINE, "agent offline")]
    view = trackers.get("cnc-1")
    assert view is not None
    assert (view.state, view.online) == (MachineState.OFFLINE, False)
    # Live data is: the agent is back and so is the machine.
    rows = trackers.apply(batch(inc(env(RecordKind.TELEMETRY, seq=2), 3_000)))
    assert rows == []  # in the live view; the stored history waits for a state row
    view = trackers.get("cnc-1")
    assert view is not None
    assert (view.state, view.online) == (MachineState.RUNNING, True)


async def test_job_progress_and_phase_show_in_the_view_and_late_events_do_not_rewind(
    env: EnvFactory,
) -> None:
    trackers = Trackers(stale_after_ms=30_000)

    def event(seq: int, ts: int, body: dict[str, object]) -> Incoming:
        return inc(env(RecordKind.EVENT, seq=seq, ts=ts, machine="kiln", body=body), ts)

    state = {"state": "RUNNING", "since": 1_000, "phase": "heating", "alarm": None}
    trackers.apply(batch(inc(env(seq=1, ts=1_000, machine="kiln", body=state), 1_000)))
    start = {"event": "job_started", "job": "f1", "program": "cone6", "unit": "seconds"}
    trackers.apply(batch(event(2, 1_100, {**start, "total": 46_800})))
    progress = {"event": "job_progress", "job": "f1", "done": 3_600, "segment": 2}
    trackers.apply(batch(event(3, 2_000, progress)))
    view = trackers.get("kiln")
    assert view is not None
    assert view.phase == "heating"
    assert view.to_json()["job"] == {
        "job": "f1",
        "program": "cone6",
        "unit": "seconds",
        "total": 46_800,
        "done": 3_600,
        "started": 1_100,
        "segment": 2,
    }
    # A replayed older progress event does not move the job backwards...
    trackers.apply(batch(event(4, 1_500, {**progress, "done": 100})))
    view = trackers.get("kiln")
    assert view is not None
    assert view.job is not None
    assert view.job["done"] == 3_600
    # ... progress for another job is ignored, and the end clears it.
    trackers.apply(batch(event(5, 2_100, {**progress, "job": "zz", "done": 9})))
    trackers.apply(batch(event(6, 2_200, {"event": "job_ended", "job": "f1"})))
    view = trackers.get("kiln")
    assert view is not None
    assert view.job is None


async def test_a_replay_ends_offline_only_with_data_from_after_the_mark(
    env: EnvFactory,
) -> None:
    trackers = Trackers(stale_after_ms=30_000)
    trackers.apply(batch(inc(env(seq=1, ts=1_000), 1_000), status(True, 1_000)))
    assert trackers.apply(batch(status(False, 10_000))) == [
        StateRow("pi-1/cnc-1", 10_000, MachineState.OFFLINE, "agent offline")
    ]
    # Back at 30 s, the backlog first: telemetry from before the will proves nothing
    # about the gap; the machine stays OFFLINE.
    old = env(RecordKind.TELEMETRY, seq=2, ts=9_000, replay=True)
    assert trackers.apply(batch(inc(old, 30_000))) == []
    view = trackers.get("cnc-1")
    assert view is not None
    assert view.state is MachineState.OFFLINE
    # Telemetry from 12 s: back in the live view as of 12 s; nothing stored that could
    # override the replayed IDLE from 20 s that follows.
    after = env(RecordKind.TELEMETRY, seq=3, ts=12_000, replay=True)
    assert trackers.apply(batch(inc(after, 30_010))) == []
    view = trackers.get("cnc-1")
    assert view is not None
    assert (view.state, view.since) == (MachineState.RUNNING, 12_000)
    idle = env(seq=4, ts=20_000, replay=True, body={"state": "IDLE", "since": 20_000})
    assert trackers.apply(batch(inc(idle, 30_020))) == []
    view = trackers.get("cnc-1")
    assert view is not None
    assert view.state is MachineState.IDLE
