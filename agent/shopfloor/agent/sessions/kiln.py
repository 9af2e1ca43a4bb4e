"""The kiln session: polls a PID / ramp-soak controller over Modbus RTU, one request at a time.

Usage::

    profile = load_profile("cn7500")
    async with KilnSession("kiln-1", link, profile, clock=SystemClock()) as session:
        async for item in session.readings():
            records = tracker.update(item)

:class:`KilnDriver` is the sans-IO half of a
:class:`~shopfloor.agent.sessions.polling.PollingSession`: it reads the profile's register
blocks round-robin, one request outstanding, and after each full round hands the words
to :class:`~shopfloor.agent.adapters.kiln.KilnAdapter`. A reply that does not come
within ``reply_timeout_polls`` polls counts as a timeout and the round goes on; a round
with a missing reply yields no reading, so a silent controller goes OFFLINE through the
session's silence timeout. Illegal function/address exceptions mark a block unsupported
(logged once) and it is skipped from then on. It never writes a register.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Unpack

from shopfloor.agent.adapters.kiln import FiringSchedule, FiringSegment, KilnAdapter
from shopfloor.agent.adapters.kiln_profile import (
    PARITIES,
    Block,
    KilnProfile,
    bundled_profiles,
    load_profile,
)
from shopfloor.agent.clock import Clock
from shopfloor.agent.config import ConfigTable
from shopfloor.agent.errors import ConfigError
from shopfloor.agent.links.base import Link
from shopfloor.agent.links.serial import SerialLink
from shopfloor.agent.protocols.modbus_rtu import (
    BitsRead,
    ExceptionReply,
    FrameError,
    ModbusRtuClient,
    RegistersRead,
)
from shopfloor.agent.sessions.base import ProtocolEntry, SessionContext, SessionItem
from shopfloor.agent.sessions.polling import PollingSession, SessionTuning, machine_timing

__all__ = [
    "BUNDLED_SCHEDULES",
    "ENTRY",
    "KilnDriver",
    "KilnOptions",
    "KilnSession",
    "parse_options",
]

_log = logging.getLogger(__name__)

#: Exception codes that mean "this map does not fit the device" (not a passing hiccup).
_UNSUPPORTED: Final = frozenset({0x01, 0x02})

#: Illustrative electric-kiln schedules (fact sheet 4.6): cone 6 glaze ends at 1222 C
#: (2232 F at 60 C/h), cone 04 bisque at 1060 C (1940 F).
BUNDLED_SCHEDULES: Final = {
    "cone6-glaze": FiringSchedule(
        "cone6-glaze",
        (
            FiringSegment(111.0, 538.0),  # 200 F/h to 1000 F
            FiringSegment(222.0, 1149.0),  # 400 F/h to 2100 F
            FiringSegment(67.0, 1222.0, 10.0),  # 120 F/h to 2232 F, hold 10 min
            FiringSegment(83.0, 816.0),  # controlled cool, 150 F/h to 1500 F
        ),
    ),
    "bisque": FiringSchedule(
        "bisque",
        (
            FiringSegment(56.0, 93.0, 60.0),  # candling: 100 F/h to 200 F, hold 1 h
            FiringSegment(111.0, 566.0),  # 200 F/h to 1050 F (water smoking off)
            FiringSegment(167.0, 1000.0),  # 300 F/h to 1832 F
            FiringSegment(60.0, 1060.0, 5.0),  # 108 F/h to cone 04, hold 5 min
        ),
    ),
}


@dataclass(frozen=True, slots=True)
class KilnOptions:
    """``[machines.options]`` of a ``modbus_kiln`` machine."""

    profile: KilnProfile
    device_id: int = 1
    parity: str = "N"
    stopbits: int = 1
    temperature_unit: str = "C"
    reply_timeout_s: float = 1.0
    over_temperature_c: float | None = None
    soak_window_c: float = 10.0
    idle_setpoint_c: float = 40.0
    trend_window_s: float = 90.0
    progress_interval_s: float = 5.0
    schedule: FiringSchedule | None = None


_OPTION_KEYS: Final = (
    "profile",
    "device_id",
    "parity",
    "stopbits",
    "temperature_unit",
    "reply_timeout_s",
    "over_temperature_c",
    "soak_window_c",
    "idle_setpoint_c",
    "trend_window_s",
    "progress_interval_s",
    "schedule",
)


def parse_options(t: ConfigTable) -> KilnOptions:
    """Validate a kiln machine's ``[machines.options]``."""
    t.check_keys(_OPTION_KEYS)
    name = t.get("profile", str, "cn7500", what='"cn7500"')
    try:
        profile = load_profile(name, base=t.base)
    except ConfigError as exc:
        raise t.error(
            "profile",
            f"{exc}",
            f"Use one of {', '.join(bundled_profiles())} or a path to a register map.",
        ) from exc
    over = t.optional("over_temperature_c", float, what="a temperature in C")
    if over is not None and not 0 < over <= 2000:
        raise t.error("over_temperature_c", f"{over:g} is out of range", "Use 1 to 2000 C.")
    return KilnOptions(
        profile=profile,
        device_id=t.integer("device_id", 1, low=1, high=247),
        parity=t.choice("parity", profile.parity, PARITIES),
        stopbits=t.integer("stopbits", profile.stopbits, low=1, high=2),
        temperature_unit=t.choice("temperature_unit", "C", frozenset({"C", "F"})),
        reply_timeout_s=t.number("reply_timeout_s", 1.0, low=0.05, high=30),
        over_temperature_c=over,
        soak_window_c=t.number("soak_window_c", 10.0, low=0.1, high=200, unit="C"),
        idle_setpoint_c=t.number("idle_setpoint_c", 40.0, low=-50, high=500, unit="C"),
        trend_window_s=t.number("trend_window_s", 90.0, low=0.1, high=3600),
        progress_interval_s=t.number("progress_interval_s", 5.0, low=0.5, high=3600),
        schedule=_schedule(t),
    )


