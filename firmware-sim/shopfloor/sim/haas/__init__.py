"""A simulated Haas NGC mill answering machine data collection (Q command) queries.

``HaasMachine`` is the sans-IO control; ``scenario`` scripts faults; the runners of
:mod:`shopfloor.sim.runner` serve it on a pseudo-terminal, a TCP port or in memory.
"""

from shopfloor.sim.haas.config import HaasSimConfig
from shopfloor.sim.haas.machine import HaasMachine, StateChange
from shopfloor.sim.haas.runner import (
    MemoryRunner,
    PtyRunner,
    TcpRunner,
    drivers_from_config,
    run_haas_sim,
)
from shopfloor.sim.haas.scenario import Fault, FaultKind, Script, parse_fault

__all__ = [
    "Fault",
    "FaultKind",
    "HaasMachine",
    "HaasSimConfig",
    "MemoryRunner",
    "PtyRunner",
    "Script",
    "StateChange",
    "TcpRunner",
    "drivers_from_config",
    "parse_fault",
    "run_haas_sim",
]
