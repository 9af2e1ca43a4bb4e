"""The mirror's sans-IO parts: line protocol escaping (against a small parser written here,
with Hypothesis), records to points (names, state codes, skipped values), retry delays."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shopfloor.contract import MachineState
from shopfloor.hub.mirror.backoff import Backoff
from shopfloor.hub.mirror.line_protocol import (
    FieldValue,
    LineProtocolError,
    Point,
    clean,
    encode_lines,
    encode_point,
)
from shopfloor.hub.mirror.record_points import MachineLabels, PointMaker, field_name, numeric
from shopfloor.hub.store.base import StoredRecord

# --- a small line protocol parser, as InfluxDB and VictoriaMetrics read a line -------------


def _split(text: str, sep: str, *, quotes: bool) -> list[str]:
    """Split at every ``sep`` that is not backslash-escaped (nor inside a quoted string)."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    in_quotes = False
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            current.append(text[i : i + 2])
            i += 2
            continue
        if quotes and char == '"':
            in_quotes = not in_quotes
        if char == sep and not in_quotes:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    assert not in_quotes, f"unterminated string in {text!r}"
    parts.append("".join(current))
    return parts


def _unescape(text: str, escapable: str) -> str:
    out = []
    i = 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in escapable:
            out.append(text[i + 1])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _value(raw: str) -> FieldValue:
    if raw.startswith('"'):
        assert len(raw) >= 2, raw
        assert raw.endswith('"'), raw
        return _unescape(raw[1:-1], '"\\')
    if raw.endswith("i"):
        return int(raw[:-1])
    if raw in ("true", "false"):
        return raw == "true"
    return float(raw)


def parse_line(line: str) -> tuple[str, list[tuple[str, str]], list[tuple[str, FieldValue]], int]:
    assert "\n" not in line
    assert "\r" not in line
    # The measurement and tags end at the first unescaped space; quotes mean nothing there.
    head, rest = _split(line, " ", quotes=False)[0], line
    rest = line[len(head) + 1 :]
    fields_text, ts = _split(rest, " ", quotes=True)
    measurement, *tag_texts = _split(head, ",", quotes=False)
    tags = []
    for text in tag_texts:
        key, value = _split(text, "=", quotes=False)
        tags.append((_unescape(key, ",= \\"), _unescape(value, ",= \\")))
    fields = []
    for text in _split(fields_text, ",", quotes=True):
        key, value = _split(text, "=", quotes=True)
        fields.append((_unescape(key, ",= \\"), _value(value)))
    return _unescape(measurement, ", \\"), tags, fields, int(ts)


# --- escaping ------------------------------------------------------------------------------

NASTY = st.sampled_from([",", " ", "=", '"', "\\", "\n", "\r", "\t", "#", "é", "a"])
names = st.text(NASTY | st.characters(), min_size=1, max_size=12)
values: st.SearchStrategy[FieldValue] = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.booleans(),
    st.text(NASTY | st.characters(), max_size=12),
)


@given(
    measurement=names.filter(lambda m: not m.startswith("#")),
    tags=st.dictionaries(names, st.text(NASTY | st.characters(), max_size=12), max_size=4),
    fields=st.dictionaries(names.filter(lambda k: '"' not in k), values, min_size=1, max_size=4),
    ts=st.integers(min_value=0, max_value=2**53),
)
def test_every_point_parses_back_to_what_was_encoded(
    measurement: str, tags: dict[str, str], fields: dict[str, FieldValue], ts: int
) -> None:
    line = encode_point(Point(measurement, tags, fields, ts))
    got_measurement, got_tags, got_fields, got_ts = parse_line(line)
    assert got_measurement == clean(measurement)
    assert got_tags == [(clean(k), clean(tags[k])) for k in sorted(tags) if clean(tags[k])]
    expected_fields = [(clean(k), clean(v) if isinstance(v, str) else v) for k, v in fields.items()]
    assert got_fields == expected_fields
    assert got_ts == ts


@pytest.mark.parametrize(
    ("point", "line"),
    [
        (
            Point("cpu load", {"host": "a,b=c d"}, {"v": 1.5}, 7),
            "cpu\\ load,host=a\\,b\\=c\\ d v=1.5 7",
        ),
        (
            Point("m", {"k\\": "v\\"}, {"f": 'say "hi" \\o/'}, 1),
            'm,k\\\\=v\\\\ f="say \\"hi\\" \\\\o/" 1',
        ),
        (
            Point("m", {"line": "one\ntwo"}, {"s": "a\r\nb", "n": 3}, 1),
            'm,line=one\\ two s="a  b",n=3i 1',
        ),
        (Point("m", {"empty": ""}, {"ok": True, "x": 1e20}, 1), "m ok=true,x=1e+20 1"),
        (Point("a=b", {}, {"f=g": -0.0}, 2), "a=b f\\=g=-0.0 2"),
    ],
)
def test_known_lines(point: Point, line: str) -> None:
    assert encode_point(point) == line


@pytest.mark.parametrize(
    "point",
    [
        Point("m", {}, {"v": math.nan}, 1),
        Point("m", {}, {"v": math.inf}, 1),
        Point("m", {}, {"v": 2**63}, 1),
        Point("m", {}, {}, 1),
        Point("", {}, {"v": 1}, 1),
        Point("#comment", {}, {"v": 1}, 1),
        Point("m", {"": "x"}, {"v": 1}, 1),
        Point("m", {}, {"": 1}, 1),
        Point("m", {}, {'say"': 1}, 1),
    ],
)
def test_points_that_cannot_be_lines_are_refused(point: Point) -> None:
    with pytest.raises(LineProtocolError):
        encode_point(point)


