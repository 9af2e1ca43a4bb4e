"""HaasAdapter: the state table over every (status, mode) pair, part counts and jobs."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from shopfloor.agent.adapters.haas import (
    DEFAULT_SETUP_MODES,
    DEFAULT_STATUS_OBSERVATIONS,
    HaasAdapter,
    HaasItem,
    StateMap,
)
from shopfloor.agent.protocols.haas import (
    CycleTime,
    MacroValue,
    Mode,
    Model,
    ProgramStatus,
    SerialNumber,
    SoftwareVersion,
)
from shopfloor.agent.readings import DeviceEvent, DeviceInfo, Reading
from shopfloor.agent.tracker import MachineTracker
from shopfloor.contract.envelope import RecordKind
from shopfloor.contract.states import MachineState, Observation

STATUSES = ["IDLE", "BUSY", "FEED HOLD", "ALARM ON", "ALARM", "SINGLE BLOCK"]
MODES = [None, "MEM", "MDI", "JOG", "ZERO RET", "EDIT", "LIST PROG", "HANDLE", "UNHEARD OF"]

EXPECTED_BY_STATUS = {
    "IDLE": MachineState.IDLE,
    "BUSY": MachineState.RUNNING,
    "FEED HOLD": MachineState.PAUSED,
    "ALARM ON": MachineState.ALARM,
    "ALARM": MachineState.ALARM,
}


@pytest.mark.parametrize(("status", "mode"), list(itertools.product(STATUSES, MODES)))
def test_state_table_every_status_and_mode(status: str, mode: str | None) -> None:
    observation = StateMap().observe(status, mode)
    if status not in EXPECTED_BY_STATUS:
        assert observation is None
        return
    assert observation is not None
    expected = EXPECTED_BY_STATUS[status]
    if expected is MachineState.RUNNING and mode in DEFAULT_SETUP_MODES:
        expected = MachineState.SETUP
    # Through the one transition table, from every state the tracker could be in.
    from shopfloor.contract.states import next_state

    for before in MachineState:
        assert next_state(before, observation) is expected


def test_state_map_is_data() -> None:
    custom = StateMap(
        status={**DEFAULT_STATUS_OBSERVATIONS, "SINGLE BLOCK": Observation.REPORTS_PAUSED},
        setup_modes=frozenset({"JOG"}),
    )
    assert custom.observe("single  block", "MEM") is Observation.REPORTS_PAUSED
    assert custom.observe("BUSY", "MDI") is Observation.REPORTS_RUNNING
    assert custom.observe("BUSY", "jog") is Observation.REPORTS_SETUP


class Feed:
    """Drive an adapter with a clock that advances a second per event."""

    def __init__(self, adapter: HaasAdapter) -> None:
        self.adapter = adapter
        self.t = 1_000_000
        self.items: list[HaasItem] = []

    def __call__(self, *events: Any) -> list[HaasItem]:
        out: list[HaasItem] = []
        for event in events:
            self.t += 1000
            if isinstance(event, tuple):
                variable, value = event
                got = self.adapter.macro(variable, MacroValue(value), ts_ms=self.t, mono_ms=self.t)
            else:
                got = self.adapter.translate(event, ts_ms=self.t, mono_ms=self.t)
            out.extend(got)
        self.items.extend(out)
        return out


def events(items: list[HaasItem], name: str | None = None) -> list[DeviceEvent]:
    return [i for i in items if isinstance(i, DeviceEvent) and (name is None or i.event == name)]


def idle(parts: int, program: str = "O01234") -> ProgramStatus:
    return ProgramStatus("IDLE", program, parts)


BUSY = ProgramStatus("BUSY")


def test_reading_carries_program_mode_and_values() -> None:
    feed = Feed(HaasAdapter(macro_names={3027: "spindle_rpm"}))
    feed(Mode("MEM"), CycleTime("last", 271), (3027, 8000.0))
    (reading,) = feed(idle(152))
    assert isinstance(reading, Reading)
    assert reading.observation is Observation.REPORTS_IDLE
    assert reading.program == "O01234"
    assert reading.detail == "IDLE (MEM)"
    assert reading.values == {"cycle_time_s": 271.0, "spindle_rpm": 8000.0, "parts_count": 152.0}
    started, busy = feed(BUSY)
    assert isinstance(started, DeviceEvent)
    assert started.event == "job_started"
    assert isinstance(busy, Reading)
    assert busy.program is None  # Q500 does not say while running: the tracker keeps it


def test_busy_in_mdi_is_setup_and_starts_no_job() -> None:
    feed = Feed(HaasAdapter())
    feed(Mode("MDI"), idle(5, "MDI"))
    (reading,) = feed(BUSY)
    assert isinstance(reading, Reading)
    assert reading.observation is Observation.REPORTS_SETUP
    assert events(feed.items) == []


def test_one_cycle_jobs_without_a_quantity() -> None:
    feed = Feed(HaasAdapter())
    feed(Mode("MEM"), idle(10))
    feed(BUSY)
    (started,) = events(feed.items, "job_started")
    assert started.data["program"] == "O01234"
    assert started.data["unit"] == "parts"
    assert started.data["total"] is None
    feed(BUSY, idle(11))
    (counted,) = events(feed.items, "part_counted")
    assert counted.data == {"count": 11, "program": "O01234"}
    (ended,) = events(feed.items, "job_ended")
    assert ended.data["outcome"] == "completed"
    assert ended.data["done"] == 1
    assert ended.data["job"] == started.data["job"]
    # a cycle that is reset before M30 ends aborted
    feed(BUSY, ProgramStatus("FEED HOLD", "O01234", 11), idle(11))
    assert [e.data["outcome"] for e in events(feed.items, "job_ended")] == [
        "completed",
        "aborted",
    ]


def test_batch_job_with_required_quantity_from_a_macro_variable() -> None:
    feed = Feed(HaasAdapter(parts_required_variable=500))
    feed(Mode("MEM"), (500, 3.0), idle(0))
    for count in (1, 2, 3):
        feed(BUSY, ProgramStatus("BUSY"), idle(count))
    starts = events(feed.items, "job_started")
    assert len(starts) == 1
    assert starts[0].data["total"] == 3
    progress = [(e.data["done"], e.data["total"]) for e in events(feed.items, "job_progress")]
    assert progress == [(1, 3), (2, 3), (3, 3)]
    (ended,) = events(feed.items, "job_ended")
    assert {**ended.data, "job": None} == {
        "job": None,
        "program": "O01234",
        "done": 3,
        "total": 3,
        "unit": "parts",
        "outcome": "completed",
    }
    assert [e.data["count"] for e in events(feed.items, "part_counted")] == [1, 2, 3]
    # the operator resets the counter; the next cycle starts the next batch
    feed(idle(0), BUSY)
    assert len(events(feed.items, "job_started")) == 2
    assert len(events(feed.items, "part_counted")) == 3


def test_a_job_seen_first_while_busy_learns_its_program_and_says_so() -> None:
    feed = Feed(HaasAdapter(parts_required=2))
    feed(Mode("MEM"), BUSY)  # the agent starts while the machine is already cutting
    (started,) = events(feed.items, "job_started")
    assert started.data["program"] is None
    feed(BUSY, idle(7, "O05150"))  # between parts Q500 names the program
    named = [e for e in events(feed.items, "job_progress") if e.data.get("program")]
    assert named, "the hub never learns the program of the running job"
    assert named[0].data["job"] == started.data["job"]
    assert named[0].data["program"] == "O05150"
    feed(BUSY, idle(8, "O05150"), BUSY, idle(9, "O05150"))
    (ended,) = events(feed.items, "job_ended")
    assert ended.data["program"] == "O05150"
    assert ended.data["outcome"] == "completed"


def test_batch_survives_holds_and_alarms_and_ends_when_the_program_changes() -> None:
    feed = Feed(HaasAdapter(parts_required=5))
    feed(Mode("MEM"), idle(0), BUSY, ProgramStatus("FEED HOLD", "O01234", 0), BUSY, idle(1))
    items = feed(ProgramStatus("ALARM ON", "O01234", 1))
    assert events(items, "alarm_raised")[0].text == "ALARM ON"
    feed(idle(1), BUSY, idle(2))
    assert events(feed.items, "job_ended") == []
    feed(idle(2, "O05555"))
    (ended,) = events(feed.items, "job_ended")
    assert (ended.data["outcome"], ended.data["done"], ended.data["total"]) == ("aborted", 2, 5)


def test_macro_part_counter_and_counter_jumps() -> None:
    feed = Feed(HaasAdapter(part_counter_variable=3901, parts_required=10))
    feed(Mode("MEM"), (3901, 40.0), idle(999), BUSY)  # Q500 PARTS is ignored with a variable
    feed((3901, 43.0))
    (counted,) = events(feed.items, "part_counted")
    assert counted.data["count"] == 43
    assert events(feed.items, "job_progress")[0].data["done"] == 3


def test_device_info_from_q100_q101_q102() -> None:
    feed = Feed(HaasAdapter())
    items = feed(SerialNumber("1098765"), SoftwareVersion("100.21.000.1100"), Model("VF-2"))
    info = items[-1]
    assert isinstance(info, DeviceInfo)
    assert info == DeviceInfo("haas", "100.21.000.1100", {"serial": "1098765", "model": "VF-2"})


def test_unknown_status_word_is_counted_not_guessed() -> None:
    adapter = HaasAdapter()
    assert adapter.translate(ProgramStatus("WEIRD", "O1", 1), ts_ms=1, mono_ms=1) == []
    assert adapter.unknown_states == 1


def test_tracker_shows_program_and_job_progress() -> None:
    feed = Feed(HaasAdapter(parts_required=2))
    tracker = MachineTracker("mill-1")
    feed(Mode("MEM"), idle(7), BUSY, idle(8), BUSY)
    records = [r for item in feed.items for r in tracker.update(item)]
    snapshot = tracker.snapshot()
    assert snapshot["state"] == "RUNNING"
    assert snapshot["program"] == "O01234"
    assert snapshot["job"]["done"] == 1
    assert snapshot["job"]["total"] == 2
    kinds = [r.body["event"] for r in records if r.kind is RecordKind.EVENT]
    assert kinds == ["job_started", "part_counted", "job_progress"]


def test_macro_counts_tolerate_binary_round_off() -> None:
    feed = Feed(HaasAdapter(part_counter_variable=3901, parts_required_variable=500))
    feed(Mode("MEM"), (500, 4.999999), (3901, 6.999999), idle(0), BUSY, (3901, 8.0000001))
    assert feed.adapter.values()["parts_required"] == 5.0
    assert [e.data["count"] for e in events(feed.items, "part_counted")] == [8]
    feed((500, 2.5))  # not a quantity
    assert "parts_required" not in feed.adapter.values()
