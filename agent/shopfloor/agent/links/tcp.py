"""A device (or serial server) reached over TCP: Haas NGC MDC, ser2net, a simulator."""

from __future__ import annotations

import asyncio
from typing import Final

from shopfloor.agent.errors import LinkError
from shopfloor.agent.links.stream import StreamPipe

_READ_LIMIT: Final = 16 * 1024


class TcpLink:
    """A raw TCP byte stream to ``host:port``."""

    def __init__(self, host: str, port: int, *, connect_timeout_s: float = 10.0) -> None:
        self._host = host
        self._port = port
        self._connect_timeout_s = connect_timeout_s
        self._pipe = StreamPipe(self.name, (OSError,), hangup=": the peer closed the connection")

    @property
    def name(self) -> str:
        return f"tcp://{self._host}:{self._port}"

    async def open(self) -> None:
        self._pipe.check_closed()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                reader, writer = await asyncio.open_connection(
                    self._host, self._port, limit=_READ_LIMIT
                )
        except TimeoutError as exc:
            raise LinkError(
                f"cannot connect to {self.name}: no answer in {self._connect_timeout_s:g} s",
                port=self.name,
            ) from exc
        except OSError as exc:
            raise LinkError(f"cannot connect to {self.name}: {exc}", port=self.name) from exc
        self._pipe.attach(reader, writer)

    async def read(self, max_bytes: int) -> bytes:
        return await self._pipe.read(max_bytes)

    async def write(self, data: bytes) -> None:
        await self._pipe.write(data)

    async def close(self) -> None:
        await self._pipe.close()
