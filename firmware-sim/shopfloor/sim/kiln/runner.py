"""Serve the simulated kiln on a pseudo-terminal (raw mode, stable symlink).

``async with KilnPtyRunner(machine, "/tmp/ttyKILN", script=...) as runner`` publishes the
pty at the symlink; one named task ticks the scenario and the machine every ``tick_s``
(20 ms) on the event loop's clock. Leaving the ``async with`` closes every descriptor it
opened. ``vanish(seconds, reboot=False)`` removes the port as if the USB adapter were pulled.
It is the generic :class:`shopfloor.sim.runner.PtyRunner` with the kiln's settings bound.
"""

from __future__ import annotations

import os
from typing import Final

from shopfloor.sim.kiln.config import KilnSimConfig
from shopfloor.sim.kiln.machine import KilnMachine
from shopfloor.sim.kiln.scenario import Script
from shopfloor.sim.runner import PtyRunner

TX_CAP: Final = 16 * 1024


class KilnPtyRunner(PtyRunner[KilnMachine]):
    """A :class:`PtyRunner` for a kiln: ``script`` ticks before it, 16 KiB of output kept."""

    def __init__(
        self,
        machine: KilnMachine,
        path: str | os.PathLike[str],
        *,
        script: Script | None = None,
        tick_s: float = 0.02,
    ) -> None:
        drivers = [script] if script is not None else []
        super().__init__(machine, path, drivers=drivers, tick_s=tick_s, tx_cap=TX_CAP, name="kiln")
        self.script = script


def script_from_config(config: KilnSimConfig) -> Script:
    return Script(
        config.faults,
        start_after_s=config.start_after_s,
        repeat_after_s=config.repeat_after_s,
        noise_probability=config.noise_probability,
    )


async def run_kiln_sim(config: KilnSimConfig, pty_path: str | os.PathLike[str]) -> None:
    """Serve a simulated kiln on a pty symlinked at ``pty_path`` until cancelled."""
    machine = KilnMachine(config)
    async with KilnPtyRunner(machine, pty_path, script=script_from_config(config)) as runner:
        await runner.serve_forever()
