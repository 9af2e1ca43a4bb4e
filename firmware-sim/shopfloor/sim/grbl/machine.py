"""A GRBL 1.1h controller, sans-IO and time-driven.

The model follows gnea/grbl 1.1h (``protocol.c``, ``gcode.c``, ``report.c``, ``system.c``)
and what the real firmware did when run on a pseudo-terminal (serial-protocols.md §1 and §6):
input filtering, a 128-byte RX buffer, a 15-block planner whose ``ok`` is sent when a line is
accepted, real-time bytes, the report cadence of ``WCO:``/``Ov:``/``A:``, alarms, holds, doors,
check mode, sleep, jogging and laser mode.

Nothing here does I/O or reads a clock. The caller passes ``now`` (its own monotonic seconds)
into :meth:`GrblMachine.receive` and :meth:`GrblMachine.advance` and collects what the device
wrote with :meth:`GrblMachine.take_output`. Machine time runs ``time_scale`` times faster.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from shopfloor.sim.errors import SimError
from shopfloor.sim.grbl.config import GrblSimConfig
from shopfloor.sim.grbl.gcode import (
    AXES,
    G_GROUPS,
    LINE_BUFFER_SIZE,
    M_GROUPS,
    OVERFLOW,
    VALUE_LETTERS,
    filter_line,
    fmt,
    parse_words,
    read_number,
    xyz,
)
from shopfloor.sim.grbl.settings import INT_SETTINGS, default_settings, fmt_setting

BANNER: Final = b"\r\nGrbl 1.1h ['$' for help]\r\n"
VERSION_LINE: Final = "[VER:1.1h.20190830:]"
RX_BUFFER_SIZE: Final = 128
MAX_LINE_NUMBER: Final = 9_999_999
MAX_TOOL_NUMBER: Final = 255
OUTPUT_CAP: Final = 64 * 1024
#: Longest slice of machine time integrated at once (seconds).
_STEP: Final = 0.004
_JUNCTION_DEVIATION: Final = 0.01
_ARC_SEGMENT_MM: Final = 0.5

RT_STATUS: Final = 0x3F  # ?
RT_RESUME: Final = 0x7E  # ~
RT_HOLD: Final = 0x21  # !
RT_RESET: Final = 0x18
RT_DOOR: Final = 0x84
RT_JOG_CANCEL: Final = 0x85
RT_SPINDLE_STOP: Final = 0x9E
RT_FLOOD: Final = 0xA0
RT_MIST: Final = 0xA1


class Status(enum.Enum):
    """Grbl's ``sys.state`` (sub-states such as Hold:1 are derived at report time)."""

    IDLE = "Idle"
    RUN = "Run"
    HOLD = "Hold"
    JOG = "Jog"
    ALARM = "Alarm"
    DOOR = "Door"
    CHECK = "Check"
    HOME = "Home"
    SLEEP = "Sleep"


_BUSY: Final = frozenset({Status.HOME, Status.RUN, Status.HOLD, Status.JOG, Status.DOOR})


class StateChange(NamedTuple):
    """One entry of the machine's own log: at caller time ``t`` it entered ``state``.

    ``state`` is the label a status report would show (``Run``, ``Hold:1``, ``Door:0`` ...).
    """

    t: float
    state: str


@dataclass(frozen=True, slots=True)
class ProgramProgress:
    """How far the simulator's built-in sender got with an auto-run program."""

    name: str
    total: int
    sent: int
    answered: int
    errors: int
    aborted: bool

    @property
    def finished(self) -> bool:
        return self.answered >= self.total or self.aborted


class GrblError(SimError):
    """Raised for misuse of the model (not for G-code errors, which are answered ``error:N``)."""


@dataclass(slots=True)
class _Block:
    """One planner block: a straight move ending at ``end`` (machine mm)."""

    end: tuple[float, float, float]
    rapid: bool
    feed: float  # mm/min (ignored for rapids)
    spindle_mode: int  # 0 off, 3 CW, 4 CCW
    s: float
    line_number: int
    jog: bool = False
    start: tuple[float, float, float] = (0.0, 0.0, 0.0)
    length: float = 0.0
    unit: tuple[float, float, float] = (0.0, 0.0, 0.0)
    accel: float = 0.0  # mm/s^2 along the path
    axis_limit: float = 0.0  # mm/s along the path


@dataclass(slots=True)
class _Line:
    """A line being executed: the ops still to run and where its answer goes."""

    ops: deque[_Op]
    to_job: bool


class _OpKind(enum.Enum):
    MOTION = enum.auto()  # needs a free planner block
    SYNC = enum.auto()  # needs an empty planner and a stopped machine
    WAIT = enum.auto()  # wait machine seconds (dwell, sync pause)
    CALL = enum.auto()  # run a function once reached
    PAUSE = enum.auto()  # M0: feed hold after sync


@dataclass(slots=True)
class _Op:
    kind: _OpKind
    block: _Block | None = None
    seconds: float = 0.0
    call: Callable[[], None] | None = None


@dataclass(slots=True)
class _Modal:
    motion: int = 0  # 0, 1, 2, 3, 80
    coord: int = 0  # 0..5 = G54..G59
    plane: int = 0  # 0 G17, 1 G18, 2 G19
    inches: bool = False
    incremental: bool = False
    inverse_time: bool = False
    spindle: int = 0  # 0 M5, 3 M3, 4 M4
    flood: bool = False
    mist: bool = False
    program_flow: int = 0  # 0 none, else M0/M2/M30 while active
    tool: int = 0
    feed: float = 0.0  # mm/min
    s: float = 0.0


@dataclass(slots=True)
class _JobFeed:
    name: str
    lines: list[str]
    sent: int = 0
    answered: int = 0
    errors: int = 0
    aborted: bool = False
    responses: deque[str] = field(default_factory=lambda: deque(maxlen=64))


