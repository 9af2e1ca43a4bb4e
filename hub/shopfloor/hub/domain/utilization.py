"""Utilization from time in state: pure arithmetic over what the store summed.

The store answers "how many ms of each state lie in this window" (computed in SQL from the
state rows ordered by acquisition time). This module decides which windows to ask for
(buckets, and the planned parts of each bucket from the shift calendar) and turns the
answers into figures with their definition.

Definitions (DESIGN.md §4):

- ``window_ms``: the elapsed part of the bucket, ``[start, min(end, now))``.
- ``productive_ms``: time in a productive state (default RUNNING) within ``window_ms``.
- ``utilization`` = productive_ms / window_ms.
- ``planned_ms``: the part of ``window_ms`` inside planned shifts (union of the calendar's
  weekly shifts minus holidays plus overtime).
- ``utilization_planned`` = productive time inside planned time / planned_ms (None when
  there is no planned time).
- ``coverage`` = observed (not OFFLINE) time / window_ms. OFFLINE is "no data" and is never
  productive or idle.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final
from zoneinfo import ZoneInfo

from shopfloor.contract import MachineState
from shopfloor.hub.domain.shifts import Bucket, ShiftCalendar, Window, buckets, clip, merge
from shopfloor.hub.domain.shifts import shift_occurrences as _occurrences

DEFAULT_PRODUCTIVE: Final = frozenset({MachineState.RUNNING})

DENOMINATORS: Final = {
    "window": "elapsed part of the bucket: [start, min(end, now)); 'utilization' divides by it",
    "planned": "planned shift time inside the elapsed bucket, from the machine's shift "
    "calendar (weekly shifts minus holidays plus overtime); 'utilization_planned' divides "
    "productive time inside planned time by it, and is null when nothing was planned",
}


@dataclass(frozen=True, slots=True)
class Definition:
    productive_states: frozenset[MachineState]
    timezone: str

    def to_json(self) -> dict[str, object]:
        return {
            "productive_states": sorted(str(s) for s in self.productive_states),
            "denominators": dict(DENOMINATORS),
            "coverage": "observed (not OFFLINE) time / window_ms; OFFLINE is time without "
            "data and counts neither as productive nor as idle",
            "timezone": self.timezone,
        }


@dataclass(frozen=True, slots=True)
class Probe:
    """One window the store must sum time in state over, for one machine."""

    id: int
    key: str
    start: int
    end: int


@dataclass(slots=True)
class Figures:
    """Time in every state and the ratios, for one bucket (or a sum of buckets)."""

    states_ms: dict[MachineState, int] = field(
        default_factory=lambda: dict.fromkeys(MachineState, 0)
    )
    window_ms: int = 0
    planned_ms: int = 0
    productive_ms: int = 0
    productive_planned_ms: int = 0

    def add(self, other: Figures) -> None:
        for state, ms in other.states_ms.items():
            self.states_ms[state] += ms
        self.window_ms += other.window_ms
        self.planned_ms += other.planned_ms
        self.productive_ms += other.productive_ms
        self.productive_planned_ms += other.productive_planned_ms

    @property
    def observed_ms(self) -> int:
        return self.window_ms - self.states_ms[MachineState.OFFLINE]

    @property
    def utilization(self) -> float | None:
        return _ratio(self.productive_ms, self.window_ms)

    @property
    def utilization_planned(self) -> float | None:
        return _ratio(self.productive_planned_ms, self.planned_ms)

    @property
    def coverage(self) -> float | None:
        return _ratio(self.observed_ms, self.window_ms)


def _ratio(num: int, den: int) -> float | None:
    return round(num / den, 6) if den > 0 else None


@dataclass(frozen=True, slots=True)
class BucketPlan:
    """One bucket of one machine: the elapsed window and its planned parts, as probes."""

    window: Window
    elapsed: Probe | None
    planned: tuple[Probe, ...]


@dataclass(frozen=True, slots=True)
class MachinePlan:
    machine: str
    key: str
    calendar: ShiftCalendar | None
    buckets: tuple[BucketPlan, ...]


class Planner:
    """Hands out probe ids while plans are built, so one store call answers them all."""

    def __init__(self) -> None:
        self.probes: list[Probe] = []

    def _probe(self, key: str, start: int, end: int) -> Probe:
        probe = Probe(len(self.probes), key, start, end)
        self.probes.append(probe)
        return probe

    def plan(
        self,
        machine: str,
        key: str,
        *,
        bucket: Bucket,
        from_ms: int,
        to_ms: int,
        now_ms: int,
        tz: ZoneInfo,
        calendar: ShiftCalendar | None,
    ) -> MachinePlan:
        windows = buckets(bucket, from_ms, to_ms, tz, calendar)
        planned = merge(_occurrences(calendar, from_ms, to_ms, tz)) if calendar else []
        out = []
        for w in windows:
            end = min(w.end, now_ms)
            if end <= w.start:
                out.append(BucketPlan(w, None, ()))
                continue
            parts = clip(planned, w.start, end)
            out.append(
                BucketPlan(
                    w,
                    self._probe(key, w.start, end),
                    tuple(self._probe(key, a, b) for a, b in parts),
                )
            )
        return MachinePlan(machine, key, calendar, tuple(out))


def figures(
    plan: BucketPlan,
    sums: Mapping[int, Mapping[MachineState, int]],
    productive: Iterable[MachineState],
) -> Figures:
    """The figures of one bucket from the store's per-probe sums."""
    prod = frozenset(productive)
    f = Figures()
    if plan.elapsed is None:
        return f
    f.window_ms = plan.elapsed.end - plan.elapsed.start
    for state, ms in sums.get(plan.elapsed.id, {}).items():
        f.states_ms[state] += ms
    f.productive_ms = sum(ms for s, ms in f.states_ms.items() if s in prod)
    for p in plan.planned:
        f.planned_ms += p.end - p.start
        f.productive_planned_ms += sum(ms for s, ms in sums.get(p.id, {}).items() if s in prod)
    return f


def total(items: Sequence[Figures]) -> Figures:
    out = Figures()
    for f in items:
        out.add(f)
    return out


__all__ = [
    "DEFAULT_PRODUCTIVE",
    "DENOMINATORS",
    "BucketPlan",
    "Definition",
    "Figures",
    "MachinePlan",
    "Planner",
    "Probe",
    "figures",
    "total",
]
