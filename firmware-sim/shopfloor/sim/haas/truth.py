"""What the simulated mill really did, as canonical intervals, for comparison with the hub.

A BUSY control in a program mode (MEM) is RUNNING, in MDI, JOG or ZERO RET it is in SETUP
(the agent's default state map); FEED HOLD is PAUSED, ALARM ON is ALARM, ``OFF`` (no power)
is OFFLINE.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from shopfloor.contract.states import MachineState
from shopfloor.sim.haas.machine import StateChange

_STATUS = {
    "IDLE": MachineState.IDLE,
    "BUSY": MachineState.RUNNING,
    "FEED HOLD": MachineState.PAUSED,
    "ALARM ON": MachineState.ALARM,
    "OFF": MachineState.OFFLINE,
}
_PROGRAM_MODES = frozenset({"MEM"})


class Interval(NamedTuple):
    start: float
    end: float
    state: str


def canonical(change: StateChange) -> MachineState:
    state = _STATUS[change.state]
    if state is MachineState.RUNNING and change.mode not in _PROGRAM_MODES:
        return MachineState.SETUP
    return state


def canonical_intervals(log: Iterable[StateChange], end: float) -> list[Interval]:
    """Consecutive ``[start, end)`` canonical intervals; neighbours of one state merged."""
    changes = list(log)
    merged: list[Interval] = []
    for here, after in zip(changes, [*changes[1:], None], strict=True):
        stop = end if after is None else after.t
        if stop <= here.t:
            continue
        state = canonical(here).value
        if merged and merged[-1].state == state and merged[-1].end == here.t:
            merged[-1] = Interval(merged[-1].start, stop, state)
        else:
            merged.append(Interval(here.t, stop, state))
    return merged
