"""GrblProtocol: every documented line form, whatever the chunking; garbage never escapes."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shopfloor.agent.errors import ProtocolError
from shopfloor.agent.protocols.grbl import (
    AlarmPush,
    Banner,
    BuildInfo,
    ErrorReply,
    Feedback,
    Garbage,
    GrblEvent,
    GrblProtocol,
    Message,
    Ok,
    ProtocolErrorEvent,
    RealtimeCommand,
    SettingLine,
    StartupEcho,
    StatusCache,
    StatusReport,
)

EVENT_TYPES = (
    StatusReport,
    Ok,
    ErrorReply,
    AlarmPush,
    Message,
    Feedback,
    BuildInfo,
    Banner,
    StartupEcho,
    SettingLine,
    Garbage,
)

# (wire bytes, expected events). Values are the made-up ones of serial-protocols.md.
CASES: list[tuple[bytes, list[GrblEvent]]] = [
    # §1.3 example reports, gnea 1.1h
    (
        b"<Idle|MPos:12.500,40.000,-3.000|FS:0,0|WCO:2.500,10.000,-23.000>\r\n",
        [
            StatusReport(
                "Idle",
                mpos=(12.5, 40.0, -3.0),
                feed=0.0,
                spindle=0.0,
                wco=(2.5, 10.0, -23.0),
            )
        ],
    ),
    (
        b"<Run|MPos:30.125,44.870,-4.500|FS:1200,8000|Ov:100,100,100|A:SF>\r\n",
        [
            StatusReport(
                "Run",
                mpos=(30.125, 44.87, -4.5),
                feed=1200.0,
                spindle=8000.0,
                overrides=(100, 100, 100),
                accessories="SF",
            )
        ],
    ),
    (
        b"<Run|MPos:30.480,45.002,-4.500|FS:1200,8000>\r\n",
        [StatusReport("Run", mpos=(30.48, 45.002, -4.5), feed=1200.0, spindle=8000.0)],
    ),
    (
        b"<Hold:1|MPos:31.000,45.100,-4.500|FS:230,8000>\r\n",
        [StatusReport("Hold", "1", mpos=(31.0, 45.1, -4.5), feed=230.0, spindle=8000.0)],
    ),
    (
        b"<Hold:0|MPos:31.020,45.110,-4.500|FS:0,8000|Pn:H>\r\n",
        [StatusReport("Hold", "0", mpos=(31.02, 45.11, -4.5), feed=0.0, spindle=8000.0, pins="H")],
    ),
    (
        b"<Alarm|MPos:0.000,0.000,0.000|FS:0,0|Pn:X>\r\n",
        [StatusReport("Alarm", mpos=(0.0, 0.0, 0.0), feed=0.0, spindle=0.0, pins="X")],
    ),
    (
        b"<Door:1|MPos:31.020,45.110,5.000|FS:0,0|Pn:D>\r\n",
        [StatusReport("Door", "1", mpos=(31.02, 45.11, 5.0), feed=0.0, spindle=0.0, pins="D")],
    ),
    (
        b"<Jog|WPos:5.000,0.000,0.000|Bf:14,127|FS:500,0>\r\n",
        [StatusReport("Jog", wpos=(5.0, 0.0, 0.0), buffer=(14, 127), feed=500.0, spindle=0.0)],
    ),
    # F: only (no variable spindle), Ln:, inch decimals, states of §6
    (
        b"<Check|WPos:1.0000,2.0000,3.0000|Ln:120|F:40>\r\n",
        [StatusReport("Check", wpos=(1.0, 2.0, 3.0), line_number=120, feed=40.0)],
    ),
    (
        b"<Sleep|MPos:0.000,0.000,0.000|FS:0,0>\n",
        [StatusReport("Sleep", mpos=(0.0, 0.0, 0.0), feed=0.0, spindle=0.0)],
    ),
    (
        b"<Home|MPos:-1.000,0.000,0.000|Bf:15,128|FS:559,0>\r",
        [StatusReport("Home", mpos=(-1.0, 0.0, 0.0), buffer=(15, 128), feed=559.0, spindle=0.0)],
    ),
    # grblHAL forms
    (
        b"<Run:1|MPos:1.000,2.000,3.000,4.000|Bf:35,1023|FS:1000,12000,11987|DTG:4.0,0,0|WCS:G55>\r\n",
        [
            StatusReport(
                "Run",
                "1",
                mpos=(1.0, 2.0, 3.0, 4.0),
                buffer=(35, 1023),
                feed=1000.0,
                spindle=12000.0,
                extra={"DTG": "4.0,0,0", "WCS": "G55"},
            )
        ],
    ),
    (
        b"<Alarm:11|MPos:0.000,0.000,0.000|Bf:35,1023|FS:0,0|Pn:XYZPE|H:0,7|FW:grblHAL>\r\n",
        [
            StatusReport(
                "Alarm",
                "11",
                mpos=(0.0, 0.0, 0.0),
                buffer=(35, 1023),
                feed=0.0,
                spindle=0.0,
                pins="XYZPE",
                extra={"H": "0,7", "FW": "grblHAL"},
            )
        ],
    ),
    (
        b"<Tool|MPos:10.000,10.000,50.000|FS:0,0|T:3|AR|MPG:0|SP1:0,0>\r\n",
        [
            StatusReport(
                "Tool",
                mpos=(10.0, 10.0, 50.0),
                feed=0.0,
                spindle=0.0,
                extra={"T": "3", "AR": "", "MPG": "0", "SP1": "0,0"},
            )
        ],
    ),
    # a known field with a malformed value is kept, not fatal
    (
        b"<Idle|MPos:1.0,oops,3|FS:0,0>\r\n",
        [StatusReport("Idle", feed=0.0, spindle=0.0, extra={"MPos": "1.0,oops,3"})],
    ),
    # banners
    (
        b"\r\nGrbl 1.1h ['$' for help]\r\n",
        [Banner("1.1h", "grbl", "Grbl 1.1h ['$' for help]")],
    ),
    (
        b"\r\nGrblHAL 1.1f ['$' or '$HELP' for help]\r\n",
        [Banner("1.1f", "grblhal", "GrblHAL 1.1f ['$' or '$HELP' for help]")],
    ),
    # $I (gnea default, with line numbers, grblHAL)
    (
        b"[VER:1.1h.20190830:]\r\n[OPT:V,15,128]\r\nok\r\n",
        [
            Feedback("VER", "1.1h.20190830:"),
            Feedback("OPT", "V,15,128"),
            BuildInfo("1.1h", "20190830", "", "V", 15, 128),
            Ok(),
        ],
    ),
    (
        b"[VER:1.1h.20190830:]\r\n[OPT:VN,14,128]\r\nok\r\n",
        [
            Feedback("VER", "1.1h.20190830:"),
            Feedback("OPT", "VN,14,128"),
            BuildInfo("1.1h", "20190830", "", "VN", 14, 128),
            Ok(),
        ],
    ),
    (
        b"[VER:1.1f.20230129:my router]\r\n[OPT:VNMSL,35,1024,3,0]\r\n[FIRMWARE:grblHAL]\r\nok\r\n",
        [
            Feedback("VER", "1.1f.20230129:my router"),
            Feedback("OPT", "VNMSL,35,1024,3,0"),
            BuildInfo("1.1f", "20230129", "my router", "VNMSL", 35, 1024, ("3", "0")),
            Feedback("FIRMWARE", "grblHAL"),
            Ok(),
        ],
    ),
    # a lone [VER:] still yields BuildInfo at the next line
    (
        b"[VER:1.1h.20190830:]\r\nok\r\n",
        [Feedback("VER", "1.1h.20190830:"), BuildInfo("1.1h", "20190830"), Ok()],
    ),
    # responses, pushes, feedback, settings, startup echo
    (b"ok\r\nerror:20\r\nALARM:3\r\n", [Ok(), ErrorReply(20), AlarmPush(3)]),
    (
        b"[MSG:Reset to continue]\r\n[GC:G0 G54 G17 G21 G90 G94 M5 M9 T0 F0 S0]\r\n",
        [Message("Reset to continue"), Feedback("GC", "G0 G54 G17 G21 G90 G94 M5 M9 T0 F0 S0")],
    ),
    (
        b"[G54:-210.000,-150.000,-40.000]\r\n[TLO:0.000]\r\n[PRB:0.000,0.000,0.000:0]\r\n",
        [
            Feedback("G54", "-210.000,-150.000,-40.000"),
            Feedback("TLO", "0.000"),
            Feedback("PRB", "0.000,0.000,0.000:0"),
        ],
    ),
    (b"[echo:G1X10]\r\n", [Feedback("echo", "G1X10")]),
    (
        b"$0=10\r\n$32=1\r\n$N0=G54G21\r\n$N1=\r\n",
        [
            SettingLine("0", "10"),
            SettingLine("32", "1"),
            SettingLine("N0", "G54G21"),
            SettingLine("N1", ""),
        ],
    ),
    (
        b">G54G21:ok\r\n>G1X5Q2:error:20\r\n",
        [StartupEcho("G54G21"), StartupEcho("G1X5Q2", 20)],
    ),
    # §1.8, the full example session (device side)
    (
        b"\r\nGrbl 1.1h ['$' for help]\r\n"
        b"[MSG:'$H'|'$X' to unlock]\r\n"
        b"<Alarm|MPos:0.000,0.000,0.000|FS:0,0|WCO:0.000,0.000,0.000>\r\n"
        b"[MSG:Caution: Unlocked]\r\n"
        b"ok\r\n"
        b"ok\r\n"
        b"<Run|MPos:1.870,0.000,0.000|FS:300,0|Ov:100,100,100>\r\n"
        b"error:20\r\n"
        b"<Hold:0|MPos:4.100,0.000,0.000|FS:0,0>\r\n"
        b"ALARM:3\r\n"
        b"\r\nGrbl 1.1h ['$' for help]\r\n"
        b"[MSG:'$H'|'$X' to unlock]\r\n",
        [
            Banner("1.1h", "grbl", "Grbl 1.1h ['$' for help]"),
            Message("'$H'|'$X' to unlock"),
            StatusReport("Alarm", mpos=(0.0, 0.0, 0.0), feed=0.0, spindle=0.0, wco=(0.0, 0.0, 0.0)),
            Message("Caution: Unlocked"),
            Ok(),
            Ok(),
            StatusReport(
                "Run", mpos=(1.87, 0.0, 0.0), feed=300.0, spindle=0.0, overrides=(100, 100, 100)
            ),
            ErrorReply(20),
            StatusReport("Hold", "0", mpos=(4.1, 0.0, 0.0), feed=0.0, spindle=0.0),
            AlarmPush(3),
            Banner("1.1h", "grbl", "Grbl 1.1h ['$' for help]"),
            Message("'$H'|'$X' to unlock"),
        ],
    ),
]

CASE_IDS = [case[0][:30].decode("ascii", "replace").strip() for case in CASES]


def feed_chunks(chunks: list[bytes], proto: GrblProtocol | None = None) -> list[GrblEvent]:
    proto = proto or GrblProtocol()
    events: list[GrblEvent] = []
    for chunk in chunks:
        events.extend(proto.feed(chunk))
    return events


@pytest.mark.parametrize(("wire", "expected"), CASES, ids=CASE_IDS)
def test_whole(wire: bytes, expected: list[GrblEvent]) -> None:
    assert feed_chunks([wire]) == expected


@pytest.mark.parametrize(("wire", "expected"), CASES, ids=CASE_IDS)
def test_one_byte_at_a_time(wire: bytes, expected: list[GrblEvent]) -> None:
    assert feed_chunks([wire[i : i + 1] for i in range(len(wire))]) == expected


@given(data=st.data())
@settings(max_examples=200, deadline=None)
def test_any_split(data: st.DataObject) -> None:
    wire, expected = data.draw(st.sampled_from(CASES))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=12)))
    bounds = [0, *cuts, len(wire)]
    chunks = [wire[a:b] for a, b in itertools.pairwise(bounds)]
    assert feed_chunks(chunks) == expected


def test_all_cases_concatenated_with_lf_only() -> None:
    wire = b"".join(case[0] for case in CASES).replace(b"\r\n", b"\n")
    assert feed_chunks([wire]) == [e for case in CASES for e in case[1]]


def test_raw_state_includes_substate() -> None:
    (report,) = feed_chunks([b"<Door:2|MPos:0,0,0|FS:0,0>\n"])
    assert isinstance(report, StatusReport)
    assert report.raw_state == "Door:2"
    assert StatusReport("Idle").raw_state == "Idle"


# ------------------------------------------------------------------ garbage and resync

ANY_EVENT_BYTES = st.binary(max_size=600) | st.sampled_from([c[0] for c in CASES])


@given(chunks=st.lists(ANY_EVENT_BYTES | st.binary(min_size=300, max_size=3000), max_size=8))
@settings(max_examples=300, deadline=None)
def test_garbage_in_only_our_events_out(chunks: list[bytes]) -> None:
    proto = GrblProtocol(max_line_bytes=256)
    for chunk in chunks:
        events = proto.feed(chunk)
        assert all(isinstance(e, EVENT_TYPES) for e in events)
        assert proto.buffered <= 256
        for event in events:
            if isinstance(event, Garbage):
                assert len(event.raw) <= 257
                assert isinstance(event.error, ProtocolError)


@given(size=st.integers(257, 5000), byte=st.sampled_from([b"x", b"<", b"\xff", b"\x00"]))
@settings(max_examples=50, deadline=None)
def test_long_line_without_newline_is_capped_then_resyncs(size: int, byte: bytes) -> None:
    proto = GrblProtocol(max_line_bytes=256)
    events = proto.feed(byte * size)
    assert proto.buffered <= 256
    assert len(events) == 1
    assert isinstance(events[0], Garbage)
    assert "longer than 256" in events[0].reason
    # still inside the over-long line: more bytes are dropped silently
    assert proto.feed(byte * 100) == []
    assert proto.feed(b"\r\nok\r\n") == [Ok()]


def test_line_exactly_at_cap_is_parsed() -> None:
    proto = GrblProtocol(max_line_bytes=16)
    assert proto.feed(b"[MSG:0123456789]\n") == [Message("0123456789")]
    events = proto.feed(b"[MSG:01234567890]\n")
    assert len(events) == 1
    assert isinstance(events[0], ProtocolErrorEvent)


@pytest.mark.parametrize(
    "junk",
    [
        b"\xff\xfe<Idle|MPos:0,0,0>",
        b"Idle|MPos:0,0,0>",
        b"<Idle|MPos:0,0,0",
        b"<|MPos:0,0,0>",
        b"error:x",
        b"ALARM:",
        b"[MSG:no closing bracket",
        b"hello there",
        b">no-colon",
        b"$bad",
        b"\x00\x18",
    ],
)
def test_garbage_then_valid_report_resyncs(junk: bytes) -> None:
    events = feed_chunks([junk + b"\r\n<Idle|MPos:1.000,2.000,3.000|FS:0,0>\r\n"])
    assert len(events) == 2
    assert isinstance(events[0], Garbage)
    assert events[0].raw == junk.strip(b"\r\n")
    assert events[1] == StatusReport("Idle", mpos=(1.0, 2.0, 3.0), feed=0.0, spindle=0.0)


def test_max_line_bytes_must_be_sane() -> None:
    with pytest.raises(ValueError, match="at least"):
        GrblProtocol(max_line_bytes=2)


# ------------------------------------------------------------------ encoders


def test_encoders() -> None:
    assert GrblProtocol.status_query() == b"?"
    assert GrblProtocol.command("G1 X5 F300") == b"G1 X5 F300\n"
    assert GrblProtocol.command("$I\r\n") == b"$I\n"  # CRLF pitfall: never send \r
    assert GrblProtocol.realtime(RealtimeCommand.FEED_HOLD) == b"!"
    assert GrblProtocol.realtime(RealtimeCommand.CYCLE_START) == b"~"
    assert GrblProtocol.realtime(RealtimeCommand.SOFT_RESET) == b"\x18"
    assert GrblProtocol.realtime(RealtimeCommand.FEED_OVERRIDE_PLUS_10) == b"\x91"
    assert GrblProtocol.realtime(RealtimeCommand.MIST_COOLANT_TOGGLE) == b"\xa1"


@pytest.mark.parametrize(
    "line", ["G1 X5\nG1 X6", "G1\rX5", "(what?) G0", "M3 S1000 !", "G0 X5 ~", "G1 X5 ; é"]
)
def test_command_rejects_what_grbl_would_misread(line: str) -> None:
    with pytest.raises(ValueError):
        GrblProtocol.command(line)


# ------------------------------------------------------------------ the caching rules


def reports(wire: bytes) -> list[StatusReport]:
    events = feed_chunks([wire])
    assert all(isinstance(e, StatusReport) for e in events)
    return [e for e in events if isinstance(e, StatusReport)]


def test_wco_persists_and_derives_wpos() -> None:
    cache = StatusCache()
    first, second = reports(
        b"<Idle|MPos:12.500,40.000,-3.000|FS:0,0|WCO:2.500,10.000,-23.000>\r\n"
        b"<Idle|MPos:13.500,41.000,-3.000|FS:0,0>\r\n"
    )
    done = cache.apply(first)
    assert done.wpos == (10.0, 30.0, 20.0)
    later = cache.apply(second)
    assert later.wco == (2.5, 10.0, -23.0)  # absent means unchanged, not zero
    assert later.wpos == (11.0, 31.0, 20.0)


def test_mpos_derived_from_wpos() -> None:
    cache = StatusCache()
    (report,) = reports(b"<Jog|WPos:5.000,0.000,0.000|FS:500,0|WCO:1.000,-2.000,0.500>\r\n")
    assert cache.apply(report).mpos == (6.0, -2.0, 0.5)


def test_without_wco_nothing_is_invented() -> None:
    (report,) = reports(b"<Idle|MPos:1.000,2.000,3.000|FS:0,0>\r\n")
    done = StatusCache().apply(report)
    assert done.wpos is None
    assert done.wco is None
    assert done.overrides is None
    assert done.accessories is None


def test_overrides_and_accessories_cadence() -> None:
    cache = StatusCache()
    wire = (
        b"<Run|MPos:0,0,0|FS:1200,8000|WCO:0,0,0>\r\n"  # first after reset: WCO
        b"<Run|MPos:1,0,0|FS:1200,8000|Ov:100,100,100|A:SF>\r\n"  # second: Ov with A
        b"<Run|MPos:2,0,0|FS:1200,8000>\r\n"  # neither: both persist
        b"<Run|MPos:3,0,0|FS:1200,8000|Ov:120,100,90>\r\n"  # Ov without A: A cleared
        b"<Run|MPos:4,0,0|FS:1200,8000>\r\n"
    )
    done = [cache.apply(r) for r in reports(wire)]
    assert [d.overrides for d in done] == [
        None,
        (100, 100, 100),
        (100, 100, 100),
        (120, 100, 90),
        (120, 100, 90),
    ]
    assert [d.accessories for d in done] == [None, "SF", "SF", "", ""]


def test_cache_reset_forgets_everything() -> None:
    cache = StatusCache()
    (report,) = reports(b"<Idle|MPos:0,0,0|FS:0,0|WCO:1,1,1>\r\n")
    cache.apply(report)
    cache.apply(dataclasses.replace(report, wco=None, overrides=(50, 50, 50), accessories="M"))
    cache.reset()
    done = cache.apply(dataclasses.replace(report, wco=None))
    assert done.wco is None
    assert done.overrides is None
    assert done.accessories is None
