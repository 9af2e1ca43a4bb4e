"""HaasProtocol: every reply form of the fact sheet, whatever the chunking and framing;
garbage never escapes."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shopfloor.agent.errors import ProtocolError
from shopfloor.agent.protocols.haas import (
    CycleTime,
    Garbage,
    HaasEvent,
    HaasProtocol,
    MacroValue,
    Mode,
    Model,
    PartsCounter,
    ProgramStatus,
    Rejected,
    SerialNumber,
    SoftwareVersion,
    TimeCounter,
    ToolChanges,
    ToolInUse,
    format_duration,
    frame_reply,
)

EVENT_TYPES = (
    SerialNumber,
    SoftwareVersion,
    Model,
    Mode,
    ToolChanges,
    ToolInUse,
    TimeCounter,
    CycleTime,
    PartsCounter,
    ProgramStatus,
    MacroValue,
    Rejected,
    Garbage,
)

# (reply payload, expected event). Values are the made-up ones of serial-protocols.md §3.2.
PAYLOADS: list[tuple[str, HaasEvent]] = [
    ("SERIAL NUMBER, 1098765", SerialNumber("1098765")),
    ("SOFTWARE VERSION, 100.21.000.1100", SoftwareVersion("100.21.000.1100")),
    ("MODEL, VF-2", Model("VF-2")),
    ("MODE, (MEM)", Mode("MEM")),
    ("MODE, (MDI)", Mode("MDI")),
    ("MODE, (JOG)", Mode("JOG")),
    ("MODE, (ZERO RET)", Mode("ZERO RET")),
    ("MODE, (EDIT)", Mode("EDIT")),
    ("TOOL CHANGES, 4821", ToolChanges(4821)),
    ("USING TOOL, 7", ToolInUse(7)),
    ("P.O. TIME, 01234:05:06", TimeCounter("power_on", 1234 * 3600 + 5 * 60 + 6)),
    ("C.S. TIME, 00456:07:08", TimeCounter("motion", 456 * 3600 + 7 * 60 + 8)),
    ("C.S.TIME, 00456:07:08", TimeCounter("motion", 456 * 3600 + 7 * 60 + 8)),
    ("LAST CYCLE, 00000:04:31", CycleTime("last", 271)),
    ("PREV CYCLE, 00000:04:29", CycleTime("previous", 269)),
    ("M30 #1, 152", PartsCounter(1, 152)),
    ("M30 #2, 3310", PartsCounter(2, 3310)),
    ("PROGRAM, O01234, IDLE, PARTS, 152", ProgramStatus("IDLE", "O01234", 152)),
    ("PROGRAM, O01234, FEED HOLD, PARTS, 152", ProgramStatus("FEED HOLD", "O01234", 152)),
    ("PROGRAM, O01234, ALARM ON, PARTS, 152", ProgramStatus("ALARM ON", "O01234", 152)),
    ("PROGRAM, MDI, IDLE, PARTS, 152", ProgramStatus("IDLE", "MDI", 152)),
    ("STATUS, BUSY", ProgramStatus("BUSY")),
    ("STATUS BUSY", ProgramStatus("BUSY")),
    ("MACRO, 12.3456", MacroValue(12.3456)),
    ("MACRO, -3", MacroValue(-3.0)),
    ("UNKNOWN", Rejected("UNKNOWN")),
    ("INVALID COMMAND", Rejected("INVALID COMMAND")),
]

FRAMINGS: dict[str, Callable[[str], bytes]] = {
    # RS-232 codecs: STX payload ETB CR LF, then the > prompt
    "stx-etb-prompt": frame_reply,
    "stx-etb": lambda p: frame_reply(p, prompt=False),
    # Ethernet adapters: >payload CR LF
    "prompt-line": lambda p: frame_reply(p, stx_etb=False),
    "bare-line": lambda p: frame_reply(p, stx_etb=False, prompt=False),
    "lf-only": lambda p: p.encode() + b"\n",
}

CASES: list[tuple[bytes, list[HaasEvent]]] = [
    (frame(payload), [event]) for payload, event in PAYLOADS for frame in FRAMINGS.values()
]
CASE_IDS = [f"{framing}:{payload}" for payload, _ in PAYLOADS for framing in FRAMINGS]
CASES.append((b"".join(c[0] for c in CASES), [e for c in CASES for e in c[1]]))
CASE_IDS.append("everything-concatenated")


def feed_all(chunks: list[bytes], parser: HaasProtocol | None = None) -> list[HaasEvent]:
    parser = parser or HaasProtocol()
    out: list[HaasEvent] = []
    for chunk in chunks:
        out.extend(parser.feed(chunk))
    return out


@pytest.mark.parametrize(("wire", "expected"), CASES, ids=CASE_IDS)
def test_whole(wire: bytes, expected: list[HaasEvent]) -> None:
    assert feed_all([wire]) == expected


@pytest.mark.parametrize(("wire", "expected"), CASES, ids=CASE_IDS)
def test_one_byte_at_a_time(wire: bytes, expected: list[HaasEvent]) -> None:
    assert feed_all([wire[i : i + 1] for i in range(len(wire))]) == expected


@given(data=st.data())
@settings(max_examples=300, deadline=None)
def test_any_split(data: st.DataObject) -> None:
    wire, expected = data.draw(st.sampled_from(CASES))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=12)))
    chunks = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    assert feed_all(chunks) == expected


def test_fact_sheet_byte_stream() -> None:
    """§3.3's realistic stream: the prompt of one reply sits in front of the next STX."""
    wire = b"\x02SERIAL NUMBER, 1098765\x17\r\n>\x02PROGRAM, O01234, IDLE, PARTS, 152\x17\r\n>"
    assert feed_all([wire]) == [
        SerialNumber("1098765"),
        ProgramStatus("IDLE", "O01234", 152),
    ]


