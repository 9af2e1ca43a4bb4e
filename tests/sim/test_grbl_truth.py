"""The simulator's ground truth: its state log as intervals, in canonical states."""

from __future__ import annotations

import pytest
from grbl_host import Host

from shopfloor.contract.states import MachineState
from shopfloor.sim.grbl.machine import StateChange
from shopfloor.sim.grbl.truth import Interval, canonical, canonical_intervals, intervals


@pytest.mark.parametrize(
    ("label", "state"),
    [
        ("Idle", MachineState.IDLE),
        ("Run", MachineState.RUNNING),
        ("Hold:1", MachineState.PAUSED),
        ("Door:3", MachineState.PAUSED),
        ("Jog", MachineState.SETUP),
        ("Check", MachineState.SETUP),
        ("Alarm", MachineState.ALARM),
        ("Off", MachineState.OFFLINE),
    ],
)
def test_canonical(label: str, state: MachineState) -> None:
    assert canonical(label) is state


def test_intervals_and_merging() -> None:
    log = [
        StateChange(0.0, "Idle"),
        StateChange(1.0, "Run"),
        StateChange(3.0, "Hold:1"),
        StateChange(3.5, "Hold:0"),
        StateChange(5.0, "Run"),
        StateChange(9.0, "Idle"),
    ]
    assert intervals(log, 10.0)[2:4] == [Interval(3.0, 3.5, "Hold:1"), Interval(3.5, 5.0, "Hold:0")]
    assert canonical_intervals(log, 10.0) == [
        Interval(0.0, 1.0, "IDLE"),
        Interval(1.0, 3.0, "RUNNING"),
        Interval(3.0, 5.0, "PAUSED"),
        Interval(5.0, 9.0, "RUNNING"),
        Interval(9.0, 10.0, "IDLE"),
    ]


def test_machine_log_as_intervals() -> None:
    host = Host.make(acceleration=(50.0, 50.0, 50.0))
    host.send(b"G1 X50 F3000\n")
    host.wait(0.5)
    host.send(b"!")
    host.wait(1.0)
    host.send(b"~")
    host.wait(5.0)
    got = canonical_intervals(host.machine.state_log, host.t)
    assert [i.state for i in got] == ["RUNNING", "PAUSED", "RUNNING", "IDLE"]
    assert got[1].start == pytest.approx(0.5)
    assert got[1].end == pytest.approx(1.5)
