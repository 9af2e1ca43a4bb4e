"""Serve the GRBL simulator with the generic runners of :mod:`shopfloor.sim.runner`.

``PtyRunner``, ``TcpRunner`` and ``MemoryRunner`` (and the :class:`SimMachine` /
:class:`TickDriver` protocols they take) live there and are re-exported here, where they
were first written; their ``name`` defaults to ``grbl``. The GRBL scenario drivers (fault
script, demo job loop) are ticked before the machine and hand ``VANISH`` back to them.
"""

from __future__ import annotations

import os

from shopfloor.sim.grbl.config import GrblSimConfig
from shopfloor.sim.grbl.machine import GrblMachine
from shopfloor.sim.grbl.scenario import drivers_from_config
from shopfloor.sim.runner import (
    TX_CAP,
    MemoryRunner,
    PtyRunner,
    RunnerFault,
    SimMachine,
    TcpRunner,
    TickDriver,
)

__all__ = [
    "TX_CAP",
    "MemoryRunner",
    "PtyRunner",
    "RunnerFault",
    "SimMachine",
    "TcpRunner",
    "TickDriver",
    "run_grbl_sim",
]


async def run_grbl_sim(config: GrblSimConfig, pty_path: str | os.PathLike[str]) -> None:
    """Serve a simulated GRBL machine on a pty symlinked at ``pty_path`` until cancelled.

    The scenario (``auto_run``, ``demo_loop``, ``faults``) comes from ``config``.
    """
    machine = GrblMachine(config)
    runner = PtyRunner(machine, pty_path, drivers=drivers_from_config(config))
    await runner.run()
