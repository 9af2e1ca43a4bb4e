"""Marlin 2.x as a sans-IO protocol, in the style of h11.

:class:`MarlinProtocol` turns the bytes a printer sends into typed, frozen events
(:meth:`MarlinProtocol.feed`) and encodes the commands we send (:meth:`MarlinProtocol.command`,
with an optional line number and checksum). :class:`LineNumbering` keeps the ``N<n>``
sequence and the last lines sent, so a ``Resend: n`` can be answered.

``feed`` never raises: a line that is not ASCII/UTF-8 text, or that is longer than
``max_line_bytes``, comes out as :class:`Garbage` and the parser resyncs at the next end of
line; a text line it does not know comes out as :class:`OtherLine` (Marlin prints many free
form lines: ``PowerUp``, ``File selected``, M114 positions ...). Its buffer never holds more
than ``max_line_bytes``.

Wire formats: ``/work/shared/reference/serial-protocols.md`` section 2 (Marlin 2.x).
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from shopfloor.agent.errors import ProtocolError
from shopfloor.agent.protocols.lines import GARBAGE_KEEP as _GARBAGE_KEEP
from shopfloor.agent.protocols.lines import LineSplitter, Overlong

__all__ = [
    "Busy",
    "Capability",
    "CurrentFile",
    "EchoMessage",
    "ErrorMessage",
    "FileOpened",
    "FirmwareInfo",
    "Garbage",
    "HeaterTemp",
    "HostAction",
    "LineNumbering",
    "MarlinEvent",
    "MarlinProtocol",
    "Ok",
    "OtherLine",
    "PrintTime",
    "ProgressReport",
    "Resend",
    "SdDone",
    "SdNotPrinting",
    "SdPrinting",
    "Start",
    "TemperatureReport",
    "checksum",
    "is_fatal_error",
]


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Ok:
    """``ok``: one command line was accepted. ``ADVANCED_OK`` adds ``N<line> P<free planner
    blocks> B<free command slots>``; ``ok T:...`` (the M105 reply) also produces a
    :class:`TemperatureReport`, just before this event."""

    line_number: int | None = None
    planner_free: int | None = None
    buffer_free: int | None = None


@dataclass(frozen=True, slots=True)
class HeaterTemp:
    """One sensor from a temperature report: ``T``, ``T0``, ``T1``, ``B`` (bed), ``C``
    (chamber), ``P`` (probe) ... ``target`` is None when the sensor has no set point."""

    name: str
    actual: float
    target: float | None = None


@dataclass(frozen=True, slots=True)
class TemperatureReport:
    """``T:210.00 /210.00 B:60.00 /60.00 @:127 B@:0``.

    ``kind`` is ``"reply"`` (``ok T:...``, the M105 answer), ``"auto"`` (an M155
    auto-report) or ``"wait"`` (printed each second while M109/M190 waits for heat: it
    carries ``W:``). ``powers`` are the heater outputs (``@``, ``B@``, ``@0`` ...), 0-127.
    """

    heaters: tuple[HeaterTemp, ...]
    powers: Mapping[str, int] = field(default_factory=dict)
    kind: Literal["reply", "auto", "wait"] = "auto"
    wait: str | None = None

    def heater(self, name: str) -> HeaterTemp | None:
        for heater in self.heaters:
            if heater.name == name:
                return heater
        return None

    @property
    def hotend(self) -> HeaterTemp | None:
        """The active tool's hotend: ``T`` (first one printed), else ``T0``."""
        return self.heater("T") or self.heater("T0")

    @property
    def bed(self) -> HeaterTemp | None:
        return self.heater("B")


@dataclass(frozen=True, slots=True)
class SdPrinting:
    """``SD printing byte <done>/<total>`` (M27 or its auto-report)."""

    done: int
    total: int


@dataclass(frozen=True, slots=True)
class SdNotPrinting:
    """``Not SD printing`` (M27: no SD print running; a paused print may say this too)."""


@dataclass(frozen=True, slots=True)
class SdDone:
    """``Done printing file``: the SD print reached the end of its file."""


