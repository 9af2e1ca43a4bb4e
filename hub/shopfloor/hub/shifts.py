"""The ``[utilization]``, ``[groups]`` and ``[calendars.*]`` sections of the hub config.

```toml
[utilization]
timezone = "Europe/Berlin"        # the site's time zone for days and shifts (default UTC)
productive_states = ["RUNNING"]   # which states count as productive (default RUNNING)
calendar = "weekdays"             # calendar for machines no calendar names (optional)

[groups]                          # machine groups, by machine id as the API shows it
routers = ["router-1", "router-2"]
kilns = ["kiln-1"]

[calendars.weekdays]
groups = ["routers"]              # these groups' machines follow this calendar
machines = ["laser-1"]            # and these machines
holidays = ["2026-12-24", "2026-12-25"]   # no planned time on these dates

[[calendars.weekdays.shifts]]
name = "early"
days = ["mon-fri"]                # or ["mon", "tue", ...]
start = "07:00"
end = "15:30"                     # an end at or before the start ends the next day

[[calendars.weekdays.overtime]]   # extra planned time on one date
date = "2026-12-19"
start = "08:00"
end = "12:00"
```

A machine's calendar: the calendar that names it, else the one naming a group it is in,
else ``utilization.calendar``, else none (then only the window denominator applies). A
machine or group named by two calendars is an error.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, time
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from shopfloor.contract import MachineState
from shopfloor.hub.domain.shifts import DAY_NAMES, ExtraShift, ShiftCalendar, WeeklyShift
from shopfloor.hub.domain.utilization import DEFAULT_PRODUCTIVE
from shopfloor.hub.errors import ConfigError

_UTIL_KEYS: Final = ("timezone", "productive_states", "calendar")
_CAL_KEYS: Final = ("shifts", "holidays", "overtime", "machines", "groups")
_SHIFT_KEYS: Final = ("name", "days", "start", "end")
_OVERTIME_KEYS: Final = ("date", "start", "end", "name")
_CLOCK: Final = re.compile(r"(\d{1,2}):(\d{2})")


@dataclass(frozen=True, slots=True)
class UtilizationSection:
    timezone: str = "UTC"
    productive_states: frozenset[MachineState] = DEFAULT_PRODUCTIVE
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    calendars: Mapping[str, ShiftCalendar] = field(default_factory=dict)
    #: machine id -> calendar name, group -> calendar name; the default calendar name.
    machine_calendars: Mapping[str, str] = field(default_factory=dict)
    group_calendars: Mapping[str, str] = field(default_factory=dict)
    default_calendar: str | None = None

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def calendar_for(self, machine: str) -> ShiftCalendar | None:
        name = self.machine_calendars.get(machine)
        if name is None:
            for group, members in sorted(self.groups.items()):
                if machine in members and group in self.group_calendars:
                    name = self.group_calendars[group]
                    break
        if name is None:
            name = self.default_calendar
        return self.calendars.get(name) if name is not None else None


class _T:
    """One table of the file; errors name the file, the key and the fix."""

    def __init__(self, path: str, prefix: str, table: object, known: tuple[str, ...] | None):
        self.path, self.prefix = path, prefix
        if not isinstance(table, dict):
            raise ConfigError("must be a table", path=path, key=prefix, fix=f"write [{prefix}]")
        self.table: dict[str, Any] = table
        for key in table if known is not None else ():
            if known is not None and key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                fix = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known)}"
                raise ConfigError("unknown key", path=path, key=self.name(key), fix=fix)

    def name(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def error(self, key: str, problem: str, fix: str) -> ConfigError:
        return ConfigError(problem, path=self.path, key=self.name(key), fix=fix)

    def strings(self, key: str, example: str) -> list[str]:
        value = self.table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.error(
                key, f"must be a list of strings, got {value!r}", f"e.g. {key} = {example}"
            )
        return list(value)

    def clock(self, key: str, *, allow_24: bool) -> tuple[time, bool]:
        """A local time "HH:MM"; ``24:00`` (as an end) is midnight of the next day."""
        value = self.table.get(key)
        m = _CLOCK.fullmatch(value) if isinstance(value, str) else None
        hour, minute = (int(m[1]), int(m[2])) if m else (-1, -1)
        if allow_24 and (hour, minute) == (24, 0):
            return time(0), True
        if not (0 <= hour <= 23 and 0 <= minute <= 59):
            raise self.error(
                key, f"must be a local time HH:MM, got {value!r}", f'e.g. {key} = "07:00"'
            )
        return time(hour, minute), False

    def day(self, key: str, value: object) -> date:
        if isinstance(value, date):
            return value
        try:
            return date.fromisoformat(str(value))
        except ValueError:
            raise self.error(key, f"{value!r} is not a date", 'write it as "2026-12-24"') from None


def _days(t: _T, raw: object) -> frozenset[int]:
    if not isinstance(raw, list) or not raw:
        raise t.error("days", f"must be a non-empty list, got {raw!r}", 'e.g. days = ["mon-fri"]')
    out: set[int] = set()
    for item in raw:
        text = str(item).strip().lower()[:16]
        first, _, last = text.partition("-")
        names = [first, last] if last else [first]
        if not all(n in DAY_NAMES for n in names):
            raise t.error(
                "days",
                f"unknown day {item!r}",
                f"use {', '.join(DAY_NAMES)} or a range like mon-fri",
            )
        a, b = DAY_NAMES.index(names[0]), DAY_NAMES.index(names[-1])
        out.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(b + 1)])
    return frozenset(out)


def _span(t: _T) -> tuple[time, time, bool]:
    start, _ = t.clock("start", allow_24=False)
    end, is_24 = t.clock("end", allow_24=True)
    if end == start and not is_24:
        raise t.error("end", "equals start (a shift of no length)", "set the end after the start")
    return start, end, is_24 or end <= start


def _calendar(path: str, name: str, raw: object) -> tuple[ShiftCalendar, list[str], list[str]]:
    c = _T(path, f"calendars.{name}", raw, _CAL_KEYS)
    shifts = []
    raw_shifts = c.table.get("shifts", [])
    if not isinstance(raw_shifts, list):
        raise c.error("shifts", "must be an array of tables", f"write [[calendars.{name}.shifts]]")
    for i, item in enumerate(raw_shifts):
        s = _T(path, f"calendars.{name}.shifts[{i}]", item, _SHIFT_KEYS)
        shift_name = s.table.get("name", f"shift{i + 1}")
        if not isinstance(shift_name, str) or not shift_name:
            raise s.error(
                "name", f"must be a non-empty string, got {shift_name!r}", 'e.g. name = "early"'
            )
        start, end, next_day = _span(s)
        shifts.append(WeeklyShift(shift_name, _days(s, s.table.get("days")), start, end, next_day))
    holidays = frozenset(c.day("holidays", v) for v in _list(c, "holidays", '["2026-12-24"]'))
    overtime = []
    for i, item in enumerate(_list(c, "overtime", "[[...overtime]] tables")):
        o = _T(path, f"calendars.{name}.overtime[{i}]", item, _OVERTIME_KEYS)
        start, end, next_day = _span(o)
        label = o.table.get("name", "overtime")
        if not isinstance(label, str) or not label:
            raise o.error(
                "name", f"must be a non-empty string, got {label!r}", 'e.g. name = "overtime"'
            )
        overtime.append(ExtraShift(o.day("date", o.table.get("date")), start, end, next_day, label))
    if not shifts and not overtime:
        raise c.error(
            "shifts",
            "the calendar plans no time at all",
            f"add a [[calendars.{name}.shifts]] table",
        )
    calendar = ShiftCalendar(name, tuple(shifts), holidays, tuple(overtime))
    return calendar, c.strings("machines", '["router-1"]'), c.strings("groups", '["routers"]')


def _list(t: _T, key: str, example: str) -> list[Any]:
    value = t.table.get(key, [])
    if not isinstance(value, list):
        raise t.error(key, f"must be a list, got {value!r}", f"e.g. {key} = {example}")
    return value


def parse_utilization(top: Any) -> UtilizationSection:
    """Validate the three sections from the config file's top table (a ``config._Reader``)."""
    path: str = top.path
    u = _T(path, "utilization", top.table.get("utilization", {}), _UTIL_KEYS)
    tz_name = u.table.get("timezone", "UTC")
    try:
        ZoneInfo(str(tz_name))
    except (ValueError, ZoneInfoNotFoundError):
        raise u.error(
            "timezone", f"unknown time zone {tz_name!r}", 'use an IANA name, e.g. "Europe/Berlin"'
        ) from None
    productive = set()
    valid = [str(s) for s in MachineState if s is not MachineState.OFFLINE]
    for value in u.strings("productive_states", '["RUNNING"]') or ["RUNNING"]:
        if value.upper() not in valid:
            why = (
                "OFFLINE is time without data; it can never count as productive"
                if value.upper() == "OFFLINE"
                else f"unknown state {value!r}"
            )
            raise u.error("productive_states", why, f"use some of {', '.join(valid)}")
        productive.add(MachineState(value.upper()))

    g = _T(path, "groups", top.table.get("groups", {}), None)
    groups: dict[str, tuple[str, ...]] = {}
    for name in g.table:
        members = g.strings(name, '["router-1", "router-2"]')
        if not members:
            raise g.error(name, "is empty", "list the machine ids of the group")
        groups[name] = tuple(dict.fromkeys(members))

    cals = _T(path, "calendars", top.table.get("calendars", {}), None)
    calendars: dict[str, ShiftCalendar] = {}
    by_machine: dict[str, str] = {}
    by_group: dict[str, str] = {}
    for name, raw in cals.table.items():
        calendar, machines, cal_groups = _calendar(path, name, raw)
        calendars[name] = calendar
        for key, items, seen in (
            ("machines", machines, by_machine),
            ("groups", cal_groups, by_group),
        ):
            for item in items:
                if key == "groups" and item not in groups:
                    raise ConfigError(
                        f"unknown group {item!r}",
                        path=path,
                        key=f"calendars.{name}.groups",
                        fix="define it under [groups] (known: "
                        f"{', '.join(sorted(groups)) or 'none'})",
                    )
                if item in seen:
                    raise ConfigError(
                        f"{item!r} is already on calendar {seen[item]!r}",
                        path=path,
                        key=f"calendars.{name}.{key}",
                        fix="name each machine or group in one calendar only",
                    )
                seen[item] = name
    default = u.table.get("calendar")
    if default is not None and default not in calendars:
        raise u.error(
            "calendar",
            f"no calendar named {default!r}",
            f"define [calendars.{default}] or use one of: {', '.join(sorted(calendars)) or 'none'}",
        )
    return UtilizationSection(
        timezone=str(tz_name),
        productive_states=frozenset(productive),
        groups=groups,
        calendars=calendars,
        machine_calendars=by_machine,
        group_calendars=by_group,
        default_calendar=default,
    )


__all__ = ["UtilizationSection", "parse_utilization"]
