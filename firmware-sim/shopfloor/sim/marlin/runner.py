"""Serve the Marlin simulator on a pseudo-terminal or a TCP port.

``PtyRunner`` and ``TcpRunner`` here are the generic runners of :mod:`shopfloor.sim.runner`
with Marlin's hook bound: the printer runs its fault script itself, so the runner asks it
after every tick (:meth:`~shopfloor.sim.marlin.machine.MarlinMachine.take_vanish`) whether
the port should vanish. The printer keeps printing from its SD card while the port is gone
unless ``reboot`` (then it is off meanwhile and greets with ``start`` when it returns).
"""

from __future__ import annotations

import os

from shopfloor.sim import runner
from shopfloor.sim.marlin.config import MarlinSimConfig
from shopfloor.sim.marlin.machine import MarlinMachine
from shopfloor.sim.runner import TX_CAP

__all__ = ["TX_CAP", "PtyRunner", "TcpRunner", "run_marlin_sim"]


class PtyRunner(runner.PtyRunner[MarlinMachine]):
    """Serve the printer on a pseudo-terminal published at the symlink ``path``."""

    def __init__(
        self, machine: MarlinMachine, path: str | os.PathLike[str], *, tick_s: float = 0.01
    ) -> None:
        super().__init__(
            machine, path, take_vanish=MarlinMachine.take_vanish, tick_s=tick_s, name="marlin"
        )


class TcpRunner(runner.TcpRunner[MarlinMachine]):
    """Serve the printer on ``host:port`` (one client at a time; ``port=0`` picks one)."""

    def __init__(
        self,
        machine: MarlinMachine,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        tick_s: float = 0.01,
    ) -> None:
        super().__init__(
            machine,
            port,
            host=host,
            take_vanish=MarlinMachine.take_vanish,
            tick_s=tick_s,
            name="marlin",
        )


async def run_marlin_sim(config: MarlinSimConfig, pty_path: str | os.PathLike[str]) -> None:
    """Serve a simulated Marlin printer on a pty symlinked at ``pty_path`` until cancelled."""
    await PtyRunner(MarlinMachine(config), pty_path).run()
