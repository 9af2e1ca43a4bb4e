"""Time, passed in rather than read inside protocol and tracker code."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol


class Clock(Protocol):
    def wall_ms(self) -> int:
        """Wall-clock epoch milliseconds (UTC). May be wrong on a Pi that has not synced yet."""
        ...

    def mono_ms(self) -> int:
        """Monotonic milliseconds (CLOCK_MONOTONIC: since boot on Linux)."""
        ...


@dataclass(frozen=True, slots=True)
class SystemClock:
    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def mono_ms(self) -> int:
        return time.monotonic_ns() // 1_000_000
