"""Haas machine data collection (Q commands) as a sans-IO protocol, in the style of h11.

:class:`HaasProtocol` encodes queries (:meth:`HaasProtocol.query`: ``?Q500\\r\\n``,
``?Q600 3901\\r\\n``) and turns the bytes a Haas control sends back into typed, frozen events
(:meth:`HaasProtocol.feed`). It never raises on input: a reply it cannot make sense of comes out
as a :class:`Garbage` event and the parser resyncs at the next frame boundary. Its buffer never
holds more than ``max_reply_bytes``.

Framing (serial-protocols.md §3.3, [3P]/[UNCONFIRMED], so the parser is tolerant rather than
strict): a reply may be wrapped in STX (0x02) ... ETB (0x17), is followed by CR LF, and the
control then prints a ``>`` prompt. Over Ethernet the same payload arrives as ``>PAYLOAD\\r\\n``.
A frame ends at ETB, CR or LF; an STX starts a new frame and throws away what came before it
(a prompt silently, anything else as garbage); leading ``>`` and blanks are dropped.

Reply formats (§3.2, [3P] except Q100-Q104): ``LABEL, VALUE``, split on the first comma; Q500
is ``PROGRAM, O01234, IDLE, PARTS, 152`` when stopped and ``STATUS, BUSY`` (or ``STATUS BUSY``)
while running. The reply to a Q600 read (``MACRO, 12.3456``) does not name the variable: the
caller knows what it asked (one request is outstanding at a time).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Final, Literal

from shopfloor.agent.errors import ProtocolError
from shopfloor.agent.protocols.lines import GARBAGE_KEEP as _GARBAGE_KEEP

__all__ = [
    "ETB",
    "STX",
    "CycleTime",
    "Garbage",
    "HaasEvent",
    "HaasProtocol",
    "LineEnding",
    "MacroValue",
    "Mode",
    "Model",
    "PartsCounter",
    "ProgramStatus",
    "Rejected",
    "SerialNumber",
    "SoftwareVersion",
    "TimeCounter",
    "ToolChanges",
    "ToolInUse",
    "format_duration",
    "frame_reply",
]

STX: Final = 0x02
ETB: Final = 0x17
_CR: Final = 0x0D
_LF: Final = 0x0A

LineEnding = Literal["crlf", "lf", "cr"]
_ENDINGS: Final[dict[str, bytes]] = {"crlf": b"\r\n", "lf": b"\n", "cr": b"\r"}


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class SerialNumber:
    """Q100: ``SERIAL NUMBER, 1098765``."""

    serial: str


@dataclass(frozen=True, slots=True)
class SoftwareVersion:
    """Q101: ``SOFTWARE VERSION, 100.21.000.1100``."""

    version: str


@dataclass(frozen=True, slots=True)
class Model:
    """Q102: ``MODEL, VF-2``."""

    model: str


@dataclass(frozen=True, slots=True)
class Mode:
    """Q104: ``MODE, (MEM)``; ``mode`` is the word without parentheses (``ZERO RET``)."""

    mode: str


@dataclass(frozen=True, slots=True)
class ToolChanges:
    """Q200: ``TOOL CHANGES, 4821``."""

    count: int


@dataclass(frozen=True, slots=True)
class ToolInUse:
    """Q201: ``USING TOOL, 7``."""

    tool: int


@dataclass(frozen=True, slots=True)
class TimeCounter:
    """Q300 (``P.O. TIME``, power-on) or Q301 (``C.S. TIME``, motion), total seconds."""

    which: Literal["power_on", "motion"]
    seconds: int


@dataclass(frozen=True, slots=True)
class CycleTime:
    """Q303 (``LAST CYCLE``) or Q304 (``PREV CYCLE``), seconds."""

    which: Literal["last", "previous"]
    seconds: int


@dataclass(frozen=True, slots=True)
class PartsCounter:
    """Q402 / Q403: ``M30 #1, 152`` (``counter`` is 1 or 2)."""

    counter: int
    count: int


@dataclass(frozen=True, slots=True)
class ProgramStatus:
    """Q500. Stopped: program (``O01234``, ``MDI``), status word (``IDLE``, ``FEED HOLD``,
    ``ALARM ON``) and the parts counter. Running: ``STATUS, BUSY``: status ``BUSY``, program and
    parts None."""

    status: str
    program: str | None = None
    parts: int | None = None


@dataclass(frozen=True, slots=True)
class MacroValue:
    """Q600: ``MACRO, 12.3456``: the value of the variable that was asked for."""

    value: float