@dataclass(frozen=True, slots=True)
class CurrentFile:
    """``Current file: <8.3 name> [<long name>]`` (M27 C). ``name`` is None for ``(no file)``."""

    name: str | None
    long_name: str | None = None

    @property
    def display_name(self) -> str | None:
        return self.long_name or self.name


@dataclass(frozen=True, slots=True)
class FileOpened:
    """``File opened: <name> Size: <bytes>`` (M23)."""

    name: str
    size: int | None


@dataclass(frozen=True, slots=True)
class Busy:
    """``echo:busy: processing`` / ``paused for user`` / ``paused for input``: a keep-alive
    while a command blocks. Not an ack."""

    reason: str

    @property
    def paused(self) -> bool:
        return self.reason.startswith("paused")


@dataclass(frozen=True, slots=True)
class Resend:
    """``Resend: <n>``: send line ``n`` again and everything after it."""

    line_number: int


@dataclass(frozen=True, slots=True)
class ErrorMessage:
    """``Error:<text>``. ``fatal`` for the messages that stop the printer (a heater fault,
    ``Printer halted. kill() called!``, ``Printer stopped due to errors``); the line errors
    (checksum, line number) are not fatal. ``last_line`` is the number after ``Last Line:``."""

    text: str
    fatal: bool = False
    last_line: int | None = None


@dataclass(frozen=True, slots=True)
class Start:
    """``start``: the firmware (re)booted."""


@dataclass(frozen=True, slots=True)
class FirmwareInfo:
    """The M115 line ``FIRMWARE_NAME:Marlin 2.1.2 (...) SOURCE_CODE_URL:... MACHINE_TYPE:...``.

    ``fields`` holds every ``KEY:value`` pair as printed; ``name`` is ``FIRMWARE_NAME``.
    """

    name: str
    fields: Mapping[str, str] = field(default_factory=dict)

    @property
    def machine_type(self) -> str | None:
        return self.fields.get("MACHINE_TYPE")

    @property
    def extruders(self) -> int | None:
        value = self.fields.get("EXTRUDER_COUNT", "")
        return int(value) if value.isdigit() else None


@dataclass(frozen=True, slots=True)
class Capability:
    """``Cap:<NAME>:0|1`` from M115 (``EXTENDED_CAPABILITIES_REPORT``)."""

    name: str
    enabled: bool


@dataclass(frozen=True, slots=True)
class PrintTime:
    """``echo:Print time: 1h 23m 4s`` (M31): the print job timer, in seconds."""

    seconds: int
    text: str


@dataclass(frozen=True, slots=True)
class ProgressReport:
    """``echo: M73 Progress: 42%; Time left: 37m;`` (only with ``M73_REPORT``)."""

    percent: float | None
    remaining_s: int | None


@dataclass(frozen=True, slots=True)
class HostAction:
    """``//action:<action> <args>``: ``pause``, ``paused``, ``resume``, ``resumed``,
    ``cancel``, ``notification ...``, ``prompt_begin ...``."""

    action: str
    args: str = ""


@dataclass(frozen=True, slots=True)
class EchoMessage:
    """Any other ``echo:`` line (``echo:Unknown command: "M9999"``, settings lines ...)."""

    text: str


@dataclass(frozen=True, slots=True)
class OtherLine:
    """A text line this parser has no event for (``PowerUp``, ``File selected``, M114 ...)."""

    text: str


@dataclass(frozen=True, slots=True)
class Garbage:
    """Bytes that are not a text line, or an over-long line. Never raised: reported, then the
    parser resyncs at the next end of line."""

    raw: bytes
    reason: str

    @property
    def error(self) -> ProtocolError:
        return ProtocolError(self.reason, raw=self.raw)


MarlinEvent = (
    Ok
    | TemperatureReport
    | SdPrinting
    | SdNotPrinting
    | SdDone
    | CurrentFile
    | FileOpened
    | Busy
    | Resend
    | ErrorMessage
    | Start
    | FirmwareInfo
    | Capability
    | PrintTime
    | ProgressReport
    | HostAction
    | EchoMessage
    | OtherLine
    | Garbage
)


