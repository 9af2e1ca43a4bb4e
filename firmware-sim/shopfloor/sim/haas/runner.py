"""Serve the Haas simulator with the generic runners of :mod:`shopfloor.sim.runner`.

``PtyRunner`` (a pseudo-terminal behind a stable symlink, like a USB serial adapter on the
RS-232 port), ``TcpRunner`` (NGC machine data collection over Ethernet, Setting 143's port)
and ``MemoryRunner`` take a :class:`~shopfloor.sim.haas.machine.HaasMachine` as they take a
GRBL machine (pass ``name="haas"`` for task names and logs).
"""

from __future__ import annotations

import os

from shopfloor.sim.haas.config import HaasSimConfig
from shopfloor.sim.haas.machine import HaasMachine
from shopfloor.sim.haas.scenario import Script
from shopfloor.sim.runner import MemoryRunner, PtyRunner, TcpRunner

__all__ = ["MemoryRunner", "PtyRunner", "TcpRunner", "drivers_from_config", "run_haas_sim"]


def drivers_from_config(config: HaasSimConfig) -> list[Script]:
    """The drivers a runner should tick for ``config`` (the fault script, if any)."""
    return [Script(config.faults)] if config.faults else []


async def run_haas_sim(config: HaasSimConfig, pty_path: str | os.PathLike[str]) -> None:
    """Serve a simulated Haas mill on a pty symlinked at ``pty_path`` until cancelled."""
    machine = HaasMachine(config)
    runner = PtyRunner(machine, pty_path, drivers=drivers_from_config(config), name="haas")
    await runner.run()