@dataclass(frozen=True, slots=True)
class Rejected:
    """A reply that says the command was not understood (``UNKNOWN``, ``INVALID COMMAND``).

    [UNCONFIRMED] wording; it still answers the outstanding request."""

    text: str


@dataclass(frozen=True, slots=True)
class Garbage:
    """A frame we could not parse, an over-long frame, or bytes that are not ASCII.

    Never raised: the parser reports it and resyncs. ``raw`` is the offending frame (truncated),
    ``reason`` says what was wrong with it.
    """

    raw: bytes
    reason: str

    @property
    def error(self) -> ProtocolError:
        """The same problem as an exception, for code that wants to raise or log it."""
        return ProtocolError(self.reason, raw=self.raw)


HaasEvent = (
    SerialNumber
    | SoftwareVersion
    | Model
    | Mode
    | ToolChanges
    | ToolInUse
    | TimeCounter
    | CycleTime
    | PartsCounter
    | ProgramStatus
    | MacroValue
    | Rejected
    | Garbage
)


# --------------------------------------------------------------------------- helpers

_QUERY_RE: Final = re.compile(r"Q([0-9]{3})(?: ([0-9]{1,5}))?")
_INT_RE: Final = re.compile(r"[0-9]{1,12}")
_DURATION_RE: Final = re.compile(r"([0-9]{1,9}):([0-5]?[0-9]):([0-5]?[0-9])")
_REJECT_WORDS: Final = ("UNKNOWN", "INVALID")


def format_duration(seconds: int) -> str:
    """Seconds as Haas prints them: ``01234:05:06`` (hours padded to 5 digits)."""
    hours, rest = divmod(max(0, int(seconds)), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:05d}:{minutes:02d}:{secs:02d}"


def frame_reply(payload: str, *, stx_etb: bool = True, prompt: bool = True) -> bytes:
    """How a Haas control frames ``payload`` (for simulators and tests).

    ``stx_etb``: STX payload ETB CR LF (RS-232 codecs) else the payload and CR LF; ``prompt``:
    a ``>`` follows (RS-232, waiting for the next command) or, without STX/ETB, precedes it
    (Ethernet adapters match ``^>PAYLOAD``).
    """
    body = payload.encode("ascii")
    if stx_etb:
        out = bytes((STX,)) + body + bytes((ETB,)) + b"\r\n"
        return out + b">" if prompt else out
    return (b">" if prompt else b"") + body + b"\r\n"


