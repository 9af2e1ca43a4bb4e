"""Serve the simulated kiln on a pseudo-terminal (raw mode, stable symlink).

``async with KilnPtyRunner(machine, "/tmp/ttyKILN", script=...) as runner`` publishes the
pty at the symlink; one named task ticks the machine and the scenario every ``tick_s``
on the event loop's clock. Leaving the ``async with`` closes every descriptor it opened.
``vanish(seconds, reboot=False)`` removes the port as if the USB adapter were pulled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tty
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from shopfloor.sim.errors import SimError
from shopfloor.sim.kiln.config import KilnSimConfig
from shopfloor.sim.kiln.machine import KilnMachine
from shopfloor.sim.kiln.scenario import Script

log = logging.getLogger(__name__)

TX_CAP: Final = 16 * 1024


class KilnPtyRunner:
    def __init__(
        self,
        machine: KilnMachine,
        path: str | os.PathLike[str],
        *,
        script: Script | None = None,
        tick_s: float = 0.02,
    ) -> None:
        if tick_s <= 0:
            raise SimError("tick_s must be positive")
        self.machine = machine
        self.path = Path(path)
        self.script = script
        self.tick_s = tick_s
        self._master: int | None = None
        self._slave: int | None = None
        self._device: str | None = None
        self._tx = bytearray()
        self._task: asyncio.Task[None] | None = None
        self._gone_until: float | None = None
        self._reboot_on_return = False
        self.dropped = 0

    @property
    def present(self) -> bool:
        return self._master is not None

    @property
    def device(self) -> str | None:
        return self._device

    async def __aenter__(self) -> Self:
        self._open()
        self._task = asyncio.create_task(self._tick_loop(), name=f"kiln-sim-pty:{self.path}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        task, self._task = self._task, None
        try:
            if task is not None:
                task.cancel()
                await asyncio.wait([task])
                if not task.cancelled() and task.exception() is not None:
                    log.error("kiln sim: the tick task crashed", exc_info=task.exception())
        finally:
            self._close()

    async def serve_forever(self) -> None:
        if self._task is None:
            raise SimError("serve_forever() needs the runner to be entered first")
        await self._task

    def vanish(self, seconds: float, *, reboot: bool = False) -> None:
        now = asyncio.get_running_loop().time()
        self._close()
        self._gone_until = now + seconds
        self._reboot_on_return = reboot
        if reboot:
            self.machine.power_off(now)
        log.info("kiln sim: port vanishes for %.1f s (reboot=%s)", seconds, reboot)

    def _open(self) -> None:
        if self.path.exists() and not self.path.is_symlink():
            raise SimError(f"{self.path} exists and is not a symlink; refusing to replace it")
        master, slave = os.openpty()
        try:
            tty.setraw(slave)
            os.set_blocking(master, False)
            name = os.ttyname(slave)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tmp.symlink_to(name)
            tmp.replace(self.path)
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        self._master, self._slave, self._device = master, slave, name
        asyncio.get_running_loop().add_reader(master, self._on_readable)

    def _close(self) -> None:
        master, slave, device = self._master, self._slave, self._device
        self._master = self._slave = self._device = None
        if master is not None:
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().remove_reader(master)
            os.close(master)
        if slave is not None:
            os.close(slave)
        if device is not None:
            with contextlib.suppress(OSError):
                if os.readlink(self.path) == device:
                    self.path.unlink()
        self.dropped += len(self._tx)
        self._tx.clear()

    def _on_readable(self) -> None:
        if self._master is None:
            return
        try:
            data = os.read(self._master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        if data:
            self.machine.receive(data, asyncio.get_running_loop().time())
            self._flush()

    def _flush(self) -> None:
        out = self.machine.take_output()
        if self._master is None:
            self.dropped += len(out)
            return
        if len(self._tx) + len(out) > TX_CAP:
            self.dropped += len(out)
        else:
            self._tx += out
        while self._tx:
            try:
                n = os.write(self._master, self._tx)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.dropped += len(self._tx)
                self._tx.clear()
                return
            del self._tx[:n]

    async def _tick_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.tick_s)
            now = loop.time()
            if self.script is not None:
                for fault in self.script.tick(self.machine, now):
                    self.vanish(fault.duration, reboot=fault.reboot)
            self.machine.advance(now)
            if self._gone_until is not None and now >= self._gone_until:
                self._gone_until = None
                if self._reboot_on_return:
                    self._reboot_on_return = False
                    self.machine.power_on(now)
                self._open()
                log.info("kiln sim: port is back")
            self._flush()


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