# --------------------------------------------------------------------------- encoding


def checksum(text: str) -> int:
    """Marlin's line checksum: XOR of every byte before ``*`` (``N<n> `` included)."""
    value = 0
    for byte in text.encode("ascii"):
        value ^= byte
    return value


def _check_command(line: str) -> str:
    body = line.rstrip("\r\n").strip()
    if "\r" in body or "\n" in body:
        raise ValueError(f"a Marlin command is one line, got {line!r}")
    if not body.isascii() or not body.isprintable():
        raise ValueError(f"a Marlin command must be printable ASCII, got {line!r}")
    if not body:
        raise ValueError("empty command")
    return body


class LineNumbering:
    """The host side of Marlin's ``N<n> ... *<cs>`` scheme.

    :meth:`reset` encodes ``N0 M110 N0*125`` (start a new sequence); :meth:`encode` numbers
    the next line; :meth:`resend` returns the stored lines from ``n`` on for a ``Resend: n``
    (None if ``n`` is no longer, or never was, in the history: the caller then resets).
    """

    def __init__(self, history: int = 16) -> None:
        if history < 1:
            raise ValueError("history must be at least 1")
        self._history: deque[tuple[int, bytes]] = deque(maxlen=history)
        self.last = 0

    def reset(self, number: int = 0) -> bytes:
        self._history.clear()
        self.last = number
        line = MarlinProtocol.command(f"M110 N{number}", line_number=number)
        self._history.append((number, line))
        return line

    def encode(self, command: str) -> bytes:
        self.last += 1
        line = MarlinProtocol.command(command, line_number=self.last)
        self._history.append((self.last, line))
        return line

    def resend(self, number: int) -> list[bytes] | None:
        lines = [line for n, line in self._history if n >= number]
        if not lines or self._history[0][0] > number or number > self.last:
            return None
        return lines


# --------------------------------------------------------------------------- parser