def _duration(text: str) -> int | None:
    match = _DURATION_RE.fullmatch(text.strip())
    if match is None:
        return None
    hours, minutes, seconds = (int(g) for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def _int(text: str) -> int | None:
    text = text.strip()
    return int(text) if _INT_RE.fullmatch(text) else None


def _float(text: str) -> float | None:
    text = text.strip()
    if not text or len(text) > 40:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _label(text: str) -> str:
    """``C.S. TIME`` and ``C.S.TIME`` alike: upper case without blanks."""
    return "".join(text.split()).upper()


# --------------------------------------------------------------------------- parser


class HaasProtocol:
    """Queries out, :data:`HaasEvent` objects in. See the module docstring.

    ``prefix`` is what goes before ``Q`` (``"?"``; one RS-232 adapter sends none) and
    ``line_ending`` what ends a query (CR LF by default, Haas Setting 25 may say LF only).
    """

    def __init__(
        self,
        *,
        max_reply_bytes: int = 256,
        prefix: Literal["?", ""] = "?",
        line_ending: LineEnding = "crlf",
    ) -> None:
        if max_reply_bytes < 16:
            raise ValueError("max_reply_bytes must be at least 16")
        if line_ending not in _ENDINGS:
            raise ValueError(f"line_ending must be one of {', '.join(_ENDINGS)}")
        self.max_reply_bytes = max_reply_bytes
        self.prefix = prefix
        self.line_ending = line_ending
        self._buf = bytearray()
        self._discarding = False

    @property
    def buffered(self) -> int:
        """Bytes held while waiting for the end of a frame (always <= ``max_reply_bytes``)."""
        return len(self._buf)

    # -- encoder

    def query(self, command: str) -> bytes:
        """Encode ``"Q500"`` or ``"Q600 3901"`` as ``?Q500\\r\\n``.

        Anything that is not ``Q`` + three digits (+ a variable number) is a programming error
        and raises :class:`ValueError`: only queries are sent, never E (write) commands.
        """
        text = command.strip().upper().removeprefix("?")
        match = _QUERY_RE.fullmatch(text)
        if match is None or (match.group(1) == "600") != (match.group(2) is not None):
            raise ValueError(f"not a Haas Q query: {command!r} (expected e.g. 'Q500', 'Q600 3901')")
        return f"{self.prefix}{text}".encode("ascii") + _ENDINGS[self.line_ending]

    # -- decoder

    def feed(self, data: bytes) -> list[HaasEvent]:
        """Add received bytes; return the events of every frame they completed."""
        events: list[HaasEvent] = []
        for byte in data:
            if byte == STX:
                self._on_stx(events)
            elif byte in (ETB, _CR, _LF):
                self._end_frame(events)
            elif self._discarding:
                continue
            elif len(self._buf) >= self.max_reply_bytes:
                keep = min(_GARBAGE_KEEP, len(self._buf))
                events.append(
                    Garbage(
                        bytes(self._buf[:keep]),
                        f"reply longer than {self.max_reply_bytes} bytes, discarded",
                    )
                )
                self._buf.clear()
                self._discarding = True
            else:
                self._buf.append(byte)
        return events

    def _on_stx(self, events: list[HaasEvent]) -> None:
        if not self._discarding and _strip(bytes(self._buf)):
            events.append(Garbage(bytes(self._buf[:_GARBAGE_KEEP]), "bytes before STX"))
        self._buf.clear()
        self._discarding = False

    def _end_frame(self, events: list[HaasEvent]) -> None:
        if self._discarding:
            self._discarding = False
            self._buf.clear()
            return
        raw = bytes(self._buf)
        self._buf.clear()
        if not _strip(raw):
            return
        events.append(parse_reply(raw))


def _strip(raw: bytes) -> bytes:
    """Drop the ``>`` prompt(s) and blanks around a frame."""
    return raw.strip(b" \t").lstrip(b">").strip(b" \t")


def parse_reply(raw: bytes) -> HaasEvent:
    """One frame's payload (framing already removed, prompt allowed) to an event."""
    body = _strip(raw)
    if any(b > 0x7E or (b < 0x20 and b != 0x09) for b in body):
        return Garbage(raw[:_GARBAGE_KEEP], "non-ASCII or control bytes in reply")
    text = body.decode("ascii").strip()
    event = _parse_text(text)
    if event is None:
        return Garbage(raw[:_GARBAGE_KEEP], "unrecognised reply")
    return event


def _parse_text(text: str) -> HaasEvent | None:
    head, comma, value = text.partition(",")
    label = _label(head)
    value = value.strip()
    if not comma:
        if label.startswith("STATUS") and len(label) > 6:
            # "STATUS BUSY" without a comma (one simulator)
            return ProgramStatus(status=" ".join(text.split()[1:]).upper())
        if any(word in label for word in _REJECT_WORDS):
            return Rejected(text)
        return None
    if label == "PROGRAM":
        return _parse_q500(text)
    if label == "STATUS":
        return ProgramStatus(status=" ".join(value.split()).upper()) if value else None
    if label == "SERIALNUMBER":
        return SerialNumber(value) if value else None
    if label == "SOFTWAREVERSION":
        return SoftwareVersion(value) if value else None
    if label == "MODEL":
        return Model(value) if value else None
    if label == "MODE":
        mode = " ".join(value.strip("()").split()).upper()
        return Mode(mode) if mode else None
    if label == "TOOLCHANGES":
        count = _int(value)
        return None if count is None else ToolChanges(count)
    if label == "USINGTOOL":
        tool = _int(value)
        return None if tool is None else ToolInUse(tool)
    if label in ("P.O.TIME", "C.S.TIME"):
        seconds = _duration(value)
        if seconds is None:
            return None
        return TimeCounter("power_on" if label == "P.O.TIME" else "motion", seconds)
    if label in ("LASTCYCLE", "PREVCYCLE"):
        seconds = _duration(value)
        if seconds is None:
            return None
        return CycleTime("last" if label == "LASTCYCLE" else "previous", seconds)
    if label in ("M30#1", "M30#2"):
        count = _int(value)
        return None if count is None else PartsCounter(int(label[-1]), count)
    if label == "MACRO":
        number = _float(value)
        return None if number is None else MacroValue(number)
    if any(word in label for word in _REJECT_WORDS):
        return Rejected(text)
    return None


def _parse_q500(text: str) -> ProgramStatus | None:
    fields = [" ".join(part.split()) for part in text.split(",")]
    if len(fields) < 3 or not fields[1] or not fields[2]:
        return None
    program, status = fields[1], fields[2].upper()
    parts: int | None = None
    rest = fields[3:]
    if rest:
        if len(rest) != 2 or _label(rest[0]) != "PARTS":
            return None
        parts = _int(rest[1])
        if parts is None:
            return None
    return ProgramStatus(status=status, program=program, parts=parts)
