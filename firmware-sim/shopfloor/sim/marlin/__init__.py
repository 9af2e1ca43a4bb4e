"""A simulated Marlin 2.x 3D printer printing a file from its SD card.

``MarlinMachine`` is the sans-IO device model (faults included, see ``scenario``);
``runner`` serves it on a pseudo-terminal or a TCP port; ``cli`` is ``shopfloor sim marlin``.
"""

from shopfloor.sim.marlin.config import MarlinSimConfig
from shopfloor.sim.marlin.machine import MarlinMachine, StateChange
from shopfloor.sim.marlin.runner import PtyRunner, TcpRunner, run_marlin_sim
from shopfloor.sim.marlin.scenario import Fault, FaultKind, parse_fault

__all__ = [
    "Fault",
    "FaultKind",
    "MarlinMachine",
    "MarlinSimConfig",
    "PtyRunner",
    "StateChange",
    "TcpRunner",
    "parse_fault",
    "run_marlin_sim",
]
