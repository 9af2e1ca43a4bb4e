"""The canonical machine state model: one enum, one transition table.

Adapters (GRBL, Haas, Modbus kilns, Marlin) turn what a controller says into an
:class:`Observation`; the table below decides the resulting :class:`MachineState`. The
table is total: every (state, observation) pair has an entry, which a property test
checks, so no adapter can invent its own rules.
"""

from __future__ import annotations

import enum
from types import MappingProxyType
from typing import Final


class MachineState(enum.StrEnum):
    """What a machine is doing, as shown everywhere (API, wall, Grafana)."""

    OFFLINE = "OFFLINE"  # no data: agent dead, device silent, port gone (MTConnect UNAVAILABLE)
    ALARM = "ALARM"  # fault, e-stop, limit switch
    RUNNING = "RUNNING"  # executing a job
    PAUSED = "PAUSED"  # feed hold, door open, program stop
    SETUP = "SETUP"  # jog, homing, manual, check mode
    IDLE = "IDLE"  # ready, not running

    @property
    def code(self) -> int:
        """A stable small integer for metrics stores and Grafana value mappings."""
        return _CODES[self]


_CODES: Final = MappingProxyType(
    {
        MachineState.OFFLINE: 0,
        MachineState.ALARM: 1,
        MachineState.RUNNING: 2,
        MachineState.PAUSED: 3,
        MachineState.SETUP: 4,
        MachineState.IDLE: 5,
    }
)

#: States counted as productive by default (configurable in the hub).
PRODUCTIVE_DEFAULT: Final = frozenset({MachineState.RUNNING})


class Observation(enum.StrEnum):
    """What an adapter or the hub learned about a machine, independent of protocol."""

    REPORTS_IDLE = "reports_idle"
    REPORTS_RUNNING = "reports_running"
    REPORTS_PAUSED = "reports_paused"
    REPORTS_SETUP = "reports_setup"
    REPORTS_ALARM = "reports_alarm"
    #: The device stopped answering polls (within the configured silence timeout).
    SILENT = "silent"
    #: The link itself is gone: port unplugged, TCP connection refused.
    LINK_LOST = "link_lost"
    #: The agent that served the machine died (its MQTT will fired) or went stale.
    AGENT_LOST = "agent_lost"


def _build_table() -> dict[tuple[MachineState, Observation], MachineState]:
    reported = {
        Observation.REPORTS_IDLE: MachineState.IDLE,
        Observation.REPORTS_RUNNING: MachineState.RUNNING,
        Observation.REPORTS_PAUSED: MachineState.PAUSED,
        Observation.REPORTS_SETUP: MachineState.SETUP,
        Observation.REPORTS_ALARM: MachineState.ALARM,
    }
    table: dict[tuple[MachineState, Observation], MachineState] = {}
    for state in MachineState:
        for obs, target in reported.items():
            # A report is the truth about the machine, whatever we believed before.
            table[(state, obs)] = target
        # Silence after a critical alarm is the alarm itself: GRBL stops answering `?`
        # after ALARM:1/2 until it is reset (serial-protocols.md, observed on 1.1h).
        table[(state, Observation.SILENT)] = (
            MachineState.ALARM if state is MachineState.ALARM else MachineState.OFFLINE
        )
        table[(state, Observation.LINK_LOST)] = MachineState.OFFLINE
        table[(state, Observation.AGENT_LOST)] = MachineState.OFFLINE
    return table


#: The one transition table. Read-only; total over MachineState x Observation.
TRANSITIONS: Final = MappingProxyType(_build_table())


def next_state(current: MachineState, observation: Observation) -> MachineState:
    """The state after ``observation`` when the machine was in ``current``."""
    return TRANSITIONS[(current, observation)]
