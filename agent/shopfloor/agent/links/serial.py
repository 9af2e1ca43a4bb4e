"""Real serial ports and pseudo-terminal slaves, through ``pyserial-asyncio-fast``.

Opened once and kept open: reopening a port to poll asserts DTR, which resets Arduino-based
GRBL and Marlin boards mid-job. A port that disappears (USB unplugged, pty master closed)
makes pyserial raise ``SerialException`` rather than return an empty read; both show up
here as :class:`~shopfloor.agent.errors.LinkClosedError` carrying the port name.
"""

from __future__ import annotations

from typing import Final

import serial
import serial_asyncio_fast

from shopfloor.agent.errors import LinkError
from shopfloor.agent.links.stream import StreamPipe

#: StreamReader buffer; reading pauses above twice this (back-pressure to the port).
_READ_LIMIT: Final = 16 * 1024


class SerialLink:
    """A serial port or pty slave at ``path``, 8N1 at ``baudrate``."""

    def __init__(self, path: str, baudrate: int = 115200, *, exclusive: bool = True) -> None:
        self._path = path
        self._baudrate = baudrate
        self._exclusive = exclusive
        self._pipe = StreamPipe(path, (serial.SerialException, OSError))

    @property
    def name(self) -> str:
        return self._path

    async def open(self) -> None:
        self._pipe.check_closed()
        try:
            reader, writer = await serial_asyncio_fast.open_serial_connection(
                url=self._path,
                baudrate=self._baudrate,
                exclusive=self._exclusive,
                limit=_READ_LIMIT,
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise LinkError(f"cannot open {self._path}: {exc}", port=self._path) from exc
        self._pipe.attach(reader, writer)

    async def read(self, max_bytes: int) -> bytes:
        return await self._pipe.read(max_bytes)

    async def write(self, data: bytes) -> None:
        await self._pipe.write(data)

    async def close(self) -> None:
        await self._pipe.close()
