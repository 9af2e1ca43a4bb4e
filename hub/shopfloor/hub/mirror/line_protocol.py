"""InfluxDB line protocol, encoded without I/O: one :class:`Point` in, one line out.

``measurement,tag=value,tag=value field=value,field=value timestamp``

Escaping (InfluxDB 2.x line protocol reference, and what VictoriaMetrics' parser undoes):

- measurement: ``,`` and space are escaped with a backslash;
- tag keys, tag values and field keys: ``,``, ``=`` and space are escaped;
- in all of these a backslash is written as ``\\\\``, so a name ending in a backslash cannot
  swallow the separator after it;
- string field values are double-quoted, with ``"`` and ``\\`` escaped;
- a field key cannot hold a double quote: parsers take it for the start of a string value
  (VictoriaMetrics does), and no escape is read back the same everywhere, so it is refused;
- there is no escape for a line break: line breaks, tabs and every other control character
  are replaced by a space everywhere (VictoriaMetrics splits the body at line breaks before it
  parses, so one inside a quoted string would cut the point in two, and both halves would be
  dropped without an error).

Values: floats as Python's shortest round-trip repr (``1e+20`` is valid), never NaN or
infinity (the encoder refuses them); integers with an ``i`` suffix (signed 64-bit);
booleans as ``true``/``false``. A tag with an empty value is left out (InfluxDB refuses it,
VictoriaMetrics drops it); a point needs at least one field. Tags are written sorted by key,
which InfluxDB recommends.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

FieldValue = float | int | bool | str

_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_INT64: Final = (-(2**63), 2**63 - 1)


class LineProtocolError(ValueError):
    """A point that cannot be written as a line (no fields, NaN, an empty name ...)."""


@dataclass(frozen=True, slots=True)
class Point:
    measurement: str
    tags: Mapping[str, str]
    fields: Mapping[str, FieldValue]
    ts_ms: int  # epoch milliseconds; written with precision=ms


def clean(text: str) -> str:
    """``text`` with every control character (line breaks, tabs ...) replaced by a space."""
    return _CONTROL.sub(" ", text)


def escape_measurement(name: str) -> str:
    return clean(name).replace("\\", "\\\\").replace(",", "\\,").replace(" ", "\\ ")


def escape_key(name: str) -> str:
    """A tag key, tag value or field key."""
    return (
        clean(name)
        .replace("\\", "\\\\")
        .replace(",", "\\,")
        .replace("=", "\\=")
        .replace(" ", "\\ ")
    )


def escape_string(value: str) -> str:
    """A string field value, quotes included."""
    return '"' + clean(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_value(value: FieldValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            raise LineProtocolError(f"integer {value} does not fit in 64 bits")
        return f"{value}i"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise LineProtocolError(f"{value} cannot be written (only finite numbers can)")
        return repr(value)
    if isinstance(value, str):
        return escape_string(value)
    raise LineProtocolError(f"unsupported field value {value!r}")


def encode_point(point: Point) -> str:
    """One line, without the line break."""
    if not point.measurement or point.measurement.startswith("#"):
        raise LineProtocolError(f"bad measurement name {point.measurement!r}")
    if not point.fields:
        raise LineProtocolError(f"point {point.measurement!r} has no fields")
    head = [escape_measurement(point.measurement)]
    for key in sorted(point.tags):
        tag = clean(point.tags[key])
        if not key:
            raise LineProtocolError("empty tag key")
        if tag:
            head.append(f"{escape_key(key)}={escape_key(tag)}")
    fields = []
    for key, value in point.fields.items():
        if not key or '"' in key:
            raise LineProtocolError(f"bad field key {key!r} (empty, or with a double quote)")
        fields.append(f"{escape_key(key)}={format_value(value)}")
    return f"{','.join(head)} {','.join(fields)} {int(point.ts_ms)}"


def encode_lines(points: Iterable[Point]) -> bytes:
    """The request body for a batch of points: one line each, UTF-8."""
    return "".join(encode_point(p) + "\n" for p in points).encode("utf-8")