_TEMP_TOKEN_RE: Final = re.compile(
    r"(?<![A-Za-z0-9@])([A-Z][0-9]?@?|@[0-9]?):\s*(-?[0-9]+(?:\.[0-9]*)?|\?|inf|nan)"
    r"(?:\s*/\s*(-?[0-9]+(?:\.[0-9]*)?))?"
)
_OK_ARG_RE: Final = re.compile(r"([NPB])(-?[0-9]{1,10})")
_M115_KEY_RE: Final = re.compile(r"(?:^|\s)([A-Z][A-Z0-9_]{2,}):")
_LAST_LINE_RE: Final = re.compile(r"Last Line:\s*(-?[0-9]+)")
_SD_BYTE_RE: Final = re.compile(r"SD printing byte\s+([0-9]{1,12})\s*/\s*([0-9]{1,12})")
_FILE_OPENED_RE: Final = re.compile(r"File opened:\s*(.*?)(?:\s+Size:\s*([0-9]{1,12}))?\s*")
_DURATION_RE: Final = re.compile(r"([0-9]{1,9})\s*([ydhms])")
_M73_PCT_RE: Final = re.compile(r"Progress:\s*([0-9]+(?:\.[0-9]+)?)\s*%")
_M73_LEFT_RE: Final = re.compile(r"Time left:\s*([0-9]+)\s*m")
_PRUSA_PCT_RE: Final = re.compile(r"Percent done:\s*([0-9]+)")
_PRUSA_LEFT_RE: Final = re.compile(r"remaining in mins:\s*(-?[0-9]+)")
_RESEND_RE: Final = re.compile(r"(?:Resend|rs)\s*:?\s*N?([0-9]{1,10})", re.IGNORECASE)
_UNITS: Final = {"y": 365 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
#: ``Error:`` texts that mean the printer stopped (Marlin temperature.cpp, language.h).
_FATAL_MARKERS: Final = (
    "kill() called",
    "printer halted",
    "system stopped",
    "printer stopped due to errors",
    "thermal runaway",
    "heating failed",
    "maxtemp",
    "mintemp",
)


def is_fatal_error(text: str) -> bool:
    """True for the ``Error:`` texts after which the printer is stopped or halted."""
    lower = text.lower()
    return any(marker in lower for marker in _FATAL_MARKERS)


class MarlinProtocol:
    """Bytes from a Marlin printer in, :data:`MarlinEvent` objects out. See the module
    docstring. Lines may end with ``\\r\\n``, ``\\n`` or ``\\r``; empty lines are ignored."""

    def __init__(self, max_line_bytes: int = 512) -> None:
        if max_line_bytes < 16:
            raise ValueError("max_line_bytes must be at least 16")
        self._lines = LineSplitter(max_line_bytes)

    @property
    def max_line_bytes(self) -> int:
        return self._lines.max_line_bytes

    @property
    def buffered(self) -> int:
        """Bytes held while waiting for the end of a line (always <= ``max_line_bytes``)."""
        return self._lines.buffered

    # -- encoders

    @staticmethod
    def command(line: str, *, line_number: int | None = None) -> bytes:
        """Encode one command, ended with ``\\n``; with ``line_number``, as
        ``N<n> <command>*<checksum>``. Raises :class:`ValueError` for a command that is not
        one printable ASCII line (or contains ``*`` when numbered)."""
        body = _check_command(line)
        if line_number is None:
            return body.encode("ascii") + b"\n"
        if line_number < 0:
            raise ValueError("line numbers are not negative")
        if "*" in body:
            raise ValueError(f"'*' in {line!r} would end the checksummed part")
        text = f"N{line_number} {body}"
        return f"{text}*{checksum(text)}\n".encode("ascii")

    # -- decoder

    def feed(self, data: bytes) -> list[MarlinEvent]:
        """Add received bytes; return the events of every line they completed."""
        events: list[MarlinEvent] = []
        for line in self._lines.feed(data):
            if isinstance(line, Overlong):
                events.append(Garbage(line.raw, line.reason))
            else:
                self._parse_line(line, events)
        return events

    def _parse_line(self, raw: bytes, events: list[MarlinEvent]) -> None:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            events.append(Garbage(raw[:_GARBAGE_KEEP], "line is not UTF-8 text"))
            return
        if not all(ch.isprintable() or ch == "\t" for ch in text):
            events.append(Garbage(raw[:_GARBAGE_KEEP], "control characters in line"))
            return
        text = text.strip()
        if text:
            _parse_text(text, events)


def _parse_text(text: str, events: list[MarlinEvent]) -> None:  # noqa: PLR0915 - a dispatch
    if text == "ok" or text.startswith("ok "):
        rest = text[2:].strip()
        if "T:" in rest or "T0:" in rest or "B:" in rest:
            report = _parse_temperatures(rest, "reply")
            if report is not None:
                events.append(report)
            events.append(Ok())
            return
        args = dict(_OK_ARG_RE.findall(rest))
        events.append(
            Ok(
                line_number=_int(args.get("N")),
                planner_free=_int(args.get("P")),
                buffer_free=_int(args.get("B")),
            )
        )
        return
    lower = text.lower()
    if text.startswith("//action:"):
        action, _, action_args = text[9:].strip().partition(" ")
        events.append(HostAction(action.lower(), action_args.strip()))
        return
    if lower.startswith(("error:", "!!")):
        body = text[6:].strip() if lower.startswith("error:") else text[2:].strip()
        match = _LAST_LINE_RE.search(body)
        events.append(
            ErrorMessage(
                body,
                fatal=is_fatal_error(body),
                last_line=int(match.group(1)) if match else None,
            )
        )
        return
    if lower.startswith(("resend", "rs ")):
        match = _RESEND_RE.match(text)
        if match:
            events.append(Resend(int(match.group(1))))
        else:
            events.append(OtherLine(text))
        return
    echo = lower.startswith("echo:")
    body = text[5:].strip() if echo else text
    body_lower = body.lower()
    if body_lower.startswith("busy:"):
        events.append(Busy(body[5:].strip().lower()))
        return
    if body.startswith("SD printing byte"):
        match = _SD_BYTE_RE.match(body)
        if match:
            events.append(SdPrinting(int(match.group(1)), int(match.group(2))))
        else:
            events.append(OtherLine(text))
        return
    if body.startswith("Not SD printing"):
        events.append(SdNotPrinting())
        return
    if body.startswith("Done printing file"):
        events.append(SdDone())
        return
    if body.startswith("Current file:"):
        name = body[13:].strip()
        if not name or name == "(no file)":
            events.append(CurrentFile(None))
        else:
            short, _, long = name.partition(" ")
            events.append(CurrentFile(short, long.strip() or None))
        return
    if body.startswith("File opened:"):
        match = _FILE_OPENED_RE.fullmatch(body)
        if match and match.group(1):
            size = match.group(2)
            events.append(FileOpened(match.group(1), int(size) if size else None))
        else:
            events.append(OtherLine(text))
        return
    if body.startswith("Print time:"):
        seconds = _duration_s(body[11:])
        if seconds is None:
            events.append(EchoMessage(body) if echo else OtherLine(text))
        else:
            events.append(PrintTime(seconds, body[11:].strip()))
        return
    if "M73 Progress:" in body or "Percent done:" in body:
        events.append(_parse_m73(body))
        return
    if body.startswith("FIRMWARE_NAME:"):
        events.append(_parse_m115(body))
        return
    if body.startswith("Cap:"):
        name, sep, value = body[4:].rpartition(":")
        if sep and name and value.strip() in ("0", "1"):
            events.append(Capability(name.strip().upper(), value.strip() == "1"))
        else:
            events.append(OtherLine(text))
        return
    if text == "start":
        events.append(Start())
        return
    if not echo and ("T:" in text or "T0:" in text) and text[:1] in (" ", "T", "B"):
        report = _parse_temperatures(text, "auto")
        if report is not None:
            events.append(report)
            return
    if echo:
        events.append(EchoMessage(body))
        return
    events.append(OtherLine(text))


def _parse_temperatures(text: str, kind: Literal["reply", "auto"]) -> TemperatureReport | None:
    heaters: list[HeaterTemp] = []
    powers: dict[str, int] = {}
    wait: str | None = None
    for name, value, target in _TEMP_TOKEN_RE.findall(text):
        if name == "W":
            wait = value
            continue
        if "@" in name:
            number = _float(value)
            if number is not None:
                powers[name] = round(number)
            continue
        actual = _float(value)
        if actual is None:
            continue
        heaters.append(HeaterTemp(name, actual, _float(target) if target else None))
    if not heaters:
        return None
    final_kind: Literal["reply", "auto", "wait"] = "wait" if wait is not None else kind
    return TemperatureReport(tuple(heaters), powers, final_kind, wait)


def _parse_m115(body: str) -> FirmwareInfo:
    marks = list(_M115_KEY_RE.finditer(body))
    fields: dict[str, str] = {}
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(body)
        fields[mark.group(1)] = body[mark.end() : end].strip()
    return FirmwareInfo(fields.get("FIRMWARE_NAME", ""), fields)


def _parse_m73(body: str) -> ProgressReport:
    pct = _M73_PCT_RE.search(body) or _PRUSA_PCT_RE.search(body)
    left = _M73_LEFT_RE.search(body) or _PRUSA_LEFT_RE.search(body)
    percent = _float(pct.group(1)) if pct else None
    remaining = int(left.group(1)) * 60 if left and int(left.group(1)) >= 0 else None
    return ProgressReport(percent, remaining)


def _duration_s(text: str) -> int | None:
    parts = _DURATION_RE.findall(text)
    if not parts:
        return None
    return sum(int(value) * _UNITS[unit] for value, unit in parts)


def _int(text: str | None) -> int | None:
    return int(text) if text is not None else None


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None
