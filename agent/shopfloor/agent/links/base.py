"""The one seam between the agent and a device: a :class:`Link` moves bytes.

Framing, parsing, polling and timeouts live above it. Implementations: real serial ports
(``pyserial-asyncio-fast``), pseudo-terminals, TCP, and an in-memory pair for tests; a
fault wrapper can split, delay, drop or corrupt bytes on any of them.
"""

from __future__ import annotations

from typing import Protocol


class Link(Protocol):
    """A byte pipe to one device. Owned by exactly one session."""

    @property
    def name(self) -> str:
        """Human-readable port name for logs and errors (``/dev/ttyUSB0``, ``tcp://...``)."""
        ...

    async def open(self) -> None:
        """Open the link. Raises :class:`~shopfloor.agent.errors.LinkError` if it cannot."""
        ...

    async def read(self, max_bytes: int) -> bytes:
        """Return 1..max_bytes bytes as soon as any are available.

        Raises :class:`~shopfloor.agent.errors.LinkClosedError` when the far end is gone; never
        returns ``b""``.
        """
        ...

    async def write(self, data: bytes) -> None:
        """Write all of ``data``. Raises :class:`~shopfloor.agent.errors.LinkClosedError`."""
        ...

    async def close(self) -> None:
        """Close the link. Safe to call twice and after a failure."""
        ...
