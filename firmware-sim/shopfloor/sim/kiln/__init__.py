"""A simulated electric kiln with a CN7500-style PID / ramp-soak controller over Modbus RTU.

``KilnMachine`` is the sans-IO kiln and controller; ``scenario`` scripts faults;
``runner`` serves it on a pseudo-terminal; ``schedules`` holds the bundled firings.
"""

from shopfloor.sim.kiln.config import KilnSimConfig
from shopfloor.sim.kiln.machine import KilnMachine, StateChange
from shopfloor.sim.kiln.runner import KilnPtyRunner, run_kiln_sim, script_from_config
from shopfloor.sim.kiln.scenario import FaultKind, KilnFault, Script, parse_fault
from shopfloor.sim.kiln.schedules import SCHEDULES, Schedule, Segment

__all__ = [
    "SCHEDULES",
    "FaultKind",
    "KilnFault",
    "KilnMachine",
    "KilnPtyRunner",
    "KilnSimConfig",
    "Schedule",
    "Script",
    "Segment",
    "StateChange",
    "parse_fault",
    "run_kiln_sim",
    "script_from_config",
]
