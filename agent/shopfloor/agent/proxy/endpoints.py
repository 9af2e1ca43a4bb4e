"""Where the operator's sender connects to the proxy: a pseudo-terminal and a TCP port.

Both hand every chunk the sender writes to an async ``on_data`` callback (one at a time, in
order) and take the controller's bytes with :meth:`send`, which never blocks: when the
sender does not read (or nobody is connected), at most ``tx_cap`` bytes wait and the rest
is dropped and counted, so a stuck sender can never stall the machine's port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tty
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

from shopfloor.agent.errors import LinkError

__all__ = ["PtyEndpoint", "TcpEndpoint"]

_log = logging.getLogger(__name__)

READ_SIZE: Final = 4096
TX_CAP: Final = 64 * 1024
#: What may wait for a pty reader on top of the kernel's own pty buffer. Kept small: when
#: nobody has the pty open, whatever waits here reaches the next sender *after* it flushed
#: its input on open, and a stale ``ok`` would throw its character count off.
PTY_TX_CAP: Final = 4096

OnData = Callable[[bytes], Awaitable[None]]


class PtyEndpoint:
    """A pseudo-terminal whose slave is published at the symlink ``path``.

    The proxy keeps its own slave descriptor open, so the pty survives a sender closing and
    reopening it, and reads on the master never see EIO.
    """

    def __init__(self, path: Path, *, tx_cap: int = PTY_TX_CAP) -> None:
        self.path = path
        self._tx_cap = tx_cap
        self._master: int | None = None
        self._slave: int | None = None
        self._device: str | None = None
        self._tx = bytearray()
        self._writing = False
        #: Controller bytes dropped because the sender did not read them.
        self.dropped = 0

    @property
    def device(self) -> str | None:
        """The ``/dev/pts/N`` behind :attr:`path`."""
        return self._device

    def open(self) -> None:
        if self.path.is_symlink() or not self.path.exists():
            pass
        else:
            raise LinkError(
                f"{self.path} exists and is not a symlink; refusing to replace it",
                port=str(self.path),
            )
        master, slave = os.openpty()
        try:
            tty.setraw(slave)
            os.set_blocking(master, False)
            name = os.ttyname(slave)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tmp.symlink_to(name)
            tmp.replace(self.path)
        except OSError as exc:
            os.close(master)
            os.close(slave)
            raise LinkError(
                f"cannot publish a pty at {self.path}: {exc}", port=str(self.path)
            ) from exc
        self._master, self._slave, self._device = master, slave, name

    def close(self) -> None:
        master, slave, device = self._master, self._slave, self._device
        self._master = self._slave = self._device = None
        if master is not None:
            if self._writing:
                with contextlib.suppress(RuntimeError):
                    asyncio.get_running_loop().remove_writer(master)
                self._writing = False
            os.close(master)
        if slave is not None:
            os.close(slave)
        if device is not None:
            with contextlib.suppress(OSError):
                if os.readlink(self.path) == device:
                    self.path.unlink()
        self._tx.clear()

    async def serve(self, on_data: OnData) -> None:
        """Read what the sender writes and hand it on, until cancelled."""
        loop = asyncio.get_running_loop()
        master = self._master
        if master is None:
            raise RuntimeError("open() the pty first")
        while True:
            try:
                data = os.read(master, READ_SIZE)
            except BlockingIOError:
                data = b""
            except OSError as exc:  # EIO cannot happen while we hold the slave; be safe
                _log.debug("pty %s read failed: %s", self.path, exc)
                data = b""
            if data:
                await on_data(data)
                continue
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_reader(master, _set_done, ready)
            try:
                await ready
            finally:
                loop.remove_reader(master)

    def send(self, data: bytes) -> None:
        """Write the controller's bytes to the sender now; never blocks."""
        master = self._master
        if master is None:
            self.dropped += len(data)
            return
        if self._tx:
            self._queue(data)
            return
        try:
            n = os.write(master, data)
        except BlockingIOError:
            n = 0
        except OSError:
            self.dropped += len(data)
            return
        if n < len(data):
            self._queue(data[n:])

    def _queue(self, data: bytes) -> None:
        room = self._tx_cap - len(self._tx)
        if room < len(data):
            self.dropped += len(data) - max(room, 0)
            data = data[: max(room, 0)]
        self._tx += data
        if self._tx and not self._writing and self._master is not None:
            asyncio.get_running_loop().add_writer(self._master, self._flush)
            self._writing = True

    def _flush(self) -> None:
        master = self._master
        if master is None:
            return
        try:
            n = os.write(master, self._tx)
        except BlockingIOError:
            return
        except OSError:
            self.dropped += len(self._tx)
            n = len(self._tx)
        del self._tx[:n]
        if not self._tx:
            asyncio.get_running_loop().remove_writer(master)
            self._writing = False


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class TcpEndpoint:
    """A TCP listener for one sender at a time (a second one is turned away)."""

    def __init__(self, host: str, port: int, *, tx_cap: int = TX_CAP) -> None:
        self.host = host
        self.port = port
        self._tx_cap = tx_cap
        self._server: asyncio.Server | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._client: asyncio.Task[None] | None = None
        self._on_data: OnData | None = None
        self.dropped = 0
        self.refused = 0

    @property
    def connected(self) -> bool:
        return self._writer is not None

    async def open(self, on_data: OnData) -> None:
        self._on_data = on_data
        try:
            self._server = await asyncio.start_server(self._serve_client, self.host, self.port)
        except OSError as exc:
            raise LinkError(
                f"cannot listen on {self.host}:{self.port}: {exc}",
                port=f"tcp://{self.host}:{self.port}",
            ) from exc
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        client = self._client
        if client is not None:
            client.cancel()
            await asyncio.wait({client})
        if server is not None:
            await server.wait_closed()

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self._writer is not None or self._on_data is None:
            self.refused += 1
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
        task = asyncio.current_task()
        if task is not None:
            task.set_name(f"grbl-proxy-tcp-client:{self.port}")
        self._writer, self._client = writer, task
        on_data = self._on_data
        _log.info("proxy: sender connected on tcp port %d", self.port)
        try:
            while data := await reader.read(READ_SIZE):
                await on_data(data)
        except (ConnectionError, OSError):
            pass
        finally:
            self._writer = self._client = None
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()
            _log.info("proxy: sender disconnected from tcp port %d", self.port)

    def send(self, data: bytes) -> None:
        writer = self._writer
        if writer is None or writer.is_closing():
            return  # nobody connected: the machine talks to no one, as on a bare port
        if writer.transport.get_write_buffer_size() + len(data) > self._tx_cap:
            self.dropped += len(data)
            return
        writer.write(data)
