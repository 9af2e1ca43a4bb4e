"""The Marlin device session: handshake, auto-reports (or polling), and one command in flight.

Usage::

    link = lambda: SerialLink("/dev/ttyACM0", 115200)
    async with MarlinSession("printer-1", link, clock=SystemClock()) as session:
        async for item in session.readings():
            records = tracker.update(item)

The I/O is the shared :class:`~shopfloor.agent.sessions.polling.PollingSession`; this module
is the sans-IO :class:`MarlinDriver`. On every connection (and after a ``start`` banner) it
sends ``M110 N0`` (numbered mode), then ``M115``; from the ``Cap:`` lines it turns on
``M155 S<n>`` (``AUTOREPORT_TEMP``) and ``M27 S<n>`` (``AUTOREPORT_SD_STATUS``), and polls
``M105``/``M27`` every ``status_poll_s`` for what the firmware cannot auto-report. It asks
``M27 C`` when a print starts or stops (the file name; paused or ended) and ``M31`` during a
print. Only read-only commands are ever sent, and at most one at a time: the next goes
after the previous ``ok``. ``Resend: n`` is answered from the history of numbered lines (and
one ``ok`` after it is swallowed when ``ok_after_resend``). A command unanswered for
``command_timeout_s`` is given up, unless ``busy:`` keep-alives or heat-wait lines say the
printer is working through a blocking command. Auto-reports that stop are turned on again.

``poll()`` is called every ``poll_interval_s`` by the session; the driver counts those ticks
instead of reading a clock.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Unpack

from shopfloor.agent.adapters.marlin import MarlinAdapter
from shopfloor.agent.clock import Clock
from shopfloor.agent.links.base import Link
from shopfloor.agent.protocols.marlin import (
    Busy,
    EchoMessage,
    Garbage,
    LineNumbering,
    MarlinProtocol,
    Ok,
    Resend,
    SdNotPrinting,
    SdPrinting,
    Start,
    TemperatureReport,
)
from shopfloor.agent.sessions.base import ProtocolEntry, SessionContext, SessionItem
from shopfloor.agent.sessions.polling import (
    PollingSession,
    SessionError,
    SessionTuning,
    machine_timing,
)

if TYPE_CHECKING:
    from shopfloor.agent.config import ConfigTable

__all__ = [
    "ENTRY",
    "MarlinDriver",
    "MarlinOptions",
    "MarlinSession",
    "SessionError",
    "parse_options",
]

_log = logging.getLogger(__name__)

_OPTION_KEYS: Final = (
    "auto_report_s",
    "status_poll_s",
    "line_numbers",
    "ok_after_resend",
    "command_timeout_s",
    "print_time_poll_s",
)
#: Auto-reports are considered stopped after this many intervals without one.
_AUTO_REPORT_GRACE: Final = 3
_QUEUE_MAX: Final = 16


@dataclass(frozen=True, slots=True)
class MarlinOptions:
    """``[machines.options]`` for ``protocol = "marlin"``.

    - ``auto_report_s`` (2): M155/M27 S interval when the firmware has the AUTOREPORT caps;
      0 never uses auto-reports (always poll).
    - ``status_poll_s`` (2.0): how often to poll M105/M27 when a report cannot be automatic.
    - ``line_numbers`` (true): send ``N<n> ... *<cs>`` lines and answer ``Resend:``.
    - ``ok_after_resend`` (true): the firmware sends ``ok`` after ``Resend:`` (current 2.x;
      one older 2.0 revision does not, serial-protocols.md section 2.2).
    - ``command_timeout_s`` (5.0): give up a command that got no ``ok`` in this time (a
      garbled ``ok``); ``busy:`` keep-alives and heat-wait lines restart the clock, so a
      command waiting behind M109 or a long move is never given up.
    - ``print_time_poll_s`` (10.0): M31 during a print; 0 never asks.
    """

    auto_report_s: int = 2
    status_poll_s: float = 2.0
    line_numbers: bool = True
    ok_after_resend: bool = True
    command_timeout_s: float = 5.0
    print_time_poll_s: float = 10.0


def parse_options(table: ConfigTable) -> MarlinOptions:
    """Validate ``[machines.options]`` for Marlin (errors name the file, key and fix)."""
    table.check_keys(_OPTION_KEYS)
    return MarlinOptions(
        auto_report_s=table.integer("auto_report_s", 2, low=0, high=60),
        status_poll_s=table.number("status_poll_s", 2.0, low=0.2, high=600),
        line_numbers=table.get("line_numbers", bool, True, what="true or false"),
        ok_after_resend=table.get("ok_after_resend", bool, True, what="true or false"),
        command_timeout_s=table.number("command_timeout_s", 5.0, low=1.0, high=3600),
        print_time_poll_s=table.number("print_time_poll_s", 10.0, low=0.0, high=3600),
    )


@dataclass(slots=True)
class _Command:
    text: str
    raw: bytes | None = None  # pre-encoded (a resend); else encoded when sent


class MarlinDriver:
    """The sans-IO Marlin half of a polling session. See the module docstring."""

    name = "marlin"

    def __init__(
        self,
        options: MarlinOptions | None = None,
        *,
        poll_interval_s: float = 0.25,
        max_line_bytes: int = 512,
    ) -> None:
        if poll_interval_s <= 0:
            raise ValueError("poll_interval_s must be positive")
        self.options = options or MarlinOptions()
        self.adapter = MarlinAdapter()
        self._tick_s = poll_interval_s
        self._max_line_bytes = max_line_bytes
        #: Counters for tests and logs.
        self.timeouts = 0
        self.resends = 0
        self.sent: deque[str] = deque(maxlen=64)
        self._init_connection()

    def _ticks(self, seconds: float) -> int:
        return max(1, math.ceil(seconds / self._tick_s - 1e-9))

    def _init_connection(self) -> None:
        self._protocol = MarlinProtocol(self._max_line_bytes)
        self._numbering = LineNumbering()
        self._queue: deque[_Command] = deque()
        self._in_flight: _Command | None = None
        self._waited = 0
        self._swallow_ok = False
        self._caps_known = False
        self._auto_temp = False
        self._auto_sd = False
        self._sd_supported = True
        self._sd_seen_since_send = False
        self._unknown_since_send = False
        self._m27_bare = 0
        self._since_temp = 0
        self._since_sd = 0
        self._since_temp_poll = 0
        self._since_sd_poll = 0
        self._since_m31 = 0
        self._handshake()

    def _handshake(self) -> None:
        self._queue.clear()
        self._in_flight = None
        self._caps_known = False
        self._auto_temp = self._auto_sd = False
        if self.options.line_numbers:
            self._queue.append(_Command("M110 N0", self._numbering.reset(0)))
        self._queue.append(_Command("M115"))

    # -- PollDriver

    def reset(self) -> None:
        self._init_connection()
        self.adapter.new_connection()

    def poll(self) -> bytes:
        self._since_temp += 1
        self._since_sd += 1
        self._since_temp_poll += 1
        self._since_sd_poll += 1
        self._since_m31 += 1
        if self._in_flight is not None:
            self._waited += 1
            if self._waited < self._ticks(self.options.command_timeout_s):
                return b""
            lost = self._in_flight.text
            _log.debug("marlin: no ok for %r; giving up on it", lost)
            self.timeouts += 1
            self._in_flight = None
            if not self._caps_known:
                self._handshake()  # nothing is known yet: start from the top
            else:
                if lost == "M27 C":
                    self.adapter.wants_file_name = True
                if self.options.line_numbers:
                    # We cannot tell whether the line arrived: start the numbering again.
                    self._queue.appendleft(_Command("M110 N0", self._numbering.reset(0)))
        if not self._queue:
            self._schedule()
        if not self._queue:
            return b""
        command = self._queue.popleft()
        raw = command.raw
        if raw is None:
            if self.options.line_numbers:
                raw = self._numbering.encode(command.text)
            else:
                raw = MarlinProtocol.command(command.text)
        self._in_flight = command
        self._waited = 0
        self._sd_seen_since_send = False
        self._unknown_since_send = False
        self.sent.append(command.text)
        return raw

    def _schedule(self) -> None:
        """Queue what is due: file name checks, fallback polls, auto-report restarts, M31."""
        if not self._caps_known:
            return
        options = self.options
        adapter = self.adapter
        if adapter.wants_file_name and self._sd_supported:
            adapter.wants_file_name = False
            self._enqueue("M27 C")
            return
        interval = options.auto_report_s
        grace = self._ticks(interval * _AUTO_REPORT_GRACE) if interval else 0
        if self._auto_temp and self._since_temp > grace:
            self._since_temp = 0
            self._enqueue(f"M155 S{interval}")
        elif not self._auto_temp and self._since_temp_poll >= self._ticks(options.status_poll_s):
            self._since_temp_poll = 0
            self._enqueue("M105")
        if self._sd_supported:
            if self._auto_sd and self._since_sd > grace and adapter.job is not None:
                # While printing, the SD auto-report must keep coming; re-arm it.
                self._since_sd = 0
                self._enqueue(f"M27 S{interval}")
            elif not self._auto_sd and self._since_sd_poll >= self._ticks(options.status_poll_s):
                self._since_sd_poll = 0
                self._enqueue("M27")
        if (
            options.print_time_poll_s > 0
            and adapter.job is not None
            and self._since_m31 >= self._ticks(options.print_time_poll_s)
        ):
            self._since_m31 = 0
            self._enqueue("M31")

    def _enqueue(self, text: str) -> None:
        if len(self._queue) < _QUEUE_MAX and all(c.text != text for c in self._queue):
            self._queue.append(_Command(text))

    def feed(self, data: bytes, ts_ms: int, mono_ms: int) -> list[SessionItem]:
        items: list[SessionItem] = []
        for event in self._protocol.feed(data):
            if isinstance(event, Ok):
                if self._swallow_ok:
                    self._swallow_ok = False
                else:
                    self._on_ok()
            elif isinstance(event, Resend):
                self._on_resend(event.line_number)
            elif isinstance(event, Start):
                self._numbering = LineNumbering()
                self._handshake()
                self._swallow_ok = False
            elif isinstance(event, Busy):
                self._waited = 0
            elif isinstance(event, TemperatureReport):
                self._since_temp = 0
                if event.kind == "wait":
                    self._waited = 0
            elif isinstance(event, SdPrinting | SdNotPrinting):
                self._since_sd = 0
                self._sd_seen_since_send = True
            elif isinstance(event, EchoMessage) and event.text.startswith("Unknown command"):
                self._unknown_since_send = True
            elif isinstance(event, Garbage):
                _log.debug("marlin: %s: %r", event.reason, event.raw)
            items.extend(self.adapter.translate(event, ts_ms=ts_ms, mono_ms=mono_ms))
        return items

    def _on_ok(self) -> None:
        command, self._in_flight = self._in_flight, None
        if command is None:
            return
        text = command.text
        if text == "M115":
            self._configure()
        elif text == "M27" and not self._sd_seen_since_send:
            if self._unknown_since_send:
                self._sd_supported = False  # built without SD support
                self.adapter.note_no_sd()
            else:
                # A bare ok (the status line lost to noise?): believe it the second time.
                self._m27_bare += 1
                if self._m27_bare >= 2:
                    self.adapter.note_no_sd()
        elif text == "M27":
            self._m27_bare = 0

    def _configure(self) -> None:
        """After M115: turn on what the firmware can auto-report, then ask the SD status."""
        caps = self.adapter.capabilities
        interval = self.options.auto_report_s
        self._caps_known = True
        self._sd_supported = caps.get("SDCARD", True)
        if interval > 0 and caps.get("AUTOREPORT_TEMP"):
            self._auto_temp = True
            self._since_temp = 0
            self._enqueue(f"M155 S{interval}")
        else:
            self._enqueue("M105")
        if self._sd_supported:
            if interval > 0 and caps.get("AUTOREPORT_SD_STATUS"):
                self._auto_sd = True
                self._since_sd = 0
                self._enqueue(f"M27 S{interval}")
            self._enqueue("M27")
        else:
            self.adapter.note_no_sd()
        self._since_temp_poll = self._since_sd_poll = 0

    def _on_resend(self, number: int) -> None:
        self.resends += 1
        self._swallow_ok = self.options.ok_after_resend
        command, self._in_flight = self._in_flight, None
        lines = self._numbering.resend(number) if self.options.line_numbers else None
        if lines is not None and len(lines) == 1 and command is not None:
            self._queue.appendleft(_Command(command.text, lines[0]))
            return
        # Not the line we have in flight: start the numbering again, then redo the command.
        if command is not None and command.raw is None:
            self._queue.appendleft(_Command(command.text))
        if self.options.line_numbers:
            self._queue.appendleft(_Command("M110 N0", self._numbering.reset(0)))


class MarlinSession(PollingSession):
    """A :class:`PollingSession` with a :class:`MarlinDriver`."""

    def __init__(
        self,
        machine_id: str,
        open_link: Callable[[], Link],
        *,
        clock: Clock,
        options: MarlinOptions | None = None,
        poll_interval_s: float = 0.25,
        silence_timeout_s: float = 6.0,
        max_line_bytes: int = 512,
        **tuning: Unpack[SessionTuning],
    ) -> None:
        self._marlin = MarlinDriver(
            options, poll_interval_s=poll_interval_s, max_line_bytes=max_line_bytes
        )
        super().__init__(
            machine_id,
            open_link,
            self._marlin,
            clock=clock,
            poll_interval_s=poll_interval_s,
            silence_timeout_s=silence_timeout_s,
            **tuning,
        )

    @property
    def marlin(self) -> MarlinDriver:
        return self._marlin

    @property
    def adapter(self) -> MarlinAdapter:
        return self._marlin.adapter


def _open_session(ctx: SessionContext) -> MarlinSession:
    machine = ctx.machine
    options = machine.options if isinstance(machine.options, MarlinOptions) else None
    return MarlinSession(machine.id, ctx.open_link, options=options, **machine_timing(ctx))


#: Marlin 2.x. The stock Configuration.h says 250000 baud, but most vendors ship 115200
#: (serial-protocols.md section 2.1): 115200 is the default, set ``baudrate`` otherwise.
ENTRY: Final = ProtocolEntry(
    name="marlin",
    open_session=_open_session,
    parse_options=parse_options,
    min_poll_interval_s=0.05,
    default_baudrate=115200,
)
