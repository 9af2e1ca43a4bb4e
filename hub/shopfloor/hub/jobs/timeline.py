"""A machine's recent state changes, to tell working time from held time. Pure.

A job's working time is the time since its start minus the time its machine was PAUSED
(feed hold, door, tool change) or in ALARM: the machine is not working on the program
then, and an ETA that counted that time as machining would stretch every rate. OFFLINE
counts as working: the hub does not know, and a machine usually keeps running while the
network is down (a replay later shows it).

Changes are kept in ``ts`` order whatever order they arrive in, so a late (replayed) state
corrects the figure; the list is trimmed to what the open jobs need.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from typing import Final

from shopfloor.contract import MachineState

__all__ = ["HELD_STATES", "Timeline"]

#: States in which a machine does not work on its job.
HELD_STATES: Final = frozenset({MachineState.PAUSED, MachineState.ALARM})
#: At most this many changes per machine are kept (the oldest are merged away).
MAX_CHANGES: Final = 20_000


class Timeline:
    """``(ts, held)`` changes of one machine, sorted by ts."""

    def __init__(self) -> None:
        self._ts: list[int] = []
        self._held: list[bool] = []

    def __len__(self) -> int:
        return len(self._ts)

    def add(self, ts: int, state: MachineState) -> None:
        held = state in HELD_STATES
        i = bisect.bisect_right(self._ts, ts)
        if i > 0 and self._ts[i - 1] == ts:
            self._held[i - 1] = held  # the same instant again: the later record wins
            return
        self._ts.insert(i, ts)
        self._held.insert(i, held)
        if len(self._ts) > MAX_CHANGES:
            self.trim(self._ts[len(self._ts) - MAX_CHANGES])

    def extend(self, changes: Iterable[tuple[int, MachineState]]) -> None:
        for ts, state in changes:
            self.add(ts, state)

    def held_ms(self, start: int, end: int) -> int:
        """Milliseconds of [start, end) the machine was held (PAUSED or ALARM)."""
        if end <= start or not self._ts:
            return 0
        total = 0
        i = max(0, bisect.bisect_right(self._ts, start) - 1)
        while i < len(self._ts) and self._ts[i] < end:
            seg_start = max(self._ts[i], start)
            seg_end = min(self._ts[i + 1] if i + 1 < len(self._ts) else end, end)
            if self._held[i] and seg_end > seg_start:
                total += seg_end - seg_start
            i += 1
        return total

    def active_ms(self, start: int, end: int) -> int:
        """Working time in [start, end): its length less the held time."""
        return max(0, end - start - self.held_ms(start, end))

    def held_at(self, ts: int) -> bool:
        i = bisect.bisect_right(self._ts, ts) - 1
        return i >= 0 and self._held[i]

    def trim(self, before: int) -> None:
        """Forget changes before ``before``, keeping the one in force at that moment."""
        i = bisect.bisect_right(self._ts, before) - 1
        if i > 0:
            del self._ts[:i]
            del self._held[:i]
