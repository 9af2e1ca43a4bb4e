"""Shared by the proxy tests and the proxy benchmark: a character-counting test sender, a
simulator that records the lines it receives, and a 2,000-line program."""

from __future__ import annotations

import asyncio
import collections
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from shopfloor.agent.links.base import Link
from shopfloor.sim.grbl.config import GrblSimConfig
from shopfloor.sim.grbl.machine import GrblMachine

RX_BUFFER_SIZE = 128


async def wait_until(condition: Callable[[], bool], within_s: float = 10.0) -> None:
    """Poll ``condition`` every 10 ms; TimeoutError if it is not true ``within_s``."""
    for _ in range(max(1, round(within_s / 0.01))):
        if condition():
            return
        await asyncio.sleep(0.01)
    if not condition():
        raise TimeoutError(f"not true within {within_s} s")


class RecordingMachine(GrblMachine):
    """A simulated Grbl that remembers every line the serial host sent it, as Grbl saw it
    (filtered: upper case, no spaces or comments), and when each arrived."""

    def __init__(self, config: GrblSimConfig, clock: object = None) -> None:
        super().__init__(config)
        self.received: list[str] = []
        self.received_at: list[float] = []

    def _execute(self, line: str, *, to_job: bool) -> None:
        if not to_job:
            self.received.append(line)
            self.received_at.append(asyncio.get_running_loop().time())
        super()._execute(line, to_job=to_job)


def program(
    lines: int = 2000,
    *,
    name: str = "sign.nc",
    spindle_changes: bool = True,
    spindle_every: int = 50,
) -> list[str]:
    """A G-code program of ``lines`` non-blank lines with a header naming it and its length.

    Small moves around a circle; with ``spindle_changes`` every ``spindle_every``-th line
    changes S, which
    in spindle mode forces a buffer sync (short Idles mid-job, as on the real firmware).
    """
    body = lines - 4
    out = [f"(Program: {name})", f"(Lines: {lines})", "G21 G90 G94", "M3 S1000"]
    for i in range(body - 1):
        a = 2 * math.pi * i / 200
        x, y = 20 + 10 * math.cos(a), 20 + 10 * math.sin(a)
        if spindle_changes and i % spindle_every == spindle_every - 1:
            out.append(f"S{1000 + 10 * (i // spindle_every % 20)}")
        else:
            out.append(f"G1 X{x:.3f} Y{y:.3f} F6000 ; step {i}")
    out.append("M5")
    assert len(out) == lines
    return out


@dataclass
class CountingSender:
    """gnea's ``stream.py`` algorithm on a Link: keep the bytes of unanswered lines (each
    counted with its ``\\n``) below the 128-byte RX buffer; every ``ok``/``error`` frees the
    oldest. Push messages (``<...>``, ``[...]``, ``ALARM:``) are ignored."""

    link: Link
    budget: int = RX_BUFFER_SIZE - 1
    in_flight: collections.deque[int] = field(default_factory=collections.deque)
    answers: list[str] = field(default_factory=list)
    pushes: int = 0
    _buf: bytearray = field(default_factory=bytearray)
    sent_at: list[float] = field(default_factory=list)
    acked_at: list[float] = field(default_factory=list)

    async def _read_line(self) -> str:
        while b"\n" not in self._buf:
            self._buf += await self.link.read(4096)
        line, _, rest = bytes(self._buf).partition(b"\n")
        self._buf[:] = rest
        return line.decode("ascii", "replace").strip()

    async def _one_answer(self) -> None:
        while True:
            text = await self._read_line()
            if text == "ok" or text.startswith("error:"):
                self.answers.append(text)
                self.in_flight.popleft()
                self.acked_at.append(asyncio.get_running_loop().time())
                return
            if text:
                self.pushes += 1

    async def stream(self, lines: Sequence[str]) -> list[str]:
        loop = asyncio.get_running_loop()
        for line in lines:
            data = line.encode("ascii") + b"\n"
            while self.in_flight and sum(self.in_flight) + len(data) > self.budget:
                await self._one_answer()
            self.in_flight.append(len(data))
            self.sent_at.append(loop.time())
            await self.link.write(data)
        while self.in_flight:
            await self._one_answer()
        return self.answers
