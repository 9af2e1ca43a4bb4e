"""GRBL 1.1 (gnea 1.1h) and grblHAL as a sans-IO protocol, in the style of h11.

:class:`GrblProtocol` turns the bytes a controller sends into typed, frozen events
(:meth:`GrblProtocol.feed`) and encodes what we send it (:meth:`GrblProtocol.status_query`,
:meth:`GrblProtocol.command`, :meth:`GrblProtocol.realtime`). It never raises on input:
anything it cannot make sense of comes out as a :class:`Garbage` event and the parser
resyncs at the next end of line. Its buffer never holds more than ``max_line_bytes``.

:class:`StatusCache` applies the caching rules observed on real 1.1h firmware: ``WCO:``,
``Ov:`` and ``A:`` are only sent now and then, so their absence means "unchanged".

Wire formats: ``/work/shared/reference/serial-protocols.md`` section 1 and the "observed on
the real GRBL 1.1h firmware" notes.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from shopfloor.agent.errors import ProtocolError
from shopfloor.agent.protocols.lines import GARBAGE_KEEP as _GARBAGE_KEEP
from shopfloor.agent.protocols.lines import LineSplitter, Overlong

__all__ = [
    "AlarmPush",
    "Banner",
    "BuildInfo",
    "ErrorReply",
    "Feedback",
    "Garbage",
    "GrblEvent",
    "GrblProtocol",
    "Message",
    "Ok",
    "ProtocolErrorEvent",
    "RealtimeCommand",
    "SettingLine",
    "StartupEcho",
    "StatusCache",
    "StatusReport",
]

Position = tuple[float, ...]


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class StatusReport:
    """A real-time status report ``<State|MPos:...|...>``.

    ``state`` is the bare state word (``Hold``), ``substate`` what followed its colon
    (``"0"``; grblHAL's ``Alarm:11`` gives ``"11"``). Exactly one of ``mpos``/``wpos`` is
    set by the device; :class:`StatusCache` fills in the other one when ``wco`` is known.
    ``buffer`` is (free planner blocks, free RX bytes) from ``Bf:``. Fields this parser does
    not know (grblHAL's ``DTG:``, ``T:``, ``WCS:`` ..., or a known field with a malformed
    value) are kept as text in ``extra``; a field without a colon (``AR``) maps to ``""``.
    """

    state: str
    substate: str | None = None
    mpos: Position | None = None
    wpos: Position | None = None
    wco: Position | None = None
    feed: float | None = None
    spindle: float | None = None
    overrides: tuple[int, int, int] | None = None
    accessories: str | None = None
    pins: str | None = None
    buffer: tuple[int, int] | None = None
    line_number: int | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def raw_state(self) -> str:
        """The state as the device printed it, substate included (``Hold:0``)."""
        return self.state if self.substate is None else f"{self.state}:{self.substate}"


@dataclass(frozen=True, slots=True)
class Ok:
    """``ok``: the last line was accepted."""


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """``error:N``: the last line was rejected (it still counts as a response)."""

    code: int


@dataclass(frozen=True, slots=True)
class AlarmPush:
    """``ALARM:N``: pushed, not a response to a line."""

    code: int


@dataclass(frozen=True, slots=True)
class Message:
    """``[MSG:text]``."""

    text: str


@dataclass(frozen=True, slots=True)
class Feedback:
    """Any other ``[TAG:text]`` line: ``[GC:...]``, ``[G54:...]``, ``[echo:...]``, grblHAL's
    ``[FIRMWARE:grblHAL]``, and ``[VER:]``/``[OPT:]`` too (which also produce a :class:`BuildInfo`).
    ``tag`` is empty for a bracketed line without a colon."""

    tag: str
    text: str


@dataclass(frozen=True, slots=True)
class BuildInfo:
    """What ``$I`` told us, emitted once ``[OPT:]`` has arrived (or at the ``ok`` after a lone
    ``[VER:]``).

    ``[VER:1.1h.20190830:user]`` gives version ``1.1h``, build ``20190830``, user_info
    ``user``. ``[OPT:V,15,128]`` gives the option letters, the usable planner blocks (the
    firmware prints its block count minus one) and the RX buffer size in bytes. grblHAL's
    extra ``[OPT:]`` values are kept in ``extra_options``.
    """

    version: str = ""
    build: str = ""
    user_info: str = ""
    options: str = ""
    planner_blocks: int | None = None
    rx_buffer_bytes: int | None = None
    extra_options: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Banner:
    """The start-up line, printed on power-up and after every soft reset."""

    version: str
    flavor: Literal["grbl", "grblhal"]
    text: str


@dataclass(frozen=True, slots=True)
class StartupEcho:
    """``>G54G21:ok``: a ``$N`` start-up line ran. ``error_code`` is set if it failed."""

    line: str
    error_code: int | None = None


@dataclass(frozen=True, slots=True)
class SettingLine:
    """``$n=v`` from a ``$$`` or ``$N`` dump; ``setting`` is ``"32"`` or ``"N0"``."""

    setting: str
    value: str


@dataclass(frozen=True, slots=True)
class Garbage:
    """A line we could not parse, an over-long line, or bytes that are not ASCII.

    Never raised: the parser reports it and resyncs at the next end of line. ``raw`` is the
    offending line (truncated), ``reason`` says what was wrong with it.
    """

    raw: bytes
    reason: str

    @property
    def error(self) -> ProtocolError:
        """The same problem as an exception, for code that wants to raise or log it."""
        return ProtocolError(self.reason, raw=self.raw)


#: The brief's name for the same event: an event that carries a :class:`ProtocolError`.
ProtocolErrorEvent = Garbage

GrblEvent = (
    StatusReport
    | Ok
    | ErrorReply
    | AlarmPush
    | Message
    | Feedback
    | BuildInfo
    | Banner
    | StartupEcho
    | SettingLine
    | Garbage
)


# --------------------------------------------------------------------------- commands


class RealtimeCommand(enum.IntEnum):
    """Single-byte commands: never buffered, never answered with ``ok``."""

    STATUS_REPORT = 0x3F  # ?
    CYCLE_START = 0x7E  # ~  (resume)
    FEED_HOLD = 0x21  # !
    SOFT_RESET = 0x18  # Ctrl-X
    SAFETY_DOOR = 0x84
    JOG_CANCEL = 0x85
    FEED_OVERRIDE_RESET = 0x90
    FEED_OVERRIDE_PLUS_10 = 0x91
    FEED_OVERRIDE_MINUS_10 = 0x92
    FEED_OVERRIDE_PLUS_1 = 0x93
    FEED_OVERRIDE_MINUS_1 = 0x94
    RAPID_OVERRIDE_100 = 0x95
    RAPID_OVERRIDE_50 = 0x96
    RAPID_OVERRIDE_25 = 0x97
    SPINDLE_OVERRIDE_RESET = 0x99
    SPINDLE_OVERRIDE_PLUS_10 = 0x9A
    SPINDLE_OVERRIDE_MINUS_10 = 0x9B
    SPINDLE_OVERRIDE_PLUS_1 = 0x9C
    SPINDLE_OVERRIDE_MINUS_1 = 0x9D
    SPINDLE_STOP_TOGGLE = 0x9E
    FLOOD_COOLANT_TOGGLE = 0xA0
    MIST_COOLANT_TOGGLE = 0xA1


#: Characters Grbl picks out of the input stream as real-time commands, wherever they are.
_REALTIME_CHARS: Final = frozenset("?!~")


# --------------------------------------------------------------------------- parser

_TERMINATORS: Final = b"\r\n"
_BANNER_RE: Final = re.compile(r"(Grbl|GrblHAL)\s+(\S+)\s*\[.*\]\s*", re.IGNORECASE)
_INT_RE: Final = re.compile(r"[0-9]{1,9}")
_SETTING_RE: Final = re.compile(r"\$([0-9]{1,5}|N[0-9])=(.*)")


class GrblProtocol:
    """Bytes from a GRBL controller in, :data:`GrblEvent` objects out.

    Lines may end with ``\\r\\n``, ``\\n`` or ``\\r``; empty lines are ignored. A line longer
    than ``max_line_bytes`` is discarded up to the next end of line and reported once as
    :class:`Garbage`. ``feed`` never raises and the internal buffer never exceeds
    ``max_line_bytes``.
    """

    def __init__(self, max_line_bytes: int = 256) -> None:
        if max_line_bytes < 8:
            raise ValueError("max_line_bytes must be at least 8")
        self._lines = LineSplitter(max_line_bytes)
        self._pending_ver: tuple[str, str, str] | None = None

    @property
    def max_line_bytes(self) -> int:
        return self._lines.max_line_bytes

    @property
    def buffered(self) -> int:
        """Bytes held while waiting for the end of a line (always <= ``max_line_bytes``)."""
        return self._lines.buffered

    # -- encoders

    @staticmethod
    def status_query() -> bytes:
        return b"?"

    @staticmethod
    def command(line: str) -> bytes:
        """Encode one line for Grbl, ended with ``\\n`` only.

        A trailing line ending is tolerated; anything else that Grbl would misread is a
        programming error and raises :class:`ValueError`: an embedded ``\\r``/``\\n`` (a CRLF
        host makes Grbl answer an extra ``ok``), non-ASCII text, or ``?``/``!``/``~``, which
        Grbl executes as real-time commands wherever they appear.
        """
        body = line.rstrip("\r\n")
        if "\r" in body or "\n" in body:
            raise ValueError(f"a Grbl command is one line, got {line!r}")
        if not body.isascii():
            raise ValueError(f"a Grbl command must be ASCII, got {line!r}")
        bad = _REALTIME_CHARS.intersection(body)
        if bad:
            raise ValueError(
                f"{''.join(sorted(bad))!r} in {line!r} would be executed as a real-time command"
            )
        return body.encode("ascii") + b"\n"

    @staticmethod
    def realtime(cmd: RealtimeCommand) -> bytes:
        return bytes((int(cmd),))

    # -- decoder

    def feed(self, data: bytes) -> list[GrblEvent]:
        """Add received bytes; return the events of every line they completed."""
        events: list[GrblEvent] = []
        for line in self._lines.feed(data):
            if isinstance(line, Overlong):
                events.append(Garbage(line.raw, line.reason))
            else:
                self._parse_line(line, events)
        return events

    def _parse_line(self, raw: bytes, events: list[GrblEvent]) -> None:
        if any(b > 0x7E or (b < 0x20 and b != 0x09) for b in raw):
            events.append(Garbage(raw[:_GARBAGE_KEEP], "non-ASCII or control bytes in line"))
            return
        text = raw.decode("ascii").strip()
        if not text:
            return
        if self._pending_ver is not None and not text.startswith("[OPT:"):
            events.append(self._flush_ver(None))
        event = self._parse_text(text)
        if event is None:
            events.append(Garbage(raw[:_GARBAGE_KEEP], "unrecognised line"))
            return
        events.append(event)
        if isinstance(event, Feedback):
            if event.tag == "VER":
                self._pending_ver = _split_ver(event.text)
            elif event.tag == "OPT":
                events.append(self._flush_ver(event.text))

    def _flush_ver(self, opt: str | None) -> BuildInfo:
        version, build, user = self._pending_ver or ("", "", "")
        self._pending_ver = None
        info = BuildInfo(version=version, build=build, user_info=user)
        if opt is None:
            return info
        parts = opt.split(",")
        return dataclasses.replace(
            info,
            options=parts[0],
            planner_blocks=_int_or_none(parts[1]) if len(parts) > 1 else None,
            rx_buffer_bytes=_int_or_none(parts[2]) if len(parts) > 2 else None,
            extra_options=tuple(parts[3:]),
        )

    def _parse_text(self, text: str) -> GrblEvent | None:
        if text == "ok":
            return Ok()
        if text.startswith("<"):
            return _parse_status(text)
        if text.startswith("["):
            return _parse_bracket(text)
        if text.startswith("error:"):
            code = text[6:]
            return ErrorReply(int(code)) if _INT_RE.fullmatch(code) else None
        if text.startswith("ALARM:"):
            code = text[6:]
            return AlarmPush(int(code)) if _INT_RE.fullmatch(code) else None
        if text.startswith(">"):
            return _parse_startup_echo(text)
        if text.startswith("$"):
            match = _SETTING_RE.fullmatch(text)
            return SettingLine(match.group(1), match.group(2)) if match else None
        match = _BANNER_RE.fullmatch(text)
        if match:
            flavor: Literal["grbl", "grblhal"] = (
                "grblhal" if match.group(1).lower() == "grblhal" else "grbl"
            )
            return Banner(version=match.group(2), flavor=flavor, text=text)
        return None


def _int_or_none(text: str) -> int | None:
    text = text.strip()
    return int(text) if _INT_RE.fullmatch(text) else None


def _float_or_none(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _floats(text: str) -> tuple[float, ...] | None:
    values = [_float_or_none(part) for part in text.split(",")]
    if not values or any(v is None for v in values):
        return None
    return tuple(v for v in values if v is not None)


def _split_ver(text: str) -> tuple[str, str, str]:
    # "1.1h.20190830:" or "1.1f.20230129:user string"
    head, _, user = text.partition(":")
    version, _, build = head.rpartition(".")
    if not version:  # no dot at all: the whole thing is the version
        version, build = build, ""
    return version, build, user


def _parse_bracket(text: str) -> GrblEvent | None:
    if not text.endswith("]"):
        return None
    inner = text[1:-1]
    tag, sep, rest = inner.partition(":")
    if not sep:
        return Feedback("", inner)
    if tag == "MSG":
        return Message(rest)
    return Feedback(tag, rest)


def _parse_startup_echo(text: str) -> StartupEcho | None:
    line, sep, result = text[1:].rpartition(":")
    if result == "ok" and sep:
        return StartupEcho(line)
    # ">G54G21:error:20": rpartition split the code off, split once more.
    line, sep, word = line.rpartition(":")
    if sep and word == "error" and _INT_RE.fullmatch(result):
        return StartupEcho(line, int(result))
    return None


def _parse_status(text: str) -> GrblEvent | None:
    if not text.endswith(">") or len(text) < 3:
        return None
    parts = text[1:-1].split("|")
    state, _, substate = parts[0].partition(":")
    if not state or not state.isalpha():
        return None
    values: dict[str, object] = {"state": state, "substate": substate or None}
    extra: dict[str, str] = {}
    for part in parts[1:]:
        if not part:
            continue
        name, _, value = part.partition(":")
        if not _apply_field(values, name, value):
            extra[name] = value
    return StatusReport(extra=extra, **values)  # type: ignore[arg-type]


def _apply_field(values: dict[str, object], name: str, value: str) -> bool:
    """Store one known field; False if the field is unknown or its value malformed."""
    if name in ("MPos", "WPos", "WCO"):
        pos = _floats(value)
        if pos is None:
            return False
        values[name.lower()] = pos
        return True
    if name == "FS":
        nums = _floats(value)
        if nums is None or len(nums) < 2:
            return False
        values["feed"], values["spindle"] = nums[0], nums[1]
        return True
    if name == "F":
        feed = _float_or_none(value)
        if feed is None:
            return False
        values["feed"] = feed
        return True
    if name == "Ov":
        ints = [_int_or_none(v) for v in value.split(",")]
        if len(ints) != 3 or any(v is None for v in ints):
            return False
        values["overrides"] = tuple(ints)
        return True
    if name == "Bf":
        ints = [_int_or_none(v) for v in value.split(",")]
        if len(ints) != 2 or any(v is None for v in ints):
            return False
        values["buffer"] = tuple(ints)
        return True
    if name == "Ln":
        number = _int_or_none(value)
        if number is None:
            return False
        values["line_number"] = number
        return True
    if name == "A":
        values["accessories"] = value
        return True
    if name == "Pn":
        values["pins"] = value
        return True
    return False


# --------------------------------------------------------------------------- cache


class StatusCache:
    """Completes status reports with what Grbl only sends now and then.

    - ``WCO:``, ``Ov:`` and ``A:`` persist when absent: absence means "unchanged".
    - ``A:`` only rides with ``Ov:``: an ``Ov:`` report without ``A:`` means nothing is on.
    - ``WPos = MPos - WCO`` (and ``MPos = WPos + WCO``) when only one is reported.
    - :meth:`reset` on a banner (soft reset): the next reports carry fresh values.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.wco: Position | None = None
        self.overrides: tuple[int, int, int] | None = None
        self.accessories: str | None = None

    def apply(self, report: StatusReport) -> StatusReport:
        if report.wco is not None:
            self.wco = report.wco
        if report.overrides is not None:
            self.overrides = report.overrides
            self.accessories = report.accessories or ""
        elif report.accessories is not None:  # not seen on 1.1h, but believe it
            self.accessories = report.accessories
        wco = self.wco
        mpos, wpos = report.mpos, report.wpos
        if wco is not None:
            if mpos is not None and wpos is None:
                wpos = tuple(round(m - o, 4) for m, o in zip(mpos, wco, strict=False))
            elif wpos is not None and mpos is None:
                mpos = tuple(round(w + o, 4) for w, o in zip(wpos, wco, strict=False))
        return dataclasses.replace(
            report,
            mpos=mpos,
            wpos=wpos,
            wco=wco,
            overrides=self.overrides,
            accessories=self.accessories,
        )
