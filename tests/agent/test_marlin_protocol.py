"""MarlinProtocol: every documented line form, whatever the chunking; garbage never escapes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shopfloor.agent.errors import ProtocolError
from shopfloor.agent.protocols.marlin import (
    Busy,
    Capability,
    CurrentFile,
    EchoMessage,
    ErrorMessage,
    FileOpened,
    FirmwareInfo,
    Garbage,
    HeaterTemp,
    HostAction,
    LineNumbering,
    MarlinEvent,
    MarlinProtocol,
    Ok,
    OtherLine,
    PrintTime,
    ProgressReport,
    Resend,
    SdDone,
    SdNotPrinting,
    SdPrinting,
    Start,
    TemperatureReport,
    checksum,
    is_fatal_error,
)

EVENT_TYPES = (
    Ok,
    TemperatureReport,
    SdPrinting,
    SdNotPrinting,
    SdDone,
    CurrentFile,
    FileOpened,
    Busy,
    Resend,
    ErrorMessage,
    Start,
    FirmwareInfo,
    Capability,
    PrintTime,
    ProgressReport,
    HostAction,
    EchoMessage,
    OtherLine,
    Garbage,
)

IDLE_TEMPS = TemperatureReport(
    (HeaterTemp("T", 22.1, 0.0), HeaterTemp("B", 21.8, 0.0)), {"@": 0, "B@": 0}, "reply"
)

#: serial-protocols.md section 2.5, device side, with the events each line gives.
FACT_SHEET_SESSION = (
    b"start\r\n"
    b"echo:Marlin 2.1.x\r\n"
    b"ok\r\n"
    b"ok T:22.10 /0.00 B:21.80 /0.00 @:0 B@:0\r\n"
    b"ok\r\n"
    b" T:22.10 /0.00 B:21.80 /0.00 @:0 B@:0\r\n"
    b"SD printing byte 20480/1048576\r\n"
    b"ok\r\n"
    b"echo:busy: processing\r\n"
    b"echo:busy: processing\r\n"
    b"ok\r\n"
)
FACT_SHEET_EVENTS: list[MarlinEvent] = [
    Start(),
    EchoMessage("Marlin 2.1.x"),
    Ok(),
    IDLE_TEMPS,
    Ok(),
    Ok(),
    TemperatureReport(IDLE_TEMPS.heaters, IDLE_TEMPS.powers, "auto"),
    SdPrinting(20480, 1048576),
    Ok(),
    Busy("processing"),
    Busy("processing"),
    Ok(),
]

CASES: list[tuple[bytes, list[MarlinEvent]]] = [
    (FACT_SHEET_SESSION, FACT_SHEET_EVENTS),
    (b"ok N10 P15 B3\n", [Ok(10, 15, 3)]),
    (b"ok T:0\n", [TemperatureReport((HeaterTemp("T", 0.0),), {}, "reply"), Ok()]),
    (
        b" T:182.40 /210.00 B:60.10 /60.00 @:127 B@:0 W:?\n",
        [
            TemperatureReport(
                (HeaterTemp("T", 182.4, 210.0), HeaterTemp("B", 60.1, 60.0)),
                {"@": 127, "B@": 0},
                "wait",
                "?",
            )
        ],
    ),
    (
        b"T:210.0 /210.0 T0:210.0 /210.0 T1:25.0 /0.0 B:60.0 /60.0 @:127 B@:0 @0:127 @1:0\n",
        [
            TemperatureReport(
                (
                    HeaterTemp("T", 210.0, 210.0),
                    HeaterTemp("T0", 210.0, 210.0),
                    HeaterTemp("T1", 25.0, 0.0),
                    HeaterTemp("B", 60.0, 60.0),
                ),
                {"@": 127, "B@": 0, "@0": 127, "@1": 0},
                "auto",
            )
        ],
    ),
    (b"Not SD printing\n", [SdNotPrinting()]),
    (b"Done printing file\n", [SdDone()]),
    (b"Current file: BENCHY~1.GCO benchy.gcode\n", [CurrentFile("BENCHY~1.GCO", "benchy.gcode")]),
    (b"Current file: (no file)\n", [CurrentFile(None)]),
    (b"File opened: BENCHY~1.GCO Size: 1234\n", [FileOpened("BENCHY~1.GCO", 1234)]),
    (b"echo:busy: paused for user\n", [Busy("paused for user")]),
    (b"busy: paused for input\n", [Busy("paused for input")]),
    (b"Resend: 11\n", [Resend(11)]),
    (
        b"Error:checksum mismatch, Last Line: 10\n",
        [ErrorMessage("checksum mismatch, Last Line: 10", last_line=10)],
    ),
    (
        b"Error:Thermal Runaway, system stopped! Heater_ID: 0\n"
        b"Error:Printer halted. kill() called!\n",
        [
            ErrorMessage("Thermal Runaway, system stopped! Heater_ID: 0", fatal=True),
            ErrorMessage("Printer halted. kill() called!", fatal=True),
        ],
    ),
    (
        b"Error:MAXTEMP triggered, system stopped! Heater_ID: bed\n",
        [ErrorMessage("MAXTEMP triggered, system stopped! Heater_ID: bed", fatal=True)],
    ),
    (
        b"FIRMWARE_NAME:Marlin 2.1.2 (Jun  1 2023 12:00:00) SOURCE_CODE_URL:github.com/x "
        b"PROTOCOL_VERSION:1.0 MACHINE_TYPE:Ender 3 EXTRUDER_COUNT:1 UUID:cede2a2f\n",
        [
            FirmwareInfo(
                "Marlin 2.1.2 (Jun  1 2023 12:00:00)",
                {
                    "FIRMWARE_NAME": "Marlin 2.1.2 (Jun  1 2023 12:00:00)",
                    "SOURCE_CODE_URL": "github.com/x",
                    "PROTOCOL_VERSION": "1.0",
                    "MACHINE_TYPE": "Ender 3",
                    "EXTRUDER_COUNT": "1",
                    "UUID": "cede2a2f",
                },
            )
        ],
    ),
    (
        b"Cap:AUTOREPORT_TEMP:1\nCap:BUILD_PERCENT:0\n",
        [Capability("AUTOREPORT_TEMP", True), Capability("BUILD_PERCENT", False)],
    ),
    (b"echo:Print time: 1h 23m 4s\n", [PrintTime(4984, "1h 23m 4s")]),
    (b"echo:Print time: 45s\n", [PrintTime(45, "45s")]),
    (b"echo: M73 Progress: 42%; Time left: 37m; Change: 5m;\n", [ProgressReport(42.0, 2220)]),
    (b"//action:pause\n//action:resume\n", [HostAction("pause"), HostAction("resume")]),
    (b"//action:notification Printing\n", [HostAction("notification", "Printing")]),
    (b'echo:Unknown command: "M9999"\n', [EchoMessage('Unknown command: "M9999"')]),
    (b"PowerUp\n", [OtherLine("PowerUp")]),
    (b"\n\r\n  \r\n", []),
    (b"\xff\xfe\x80\n", [Garbage(b"\xff\xfe\x80", "line is not UTF-8 text")]),
]


def feed_chunks(chunks: list[bytes], max_line_bytes: int = 512) -> list[MarlinEvent]:
    proto = MarlinProtocol(max_line_bytes)
    events: list[MarlinEvent] = []
    for chunk in chunks:
        events.extend(proto.feed(chunk))
    return events


@pytest.mark.parametrize(("wire", "expected"), CASES)
def test_whole(wire: bytes, expected: list[MarlinEvent]) -> None:
    assert feed_chunks([wire]) == expected


@pytest.mark.parametrize(("wire", "expected"), CASES)
def test_byte_by_byte(wire: bytes, expected: list[MarlinEvent]) -> None:
    assert feed_chunks([wire[i : i + 1] for i in range(len(wire))]) == expected


@settings(max_examples=200, deadline=None)
@given(case=st.sampled_from(CASES), data=st.data())
def test_random_splits(case: tuple[bytes, list[MarlinEvent]], data: st.DataObject) -> None:
    wire, expected = case
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=12)))
    chunks = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    assert feed_chunks(chunks) == expected


def test_crlf_variants_are_the_same() -> None:
    body = [b"ok", b"SD printing byte 1/2", b"Not SD printing"]
    for sep in (b"\n", b"\r\n", b"\r"):
        assert feed_chunks([sep.join(body) + sep]) == [Ok(), SdPrinting(1, 2), SdNotPrinting()]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=80), max_size=20))
def test_garbage_in_never_raises_and_buffer_stays_capped(chunks: list[bytes]) -> None:
    proto = MarlinProtocol(64)
    for chunk in chunks:
        for event in proto.feed(chunk):
            assert isinstance(event, EVENT_TYPES)
            if isinstance(event, Garbage):
                assert isinstance(event.error, ProtocolError)
                assert len(event.raw) <= 200
        assert proto.buffered <= 64


def test_resyncs_after_an_overlong_line() -> None:
    events = feed_chunks([b"x" * 100, b"y" * 100, b"\nok\n"], max_line_bytes=64)
    assert isinstance(events[0], Garbage)
    assert events[1:] == [Ok()]


def test_temperature_report_helpers() -> None:
    (report, _ok) = feed_chunks([b"ok T0:200.0 /205.0 T1:30.0 /0.0 B:60.0 /60.0\n"])
    assert isinstance(report, TemperatureReport)
    assert report.hotend == HeaterTemp("T0", 200.0, 205.0)
    assert report.bed == HeaterTemp("B", 60.0, 60.0)
    assert report.heater("C") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("N0 M110 N0", 125),
        ("N1 M105", 38),
        ("N2 G28", 17),
        ("N3 G1 X10 Y20 F3000", 76),
        ("N11 G1 X10", 97),
    ],
)
def test_checksums_of_the_fact_sheet(text: str, expected: int) -> None:
    assert checksum(text) == expected


def test_command_encoding() -> None:
    assert MarlinProtocol.command("M105") == b"M105\n"
    assert MarlinProtocol.command("M105\r\n") == b"M105\n"
    assert MarlinProtocol.command("M110 N0", line_number=0) == b"N0 M110 N0*125\n"
    assert MarlinProtocol.command("G1 X10", line_number=11) == b"N11 G1 X10*97\n"
    for bad in ("", "M105\nM27", "M117 caf\u00e9", "M105\x00"):
        with pytest.raises(ValueError):
            MarlinProtocol.command(bad)
    with pytest.raises(ValueError):
        MarlinProtocol.command("M117 a*b", line_number=3)


def test_line_numbering_and_resend() -> None:
    numbering = LineNumbering(history=3)
    assert numbering.reset() == b"N0 M110 N0*125\n"
    assert numbering.encode("M105") == b"N1 M105*38\n"
    numbering.encode("M27")
    numbering.encode("M31")
    assert numbering.resend(2) == [
        MarlinProtocol.command("M27", line_number=2),
        MarlinProtocol.command("M31", line_number=3),
    ]
    assert numbering.resend(0) is None  # fell out of the history
    assert numbering.resend(9) is None  # never sent


def test_fatal_error_texts() -> None:
    assert is_fatal_error("Printer halted. kill() called!")
    assert is_fatal_error("Heating failed, system stopped! Heater_ID: 0")
    assert is_fatal_error("Printer stopped due to errors. Fix the error and use M999 to restart.")
    assert not is_fatal_error("checksum mismatch, Last Line: 3")
    assert not is_fatal_error("Line Number is not Last Line Number+1, Last Line: 3")
