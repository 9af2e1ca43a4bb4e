"""Transports for the Marlin simulator: a pseudo-terminal or a TCP port.

Each runner owns one :class:`~shopfloor.sim.marlin.machine.MarlinMachine`, ticks it every
``tick_s`` seconds on the event loop's monotonic clock, hands it the bytes the host writes
and writes back what it says. Both are async context managers with one named background
task; leaving the ``async with`` closes every file descriptor and socket they opened.

``vanish(seconds, reboot=False)`` makes the port disappear as if the USB cable were pulled
(the pty and its symlink, or the TCP listener, go away and come back after ``seconds``); the
printer keeps printing from its SD card meanwhile unless ``reboot`` (then it is off while
gone and greets with ``start`` when it returns). The fault script asks for it too.
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
from shopfloor.sim.marlin.config import MarlinSimConfig
from shopfloor.sim.marlin.machine import MarlinMachine

log = logging.getLogger(__name__)

TX_CAP: Final = 64 * 1024


async def _stop(task: asyncio.Task[None] | None) -> None:
    if task is None:
        return
    task.cancel()
    await asyncio.wait([task])
    if not task.cancelled() and task.exception() is not None:
        log.error("marlin sim: the tick task crashed", exc_info=task.exception())


class _Ticker:
    def __init__(self, machine: MarlinMachine, tick_s: float) -> None:
        if tick_s <= 0:
            raise SimError("tick_s must be positive")
        self.machine = machine
        self.tick_s = tick_s
        self.gone_until: float | None = None
        self.reboot_on_return = False

    @staticmethod
    def now() -> float:
        return asyncio.get_running_loop().time()

    def tick(self) -> list[tuple[float, bool]]:
        self.machine.advance(self.now())
        return self.machine.take_vanish()

    def start_vanish(self, seconds: float, reboot: bool) -> None:
        now = self.now()
        self.gone_until = now + seconds
        self.reboot_on_return = reboot
        if reboot:
            self.machine.power_off(now)
        log.info("marlin sim: port vanishes for %.1f s (reboot=%s)", seconds, reboot)

    def due_back(self) -> bool:
        return self.gone_until is not None and self.now() >= self.gone_until

    def back(self) -> None:
        self.gone_until = None
        if self.reboot_on_return:
            self.reboot_on_return = False
            self.machine.power_on(self.now())
        log.info("marlin sim: port is back")


class PtyRunner:
    """Serve the printer on a pseudo-terminal published at the symlink ``path``."""

    def __init__(
        self, machine: MarlinMachine, path: str | os.PathLike[str], *, tick_s: float = 0.01
    ) -> None:
        self.path = Path(path)
        self.machine = machine
        self._ticker = _Ticker(machine, tick_s)
        self._master: int | None = None
        self._slave: int | None = None
        self._device: str | None = None
        self._tx = bytearray()
        self._task: asyncio.Task[None] | None = None
        #: Output bytes thrown away because nobody read the port (or it was gone).
        self.dropped = 0

    @property
    def present(self) -> bool:
        return self._master is not None

    @property
    def device(self) -> str | None:
        return self._device

    async def __aenter__(self) -> Self:
        self._open()
        self._task = asyncio.create_task(self._tick_loop(), name=f"marlin-sim-pty:{self.path}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        try:
            await _stop(self._task)
        finally:
            self._task = None
            self._close()

    async def run(self) -> None:
        async with self:
            await self.serve_forever()

    async def serve_forever(self) -> None:
        if self._task is None:
            raise SimError("serve_forever() needs the runner to be entered first")
        await self._task

    def vanish(self, seconds: float, *, reboot: bool = False) -> None:
        self._close()
        self._ticker.start_vanish(seconds, reboot)

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
            self.machine.receive(data, self._ticker.now())
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
        ticker = self._ticker
        while True:
            await asyncio.sleep(ticker.tick_s)
            for seconds, reboot in ticker.tick():
                self.vanish(seconds, reboot=reboot)
            if ticker.due_back():
                self._open()
                ticker.back()
            self._flush()


class TcpRunner:
    """Serve the printer on ``host:port`` (one client at a time; ``port=0`` picks one)."""

    def __init__(
        self,
        machine: MarlinMachine,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        tick_s: float = 0.01,
    ) -> None:
        self.machine = machine
        self.host = host
        self.port = port
        self._ticker = _Ticker(machine, tick_s)
        self._server: asyncio.Server | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._client_task: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0

    async def __aenter__(self) -> Self:
        await self._listen()
        self._flush()
        self._task = asyncio.create_task(self._tick_loop(), name=f"marlin-sim-tcp:{self.port}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        try:
            await _stop(self._task)
        finally:
            self._task = None
            await self._shut()

    async def serve_forever(self) -> None:
        if self._task is None:
            raise SimError("serve_forever() needs the runner to be entered first")
        await self._task

    @property
    def present(self) -> bool:
        return self._ticker.gone_until is None

    def vanish(self, seconds: float, *, reboot: bool = False) -> None:
        self._ticker.start_vanish(seconds, reboot)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._on_client, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        client = self._client_task
        if client is not None:
            client.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await client
        if server is not None:
            await server.wait_closed()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
        self._writer = writer
        self._client_task = asyncio.current_task()
        try:
            while True:
                data = await reader.read(4096)
                if not data:
                    break
                self.machine.receive(data, self._ticker.now())
                self._flush()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writer = None
            self._client_task = None
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()

    def _flush(self) -> None:
        out = self.machine.take_output()
        writer = self._writer
        if writer is None or writer.is_closing():
            self.dropped += len(out)
            return
        if writer.transport.get_write_buffer_size() + len(out) > TX_CAP:
            self.dropped += len(out)
            return
        writer.write(out)

    async def _tick_loop(self) -> None:
        ticker = self._ticker
        while True:
            await asyncio.sleep(ticker.tick_s)
            for seconds, reboot in ticker.tick():
                self.vanish(seconds, reboot=reboot)
            if ticker.gone_until is not None and self._server is not None:
                await self._shut()
            if ticker.due_back():
                await self._listen()
                ticker.back()
            self._flush()


async def run_marlin_sim(config: MarlinSimConfig, pty_path: str | os.PathLike[str]) -> None:
    """Serve a simulated Marlin printer on a pty symlinked at ``pty_path`` until cancelled."""
    await PtyRunner(MarlinMachine(config), pty_path).run()
