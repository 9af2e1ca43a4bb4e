"""Stored records as metrics points, without I/O (see docs/operations.md, "Metrics mirror").

- A **telemetry** record gives one point per sample, at the sample's own time, in the
  measurement ``{prefix}telemetry``; its fields are the sample's numeric values (floats, so
  a value that is sometimes ``12000`` and sometimes ``12000.5`` never conflicts with
  InfluxDB's fixed field types; ``true``/``false`` become 1.0/0.0).
- A **state** record gives one point in ``{prefix}state`` at the record's time: field
  ``code`` (integer, the contract's :attr:`MachineState.code`: OFFLINE 0, ALARM 1,
  RUNNING 2, PAUSED 3, SETUP 4, IDLE 5) and, unless switched off, field ``name`` (the state
  as a string; VictoriaMetrics turns strings into a constant 0, so switch it off there).
- Events and meta records give no points (meta only updates the machine's ``kind`` tag).

Tags on every point: ``site``, ``agent``, ``machine`` and ``kind`` (the machine kind from its
meta record, left out until one arrived).

Field names are sanitized: every character other than ``A-Z a-z 0-9 _`` becomes ``_``; a
name that is then empty, starts with a digit or ``_``, or is ``time`` (reserved in
InfluxDB) gets the prefix ``v_``. A value that is not a finite number (a string, null, a
list, NaN, infinity, a number too large for a float) is skipped and counted, as is a second
value whose name sanitizes to one already used in the same sample; a sample without any
usable value gives no point (counted as ``empty_sample``). Nothing here raises on bad data.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from shopfloor.contract import MachineState, RecordKind
from shopfloor.hub.mirror.line_protocol import FieldValue, Point
from shopfloor.hub.store.base import StoredRecord

TELEMETRY: Final = "telemetry"
STATE: Final = "state"
_NOT_NAME: Final = re.compile(r"[^A-Za-z0-9_]")


@dataclass(frozen=True, slots=True)
class MachineLabels:
    """What the mirror knows about a machine beyond the record itself."""

    site: str
    kind: str | None = None


def field_name(raw: str) -> str:
    """The sanitized field name for a telemetry value name (module docstring)."""
    name = _NOT_NAME.sub("_", raw)
    if not name or name[0].isdigit() or name[0] == "_" or name == "time":
        name = "v_" + name
    return name


def numeric(value: Any) -> float | None:
    """``value`` as a finite float, or None when it is not a number that can be written."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int beyond float range
        return None
    return number if math.isfinite(number) else None


class PointMaker:
    """Turns records into points; counts what it had to skip, by reason."""

    def __init__(self, *, prefix: str = "", state_name_field: bool = True) -> None:
        self.telemetry_measurement = prefix + TELEMETRY
        self.state_measurement = prefix + STATE
        self.state_name_field = state_name_field
        #: Skipped values, samples and records by reason (never reset).
        self.skipped: Counter[str] = Counter()

    def points(self, record: StoredRecord, labels: MachineLabels) -> list[Point]:
        tags = {"site": labels.site, "agent": record.agent, "machine": record.machine}
        if labels.kind:
            tags["kind"] = labels.kind
        if record.kind == RecordKind.TELEMETRY:
            return self._telemetry(record, tags)
        if record.kind == RecordKind.STATE:
            return self._state(record, tags)
        return []

    def _telemetry(self, record: StoredRecord, tags: Mapping[str, str]) -> list[Point]:
        samples = record.body.get("samples")
        if not isinstance(samples, list):
            self.skipped["bad_record"] += 1
            return []
        out = []
        for sample in samples:
            values = sample.get("values") if isinstance(sample, dict) else None
            ts = sample.get("ts") if isinstance(sample, dict) else None
            if not isinstance(values, dict) or isinstance(ts, bool) or not isinstance(ts, int):
                self.skipped["bad_sample"] += 1
                continue
            fields: dict[str, FieldValue] = {}
            for raw_name, raw_value in values.items():
                value = numeric(raw_value)
                if value is None:
                    self.skipped["not_a_number"] += 1
                    continue
                name = field_name(str(raw_name))
                if name in fields:
                    self.skipped["name_collision"] += 1
                    continue
                fields[name] = value
            if not fields:
                self.skipped["empty_sample"] += 1
                continue
            out.append(Point(self.telemetry_measurement, tags, fields, ts))
        return out

    def _state(self, record: StoredRecord, tags: Mapping[str, str]) -> list[Point]:
        raw = record.body.get("state")
        if raw not in MachineState.__members__:
            self.skipped["bad_record"] += 1
            return []
        state = MachineState(str(raw))
        fields: dict[str, FieldValue] = {"code": state.code}
        if self.state_name_field:
            fields["name"] = str(state)
        return [Point(self.state_measurement, tags, fields, record.ts)]
