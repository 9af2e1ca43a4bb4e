"""A fault hook for any link: split, delay, drop or corrupt bytes, reproducibly.

Faults apply to the bytes the wrapped link *reads* (what the device sent), which is what
parsers and sessions must survive. Pass ``rng=random.Random(seed)`` for a repeatable run.
"""

from __future__ import annotations

import asyncio
import random

from shopfloor.agent.links.base import Link


class FaultyLink:
    """Wraps ``inner``; every read goes through the configured faults in this order:

    - ``drop_rate``: each byte is lost with this probability;
    - ``corrupt_rate``: each remaining byte gets one random bit flipped with this probability;
    - ``split``: a read returns at most this many bytes (the rest is kept for the next read);
    - ``delay_s``: each read is held back this long.
    """

    def __init__(
        self,
        inner: Link,
        *,
        split: int | None = None,
        delay_s: float = 0.0,
        drop_rate: float = 0.0,
        corrupt_rate: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        if split is not None and split < 1:
            raise ValueError("split must be at least 1 byte")
        for name, rate in (("drop_rate", drop_rate), ("corrupt_rate", corrupt_rate)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        self._inner = inner
        self._split = split
        self._delay_s = delay_s
        self._drop_rate = drop_rate
        self._corrupt_rate = corrupt_rate
        self._rng = rng or random.Random()
        self._pending = bytearray()
        self.dropped = 0
        self.corrupted = 0

    @property
    def name(self) -> str:
        return self._inner.name

    async def open(self) -> None:
        await self._inner.open()

    def _mangle(self, data: bytes) -> bytes:
        out = bytearray()
        for byte in data:
            if self._drop_rate and self._rng.random() < self._drop_rate:
                self.dropped += 1
                continue
            flip = 0
            if self._corrupt_rate and self._rng.random() < self._corrupt_rate:
                flip = 1 << self._rng.randrange(8)
                self.corrupted += 1
            out.append(byte ^ flip)
        return bytes(out)

    async def read(self, max_bytes: int) -> bytes:
        while not self._pending:
            self._pending += self._mangle(await self._inner.read(max_bytes))
        if self._delay_s:
            await asyncio.sleep(self._delay_s)
        limit = min(max_bytes, self._split or max_bytes)
        data = bytes(self._pending[:limit])
        del self._pending[:limit]
        return data

    async def write(self, data: bytes) -> None:
        await self._inner.write(data)

    async def close(self) -> None:
        self._pending.clear()
        await self._inner.close()
