"""Transports for every simulator: a pseudo-terminal, a TCP port, an in-memory pair.

Each runner owns one sans-IO :class:`SimMachine` (``receive``, ``advance``, ``take_output``,
``power_off``, ``power_on``), ticks it every ``tick_s`` seconds on the event loop's
monotonic clock, hands it the bytes the host writes, and writes back what the machine says.
All are async context managers with one named background task; leaving the ``async with``
(or cancelling :meth:`PtyRunner.run`) closes every file descriptor and socket they opened.

What differs between machines is passed in, not subclassed:

- ``drivers``: :class:`TickDriver` s ticked just before the machine (a fault script, a job
  loop); the faults they hand back with ``kind == "vanish"`` make the port vanish
  (GRBL, Haas, the kiln).
- ``take_vanish``: asks the machine itself, just after it advanced, for ``(seconds, reboot)``
  vanish requests (Marlin, whose fault script runs inside the machine).
- ``tick_s``; ``tx_cap``, the bytes kept for a reader that is slow or absent; ``name``,
  which labels tasks and logs.

``vanish(seconds, reboot=False)`` makes the port disappear as if the USB cable were pulled:
the pty (and its symlink) or the TCP listener goes away and comes back after ``seconds``.
The machine keeps running meanwhile unless ``reboot`` (then it is off while gone and greets
again when it returns).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tty
from collections.abc import Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Generic, Protocol, Self, TypeAlias, TypeVar

from shopfloor.sim.errors import SimError

log = logging.getLogger(__name__)

TX_CAP: Final = 64 * 1024


class SimMachine(Protocol):
    """What a runner needs from a sans-IO simulated device (times are caller seconds)."""

    def receive(self, data: bytes, now: float) -> None: ...

    def advance(self, now: float) -> None: ...

    def take_output(self) -> bytes: ...

    def power_off(self, now: float) -> None: ...

    def power_on(self, now: float) -> None: ...


class RunnerFault(Protocol):
    """A fault a driver hands back to the runner; only ``kind == "vanish"`` is acted on."""

    @property
    def kind(self) -> str: ...

    @property
    def duration(self) -> float: ...

    @property
    def reboot(self) -> bool: ...


M = TypeVar("M", bound=SimMachine)
M_contra = TypeVar("M_contra", bound=SimMachine, contravariant=True)


class TickDriver(Protocol[M_contra]):
    """Acts on the machine as time passes (a fault script, a job loop)."""

    def tick(self, machine: M_contra, now: float) -> Sequence[RunnerFault]: ...


#: Vanish requests a machine raises itself: ``(seconds, reboot)`` pairs, taken once each.
TakeVanish: TypeAlias = Callable[[M], Iterable[tuple[float, bool]]]


class _Ticker(Generic[M]):
    """The part every runner shares: time, drivers, vanish bookkeeping, the tick task."""

    def __init__(
        self,
        machine: M,
        drivers: Sequence[TickDriver[M]],
        take_vanish: TakeVanish[M] | None,
        tick_s: float,
        name: str,
    ) -> None:
        if tick_s <= 0:
            raise SimError("tick_s must be positive")
        self.name = name
        self.machine = machine
        self.drivers = list(drivers)
        self.take_vanish = take_vanish
        self.tick_s = tick_s
        self.gone_until: float | None = None
        self.reboot_on_return = False
        self.task: asyncio.Task[None] | None = None

    def start(self, tick_loop: Coroutine[Any, Any, None], where: str) -> None:
        self.task = asyncio.create_task(tick_loop, name=f"{self.name}-sim-{where}")

    async def stop(self) -> None:
        """Cancel the tick task and wait for it; a crash is logged (and raised by
        :meth:`serve_forever`), not raised again here, so that closing always completes."""
        task, self.task = self.task, None
        if task is None:
            return
        task.cancel()
        await asyncio.wait([task])
        if not task.cancelled() and task.exception() is not None:
            log.error("%s sim: the tick task crashed", self.name, exc_info=task.exception())

    async def serve_forever(self) -> None:
        if self.task is None:
            raise SimError("serve_forever() needs the runner to be entered first")
        await self.task

    @staticmethod
    def now() -> float:
        return asyncio.get_running_loop().time()

    def tick(self) -> list[tuple[float, bool]]:
        """Drivers, then the machine; returns the ``(seconds, reboot)`` vanishings asked for."""
        now = self.now()
        faults: list[RunnerFault] = []
        for driver in self.drivers:
            faults.extend(driver.tick(self.machine, now))
        self.machine.advance(now)
        vanish = [(f.duration, f.reboot) for f in faults if f.kind == "vanish"]
        if self.take_vanish is not None:
            vanish.extend(self.take_vanish(self.machine))
        return vanish

    def start_vanish(self, seconds: float, reboot: bool) -> None:
        now = self.now()
        self.gone_until = now + seconds
        self.reboot_on_return = reboot
        if reboot:
            self.machine.power_off(now)
        log.info("%s sim: port vanishes for %.1f s (reboot=%s)", self.name, seconds, reboot)

    def due_back(self) -> bool:
        return self.gone_until is not None and self.now() >= self.gone_until

    def back(self) -> None:
        self.gone_until = None
        if self.reboot_on_return:
            self.reboot_on_return = False
            self.machine.power_on(self.now())
        log.info("%s sim: port is back", self.name)


class PtyRunner(Generic[M]):
    """Serve the machine on a pseudo-terminal published at a stable symlink ``path``.

    ``async with PtyRunner(machine, "/tmp/ttyGRBL") as runner: ...`` - open ``path`` like a
    serial port (raw mode is already set on the slave). :meth:`run` serves until cancelled.
    ``name`` defaults to the first simulator's, ``grbl``.
    """

    def __init__(
        self,
        machine: M,
        path: str | os.PathLike[str],
        *,
        drivers: Sequence[TickDriver[M]] = (),
        take_vanish: TakeVanish[M] | None = None,
        tick_s: float = 0.01,
        tx_cap: int = TX_CAP,
        name: str = "grbl",
    ) -> None:
        self.path = Path(path)
        self.machine = machine
        self._ticker = _Ticker(machine, drivers, take_vanish, tick_s, name)
        self._tx_cap = tx_cap
        self._master: int | None = None
        self._slave: int | None = None
        self._device: str | None = None
        self._tx = bytearray()
        #: Output bytes thrown away because nobody read the port (or it was gone).
        self.dropped = 0

    @property
    def tick_s(self) -> float:
        return self._ticker.tick_s

    @property
    def present(self) -> bool:
        """True while the port exists (False while it has vanished)."""
        return self._master is not None

    @property
    def device(self) -> str | None:
        """The current ``/dev/pts/N`` behind :attr:`path`."""
        return self._device

    async def __aenter__(self) -> Self:
        self._open()
        self._ticker.start(self._tick_loop(), f"pty:{self.path}")
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
            await self._ticker.stop()
        finally:
            self._close()

    async def run(self) -> None:
        """Serve until cancelled."""
        async with self:
            await self.serve_forever()

    async def serve_forever(self) -> None:
        """Wait inside ``async with`` until cancelled (re-raises if the simulator crashed)."""
        await self._ticker.serve_forever()

    def vanish(self, seconds: float, *, reboot: bool = False) -> None:
        """Close the pty and remove the symlink; a new pty appears after ``seconds``."""
        self._close()
        self._ticker.start_vanish(seconds, reboot)

    # -- internals -------------------------------------------------------------------

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
        self._flush()  # anything said while nobody was there (the banner after a reboot)

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
            # Remove the link only if it is still ours (another simulator may have taken it).
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
            return  # EIO: no slave open right now; the next open brings it back
        if data:
            self.machine.receive(data, self._ticker.now())
            self._flush()

    def _flush(self) -> None:
        out = self.machine.take_output()
        if self._master is None:
            self.dropped += len(out)
            return
        if len(self._tx) + len(out) > self._tx_cap:
            self.dropped += len(out)
        else:
            self._tx += out
        while self._tx:
            try:
                n = os.write(self._master, self._tx)
            except (BlockingIOError, InterruptedError):
                return  # nobody reads: keep it (bounded) and retry on the next tick
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
            self._flush()


class TcpRunner(Generic[M]):
    """Serve the machine on ``host:port`` (one client at a time; later ones are refused).

    ``port=0`` picks a free port; read it from :attr:`port` inside the ``async with``.
    """

    def __init__(
        self,
        machine: M,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        drivers: Sequence[TickDriver[M]] = (),
        take_vanish: TakeVanish[M] | None = None,
        tick_s: float = 0.01,
        tx_cap: int = TX_CAP,
        name: str = "grbl",
    ) -> None:
        self.machine = machine
        self.host = host
        self.port = port
        self._ticker = _Ticker(machine, drivers, take_vanish, tick_s, name)
        self._tx_cap = tx_cap
        self._server: asyncio.Server | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._client_task: asyncio.Task[None] | None = None
        self.dropped = 0

    async def __aenter__(self) -> Self:
        await self._listen()
        self._flush()  # nobody is connected yet: the power-up banner goes nowhere
        self._ticker.start(self._tick_loop(), f"tcp:{self.port}")
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
            await self._ticker.stop()
        finally:
            await self._shut()

    async def run(self) -> None:
        """Serve until cancelled."""
        async with self:
            await self.serve_forever()

    async def serve_forever(self) -> None:
        """Wait inside ``async with`` until cancelled (re-raises if the simulator crashed)."""
        await self._ticker.serve_forever()

    @property
    def present(self) -> bool:
        """True while the port listens (False while it has vanished)."""
        return self._ticker.gone_until is None

    def vanish(self, seconds: float, *, reboot: bool = False) -> None:
        """Drop the client and stop listening (on the next tick); listen again after ``seconds``."""
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
        if writer.transport.get_write_buffer_size() + len(out) > self._tx_cap:
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


class MemoryRunner(Generic[M]):
    """An in-memory pair for tests: :meth:`write` is the host sending, :meth:`read` receiving.

    Output chunks queue up to ``max_chunks``; beyond that they are dropped and counted.
    """

    def __init__(
        self,
        machine: M,
        *,
        drivers: Sequence[TickDriver[M]] = (),
        take_vanish: TakeVanish[M] | None = None,
        tick_s: float = 0.01,
        max_chunks: int = 1024,
        name: str = "grbl",
    ) -> None:
        self.machine = machine
        self._ticker = _Ticker(machine, drivers, take_vanish, tick_s, name)
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=max_chunks)
        self.dropped = 0

    @property
    def present(self) -> bool:
        return self._ticker.gone_until is None

    async def __aenter__(self) -> Self:
        self._ticker.start(self._tick_loop(), "memory")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._ticker.stop()

    def write(self, data: bytes) -> None:
        """The host writes ``data`` (lost while the port has vanished)."""
        if not self.present:
            return
        self.machine.receive(data, self._ticker.now())
        self._flush()

    async def read(self) -> bytes:
        """The next chunk the device wrote."""
        return await self._queue.get()

    def vanish(self, seconds: float, *, reboot: bool = False) -> None:
        self._ticker.start_vanish(seconds, reboot)

    def _flush(self) -> None:
        out = self.machine.take_output()
        if not out:
            return
        if not self.present:
            self.dropped += len(out)
            return
        try:
            self._queue.put_nowait(out)
        except asyncio.QueueFull:
            self.dropped += len(out)

    async def _tick_loop(self) -> None:
        ticker = self._ticker
        while True:
            await asyncio.sleep(ticker.tick_s)
            for seconds, reboot in ticker.tick():
                self.vanish(seconds, reboot=reboot)
            if ticker.due_back():
                ticker.back()
            self._flush()