def _schedule(t: ConfigTable) -> FiringSchedule | None:
    if "schedule" not in t.data:
        return None
    raw = t.data["schedule"]
    if isinstance(raw, str):
        if raw not in BUNDLED_SCHEDULES:
            raise t.error(
                "schedule",
                f"{raw!r} is not a bundled schedule",
                f"Use one of {', '.join(sorted(BUNDLED_SCHEDULES))}, or a table with name and "
                "segments.",
            )
        return BUNDLED_SCHEDULES[raw]
    st = t.table("schedule", required=True)
    st.check_keys(("name", "segments"))
    name = st.get("name", str, None, what='"cone6-glaze"')
    items = st.get("segments", list, None, what="[{ramp_c_per_h = 100, target_c = 600}]")
    if not items:
        raise st.error("segments", "is empty", "List at least one segment.")
    segments = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise st.error(
                f"segments[{index}]",
                "must be a table",
                "Write it as {ramp_c_per_h = 100, target_c = 600, hold_min = 0}.",
            )
        seg = ConfigTable(item, st.key(f"segments[{index}]"), st.source, st.base)
        seg.check_keys(("ramp_c_per_h", "target_c", "hold_min"))
        segments.append(
            FiringSegment(
                rate_c_per_h=seg.number(
                    "ramp_c_per_h",
                    None,  # type: ignore[arg-type]
                    low=1,
                    high=2000,
                    unit="C/h",
                ),
                target_c=seg.number(
                    "target_c",
                    None,  # type: ignore[arg-type]
                    low=0,
                    high=1400,
                    unit="C",
                ),
                hold_min=seg.number("hold_min", 0.0, low=0, high=10000, unit="min"),
            )
        )
    return FiringSchedule(name, tuple(segments))


