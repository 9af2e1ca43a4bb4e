"""Real serial ports and pseudo-terminal slaves, through ``pyserial-asyncio-fast``.

Opened once and kept open: reopening a port to poll asserts DTR, which resets Arduino-based
GRBL and Marlin boards mid-job. A port that disappears (USB unplugged, pty master closed)
makes pyserial raise ``SerialException`` rather than return an empty read; both show up
here as :class:`~shopfloor.agent.errors.LinkClosedError` carrying the port name.
"""

from __future__ import annotations

import os
from typing import Final

import serial
import serial_asyncio_fast

from shopfloor.agent.errors import LinkError
from shopfloor.agent.links.stream import StreamPipe

#: StreamReader buffer; reading pauses above twice this (back-pressure to the port).
_READ_LIMIT: Final = 16 * 1024
_PARITIES: Final = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}
_STOPBITS: Final = {1: serial.STOPBITS_ONE, 2: serial.STOPBITS_TWO}


class SerialLink:
    """A serial port or pty slave at ``path``: 8 data bits at ``baudrate``, with ``parity``
    (``N``, ``E`` or ``O``) and ``stopbits`` (1 or 2), 8N1 by default. A pty gets the stop
    bits but never parity (see :attr:`is_pty`)."""

    def __init__(
        self,
        path: str,
        baudrate: int = 115200,
        *,
        parity: str = "N",
        stopbits: int = 1,
        exclusive: bool = True,
    ) -> None:
        self._path = path
        self._baudrate = baudrate
        self._parity = "N"
        self._stopbits = 1
        self._exclusive = exclusive
        self.set_framing(parity, stopbits)
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
                parity=_PARITIES["N" if self.is_pty else self._parity],
                stopbits=_STOPBITS[self._stopbits],
                exclusive=self._exclusive,
                limit=_READ_LIMIT,
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise LinkError(f"cannot open {self._path}: {exc}", port=self._path) from exc
        self._pipe.attach(reader, writer)

    @property
    def is_pty(self) -> bool:
        """A pseudo-terminal slave (a simulator, socat): no parity bits exist on it, and
        Linux refuses to reconfigure one with parity on, so parity is not asked for."""
        return os.path.realpath(self._path).startswith("/dev/pts/")

    def set_framing(self, parity: str, stopbits: int) -> None:
        """Parity and stop bits for the next :meth:`open`."""
        if parity not in _PARITIES or stopbits not in _STOPBITS:
            raise LinkError(
                f"{self._path}: framing {parity}/{stopbits} is not one of parity N/E/O, "
                "stop bits 1/2",
                port=self._path,
            )
        self._parity, self._stopbits = parity, stopbits

    @property
    def framing(self) -> tuple[int, str, int] | None:
        """(baudrate, parity, stop bits) as the open port is set, or None when closed."""
        port = self._pipe.extra_info("serial")
        if not isinstance(port, serial.Serial):
            return None
        return (int(port.baudrate), str(port.parity), int(port.stopbits))

    async def read(self, max_bytes: int) -> bytes:
        return await self._pipe.read(max_bytes)

    async def write(self, data: bytes) -> None:
        await self._pipe.write(data)

    async def close(self) -> None:
        await self._pipe.close()