def test_a_batch_is_one_line_per_point() -> None:
    body = encode_lines([Point("m", {}, {"v": i}, i) for i in range(3)])
    assert body == b"m v=0i 0\nm v=1i 1\nm v=2i 2\n"


# --- records to points ---------------------------------------------------------------------


def record(kind: str, body: dict[str, Any], *, ts: int = 1_000, cursor: int = 1) -> StoredRecord:
    return StoredRecord(cursor, "pi-1", "s1", cursor, "cnc-1", kind, ts, body)


LABELS = MachineLabels(site="shop1", kind="router")


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ("spindle", "spindle"),
        ("feed_mm_min", "feed_mm_min"),
        ("feed mm/min", "feed_mm_min"),
        ("temp.°C", "temp__C"),
        ("x,y=z", "x_y_z"),
        ("1st", "v_1st"),
        ("_hidden", "v__hidden"),
        ("time", "v_time"),
        ("", "v_"),
    ],
)
def test_field_names_are_sanitized(raw: str, name: str) -> None:
    assert field_name(raw) == name


@pytest.mark.parametrize(
    ("raw", "number"),
    [(3, 3.0), (2.5, 2.5), (True, 1.0), (False, 0.0), (-0.0, -0.0)],
)
def test_numbers_become_floats(raw: Any, number: float) -> None:
    assert numeric(raw) == number
    assert isinstance(numeric(raw), float)


@pytest.mark.parametrize("raw", ["12", None, [1], {"a": 1}, math.nan, -math.inf, 10**400])
def test_other_values_are_not_numbers(raw: Any) -> None:
    assert numeric(raw) is None


def test_telemetry_gives_one_point_per_sample_and_counts_what_it_skips() -> None:
    maker = PointMaker(prefix="sf_")
    body = {
        "samples": [
            {"ts": 900, "values": {"spindle": 12000, "feed mm/min": 1180.5, "mode": "auto"}},
            {"ts": 1000, "values": {"spindle": 12010, "x": math.nan, "door": True, "a-b": 1}},
            {"ts": 1100, "values": {"note": "only text", "gone": None}},
            {"ts": "late", "values": {"spindle": 1}},
            {"ts": 1200, "values": {"a.b": 1, "a-b": 2}},
        ]
    }
    points = maker.points(record("telemetry", body), LABELS)
    tags = {"site": "shop1", "agent": "pi-1", "machine": "cnc-1", "kind": "router"}
    assert points == [
        Point("sf_telemetry", tags, {"spindle": 12000.0, "feed_mm_min": 1180.5}, 900),
        Point("sf_telemetry", tags, {"spindle": 12010.0, "door": 1.0, "a_b": 1.0}, 1000),
        Point("sf_telemetry", tags, {"a_b": 1.0}, 1200),
    ]
    assert maker.skipped == {
        "not_a_number": 4,
        "empty_sample": 1,
        "bad_sample": 1,
        "name_collision": 1,
    }


STATE_CODES = {
    MachineState.OFFLINE: 0,
    MachineState.ALARM: 1,
    MachineState.RUNNING: 2,
    MachineState.PAUSED: 3,
    MachineState.SETUP: 4,
    MachineState.IDLE: 5,
}


@pytest.mark.parametrize("state", list(MachineState))
def test_state_records_give_the_documented_code(state: MachineState) -> None:
    maker = PointMaker()
    (point,) = maker.points(record("state", {"state": str(state)}, ts=5_000), LABELS)
    assert point.measurement == "state"
    assert point.fields == {"code": STATE_CODES[state], "name": str(state)}
    assert isinstance(point.fields["code"], int)
    assert point.ts_ms == 5_000
    line = encode_point(point)
    assert f"code={STATE_CODES[state]}i" in line


def test_the_state_name_field_can_be_left_out_and_unknown_kinds_leave_out_the_tag() -> None:
    maker = PointMaker(state_name_field=False)
    (point,) = maker.points(record("state", {"state": "IDLE"}), MachineLabels(site="shop1"))
    assert point.fields == {"code": 5}
    assert "kind" not in point.tags
    assert maker.points(record("state", {"state": "BROKEN"}), LABELS) == []
    assert maker.points(record("event", {"event": "message"}), LABELS) == []
    assert maker.points(record("meta", {"protocol": "grbl"}), LABELS) == []
    assert maker.points(record("telemetry", {"samples": "no"}), LABELS) == []
    assert maker.skipped == {"bad_record": 2}


# --- retry delays --------------------------------------------------------------------------


def test_backoff_doubles_up_to_the_bound_with_jitter_in_the_upper_half() -> None:
    backoff = Backoff(initial_s=1.0, max_s=30.0)
    ceilings = [1, 2, 4, 8, 16, 30, 30]
    for failures, ceiling in enumerate(ceilings, start=1):
        assert backoff.delay(failures, lambda: 0.0) == ceiling / 2
        assert backoff.delay(failures, lambda: 1.0) == ceiling
    assert backoff.delay(10_000, lambda: 1.0) == 30.0