class KilnDriver:
    """The sans-IO kiln half of a polling session. See the module docstring."""

    name = "kiln"

    def __init__(
        self,
        adapter: KilnAdapter,
        *,
        device_id: int = 1,
        reply_timeout_polls: int = 4,
    ) -> None:
        if reply_timeout_polls < 1:
            raise ValueError("reply_timeout_polls must be at least 1")
        self.adapter = adapter
        self.device_id = device_id
        self.reply_timeout_polls = reply_timeout_polls
        self.blocks: tuple[Block, ...] = adapter.profile.blocks()
        self.unsupported: set[int] = set()
        #: Replies that did not come in time, and frames thrown away.
        self.timeouts = 0
        self.frame_errors = 0
        self.reset()

    def reset(self) -> None:
        self._client = ModbusRtuClient()
        self._index = 0
        self._waited = 0
        self._words: dict[str, tuple[int, ...]] = {}
        self._complete = True

    def _active(self) -> list[int]:
        return [i for i in range(len(self.blocks)) if i not in self.unsupported]

    def poll(self) -> bytes:
        if self._client.pending is not None:
            self._waited += 1
            if self._waited < self.reply_timeout_polls:
                return b""
            self._client.expire()
            self.timeouts += 1
            self._complete = False
            self._advance()
        active = self._active()
        if not active:
            return b""
        while self._index in self.unsupported:
            self._index = (self._index + 1) % len(self.blocks)
        self._waited = 0
        return self._client.send(self.blocks[self._index].request(self.device_id))

    def feed(self, data: bytes, ts_ms: int, mono_ms: int) -> list[SessionItem]:
        items: list[SessionItem] = []
        for event in self._client.feed(data):
            if isinstance(event, FrameError):
                self.frame_errors += 1
                _log.debug("kiln: %s: %r", event.reason, event.raw)
                continue
            block = self.blocks[self._index]
            if isinstance(event, RegistersRead):
                self._words.update(block.split(event.registers))
            elif isinstance(event, BitsRead):
                words = tuple(int(b) for b in event.bits)
                self._words.update(block.split(words))
            elif isinstance(event, ExceptionReply):
                if event.code in _UNSUPPORTED:
                    _log.warning(
                        "kiln: unit %d refuses %s at %#06x (%s); not reading %s any more",
                        self.device_id,
                        block.function.name.lower(),
                        block.address,
                        event.text,
                        ", ".join(f.name for f in block.fields),
                    )
                    self.unsupported.add(self._index)
                else:
                    self._complete = False
            if self._advance():
                items.extend(self._round_done(ts_ms, mono_ms))
        return items

    def _advance(self) -> bool:
        """Move to the next block; True when that finished a round."""
        self._index = (self._index + 1) % len(self.blocks)
        return self._index == 0

    def _round_done(self, ts_ms: int, mono_ms: int) -> list[SessionItem]:
        words, complete = self._words, self._complete
        self._words, self._complete = {}, True
        if not complete or "pv" not in words:
            return []
        return list(self.adapter.translate(words, ts_ms=ts_ms, mono_ms=mono_ms))


class KilnSession(PollingSession):
    """A :class:`PollingSession` with a :class:`KilnDriver`."""

    def __init__(
        self,
        machine_id: str,
        open_link: Callable[[], Link],
        options: KilnOptions,
        *,
        clock: Clock,
        poll_interval_s: float = 0.25,
        silence_timeout_s: float = 5.0,
        **tuning: Unpack[SessionTuning],
    ) -> None:
        adapter = KilnAdapter(
            options.profile,
            unit=options.temperature_unit,
            schedule=options.schedule,
            over_temperature_c=options.over_temperature_c,
            soak_window_c=options.soak_window_c,
            idle_setpoint_c=options.idle_setpoint_c,
            flat_after_ms=round(options.trend_window_s * 1000),
            progress_every_ms=round(options.progress_interval_s * 1000),
        )
        polls = max(1, math.ceil(options.reply_timeout_s / poll_interval_s))
        self._kiln = KilnDriver(adapter, device_id=options.device_id, reply_timeout_polls=polls)
        super().__init__(
            machine_id,
            open_link,
            self._kiln,
            clock=clock,
            poll_interval_s=poll_interval_s,
            silence_timeout_s=silence_timeout_s,
            **tuning,
        )

    @property
    def kiln(self) -> KilnDriver:
        return self._kiln


def _open_session(ctx: SessionContext) -> KilnSession:
    machine = ctx.machine
    options = machine.options
    if not isinstance(options, KilnOptions):
        options = KilnOptions(profile=load_profile("cn7500"))
    return KilnSession(machine.id, framed(ctx.open_link, options), options, **machine_timing(ctx))


def framed(open_link: Callable[[], Link], options: KilnOptions) -> Callable[[], Link]:
    """``open_link`` with the profile's (or the machine's) parity and stop bits applied to a
    serial port; Modbus RTU controllers are often 8E1 or 8N2. TCP links are left alone."""

    def open_framed() -> Link:
        link = open_link()
        if isinstance(link, SerialLink):
            link.set_framing(options.parity, options.stopbits)
        return link

    return open_framed


def default_options(profile: str | Path = "cn7500") -> KilnOptions:
    """Options with every default, for tests and the demo."""
    return KilnOptions(profile=load_profile(str(profile)))


#: PID / ramp-soak kiln controllers over Modbus RTU (9600 baud is the common default).
ENTRY: Final = ProtocolEntry(
    name="modbus_kiln",
    open_session=_open_session,
    parse_options=parse_options,
    min_poll_interval_s=0.05,
    default_baudrate=9600,
)
