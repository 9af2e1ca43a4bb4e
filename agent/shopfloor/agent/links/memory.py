"""Two in-memory links wired back to back, for tests and in-process simulators.

Each direction is a bounded byte buffer: a writer that gets ahead of its reader by more than
``capacity`` bytes waits (back-pressure), as it would on a real port.
"""

from __future__ import annotations

import asyncio

from shopfloor.agent.errors import LinkClosedError, LinkError


class _Pipe:
    """One direction: a bounded byte buffer with a closed flag."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.buffer = bytearray()
        self.closed = False
        self.changed = asyncio.Condition()


class MemoryLink:
    """One end of a :func:`memory_pair`."""

    def __init__(self, name: str, incoming: _Pipe, outgoing: _Pipe) -> None:
        self._name = name
        self._in = incoming
        self._out = outgoing
        self._open = False

    @property
    def name(self) -> str:
        return self._name

    async def open(self) -> None:
        if self._in.closed or self._out.closed:
            raise LinkError(f"{self._name} was closed and cannot be reopened", port=self._name)
        self._open = True

    def _gone(self) -> LinkClosedError:
        return LinkClosedError(f"{self._name} is gone: the other end closed", port=self._name)

    async def read(self, max_bytes: int) -> bytes:
        if not self._open:
            raise LinkClosedError(f"{self._name} is not open", port=self._name)
        pipe = self._in
        async with pipe.changed:
            await pipe.changed.wait_for(lambda: bool(pipe.buffer) or pipe.closed)
            if not pipe.buffer:
                raise self._gone()
            data = bytes(pipe.buffer[:max_bytes])
            del pipe.buffer[:max_bytes]
            pipe.changed.notify_all()
            return data

    async def write(self, data: bytes) -> None:
        if not self._open:
            raise LinkClosedError(f"{self._name} is not open", port=self._name)
        pipe = self._out
        view = memoryview(data)
        while view:
            async with pipe.changed:
                await pipe.changed.wait_for(lambda: pipe.closed or len(pipe.buffer) < pipe.capacity)
                if pipe.closed:
                    raise self._gone()
                room = pipe.capacity - len(pipe.buffer)
                pipe.buffer += view[:room]
                view = view[room:]
                pipe.changed.notify_all()

    async def close(self) -> None:
        self._open = False
        for pipe in (self._in, self._out):
            async with pipe.changed:
                pipe.closed = True
                pipe.changed.notify_all()


def memory_pair(
    name: str = "memory", *, capacity: int = 64 * 1024
) -> tuple[MemoryLink, MemoryLink]:
    """Two connected links: bytes written to one are read from the other.

    The first is the agent's end, the second the simulated device's. Closing either end makes
    the other's reads (once drained) and writes raise :class:`LinkClosedError`.
    """
    a_to_b = _Pipe(capacity)
    b_to_a = _Pipe(capacity)
    return (
        MemoryLink(f"{name}:agent", incoming=b_to_a, outgoing=a_to_b),
        MemoryLink(f"{name}:device", incoming=a_to_b, outgoing=b_to_a),
    )