class GrblMachine:
    """The device side of a GRBL 1.1h controller. See the module docstring."""

    def __init__(self, config: GrblSimConfig) -> None:  # noqa: PLR0915 - one line per field
        if config.time_scale <= 0:
            raise GrblError("time_scale must be positive")
        self.config = config
        self.planner_size = 14 if config.line_numbers else 15
        self.settings: dict[int, float] = default_settings(config)
        self.state_log: deque[StateChange] = deque(maxlen=config.state_log_size)
        #: Lines from the serial host answered with ``ok`` or ``error`` (not the built-in sender).
        self.lines_answered = 0
        #: Bytes lost because the RX buffer was full, and output dropped because nobody read it.
        self.rx_dropped = 0
        self.output_dropped = 0
        self._out = bytearray()
        self._rx = bytearray()
        self._line = bytearray()
        self._line_comment = False
        self._line_semicolon = False
        self._line_overflow = False
        self._now: float | None = None
        self._clock = 0.0
        self._pos = [0.0, 0.0, 0.0]
        self._gc_pos = [0.0, 0.0, 0.0]
        self._coords = [[0.0, 0.0, 0.0] for _ in range(6)]
        self._g28 = [0.0, 0.0, 0.0]
        self._g30 = [0.0, 0.0, 0.0]
        self._g92 = [0.0, 0.0, 0.0]
        self._tlo = 0.0
        self._modal = _Modal()
        self._planner: deque[_Block] = deque()
        self._exit_speeds: list[float] | None = None
        self._v = 0.0
        self._along = 0.0
        self._pending: _Line | None = None
        self._wait_left = 0.0
        self._status = Status.IDLE
        self._decelerating = False
        self._door_sub = 0
        self._door_open = False
        self._restore_left = 0.0
        self._critical = False
        self._current_to_job = False
        self._flush_after_stop = False
        self._deferred_report = False
        self._feed_ov = 100
        self._rapid_ov = 100
        self._spindle_ov = 100
        self._spindle_on = 0  # physical: 0 off, 3 CW, 4 CCW
        self._spindle_s = 0.0  # programmed S applied to the physical spindle
        self._live_spindle = 0.0
        self._flood = False
        self._mist = False
        self._wco_counter = 0
        self._ovr_counter = 0
        self._job: _JobFeed | None = None
        self._powered = True
        self._power_up()

    # ---------------------------------------------------------------- public API

    @property
    def status(self) -> str:
        """The state label a status report shows now (``Idle``, ``Hold:1``, ``Door:2`` ...)."""
        if not self._powered:
            return "Off"
        if self._status is Status.HOLD:
            return "Hold:1" if self._decelerating else "Hold:0"
        if self._status is Status.DOOR:
            return f"Door:{self._door_sub}"
        return str(self._status.value)

    @property
    def position(self) -> tuple[float, float, float]:
        """Machine position (mm)."""
        return (self._pos[0], self._pos[1], self._pos[2])

    @property
    def work_offset(self) -> tuple[float, float, float]:
        wco = self._wco()
        return (wco[0], wco[1], wco[2])

    @property
    def feed_rate(self) -> float:
        """The live feed rate in mm/min (what ``FS:`` shows)."""
        return self._v * 60.0

    @property
    def live_spindle(self) -> float:
        """The live spindle value in S units (what ``FS:`` shows)."""
        return self._live_spindle

    @property
    def planner_blocks(self) -> int:
        return len(self._planner)

    @property
    def rx_free(self) -> int:
        return RX_BUFFER_SIZE - len(self._rx)

    @property
    def silent(self) -> bool:
        """True after a critical alarm (ALARM:1/2): nothing but 0x18 is answered."""
        return self._critical

    @property
    def door_open(self) -> bool:
        return self._door_open

    def receive(self, data: bytes, now: float) -> None:
        """Bytes arrive on the serial line at caller time ``now``."""
        self.advance(now)
        if not self._powered:
            return
        for byte in data:
            if self._realtime(byte):
                continue
            if byte > 0x7F:
                continue  # not a known real-time byte: the ISR throws it away
            if len(self._rx) >= RX_BUFFER_SIZE:
                self.rx_dropped += 1
                continue
            self._rx.append(byte)
            if byte in (0x0A, 0x0D):
                # Grbl's main loop runs a line as soon as its end arrives, before any later
                # byte on the wire (a `?` after it is answered after the line's response).
                self._pump()
        self._pump()
        self._log_state()

    def advance(self, now: float) -> None:
        """Let the machine run up to caller time ``now``."""
        if not self._powered:
            self._now = self._clock = max(now, self._clock)
            return
        if self._now is None:
            self._now = now
            self._clock = now
            self._pump()
            self._log_state()
            return
        if now <= self._now:
            return
        scale = self.config.time_scale
        machine_left = (now - self._now) * scale
        start = self._now
        done = 0.0
        while machine_left > 1e-12:
            if not self._has_work():
                break
            dt = min(_STEP, machine_left)
            done += dt
            machine_left -= dt
            self._clock = start + done / scale
            self._step(dt)
            self._pump()
            self._log_state()
        self._now = now
        self._clock = now
        self._pump()
        self._log_state()

    def take_output(self) -> bytes:
        """Everything the device wrote since the last call."""
        out = bytes(self._out)
        self._out.clear()
        return out

    # --- scenario hooks (what a fault script can do to the machine) ----------------------

    def trigger_alarm(self, code: int, now: float) -> None:
        """Raise ``ALARM:code`` (1 hard limit, 2 soft limit: critical; others lock only)."""
        self.advance(now)
        if self._critical or not self._powered:
            return
        self._emit(f"ALARM:{code}")
        self._stop_everything()
        self._status = Status.ALARM
        if code in (1, 2):
            self._critical = True
            self._emit("[MSG:Reset to continue]")
        elif self._pending is not None:
            self._finish_line(0, self._pending.to_job)
            self._pending = None
        if self._job is not None and not self._job_finished(self._job):
            self._job.aborted = True
        self._log_state()

    def set_door(self, is_open: bool, now: float) -> None:
        """Open (the door pin reads ajar) or close the safety door."""
        self.advance(now)
        self._door_open = is_open
        if is_open:
            self._door_event()
        elif self._status is Status.DOOR and self._door_sub == 1:
            self._door_sub = 0
        self._log_state()

    @property
    def powered(self) -> bool:
        return self._powered

    def power_off(self, now: float) -> None:
        """Cut the power: motion stops, volatile state is lost; the log records ``Off``."""
        self.advance(now)
        self._stop_everything()
        self._critical = False
        self._pending = None
        self._rx.clear()
        self._reset_line()
        if self._job is not None and not self._job_finished(self._job):
            self._job.aborted = True
        self._powered = False
        self._log_state()

    def power_on(self, now: float) -> None:
        """Power up again: banner, and locked if homing is enabled."""
        if self._powered:
            return
        self._now = now
        self._clock = now
        self._powered = True
        self._power_up()
        self._log_state()

    def power_cycle(self, now: float) -> None:
        """Switch the controller off and on at once."""
        self.power_off(now)
        self.power_on(now)

    def operator_line(self, line: str, now: float) -> None:
        """A line typed by the operator on another console (``$X``, ``$H``): no output.

        Ignored while a line is still executing.
        """
        self.advance(now)
        if self._pending is not None or self._critical or not self._powered:
            return
        job, self._job = self._job, None
        try:
            self._execute(filter_line(line), to_job=True)
        finally:
            self._job = job
        self._pump()
        self._log_state()

    def start_program(self, name: str, lines: Sequence[str]) -> None:
        """Let the built-in sender stream ``lines`` (answers go to it, not to the port)."""
        if self._job is not None and not self._job_finished(self._job):
            raise GrblError(f"program {self._job.name!r} is still running")
        self._job = _JobFeed(name=name, lines=[ln.rstrip("\r\n") for ln in lines])

    def abort_program(self) -> None:
        if self._job is not None:
            self._job.aborted = True

    @property
    def program(self) -> ProgramProgress | None:
        job = self._job
        if job is None:
            return None
        return ProgramProgress(
            name=job.name,
            total=len(job.lines),
            sent=job.sent,
            answered=job.answered,
            errors=job.errors,
            aborted=job.aborted,
        )

    @property
    def program_responses(self) -> list[str]:
        """The last lines the device wrote back to the built-in sender."""
        return [] if self._job is None else list(self._job.responses)

    # ---------------------------------------------------------------- output

    def _emit(self, line: str) -> None:
        self._write(line.encode("ascii") + b"\r\n")

    def _write(self, data: bytes) -> None:
        room = OUTPUT_CAP - len(self._out)
        if room < len(data):
            self.output_dropped += len(data)
            return
        self._out += data

    def _answer(self, line: str, to_job: bool) -> None:
        """A response or message caused by a line goes back to whoever sent that line."""
        if to_job:
            if self._job is not None:
                self._job.responses.append(line)
            return
        self._emit(line)

    def _finish_line(self, code: int, to_job: bool) -> None:
        text = "ok" if code == 0 else f"error:{code}"
        if to_job:
            if self._job is not None:
                self._job.answered += 1
                if code:
                    self._job.errors += 1
                self._job.responses.append(text)
            return
        self.lines_answered += 1
        self._emit(text)

    def _log_state(self) -> None:
        label = self.status
        if not self.state_log or self.state_log[-1].state != label:
            self.state_log.append(StateChange(self._clock, label))

    # ---------------------------------------------------------------- power-up and reset

    def _power_up(self) -> None:
        self._pos = [0.0, 0.0, 0.0]  # work offsets (G54..G59) live in EEPROM and survive
        self._status = Status.ALARM if self._homing_enabled() else Status.IDLE
        self._after_reset()

    def _after_reset(self) -> None:
        """Grbl's main-loop re-initialisation after power-up or a soft reset."""
        self._planner.clear()
        self._exit_speeds = None
        self._v = 0.0
        self._along = 0.0
        self._decelerating = False
        self._wait_left = 0.0
        self._restore_left = 0.0
        self._deferred_report = False
        self._flush_after_stop = False
        self._modal = _Modal(coord=0)
        self._g92 = [0.0, 0.0, 0.0]
        self._tlo = 0.0
        self._gc_pos = list(self._pos)
        self._feed_ov = self._rapid_ov = self._spindle_ov = 100
        self._set_spindle(0, 0.0)
        self._flood = self._mist = False
        self._wco_counter = 0
        self._ovr_counter = 0
        self._write(BANNER)
        if self._status in (Status.ALARM, Status.SLEEP):
            self._status = Status.ALARM
            self._emit("[MSG:'$H'|'$X' to unlock]")
        else:
            self._status = Status.IDLE
            if self._door_open:
                self._door_event()

    def _soft_reset(self) -> None:
        moving = self._moving_for_reset()
        if moving and not self._critical:
            self._emit("ALARM:6" if self._status is Status.HOME else "ALARM:3")
            self._status = Status.ALARM
        if self._pending is not None:
            # The line that was waiting (for the planner, a sync, a dwell) returns and is
            # answered before the banner (observed on 1.1h after a soft-limit alarm).
            self._finish_line(0, self._pending.to_job)
            self._pending = None
        if self._status is Status.CHECK:
            self._status = Status.IDLE
        self._critical = False
        self._rx.clear()
        self._reset_line()
        if self._job is not None and not self._job_finished(self._job):
            self._job.aborted = True
        self._after_reset()

    def _moving_for_reset(self) -> bool:
        if self._status in (Status.RUN, Status.JOG, Status.HOME):
            return True
        if self._status is Status.HOLD and self._decelerating:
            return True
        return self._status is Status.DOOR and self._door_sub == 2

    def _stop_everything(self) -> None:
        self._planner.clear()
        self._exit_speeds = None
        self._v = 0.0
        self._along = 0.0
        self._decelerating = False
        self._gc_pos = list(self._pos)
        self._set_spindle(0, 0.0)
        self._flood = self._mist = False
        self._live_spindle = 0.0

    def _reset_line(self) -> None:
        self._line.clear()
        self._line_comment = self._line_semicolon = self._line_overflow = False

    def _homing_enabled(self) -> bool:
        return int(self.settings[22]) == 1

    def _laser(self) -> bool:
        return int(self.settings[32]) == 1

    # ---------------------------------------------------------------- real-time bytes

    def _realtime(self, byte: int) -> bool:
        """Handle ``byte`` if it is a real-time command; True if it was one."""
        if byte == RT_RESET:
            self._soft_reset()
            return True
        known = byte in (RT_STATUS, RT_RESUME, RT_HOLD) or byte >= 0x80
        if not known:
            return False
        if byte >= 0x80 and not (
            byte in (RT_DOOR, RT_JOG_CANCEL, RT_SPINDLE_STOP, RT_FLOOD, RT_MIST)
            or 0x90 <= byte <= 0x9D
        ):
            return True  # unknown high byte: dropped by the ISR
        if self._critical:
            return True  # stuck in the alarm loop: only a reset gets through
        if byte == RT_STATUS:
            if self._status is Status.HOME:
                self._deferred_report = True
            else:
                self._emit(self._status_report())
        elif byte == RT_HOLD:
            self._feed_hold()
        elif byte == RT_RESUME:
            self._cycle_start()
        elif byte == RT_DOOR:
            self._door_event()
        elif byte == RT_JOG_CANCEL:
            if self._status is Status.JOG:
                self._decelerating = True
        elif 0x90 <= byte <= 0x9D:
            self._override(byte)
        elif byte == RT_FLOOD and self._status in (Status.IDLE, Status.RUN, Status.HOLD):
            self._flood = not self._flood
            self._modal.flood = self._flood
            self._ovr_counter = 0
        # RT_MIST needs ENABLE_M7 (not in the default build); RT_SPINDLE_STOP is not modelled.
        self._log_state()
        return True

    def _feed_hold(self) -> None:
        if self._status in (Status.ALARM, Status.CHECK, Status.SLEEP, Status.HOME):
            return
        if self._status is Status.JOG:
            self._decelerating = True  # a hold cancels a jog
            return
        if self._status is Status.RUN:
            self._status = Status.HOLD
            self._decelerating = self._v > 0.0
        elif self._status is Status.IDLE:
            self._status = Status.HOLD
            self._decelerating = False

    def _cycle_start(self) -> None:
        if self._status is Status.HOLD:
            if self._decelerating:
                return  # observed on 1.1h: ~ during Hold:1 is dropped
            self._status = Status.RUN if self._planner else Status.IDLE
            self._exit_speeds = None
        elif self._status is Status.DOOR:
            if self._door_sub != 0:
                return  # still open, or still stopping: dropped like ~ in Hold:1
            self._door_sub = 3
            spinning = self._modal.spindle != 0 and not self._laser()
            self._restore_left = self.config.door_restore_s if spinning else 0.05
        elif self._status is Status.IDLE and self._planner:
            self._status = Status.RUN

    def _door_event(self) -> None:
        if self._status in (Status.ALARM, Status.CHECK, Status.SLEEP):
            return
        if self._status is Status.HOME:
            self._emit("ALARM:7")
            self._stop_everything()
            self._status = Status.ALARM
            return
        if self._status is Status.DOOR and self._door_sub in (1, 2):
            return
        if self._status is Status.JOG:
            self._flush_after_stop = True
        moving = self._v > 0.0
        self._status = Status.DOOR
        self._emit("[MSG:Check Door]")
        self._decelerating = moving
        if moving:
            self._door_sub = 2
        else:
            self._door_stopped()

    def _door_stopped(self) -> None:
        self._door_sub = 1 if self._door_open else 0
        if self._flush_after_stop:
            self._flush_after_stop = False
            self._planner.clear()
            self._exit_speeds = None
            self._along = 0.0
            self._gc_pos = list(self._pos)
        self._set_spindle(0, self._spindle_s, keep_modal=True)

    def _override(self, byte: int) -> None:
        if byte <= 0x94:
            delta = {0x91: 10, 0x92: -10, 0x93: 1, 0x94: -1}.get(byte)
            new = 100 if delta is None else min(200, max(10, self._feed_ov + delta))
            changed = new != self._feed_ov
            self._feed_ov = new
        elif byte <= 0x97:
            new = {0x95: 100, 0x96: 50, 0x97: 25}[byte]
            changed = new != self._rapid_ov
            self._rapid_ov = new
        elif byte >= 0x99:
            delta = {0x9A: 10, 0x9B: -10, 0x9C: 1, 0x9D: -1}.get(byte)
            new = 100 if delta is None else min(200, max(10, self._spindle_ov + delta))
            changed = new != self._spindle_ov
            self._spindle_ov = new
            if not self._laser() and self._spindle_on:
                self._live_spindle = self._clamp_s(self._spindle_s * self._spindle_ov / 100)
        else:
            return  # 0x98 is not assigned
        if changed:
            self._ovr_counter = 0
            self._exit_speeds = None

    # ---------------------------------------------------------------- status report

    def _wco(self) -> list[float]:
        c = self._coords[self._modal.coord]
        return [c[0] + self._g92[0], c[1] + self._g92[1], c[2] + self._g92[2] + self._tlo]

    def _status_report(self) -> str:
        inches = int(self.settings[13]) == 1
        decimals = 4 if inches else 3
        unit = 25.4 if inches else 1.0
        mask = int(self.settings[10])
        wco = self._wco()
        parts = [self.status]
        if mask & 1:
            pos = self._pos
            parts.append("MPos:" + ",".join(fmt(p / unit, decimals) for p in pos))
        else:
            wpos = [self._pos[i] - wco[i] for i in range(3)]
            parts.append("WPos:" + ",".join(fmt(p / unit, decimals) for p in wpos))
        if mask & 2:
            parts.append(f"Bf:{self.planner_size - len(self._planner)},{self.rx_free}")
        if self.config.line_numbers and self._planner:
            ln = self._planner[0].line_number
            if ln > 0:
                parts.append(f"Ln:{ln}")
        feed = self._v * 60.0 / unit
        feed_text = fmt(feed, 1) if inches else str(int(feed + 0.5))
        parts.append(f"FS:{feed_text},{int(self._live_spindle + 0.5)}")
        pins = ""
        if self._door_open:
            pins += "D"
        if pins:
            parts.append(f"Pn:{pins}")
        busy = self._status in _BUSY
        if self._wco_counter > 0:
            self._wco_counter -= 1
        else:
            self._wco_counter = (30 if busy else 10) - 1
            if self._ovr_counter == 0:
                self._ovr_counter = 1
            parts.append("WCO:" + ",".join(fmt(w / unit, decimals) for w in wco))
        if self._ovr_counter > 0:
            self._ovr_counter -= 1
        else:
            self._ovr_counter = (20 if busy else 10) - 1
            parts.append(f"Ov:{self._feed_ov},{self._rapid_ov},{self._spindle_ov}")
            acc = ""
            if self._spindle_on and self._live_spindle > 0:
                acc += "S" if self._spindle_on == 3 else "C"
            if self._flood:
                acc += "F"
            if self._mist:
                acc += "M"
            if acc:
                parts.append(f"A:{acc}")
        return "<" + "|".join(parts) + ">"

    def _flag_wco_change(self) -> None:
        self._wco_counter = 0

    # ---------------------------------------------------------------- spindle

    def _clamp_s(self, value: float) -> float:
        if value <= 0:
            return 0.0
        high = self.settings[30]
        low = self.settings[31]
        return min(high, max(low, value))

    def _set_spindle(self, mode: int, s: float, *, keep_modal: bool = False) -> None:
        """Switch the physical spindle (or laser). ``keep_modal``: door stop, not M5."""
        if mode != self._spindle_on or (mode and s != self._spindle_s):
            self._ovr_counter = 0
        self._spindle_on = mode
        self._spindle_s = s
        if not mode:
            self._live_spindle = 0.0
        elif not self._laser():
            self._live_spindle = self._clamp_s(s * self._spindle_ov / 100)
        del keep_modal

    # ---------------------------------------------------------------- line input

    def _pump(self) -> None:
        """Run Grbl's main loop until it has to wait (planner full, sync, dwell, no input)."""
        for _ in range(10_000):
            if self._critical or not self._powered:
                return
            if self._pending is not None:
                if not self._run_ops(self._pending):
                    return
                self._finish_line(0, self._pending.to_job)
                self._pending = None
                continue
            if self._critical or self._status in (Status.SLEEP, Status.HOME):
                return
            line = self._next_host_line()
            if line is not None:
                self._execute(line, to_job=False)
                continue
            if self._rx or self._line or self._line_comment or self._line_semicolon:
                return
            job = self._job
            if job is None or self._job_finished(job) or job.sent >= len(job.lines):
                return
            raw = job.lines[job.sent]
            job.sent += 1
            self._execute(filter_line(raw), to_job=True)

    def _job_finished(self, job: _JobFeed) -> bool:
        return job.aborted or job.answered >= len(job.lines)

    def _next_host_line(self) -> str | None:
        """Move bytes from the RX buffer into the line buffer; a complete line or None."""
        while self._rx:
            c = self._rx.pop(0)
            if c in (0x0A, 0x0D):
                if self._line_overflow:
                    self._reset_line()
                    return OVERFLOW
                text = self._line.decode("ascii")
                self._reset_line()
                return text
            if self._line_comment or self._line_semicolon or self._line_overflow:
                if c == 0x29 and self._line_comment:  # ')' ends a (comment)
                    self._line_comment = False
                continue
            if c <= 0x20 or c == 0x2F:  # whitespace, control chars, block delete '/'
                continue
            if c == 0x28:
                self._line_comment = True
            elif c == 0x3B:
                self._line_semicolon = True
            elif len(self._line) >= LINE_BUFFER_SIZE - 1:
                self._line_overflow = True
            elif 0x61 <= c <= 0x7A:
                self._line.append(c - 0x20)
            else:
                self._line.append(c)
        return None

    def _execute(self, line: str, *, to_job: bool) -> None:
        if line == OVERFLOW:
            self._finish_line(11, to_job)
            return
        if not line:
            self._finish_line(0, to_job)
            return
        if line.startswith("$"):
            code = self._system_command(line, to_job)
            if code is not None:
                self._finish_line(code, to_job)
            return
        if self._status in (Status.ALARM, Status.JOG):
            self._finish_line(9, to_job)
            return
        result = self._gcode(line)
        if isinstance(result, int):
            self._finish_line(result, to_job)
            return
        pending = _Line(ops=result, to_job=to_job)
        if self._run_ops(pending):
            self._finish_line(0, to_job)
        else:
            self._pending = pending

    def _run_ops(self, line: _Line) -> bool:
        """Run as many ops as possible; True when the line is done."""
        ops = line.ops
        self._current_to_job = line.to_job
        while ops:
            op = ops[0]
            if op.kind is _OpKind.MOTION:
                if len(self._planner) >= self.planner_size:
                    return False
                assert op.block is not None
                self._plan(op.block)
            elif op.kind is _OpKind.SYNC:
                # protocol_buffer_synchronize(): wait while blocks remain or a cycle runs
                # (a door keeps the spindle off, so it waits out the door too).
                if self._planner or self._status in (Status.RUN, Status.JOG, Status.DOOR):
                    return False
            elif op.kind is _OpKind.WAIT:
                if op.seconds > 0:
                    self._wait_left = op.seconds
                    op.seconds = 0.0
                if self._wait_left > 0:
                    return False
            elif op.kind is _OpKind.CALL:
                assert op.call is not None
                op.call()
            elif op.kind is _OpKind.PAUSE:
                self._status = Status.HOLD
                self._decelerating = False
            ops.popleft()
        return True

    # ---------------------------------------------------------------- $ commands

    def _system_command(self, line: str, to_job: bool) -> int | None:  # noqa: PLR0915
        # One flat dispatch over the `$` commands, in the order system.c checks them.
        """Run a ``$`` line; the status code, or None if it answers later."""
        st = self._status
        say = self._answer
        if line == "$":
            say(
                "[HLP:$$ $# $G $I $N $x=val $Nx=line $J=line $SLP $C $X $H ~ ! ? ctrl-x]",
                to_job,
            )
            return 0
        cmd = line[1]
        if cmd == "J":
            if st not in (Status.IDLE, Status.JOG):
                return 8
            if len(line) < 3 or line[2] != "=":
                return 3
            return self._jog(line[3:], to_job)
        if cmd in "$GCX":
            if len(line) != 2:
                return 3
            if cmd == "$":
                if st in (Status.RUN, Status.HOLD):
                    return 8
                for key in sorted(self.settings):
                    say(f"${key}={fmt_setting(key, self.settings[key])}", to_job)
            elif cmd == "G":
                say(self._gc_report(), to_job)
            elif cmd == "C":
                if st is Status.CHECK:
                    say("[MSG:Disabled]", to_job)
                    self._finish_line(0, to_job)
                    self._soft_reset()
                    return None
                if st is not Status.IDLE:
                    return 8
                self._status = Status.CHECK
                say("[MSG:Enabled]", to_job)
            elif st is Status.ALARM:  # $X
                if self._door_open:
                    return 13
                say("[MSG:Caution: Unlocked]", to_job)
                self._status = Status.IDLE
            return 0
        if st not in (Status.IDLE, Status.ALARM):
            return 8
        if cmd == "#" and len(line) == 2:
            for i in range(6):
                say(f"[G{54 + i}:{xyz(self._coords[i])}]", to_job)
            say(f"[G28:{xyz(self._g28)}]", to_job)
            say(f"[G30:{xyz(self._g30)}]", to_job)
            say(f"[G92:{xyz(self._g92)}]", to_job)
            say(f"[TLO:{fmt(self._tlo, 3)}]", to_job)
            say("[PRB:0.000,0.000,0.000:0]", to_job)
            return 0
        if line == "$H":
            if not self._homing_enabled():
                return 5
            self._status = Status.HOME
            self._pending = _Line(
                ops=deque(
                    [
                        _Op(_OpKind.WAIT, seconds=max(self.config.homing_s, 1e-6)),
                        _Op(_OpKind.CALL, call=self._homing_done),
                    ]
                ),
                to_job=to_job,
            )
            return None
        if line == "$SLP":
            self._finish_line(0, to_job)
            self._stop_everything()
            self._status = Status.SLEEP
            self._emit("[MSG:Sleeping]")
            return None
        if line == "$I":
            say(VERSION_LINE, to_job)
            opt = "VN,14" if self.config.line_numbers else "V,15"
            say(f"[OPT:{opt},{RX_BUFFER_SIZE}]", to_job)
            return 0
        if line == "$N":
            say("$N0=", to_job)
            say("$N1=", to_job)
            return 0
        if line.startswith("$RST="):
            if line[5:] not in ("$", "#", "*"):
                return 3
            if line[5:] in ("$", "*"):
                self.settings = default_settings(self.config)
            if line[5:] in ("#", "*"):
                self._coords = [[0.0, 0.0, 0.0] for _ in range(6)]
                self._flag_wco_change()
            say("[MSG:Restoring defaults]", to_job)
            return 0
        return self._write_setting(line)

    def _write_setting(self, line: str) -> int:
        eq = line.find("=")
        if eq < 0 or not line[1:eq].isdigit():
            return 3
        key = int(line[1:eq])
        parsed = read_number(line, eq + 1)
        if parsed is None or parsed[1] != len(line):
            return 2
        value = parsed[0]
        if key not in self.settings:
            return 3
        if value < 0:
            return 4
        if key == 0 and value < 3:
            return 6
        if key == 20 and value and not self._homing_enabled():
            return 10
        self.settings[key] = float(int(value)) if key in INT_SETTINGS else value
        self._exit_speeds = None
        return 0

    def _homing_done(self) -> None:
        pull_off = self.settings[27]
        self._pos = [-pull_off, -pull_off, -pull_off]
        self._gc_pos = list(self._pos)
        self._status = Status.IDLE
        if self._deferred_report:
            self._deferred_report = False
            self._emit(self._status_report())

    def _gc_report(self) -> str:
        m = self._modal
        words = [
            f"G{m.motion}",
            f"G{54 + m.coord}",
            f"G{17 + m.plane}",
            "G20" if m.inches else "G21",
            "G91" if m.incremental else "G90",
            "G93" if m.inverse_time else "G94",
        ]
        if m.program_flow:
            words.append(f"M{m.program_flow if m.program_flow != 1 else 0}")
        words.append({0: "M5", 3: "M3", 4: "M4"}[m.spindle])
        if m.mist or m.flood:
            if m.mist:
                words.append("M7")
            if m.flood:
                words.append("M8")
        else:
            words.append("M9")
        feed = m.feed / 25.4 if m.inches else m.feed
        words.append(f"T{m.tool}")
        words.append(f"F{fmt(feed, 1) if m.inches else int(feed + 0.5)}")
        words.append(f"S{int(m.s + 0.5)}")
        return "[GC:" + " ".join(words) + "]"

    # ---------------------------------------------------------------- G-code

    def _gcode(self, line: str) -> deque[_Op] | int:
        words = parse_words(line)
        if isinstance(words, int):
            return words
        g_by_group: dict[str, float] = {}
        m_by_group: dict[str, float] = {}
        values: dict[str, float] = {}
        for letter, value in words:
            if letter == "G":
                g = round(value, 1)
                if g == int(g):
                    g = float(int(g))
                group = G_GROUPS.get(g)
                if group is None:
                    # G1.5: a known integer part with a bad mantissa is error 23 in gcode.c.
                    return 23 if float(int(value)) in G_GROUPS else 20
                if group in g_by_group:
                    return 21
                g_by_group[group] = g
            elif letter == "M":
                if value != int(value):
                    return 23
                mgroup = M_GROUPS.get(value)
                if mgroup is None:
                    return 20
                if mgroup in m_by_group:
                    return 21
                m_by_group[mgroup] = value
            elif letter in VALUE_LETTERS:
                if letter == "T" and value > MAX_TOOL_NUMBER:
                    return 38
                if letter in values:
                    return 25
                if letter in "FNPTS" and value < 0:
                    return 4
                values[letter] = value
            else:
                return 20
        return self._gcode_block(g_by_group, m_by_group, values)

    def _gcode_block(  # noqa: PLR0915
        self,
        g: dict[str, float],
        m: dict[str, float],
        values: dict[str, float],
    ) -> deque[_Op] | int:
        # Validation then execution in gcode.c order; splitting it would scatter that order.
        ops: deque[_Op] = deque()
        modal = self._modal
        check = self._status is Status.CHECK
        used = {"N", "F", "S", "T"}
        line_number = 0
        if "N" in values:
            n = int(values["N"])  # gcode.c truncates N
            if n > MAX_LINE_NUMBER:
                return 27
            line_number = n
        nonmodal = g.get("nonmodal")
        axis_words = {a: values[a] for a in AXES if a in values}
        motion = g.get("motion", float(modal.motion))
        motion_given = "motion" in g
        axis_owner_conflict = nonmodal in (10, 28, 30, 92) and motion_given and axis_words
        if axis_owner_conflict:
            return 24
        if nonmodal == 53 and motion not in (0, 1):
            return 30
        inverse_time = g.get("feed_mode", 94 if not modal.inverse_time else 93) == 93
        if inverse_time:
            return 20  # G93 is not simulated
        inches = g.get("units", 20 if modal.inches else 21) == 20
        scale = 25.4 if inches else 1.0
        incremental = g.get("distance", 91 if modal.incremental else 90) == 91
        # F, S, T (negative values and T > 255 were refused while parsing)
        feed = values["F"] * scale if "F" in values else modal.feed
        s = values.get("S", modal.s)
        tool = int(values["T"]) if "T" in values else modal.tool
        if nonmodal == 4:
            if "P" not in values:
                return 28
            used.add("P")
        coord = modal.coord
        if "coord" in g:
            coord = int(g["coord"]) - 54
        tlo: float | None = None
        if "tlo" in g:
            if nonmodal in (10, 28, 30, 92) or motion_given:
                return 24  # G43.1/G49 are axis commands too
            if g["tlo"] == 49:
                tlo = 0.0
            else:
                if set(axis_words) - {"Z"}:
                    return 37
                if "Z" not in axis_words:
                    return 26
                tlo = axis_words["Z"] * scale
            used |= set(axis_words)
            axis_words = {}
        g10_target: tuple[int, list[float]] | None = None
        if nonmodal == 10:
            if "L" not in values or "P" not in values:
                return 28
            used |= {"L", "P"}
            p = values["P"]
            if p != int(p) or p < 0:
                return 29
            if int(p) > 6:
                return 29
            index = coord if int(p) == 0 else int(p) - 1
            if values["L"] not in (2, 20):
                return 20
            if not axis_words:
                return 26
            new = list(self._coords[index])
            for i, axis in enumerate(AXES):
                if axis in axis_words:
                    val = axis_words[axis] * scale
                    if values["L"] == 20:
                        new[i] = self._gc_pos[i] - self._g92[i] - val
                        if i == 2:
                            new[i] -= self._tlo
                    else:
                        new[i] = val
            g10_target = (index, new)
        if nonmodal in (10, 92, 28, 30):
            used |= set(axis_words)
        # Motion and its target.
        motion_ops: list[_Block] = []
        target = list(self._gc_pos)
        wco_base = [self._coords[coord][i] + self._g92[i] for i in range(3)]
        wco_base[2] += self._tlo
        if nonmodal == 92 and not axis_words:
            return 26
        moves_axes = bool(axis_words) and nonmodal not in (10, 92)
        if moves_axes or nonmodal in (28, 30):
            for i, axis in enumerate(AXES):
                if axis in axis_words:
                    val = axis_words[axis] * scale
                    if nonmodal == 53:
                        target[i] = val
                    elif incremental:
                        target[i] = self._gc_pos[i] + val
                    else:
                        target[i] = val + wco_base[i]
            used |= set(axis_words)
        if nonmodal in (28, 30):
            home = self._g28 if nonmodal == 28 else self._g30
            if axis_words:
                motion_ops.append(self._block(target, rapid=True, feed=0, s=0, ln=line_number))
            target = list(home)
            motion_ops.append(self._block(target, rapid=True, feed=0, s=0, ln=line_number))
        elif moves_axes:
            if motion == 80:
                return 31
            if motion in (1, 2, 3) and feed <= 0:
                return 22
            laser_s = s
            if motion in (2, 3):
                plane = int(g["plane"]) - 17 if "plane" in g else modal.plane
                arc = self._arc(target, values, motion == 3, plane)
                if isinstance(arc, int):
                    return arc
                used |= {"I", "J", "K", "R"} & set(values)
                motion_ops.extend(
                    self._block(point, rapid=False, feed=feed, s=laser_s, ln=line_number)
                    for point in arc
                )
            else:
                motion_ops.append(
                    self._block(target, rapid=motion == 0, feed=feed, s=laser_s, ln=line_number)
                )
        elif motion_given and motion in (2, 3):
            return 26
        unused = set(values) - used
        if unused:
            return 36
        # Everything validated: update the parser state and build the ops, in gcode.c order.
        spindle_mode = modal.spindle
        if "spindle" in m:
            spindle_mode = int(m["spindle"]) if m["spindle"] != 5 else 0
        # gcode.c GC_PARSER_LASER_ISMOTION: axis words in a motion mode (G0 too) carry S in
        # the planner block, so an S change does not sync.
        laser_motion = self._laser() and moves_axes and nonmodal not in (28, 30)
        spindle_changed = spindle_mode != modal.spindle
        s_changed = s != modal.s
        modal.feed = feed
        modal.tool = tool
        # A spindle state change, and in spindle mode every S change, syncs the buffer:
        # jobs that change S run stop-and-go with short Idle states (observed on 1.1h).
        needs_sync = spindle_changed or (s_changed and bool(modal.spindle) and not laser_motion)
        if needs_sync and not check:
            ops.append(_Op(_OpKind.SYNC))
            ops.append(_Op(_OpKind.CALL, call=self._spindle_call(spindle_mode, s)))
            if not self._laser() and self.config.sync_pause_s > 0:
                ops.append(_Op(_OpKind.WAIT, seconds=self.config.sync_pause_s))
        modal.spindle = spindle_mode
        modal.s = s
        if "coolant" in m:
            flood = m["coolant"] == 8
            modal.flood = flood
            modal.mist = False
            if not check:
                ops.append(_Op(_OpKind.SYNC))
                ops.append(_Op(_OpKind.CALL, call=self._coolant_call(flood)))
        if nonmodal == 4 and not check:
            ops.append(_Op(_OpKind.SYNC))
            ops.append(_Op(_OpKind.WAIT, seconds=max(values["P"], 1e-6)))
        if "plane" in g:
            modal.plane = int(g["plane"]) - 17
        modal.inches = inches
        modal.incremental = incremental
        if tlo is not None and tlo != self._tlo:
            self._tlo = tlo
            self._flag_wco_change()
        if coord != modal.coord:
            modal.coord = coord
            self._flag_wco_change()
        if g10_target is not None:
            index, new = g10_target
            self._coords[index] = new
            if index == modal.coord:
                self._flag_wco_change()
        if nonmodal == 92:
            for i, axis in enumerate(AXES):
                if axis in axis_words:
                    val = axis_words[axis] * scale
                    tlo = self._tlo if i == 2 else 0.0
                    self._g92[i] = self._gc_pos[i] - self._coords[modal.coord][i] - tlo - val
            self._flag_wco_change()
        elif nonmodal == 92.1:
            self._g92 = [0.0, 0.0, 0.0]
            self._flag_wco_change()
        elif nonmodal == 28.1:
            self._g28 = list(self._gc_pos)
        elif nonmodal == 30.1:
            self._g30 = list(self._gc_pos)
        if motion_given:
            modal.motion = int(motion)
        if motion_ops:
            self._gc_pos = list(motion_ops[-1].end)
            if not check:
                spindle_for_blocks = modal.spindle
                for block in motion_ops:
                    block.spindle_mode = spindle_for_blocks
                    if self._laser() and block.rapid:
                        block.s = 0.0
                    ops.append(_Op(_OpKind.MOTION, block=block))
        if "stop" in m:
            stop = int(m["stop"])
            if stop == 0:
                if not check:
                    ops.append(_Op(_OpKind.SYNC))
                    ops.append(_Op(_OpKind.PAUSE))
            elif stop in (2, 30):
                if not check:
                    ops.append(_Op(_OpKind.SYNC))
                ops.append(_Op(_OpKind.CALL, call=lambda: self._program_end(check)))
        return ops

    def _spindle_call(self, mode: int, s: float) -> Callable[[], None]:
        return lambda: self._set_spindle(mode, s)

    def _coolant_call(self, flood: bool) -> Callable[[], None]:
        def apply() -> None:
            if flood != self._flood or self._mist:
                self._ovr_counter = 0
            self._flood = flood
            self._mist = False

        return apply

    def _program_end(self, check: bool) -> None:
        modal = self._modal
        modal.motion = 1
        modal.plane = 0
        modal.incremental = False
        modal.inverse_time = False
        modal.coord = 0
        modal.spindle = 0
        modal.flood = modal.mist = False
        self._feed_ov = self._rapid_ov = self._spindle_ov = 100
        if not check:
            self._flag_wco_change()
            self._set_spindle(0, 0.0)
            self._flood = self._mist = False
        self._answer("[MSG:Pgm End]", self._current_to_job)

    def _arc(
        self, target: list[float], values: dict[str, float], ccw: bool, plane: int
    ) -> list[tuple[float, float, float]] | int:
        """Chord points of a G2/G3 arc in the G17 plane (other planes: one straight line)."""
        start = self._gc_pos
        end = (target[0], target[1], target[2])
        if plane != 0:
            return [end]
        scale = 25.4 if self._modal.inches else 1.0
        dx, dy = end[0] - start[0], end[1] - start[1]
        if "R" in values:
            r = values["R"] * scale
            h2 = 4 * r * r - dx * dx - dy * dy
            if h2 < 0:
                return 34
            h = -math.sqrt(h2) / math.hypot(dx, dy) if (dx or dy) else 0.0
            if ccw:
                h = -h
            if r < 0:
                h = -h
                r = -r
            cx = start[0] + 0.5 * (dx - dy * h)
            cy = start[1] + 0.5 * (dy + dx * h)
        elif "I" in values or "J" in values:
            cx = start[0] + values.get("I", 0.0) * scale
            cy = start[1] + values.get("J", 0.0) * scale
        else:
            return 35
        r = math.hypot(start[0] - cx, start[1] - cy)
        a0 = math.atan2(start[1] - cy, start[0] - cx)
        a1 = math.atan2(end[1] - cy, end[0] - cx)
        sweep = a1 - a0
        if ccw and sweep <= 1e-9:
            sweep += 2 * math.pi
        elif not ccw and sweep >= -1e-9:
            sweep -= 2 * math.pi
        n = max(1, min(200, int(abs(sweep) * r / _ARC_SEGMENT_MM)))
        points: list[tuple[float, float, float]] = []
        for k in range(1, n):
            a = a0 + sweep * k / n
            z = start[2] + (end[2] - start[2]) * k / n
            points.append((cx + r * math.cos(a), cy + r * math.sin(a), z))
        points.append(end)
        return points

    def _jog(self, text: str, to_job: bool) -> int | None:
        words = parse_words(text)
        if isinstance(words, int):
            return words
        incremental = self._modal.incremental
        inches = self._modal.inches
        machine = False
        axes: dict[str, float] = {}
        feed: float | None = None
        for letter, value in words:
            if letter == "G":
                if value in (90, 91):
                    incremental = value == 91
                elif value in (20, 21):
                    inches = value == 20
                elif value == 53:
                    machine = True
                else:
                    return 16
            elif letter in AXES:
                if letter in axes:
                    return 25
                axes[letter] = value
            elif letter == "F":
                feed = value
            elif letter == "N":
                continue
            else:
                return 16
        if feed is None or feed <= 0:
            return 22
        if not axes:
            return 26
        scale = 25.4 if inches else 1.0
        wco = self._wco()
        target = list(self._gc_pos)
        for i, axis in enumerate(AXES):
            if axis in axes:
                val = axes[axis] * scale
                if machine:
                    target[i] = val
                elif incremental:
                    target[i] += val
                else:
                    target[i] = val + wco[i]
        if int(self.settings[20]):
            for i in range(3):
                if not (-self.settings[130 + i] <= target[i] <= 0.0):
                    return 15
        if len(self._planner) >= self.planner_size:
            block = self._block(target, rapid=False, feed=feed * scale, s=0, ln=0)
            block.jog = True
            self._gc_pos = target
            self._pending = _Line(ops=deque([_Op(_OpKind.MOTION, block=block)]), to_job=to_job)
            return None
        block = self._block(target, rapid=False, feed=feed * scale, s=0, ln=0)
        block.jog = True
        self._gc_pos = target
        self._plan(block)
        return 0

    # ---------------------------------------------------------------- planner and motion

    def _block(
        self, end: Sequence[float], *, rapid: bool, feed: float, s: float, ln: int
    ) -> _Block:
        return _Block(
            end=(end[0], end[1], end[2]),
            rapid=rapid,
            feed=feed,
            spindle_mode=self._modal.spindle,
            s=s,
            line_number=ln,
        )

    def _plan(self, block: _Block) -> None:
        start = self._planner[-1].end if self._planner else tuple(self._pos)
        block.start = (start[0], start[1], start[2])
        delta = [block.end[i] - start[i] for i in range(3)]
        length = math.sqrt(sum(d * d for d in delta))
        if length < 1e-6:
            return  # Grbl drops zero-length blocks
        block.length = length
        block.unit = (delta[0] / length, delta[1] / length, delta[2] / length)
        accel = math.inf
        limit = math.inf
        for i in range(3):
            u = abs(block.unit[i])
            if u > 1e-12:
                accel = min(accel, self.settings[120 + i] / u)
                limit = min(limit, self.settings[110 + i] / 60.0 / u)
        block.accel = accel
        block.axis_limit = limit
        self._planner.append(block)
        self._exit_speeds = None
        if block.jog:
            if self._status is Status.IDLE:
                self._status = Status.JOG
        elif self._status is Status.IDLE:
            self._status = Status.RUN

    def _nominal(self, block: _Block) -> float:
        if block.jog:
            speed = block.feed / 60.0
        elif block.rapid:
            speed = block.axis_limit * self._rapid_ov / 100.0
        else:
            speed = block.feed * self._feed_ov / 100.0 / 60.0
        return min(speed, block.axis_limit)

    def _exit_speed_of_current(self) -> float:
        if self._exit_speeds is None:
            blocks = list(self._planner)
            n = len(blocks)
            exits = [0.0] * n
            for i in range(n - 2, -1, -1):
                a, b = blocks[i], blocks[i + 1]
                junction = min(self._nominal(a), self._nominal(b), _junction_limit(a, b))
                reach = math.sqrt(exits[i + 1] ** 2 + 2 * b.accel * b.length)
                exits[i] = min(junction, reach)
            self._exit_speeds = exits
        return self._exit_speeds[0] if self._exit_speeds else 0.0

    def _has_work(self) -> bool:
        """Whether time passing changes anything (lets long idle spans be skipped)."""
        if self._wait_left > 0 or self._restore_left > 0 or self._decelerating:
            return True
        return self._status in (Status.RUN, Status.JOG)

    def _step(self, dt: float) -> None:  # noqa: PLR0915 - one integration step, kept whole
        if self._wait_left > 0:
            self._wait_left = max(0.0, self._wait_left - dt)
        if self._status is Status.HOME:
            return
        if self._status is Status.DOOR and self._door_sub == 3:
            self._restore_left -= dt
            if self._restore_left <= 0:
                self._restore_left = 0.0
                self._set_spindle(self._modal.spindle, self._modal.s)
                self._status = Status.RUN if self._planner else Status.IDLE
                self._exit_speeds = None
            return
        moving_states = (Status.RUN, Status.JOG, Status.HOLD, Status.DOOR)
        if self._status not in moving_states or not self._planner:
            if self._decelerating:
                self._v = 0.0
                self._decelerating = False
                self._stopped_after_decel()
            if self._status in (Status.RUN, Status.JOG):
                self._cycle_end()
            return
        if self._status in (Status.HOLD, Status.DOOR) and not self._decelerating:
            return
        left = dt
        while left > 1e-12 and self._planner:
            block = self._planner[0]
            remaining = block.length - self._along
            exit_v = self._exit_speed_of_current()
            v_cap = math.sqrt(exit_v * exit_v + 2 * block.accel * max(remaining, 0.0))
            if self._decelerating:
                v_new = max(0.0, min(self._v - block.accel * left, v_cap))
            else:
                v_new = min(self._v + block.accel * left, self._nominal(block), v_cap)
            v_avg = 0.5 * (self._v + v_new)
            distance = v_avg * left
            if distance >= remaining or remaining < 1e-9:
                used = remaining / v_avg if v_avg > 0 else left
                self._v = v_new
                self._pos = list(block.end)
                self._along = 0.0
                self._planner.popleft()
                self._exit_speeds = None
                left -= min(used, left)
                if not self._planner:
                    self._v = 0.0
                continue
            self._v = v_new
            self._along += distance
            for i in range(3):
                self._pos[i] = block.start[i] + block.unit[i] * self._along
            left = 0.0
        self._update_laser()
        if self._decelerating and (self._v <= 1e-9 or not self._planner):
            self._v = 0.0
            self._decelerating = False
            self._stopped_after_decel()
        elif not self._planner and self._status in (Status.RUN, Status.JOG):
            self._cycle_end()

    def _stopped_after_decel(self) -> None:
        if self._status is Status.JOG:
            # Jog cancel: flush the remaining jog blocks and return to Idle.
            self._planner.clear()
            self._exit_speeds = None
            self._along = 0.0
            self._gc_pos = list(self._pos)
            if self._pending is not None and self._pending.ops:
                first = self._pending.ops[0]
                if first.block is not None and first.block.jog:
                    self._pending.ops.clear()
            self._status = Status.IDLE
        elif self._status is Status.DOOR:
            self._door_stopped()
        self._update_laser()

    def _cycle_end(self) -> None:
        self._v = 0.0
        self._status = Status.IDLE
        self._update_laser()

    def _update_laser(self) -> None:
        """Laser mode: the live power follows the executing block (G0: off; M4: scaled)."""
        if not self._laser():
            return
        if not self._spindle_on:
            self._live_spindle = 0.0
            return
        if not self._planner or self._v <= 0:
            if self._spindle_on == 4:
                self._live_spindle = 0.0
            return
        block = self._planner[0]
        if block.rapid or block.jog or not block.spindle_mode:
            self._live_spindle = 0.0
            return
        power = block.s * self._spindle_ov / 100.0
        if block.spindle_mode == 4:
            nominal = self._nominal(block)
            power *= min(1.0, self._v / nominal) if nominal > 0 else 0.0
        self._live_spindle = self._clamp_s(power)


def _junction_limit(a: _Block, b: _Block) -> float:
    """Grbl's junction-deviation speed limit between two blocks (mm/s)."""
    cos_theta = -sum(a.unit[i] * b.unit[i] for i in range(3))
    if cos_theta > 0.999999:
        return 0.0  # reversal
    if cos_theta < -0.999999:
        return math.inf  # straight on
    sin_half = math.sqrt(0.5 * (1.0 - cos_theta))
    accel = min(a.accel, b.accel)
    return math.sqrt(accel * _JUNCTION_DEVIATION * sin_half / (1.0 - sin_half))
