"""Real serial ports and pseudo-terminal slaves, through ``pyserial-asyncio-fast``.

Opened once and kept open: reopening a port to poll asserts DTR, which resets Arduino-based
GRBL and Marlin boards mid-job. A port that disappears (USB unplugged, pty master closed)
makes pyserial raise ``SerialException`` rather than return an empty read; both show up
here as :class:`~shopfloor.agent.errors.LinkClosedError` carrying the port name.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

import serial
import serial_asyncio_fast

from shopfloor.agent.errors import LinkClosedError, LinkError

#: StreamReader buffer; reading pauses above twice this (back-pressure to the port).
_READ_LIMIT: Final = 16 * 1024


class SerialLink:
    """A serial port or pty slave at ``path``, 8N1 at ``baudrate``."""

    def __init__(self, path: str, baudrate: int = 115200, *, exclusive: bool = True) -> None:
        self._path = path
        self._baudrate = baudrate
        self._exclusive = exclusive
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    @property
    def name(self) -> str:
        return self._path

    async def open(self) -> None:
        if self._writer is not None:
            raise LinkError(f"{self._path} is already open", port=self._path)
        try:
            reader, writer = await serial_asyncio_fast.open_serial_connection(
                url=self._path,
                baudrate=self._baudrate,
                exclusive=self._exclusive,
                limit=_READ_LIMIT,
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise LinkError(f"cannot open {self._path}: {exc}", port=self._path) from exc
        self._reader, self._writer = reader, writer

    def _closed(self, exc: BaseException | None = None) -> LinkClosedError:
        detail = f": {exc}" if exc else ""
        return LinkClosedError(f"{self._path} is gone{detail}", port=self._path)

    async def read(self, max_bytes: int) -> bytes:
        if self._reader is None:
            raise self._closed()
        try:
            data = await self._reader.read(max_bytes)
        except (serial.SerialException, OSError) as exc:
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
        except (serial.SerialException, OSError) as exc:
            raise self._closed(exc) from exc

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is None:
            return
        writer.close()
        with contextlib.suppress(
            serial.SerialException, OSError
        ):  # already failed; closing is all that was asked
            await writer.wait_closed()