@pytest.mark.parametrize(
    "junk",
    [
        b"PROGRAM, O1, IDLE, PARTS\r\n",  # PARTS without a value
        b"PROGRAM, O1, IDLE, PARTS, many\r\n",
        b"P.O. TIME, 12:99:00\r\n",
        b"MACRO, nan\r\n",
        b"MACRO, 1e999\r\n",
        b"HELLO, WORLD\r\n",
        b"just words\r\n",
        b"\x02SERIAL\xffNUMBER, 1\x17\r\n",
        b"MODE, ()\r\n",
        b"STATUS,\r\n",
    ],
)
def test_bad_replies_are_garbage_then_resync(junk: bytes) -> None:
    events = feed_all([junk + frame_reply("STATUS, BUSY")])
    assert isinstance(events[0], Garbage)
    assert isinstance(events[0].error, ProtocolError)
    assert events[1:] == [ProgramStatus("BUSY")]


def test_bytes_before_stx_are_reported_once() -> None:
    events = feed_all([b">>  noise" + frame_reply("MODEL, VF-2")])
    assert events == [Garbage(b">>  noise", "bytes before STX"), Model("VF-2")]
    # a bare prompt before STX is not garbage
    assert feed_all([b"> " + frame_reply("MODEL, VF-2")]) == [Model("VF-2")]


@given(size=st.integers(257, 3000), byte=st.sampled_from([b"x", b">", b"\xff", b"\x00"]))
@settings(max_examples=40, deadline=None)
def test_long_reply_is_capped_then_resyncs(size: int, byte: bytes) -> None:
    parser = HaasProtocol()
    events = parser.feed(byte * size)
    assert parser.buffered <= parser.max_reply_bytes
    events += parser.feed(b"more" * 100 + b"\r\n" + frame_reply("USING TOOL, 3"))
    garbage = [e for e in events if isinstance(e, Garbage)]
    if byte != b">":  # a run of prompts is skipped when the frame ends
        assert len(garbage) == 1
    assert events[-1] == ToolInUse(3)


ANY_BYTES = st.binary(max_size=400) | st.sampled_from([c[0] for c in CASES[:-1]])


@given(chunks=st.lists(ANY_BYTES | st.binary(min_size=200, max_size=2000), max_size=8))
@settings(max_examples=300, deadline=None)
def test_garbage_in_only_our_events_out(chunks: list[bytes]) -> None:
    parser = HaasProtocol(max_reply_bytes=64)
    for chunk in chunks:
        for event in parser.feed(chunk):
            assert isinstance(event, EVENT_TYPES)
        assert parser.buffered <= 64
    # and it still understands a clean reply afterwards
    assert parser.feed(b"\r\n" + frame_reply("MODEL, VF-2"))[-1:] == [Model("VF-2")]


def test_query_encoding() -> None:
    assert HaasProtocol().query("Q100") == b"?Q100\r\n"
    assert HaasProtocol().query("?q500") == b"?Q500\r\n"
    assert HaasProtocol().query("Q600 3901") == b"?Q600 3901\r\n"
    assert HaasProtocol(prefix="", line_ending="lf").query("Q500") == b"Q500\n"
    assert HaasProtocol(line_ending="cr").query("Q104") == b"?Q104\r"


@pytest.mark.parametrize("bad", ["E3901 5", "Q5", "Q500\r\nQ100", "Q600", "Q600 x", "G0 X1", ""])
def test_query_refuses_anything_but_a_query(bad: str) -> None:
    with pytest.raises(ValueError, match="not a Haas Q query"):
        HaasProtocol().query(bad)


def test_constructor_checks() -> None:
    with pytest.raises(ValueError, match="at least"):
        HaasProtocol(max_reply_bytes=4)
    with pytest.raises(ValueError, match="line_ending"):
        HaasProtocol(line_ending="crcr")  # type: ignore[arg-type]


def test_format_duration_round_trips() -> None:
    assert format_duration(1234 * 3600 + 5 * 60 + 6) == "01234:05:06"
    parsed = feed_all([frame_reply(f"LAST CYCLE, {format_duration(271)}")])
    assert parsed == [CycleTime("last", 271)]
