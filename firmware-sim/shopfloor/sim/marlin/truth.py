"""What the simulated printer really did, in canonical states, for comparison with the hub.

``Heating`` (the file's own M190/M109 at the start of a print) is RUNNING, as the agent
reports it; ``Halted`` (kill() after a heater fault) is ALARM; ``Off`` is OFFLINE.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, NamedTuple

from shopfloor.contract.states import MachineState
from shopfloor.sim.marlin.machine import StateChange

CANONICAL: Final = {
    "Idle": MachineState.IDLE,
    "Heating": MachineState.RUNNING,
    "Printing": MachineState.RUNNING,
    "Paused": MachineState.PAUSED,
    "Halted": MachineState.ALARM,
    "Off": MachineState.OFFLINE,
}


class Interval(NamedTuple):
    start: float
    end: float
    state: str


def canonical(state: str) -> MachineState:
    return CANONICAL[state]


def canonical_intervals(log: Iterable[StateChange], end: float) -> list[Interval]:
    """The log as ``[start, end)`` intervals in canonical states, neighbours merged."""
    changes = list(log)
    merged: list[Interval] = []
    for here, after in zip(changes, [*changes[1:], None], strict=True):
        stop = end if after is None else after.t
        if stop <= here.t:
            continue
        state = canonical(here.state).value
        if merged and merged[-1].state == state and merged[-1].end == here.t:
            merged[-1] = Interval(merged[-1].start, stop, state)
        else:
            merged.append(Interval(here.t, stop, state))
    return merged
