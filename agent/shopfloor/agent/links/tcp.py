"""A device (or serial server) reached over TCP: Haas NGC MDC, ser2net, a simulator."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

from shopfloor.agent.errors import LinkClosedError, LinkError

_READ_LIMIT: Final = 16 * 1024


class TcpLink:
    """A raw TCP byte stream to ``host:port``."""

    def __init__(self, host: str, port: int, *, connect_timeout_s: float = 10.0) -> None:
        self._host = host
        self._port = port
        self._connect_timeout_s = connect_timeout_s
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    @property
    def name(self) -> str:
        return f"tcp://{self._host}:{self._port}"

    async def open(self) -> None:
        if self._writer is not None:
            raise LinkError(f"{self.name} is already open", port=self.name)
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                self._reader, self._writer = await asyncio.open_connection(
                    self._host, self._port, limit=_READ_LIMIT
                )
        except TimeoutError as exc:
            raise LinkError(
                f"cannot connect to {self.name}: no answer in {self._connect_timeout_s:g} s",
                port=self.name,
            ) from exc
        except OSError as exc:
            raise LinkError(f"cannot connect to {self.name}: {exc}", port=self.name) from exc

    def _closed(self, exc: BaseException | None = None) -> LinkClosedError:
        detail = f": {exc}" if exc else ": the peer closed the connection"
        return LinkClosedError(f"{self.name} is gone{detail}", port=self.name)

    async def read(self, max_bytes: int) -> bytes:
        if self._reader is None:
            raise self._closed()
        try:
            data = await self._reader.read(max_bytes)
        except OSError as exc:
            raise self._closed(exc) from exc
        if not data:
            raise self._closed()
        return data

    async def write(self, data: bytes) -> None:
        writer = self._writer
        if writer is None or writer.transport.is_closing():
            raise self._closed()
        try:
            writer.write(data)
            await writer.drain()
        except OSError as exc:
            raise self._closed(exc) from exc

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is None:
            return
        writer.close()
        with contextlib.suppress(OSError):  # the peer already reset it
            await writer.wait_closed()
