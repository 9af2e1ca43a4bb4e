"""What the simulated machine really did, as intervals, for comparison with the hub.

The machine's :attr:`~shopfloor.sim.grbl.machine.GrblMachine.state_log` is a list of
``(t, state)`` changes on the runner's clock. :func:`intervals` turns it into closed intervals and
:func:`canonical` maps each GRBL state to the contract's :class:`MachineState` by DESIGN.md §4
(PAUSED: feed hold, door; SETUP: jog, homing, check mode). ``Off`` (the board had no power)
is OFFLINE.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from shopfloor.contract.states import MachineState
from shopfloor.sim.grbl.machine import StateChange

_BY_PREFIX = {
    "Idle": MachineState.IDLE,
    "Run": MachineState.RUNNING,
    "Hold": MachineState.PAUSED,
    "Door": MachineState.PAUSED,
    "Jog": MachineState.SETUP,
    "Home": MachineState.SETUP,
    "Check": MachineState.SETUP,
    "Alarm": MachineState.ALARM,
    "Sleep": MachineState.IDLE,
    "Off": MachineState.OFFLINE,
}


class Interval(NamedTuple):
    start: float
    end: float
    state: str


def canonical(state: str) -> MachineState:
    """``Hold:1`` -> PAUSED, ``Jog`` -> SETUP, ``Off`` -> OFFLINE ..."""
    return _BY_PREFIX[state.partition(":")[0]]


def intervals(log: Iterable[StateChange], end: float) -> list[Interval]:
    """Consecutive ``[start, end)`` intervals of the log, the last one closed at ``end``."""
    changes = list(log)
    out: list[Interval] = []
    for here, after in zip(changes, [*changes[1:], None], strict=True):
        stop = end if after is None else after.t
        if stop > here.t:
            out.append(Interval(here.t, stop, here.state))
    return out


def canonical_intervals(log: Iterable[StateChange], end: float) -> list[Interval]:
    """:func:`intervals` in canonical states, with neighbours of the same state merged."""
    merged: list[Interval] = []
    for piece in intervals(log, end):
        state = canonical(piece.state).value
        if merged and merged[-1].state == state and merged[-1].end == piece.start:
            merged[-1] = Interval(merged[-1].start, piece.end, state)
        else:
            merged.append(Interval(piece.start, piece.end, state))
    return merged
