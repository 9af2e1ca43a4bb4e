"""Shift calendars and time buckets in the site's time zone.

Everything here is pure: times are epoch milliseconds (UTC) in and out, the time zone is a
:class:`zoneinfo.ZoneInfo`, and local wall-clock times are turned into instants with
zoneinfo, so a DST day has 23 or 25 hours and a shift across the change is an hour shorter
or longer. Nothing adds fixed UTC offsets.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Final
from zoneinfo import ZoneInfo

HOUR_MS: Final = 3_600_000
DAY_NAMES: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class Bucket(enum.StrEnum):
    NONE = "none"  # one bucket: the whole window
    HOUR = "hour"
    DAY = "day"
    SHIFT = "shift"


@dataclass(frozen=True, slots=True)
class WeeklyShift:
    """A shift on some weekdays, ``start``..``end`` local time; ``end <= start`` (or 24:00)
    means it ends on the next day."""

    name: str
    days: frozenset[int]  # 0 = Monday
    start: time
    end: time
    ends_next_day: bool = False


@dataclass(frozen=True, slots=True)
class ExtraShift:
    """Planned time on one date beyond the weekly shifts (overtime, a Saturday shift)."""

    day: date
    start: time
    end: time
    ends_next_day: bool = False
    name: str = "overtime"


@dataclass(frozen=True, slots=True)
class ShiftCalendar:
    name: str
    shifts: tuple[WeeklyShift, ...] = ()
    #: Dates with no planned time: weekly shifts that start on them are dropped.
    holidays: frozenset[date] = frozenset()
    overtime: tuple[ExtraShift, ...] = ()


@dataclass(frozen=True, slots=True)
class Window:
    """A half-open span [start, end) of epoch ms with a label."""

    start: int
    end: int
    label: str

    @property
    def duration_ms(self) -> int:
        return max(0, self.end - self.start)


def to_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def local(ms: int, tz: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).astimezone(tz)


def _at(day: date, clock: time, tz: ZoneInfo, *, next_day: bool = False) -> int:
    if next_day:
        day += timedelta(days=1)
    return to_ms(datetime.combine(day, clock, tzinfo=tz))


def _dates(from_ms: int, to_ms_: int, tz: ZoneInfo) -> Iterable[date]:
    """Every local date that a shift starting on it could overlap [from_ms, to_ms)."""
    day = local(from_ms, tz).date() - timedelta(days=1)
    last = local(max(from_ms, to_ms_ - 1), tz).date()
    while day <= last:
        yield day
        day += timedelta(days=1)


def shift_occurrences(
    calendar: ShiftCalendar, from_ms: int, to_ms_: int, tz: ZoneInfo
) -> list[Window]:
    """Every planned shift (weekly minus holidays, plus overtime) that overlaps the span,
    unclipped, sorted by start. Labels are ``YYYY-MM-DD name`` of the local start date."""
    out: list[Window] = []
    for day in _dates(from_ms, to_ms_, tz):
        if day not in calendar.holidays:
            for s in calendar.shifts:
                if day.weekday() in s.days:
                    start = _at(day, s.start, tz)
                    end = _at(day, s.end, tz, next_day=s.ends_next_day)
                    out.append(Window(start, end, f"{day.isoformat()} {s.name}"))
        for extra in calendar.overtime:
            if extra.day == day:
                start = _at(day, extra.start, tz)
                end = _at(day, extra.end, tz, next_day=extra.ends_next_day)
                out.append(Window(start, end, f"{day.isoformat()} {extra.name}"))
    return sorted(
        (w for w in out if w.start < to_ms_ and w.end > from_ms and w.end > w.start),
        key=lambda w: (w.start, w.end, w.label),
    )


def merge(windows: Iterable[Window]) -> list[tuple[int, int]]:
    """The union of the windows as sorted, disjoint [start, end) spans."""
    spans: list[tuple[int, int]] = []
    for w in sorted(windows, key=lambda w: (w.start, w.end)):
        if w.end <= w.start:
            continue
        if spans and w.start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], w.end))
        else:
            spans.append((w.start, w.end))
    return spans


def clip(spans: Sequence[tuple[int, int]], start: int, end: int) -> list[tuple[int, int]]:
    """The parts of ``spans`` inside [start, end)."""
    out = []
    for a, b in spans:
        lo, hi = max(a, start), min(b, end)
        if hi > lo:
            out.append((lo, hi))
    return out


def start_of_day(ms: int, tz: ZoneInfo) -> int:
    return to_ms(datetime.combine(local(ms, tz).date(), time(0), tzinfo=tz))


def buckets(
    kind: Bucket,
    from_ms: int,
    to_ms_: int,
    tz: ZoneInfo,
    calendar: ShiftCalendar | None = None,
) -> list[Window]:
    """The buckets that split [from_ms, to_ms), clipped to it.

    ``hour`` and ``day`` follow the local clock (a DST day is 23 or 25 hours long);
    ``shift`` is one bucket per planned shift of ``calendar`` (time between shifts is in no
    bucket); ``none`` is the whole window."""
    if to_ms_ <= from_ms:
        return []
    if kind is Bucket.NONE:
        return [Window(from_ms, to_ms_, "window")]
    if kind is Bucket.SHIFT:
        if calendar is None:
            raise ValueError("bucket=shift needs a shift calendar")
        return [
            Window(max(w.start, from_ms), min(w.end, to_ms_), w.label)
            for w in shift_occurrences(calendar, from_ms, to_ms_, tz)
        ]
    out: list[Window] = []
    if kind is Bucket.DAY:
        day = local(from_ms, tz).date()
        while True:
            start = to_ms(datetime.combine(day, time(0), tzinfo=tz))
            if start >= to_ms_:
                break
            end = to_ms(datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz))
            out.append(Window(max(start, from_ms), min(end, to_ms_), day.isoformat()))
            day += timedelta(days=1)
        return out
    # Hours: instants where the local clock shows a full hour. Offsets change by whole
    # hours in every zone a shop is likely in, so stepping UTC hours keeps that true.
    first = local(from_ms, tz).replace(minute=0, second=0, microsecond=0)
    start = to_ms(first)
    while start < to_ms_:
        end = start + HOUR_MS
        label = local(start, tz).strftime("%Y-%m-%dT%H:%M%z")
        out.append(Window(max(start, from_ms), min(end, to_ms_), label))
        start = end
    return out


__all__ = [
    "DAY_NAMES",
    "Bucket",
    "ExtraShift",
    "ShiftCalendar",
    "WeeklyShift",
    "Window",
    "buckets",
    "clip",
    "local",
    "merge",
    "shift_occurrences",
    "start_of_day",
    "to_ms",
]
