"""A simulated GRBL 1.1h controller (gnea/grbl 1.1h behaviour, optional laser mode).

``GrblMachine`` is the sans-IO device model; ``scenario`` scripts faults and runs demo jobs;
``runner`` serves the machine on a pseudo-terminal, a TCP port or an in-memory pair.
"""

from shopfloor.sim.grbl.config import GrblSimConfig
from shopfloor.sim.grbl.machine import GrblMachine, ProgramProgress, StateChange
from shopfloor.sim.grbl.runner import MemoryRunner, PtyRunner, TcpRunner, run_grbl_sim
from shopfloor.sim.grbl.scenario import (
    Fault,
    FaultKind,
    JobLoop,
    Program,
    Script,
    bundled_programs,
    load_program,
    parse_fault,
)

__all__ = [
    "Fault",
    "FaultKind",
    "GrblMachine",
    "GrblSimConfig",
    "JobLoop",
    "MemoryRunner",
    "Program",
    "ProgramProgress",
    "PtyRunner",
    "Script",
    "StateChange",
    "TcpRunner",
    "bundled_programs",
    "load_program",
    "parse_fault",
    "run_grbl_sim",
]
