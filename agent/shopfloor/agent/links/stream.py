"""The asyncio stream half of a link: read, write and close, with errors translated.

:class:`SerialLink` and :class:`TcpLink` differ only in how they open; once open, each
holds a :class:`StreamPipe` that moves the bytes and turns the library's errors into
:class:`~shopfloor.agent.errors.LinkClosedError` carrying the port name.
"""

from __future__ import annotations

import asyncio
import contextlib

from shopfloor.agent.errors import LinkClosedError, LinkError


class StreamPipe:
    """An ``asyncio`` reader/writer pair for the link called ``name``.

    ``errors`` are the exceptions the transport raises when the far end is gone (mapped to
    :class:`LinkClosedError`, chained); ``hangup`` is the detail for a clean end of stream.
    """

    def __init__(self, name: str, errors: tuple[type[Exception], ...], *, hangup: str = "") -> None:
        self._name = name
        self._errors = errors
        self._hangup = hangup
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    def check_closed(self) -> None:
        """Raise :class:`LinkError` if the link is already open."""
        if self._writer is not None:
            raise LinkError(f"{self._name} is already open", port=self._name)

    def attach(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer

    def extra_info(self, name: str) -> object:
        """The open transport's ``get_extra_info(name)``, or None when closed."""
        return None if self._writer is None else self._writer.get_extra_info(name)

    def _closed(self, exc: BaseException | None = None) -> LinkClosedError:
        detail = f": {exc}" if exc else self._hangup
        return LinkClosedError(f"{self._name} is gone{detail}", port=self._name)

    async def read(self, max_bytes: int) -> bytes:
        if self._reader is None:
            raise self._closed()
        try:
            data = await self._reader.read(max_bytes)
        except self._errors as exc:
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
        except self._errors as exc:
            raise self._closed(exc) from exc

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is None:
            return
        writer.close()
        with contextlib.suppress(*self._errors):  # already failed; closing is all that was asked
            await writer.wait_closed()
