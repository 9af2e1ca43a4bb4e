"""Links move bytes and nothing else: real serial, pseudo-terminal, TCP, in-memory."""

from __future__ import annotations

from urllib.parse import urlsplit

from shopfloor.agent.errors import LinkError
from shopfloor.agent.links.base import Link
from shopfloor.agent.links.faults import FaultyLink
from shopfloor.agent.links.memory import MemoryLink, memory_pair
from shopfloor.agent.links.serial import SerialLink
from shopfloor.agent.links.tcp import TcpLink


def open_link(spec: str, baudrate: int = 115200) -> Link:
    """Build (not open) the link a config ``port`` string names.

    - ``tcp://host:port``: a TCP byte stream (:class:`TcpLink`);
    - ``pty:/path``: a pseudo-terminal slave, e.g. a socat or simulator link (:class:`SerialLink`);
    - ``/dev/...`` or any absolute path: a serial port (:class:`SerialLink`).
    """
    if spec.startswith("tcp://"):
        parts = urlsplit(spec)
        try:
            host, port = parts.hostname, parts.port
        except ValueError:
            host = port = None
        if not host or port is None:
            raise LinkError(f"{spec!r} is not tcp://host:port", port=spec)
        return TcpLink(host, port)
    if spec.startswith("pty:"):
        return SerialLink(spec[4:], baudrate)
    if spec.startswith("/"):
        return SerialLink(spec, baudrate)
    raise LinkError(f"{spec!r} is not a device path, tcp://host:port or pty:/path", port=spec)


__all__ = [
    "FaultyLink",
    "Link",
    "MemoryLink",
    "SerialLink",
    "TcpLink",
    "memory_pair",
    "open_link",
]
