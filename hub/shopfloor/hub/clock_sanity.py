"""Clock sanity: detect agents whose wall clock is unset or off, and fix their timestamps.

A Raspberry Pi has no real-time clock: until NTP syncs, its wall clock may say 1970 or
whatever it said at the last shutdown; later it may be hours off. Every envelope carries
``ts`` (the agent's wall clock) and ``mono`` (its monotonic clock, which only counts up
within one boot ``epoch``). For every live (not replayed, not retained) message the hub
computes ``received_at - mono``: the agent's boot time on the hub's clock plus the network
delay. The minimum over a sliding window is the best estimate of the offset, since delay
only ever adds. Pure logic, no clock read inside: ``received_at`` is passed in.

The rule (also in docs/contract.md, "Clock sanity"): ``ts`` is *impossible* when it is
before 2020 or more than ``future_skew_ms`` after ``received_at``; it is *off* when it is
more than ``max_error_ms`` away from ``mono + offset`` and that offset is *settled* (learnt
from live messages spanning at least ``settle_ms``: right after a hub restart the first
"live" messages come from the broker's session queue, late, and would make a good clock
look wrong). An impossible or off ``ts`` becomes ``mono + offset`` (``corrected``) if an
offset is known, else ``received_at`` (``flagged``); the agent's ``ts`` is kept beside it.
Nothing is stored as 1970 or the future.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

#: 2020-01-01T00:00:00Z: no record of this system is older.
MIN_VALID_TS: Final = 1_577_836_800_000
DEFAULT_MAX_ERROR_MS: Final = 120_000
DEFAULT_FUTURE_SKEW_MS: Final = 60_000
DEFAULT_WINDOW_MS: Final = 600_000
DEFAULT_SETTLE_MS: Final = 60_000
#: Offsets are kept for at most this many agent+epoch pairs (least recently used go).
MAX_TRACKED: Final = 10_000


class ClockFlag(enum.StrEnum):
    CORRECTED = "corrected"
    FLAGGED = "flagged"


@dataclass(frozen=True, slots=True)
class Verdict:
    ts: int
    flag: ClockFlag | None = None

    @property
    def changed(self) -> bool:
        return self.flag is not None


@dataclass(slots=True)
class _Offset:
    current: int  # min over the window being filled
    previous: int | None  # min over the window before it
    window_start: int
    first_at: int  # received_at of the first sample
    last_at: int  # received_at of the latest sample

    def estimate(self) -> int:
        return self.current if self.previous is None else min(self.current, self.previous)


class ClockSanity:
    """Offset estimates per (agent, epoch) and the correction rule; see the module docstring."""

    def __init__(
        self,
        *,
        max_error_ms: int = DEFAULT_MAX_ERROR_MS,
        future_skew_ms: int = DEFAULT_FUTURE_SKEW_MS,
        window_ms: int = DEFAULT_WINDOW_MS,
        settle_ms: int = DEFAULT_SETTLE_MS,
        max_tracked: int = MAX_TRACKED,
    ) -> None:
        self.settle_ms = settle_ms
        self.max_error_ms = max_error_ms
        self.future_skew_ms = future_skew_ms
        self.window_ms = window_ms
        self.max_tracked = max_tracked
        self._offsets: OrderedDict[tuple[str, int | None], _Offset] = OrderedDict()

    def observe(self, agent: str, epoch: int | None, mono: int, received_at: int) -> None:
        """Learn from one live message."""
        sample = received_at - mono
        key = (agent, epoch)
        known = self._offsets.get(key)
        if known is None:
            self._offsets[key] = _Offset(sample, None, received_at, received_at, received_at)
            while len(self._offsets) > self.max_tracked:
                self._offsets.popitem(last=False)
            return
        self._offsets.move_to_end(key)
        known.last_at = max(known.last_at, received_at)
        if received_at - known.window_start >= self.window_ms:
            known.previous, known.current, known.window_start = known.current, sample, received_at
        else:
            known.current = min(known.current, sample)

    def offset(self, agent: str, epoch: int | None) -> int | None:
        """The estimated ``wall - mono`` of this agent boot, on the hub's clock."""
        known = self._offsets.get((agent, epoch))
        return None if known is None else known.estimate()

    def settled(self, agent: str, epoch: int | None) -> bool:
        known = self._offsets.get((agent, epoch))
        return known is not None and known.last_at - known.first_at >= self.settle_ms

    def check(
        self,
        agent: str,
        epoch: int | None,
        ts: int,
        mono: int | None,
        received_at: int,
        *,
        live: bool,
    ) -> Verdict:
        if live and mono is not None:
            self.observe(agent, epoch, mono, received_at)
        latest = received_at + self.future_skew_ms
        expected: int | None = None
        if mono is not None:
            offset = self.offset(agent, epoch)
            if offset is not None:
                expected = mono + offset
        bad = ts < MIN_VALID_TS or ts > latest
        if not bad and expected is not None and self.settled(agent, epoch):
            bad = abs(ts - expected) > self.max_error_ms
        if not bad:
            return Verdict(ts)
        if expected is not None and MIN_VALID_TS <= expected <= latest:
            return Verdict(expected, ClockFlag.CORRECTED)
        return Verdict(received_at, ClockFlag.FLAGGED)
