"""A Haas NGC mill answering machine data collection queries, sans-IO and time-driven.

The mill runs one program part after part: the operator loads a blank (``load_s``), presses
cycle start, the cycle runs (``cycle_s``, Q500 says ``STATUS, BUSY``), M30 counts the part
(M30 counters #1 and #2, ``LAST CYCLE``), and so on until the batch quantity is reached; then
the operator resets counter #1 and starts the next batch. Feed hold, alarms, a stalled control,
line noise and power cycles are methods the fault script calls.

Replies follow serial-protocols.md §3.2 with the framing of §3.3 (both [3P]; the variants are
options in :class:`~shopfloor.sim.haas.config.HaasSimConfig`). Nothing here does I/O or reads a
clock: the caller passes ``now`` (its monotonic seconds) into :meth:`HaasMachine.receive` and
:meth:`HaasMachine.advance` and collects what the control wrote with
:meth:`HaasMachine.take_output`.
"""

from __future__ import annotations

import math
import random
import re
from collections import deque
from typing import Final, NamedTuple

from shopfloor.sim.errors import SimError
from shopfloor.sim.haas.config import HaasSimConfig

OUTPUT_CAP: Final = 64 * 1024
MAX_INPUT_LINE: Final = 64
STX: Final = b"\x02"
ETB: Final = b"\x17"
_QUERY_RE: Final = re.compile(r"Q([0-9]{3})(?:\s+([0-9]{1,5}))?")

IDLE: Final = "IDLE"
BUSY: Final = "BUSY"
FEED_HOLD: Final = "FEED HOLD"
ALARM_ON: Final = "ALARM ON"
OFF: Final = "OFF"


class StateChange(NamedTuple):
    """At caller time ``t`` the control entered ``state`` (a Q500 status word, or ``OFF``)
    in ``mode`` (Q104 without parentheses)."""

    t: float
    state: str
    mode: str


class HaasSimError(SimError):
    """Misuse of the model (not a bad query, which is answered like the control would)."""


def _hms(seconds: float) -> str:
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:05d}:{minutes:02d}:{secs:02d}"


class HaasMachine:
    """The control side of a Haas NGC mill. See the module docstring."""

    def __init__(self, config: HaasSimConfig) -> None:
        if config.cycle_s <= 0 or config.load_s < 0:
            raise HaasSimError("cycle_s must be positive and load_s not negative")
        self.config = config
        self.state_log: deque[StateChange] = deque(maxlen=config.state_log_size)
        self.status = IDLE
        self.mode = "MEM"
        self.program = config.program
        self.powered = True
        self.m30_1 = config.parts_start
        self.m30_2 = 3000 + config.parts_start
        self.tool_changes = 4821
        self.tool = 1
        self.power_on_s = 1234 * 3600.0
        self.motion_s = 456 * 3600.0
        self.last_cycle_s = 0.0
        self.prev_cycle_s = 0.0
        self.cycle_elapsed = 0.0
        self.alarm_code: int | None = None
        #: The operator runs parts by itself (starts as ``config.auto_run``; tests flip it).
        self.auto_run = config.auto_run
        #: Queries answered, and queries heard but not answered (stalled, swallowed, off).
        self.answered = 0
        self.ignored = 0
        self.output_dropped = 0
        self._batch_base = config.parts_start
        self._rng = random.Random(config.seed)
        self._out = bytearray()
        self._line = bytearray()
        self._line_overflow = False
        self._now: float | None = None
        self._idle_since: float | None = None
        self._batch_done_at: float | None = None
        self._swallow_q100 = config.swallow_first_q100
        self._stalled_until: float | None = None
        self._noise_until: float | None = None
        self._noise_rate = 0.0
        self._off_until: float | None = None

    # -- what tests and scripts look at

    @property
    def parts_in_batch(self) -> int:
        return self.m30_1 - self._batch_base

    @property
    def stalled(self) -> bool:
        return self._stalled_until is not None

    @property
    def noisy(self) -> bool:
        return self._noise_until is not None

    @property
    def spindle_rpm(self) -> float:
        return self.config.spindle_rpm if self.powered and self.status == BUSY else 0.0

    @property
    def spindle_load_pct(self) -> float:
        if self.spindle_rpm == 0.0:
            return 0.0
        return round(35.0 + 15.0 * math.sin(self.cycle_elapsed), 1)

    # -- time

    def advance(self, now: float) -> None:
        """Let time pass up to ``now`` (caller seconds)."""
        if self._now is None:
            self._log_state(now)  # the first moment the caller's clock is known
        last = self._now if self._now is not None else now
        dt = max(0.0, now - last)
        self._now = now
        if self._off_until is not None and now >= self._off_until:
            self.power_on(now)
        if self._stalled_until is not None and now >= self._stalled_until:
            self._stalled_until = None
        if self._noise_until is not None and now >= self._noise_until:
            self._noise_until = None
        if not self.powered:
            return
        self.power_on_s += dt
        if self.status == BUSY:
            self.motion_s += dt
            self.cycle_elapsed += dt
            if self.cycle_elapsed >= self.config.cycle_s:
                self._finish_part(now)
        elif self.status == IDLE:
            self._operator(now)

    def _operator(self, now: float) -> None:
        config = self.config
        if not self.auto_run or self.mode != "MEM":
            return
        if self._idle_since is None:
            self._idle_since = now
        required = config.parts_required
        if required > 0 and self.parts_in_batch >= required:
            if self._batch_done_at is None:
                self._batch_done_at = now
            if config.next_batch_s is not None and now - self._batch_done_at >= config.next_batch_s:
                self.m30_1 = 0  # the operator resets counter #1 for the next batch
                self._batch_base = 0
                self._batch_done_at = None
                self._idle_since = now
            return
        if now - self._idle_since >= config.load_s:
            self.cycle_start(now)

    def _finish_part(self, now: float) -> None:
        self.m30_1 += 1
        self.m30_2 += 1
        self.tool_changes += 3
        self.prev_cycle_s, self.last_cycle_s = self.last_cycle_s, self.cycle_elapsed
        self.cycle_elapsed = 0.0
        self._set_status(IDLE, now)

    # -- operator and faults

    def cycle_start(self, now: float) -> None:
        """Cycle start: from IDLE a new part, from FEED HOLD a resume."""
        if not self.powered or self.status == ALARM_ON:
            return
        if self.status == IDLE:
            self.cycle_elapsed = 0.0
        self._set_status(BUSY, now)

    def feed_hold(self, now: float) -> None:
        if self.powered and self.status == BUSY:
            self._set_status(FEED_HOLD, now)

    def resume(self, now: float) -> None:
        if self.status == FEED_HOLD:
            self.cycle_start(now)

    def trigger_alarm(self, code: int, now: float) -> None:
        """An alarm stops the cycle (the part is not counted)."""
        if not self.powered:
            return
        self.alarm_code = code
        self.cycle_elapsed = 0.0
        self._set_status(ALARM_ON, now)

    def reset(self, now: float) -> None:
        """The operator presses RESET: alarms clear, a running cycle is abandoned."""
        if not self.powered:
            return
        self.alarm_code = None
        self.cycle_elapsed = 0.0
        self._set_status(IDLE, now)

    def set_mode(self, mode: str, now: float) -> None:
        self.mode = mode
        self._log_state(now)

    def stall(self, seconds: float, now: float) -> None:
        """The control hears queries but answers none for ``seconds`` (0: until :meth:`unstall`)."""
        self._stalled_until = now + seconds if seconds > 0 else math.inf

    def unstall(self) -> None:
        self._stalled_until = None

    def noise(self, rate: float, seconds: float, now: float) -> None:
        """Each output byte is dropped or has a bit flipped with probability ``rate``."""
        if not 0.0 <= rate <= 1.0:
            raise HaasSimError("noise rate must be between 0 and 1")
        self._noise_rate = rate
        self._noise_until = now + seconds if seconds > 0 else math.inf

    def reboot(self, seconds: float, now: float) -> None:
        """Power-cycle: off (silent) for ``seconds``, then back up Idle with the program loaded."""
        self.power_off(now)
        self._off_until = now + seconds

    def power_off(self, now: float) -> None:
        self.powered = False
        self.cycle_elapsed = 0.0
        self._line.clear()
        self._out.clear()
        self._log_state(now, OFF)

    def power_on(self, now: float) -> None:
        self._off_until = None
        self.powered = True
        self.alarm_code = None
        self.mode = "MEM"
        self._swallow_q100 = self.config.swallow_first_q100
        self._idle_since = None
        self.status = IDLE
        self._log_state(now)

    # -- serial

    def receive(self, data: bytes, now: float) -> None:
        """Bytes from the host; each query line is answered at once."""
        self.advance(now)
        for byte in data:
            if byte in (0x0D, 0x0A):
                line, self._line = bytes(self._line), bytearray()
                overflow, self._line_overflow = self._line_overflow, False
                if line.strip() and not overflow:
                    self._query(line)
            elif len(self._line) >= MAX_INPUT_LINE:
                self._line_overflow = True
            else:
                self._line.append(byte)

    def take_output(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        if out and self._noise_until is not None:
            out = self._mangle(out)
        return out

    def _mangle(self, data: bytes) -> bytes:
        out = bytearray()
        for byte in data:
            roll = self._rng.random()
            if roll < self._noise_rate / 2:
                continue  # dropped
            if roll < self._noise_rate:
                out.append(byte ^ (1 << self._rng.randrange(8)))
            else:
                out.append(byte)
        return bytes(out)

    def _query(self, raw: bytes) -> None:
        if not self.powered or self._stalled_until is not None:
            self.ignored += 1
            return
        text = raw.decode("ascii", errors="replace").strip().upper().removeprefix("?").strip()
        match = _QUERY_RE.fullmatch(text)
        reply = self._answer(match.group(1), match.group(2)) if match else None
        if match and match.group(1) == "100" and self._swallow_q100:
            self._swallow_q100 = False
            self.ignored += 1
            return
        if reply is None:
            reply = self.config.unknown_reply
            if reply is None:
                self.ignored += 1
                return
        self.answered += 1
        self._say(reply)

    def _answer(self, code: str, arg: str | None) -> str | None:
        if (code == "600") != (arg is not None):
            return None
        if code == "600" and arg is not None:
            return f"MACRO, {self.variable(int(arg)):.4f}"
        replies = {
            "100": lambda: f"SERIAL NUMBER, {self.config.serial}",
            "101": lambda: f"SOFTWARE VERSION, {self.config.software}",
            "102": lambda: f"MODEL, {self.config.model}",
            "104": lambda: f"MODE, ({self.mode})",
            "200": lambda: f"TOOL CHANGES, {self.tool_changes}",
            "201": lambda: f"USING TOOL, {self.tool}",
            "300": lambda: f"P.O. TIME, {_hms(self.power_on_s)}",
            "301": lambda: f"C.S. TIME, {_hms(self.motion_s)}",
            "303": lambda: f"LAST CYCLE, {_hms(self.last_cycle_s)}",
            "304": lambda: f"PREV CYCLE, {_hms(self.prev_cycle_s)}",
            "402": lambda: f"M30 #1, {self.m30_1}",
            "403": lambda: f"M30 #2, {self.m30_2}",
            "500": self._q500,
        }
        answer = replies.get(code)
        return None if answer is None else answer()

    def _q500(self) -> str:
        if self.status == BUSY:
            return "STATUS, BUSY" if self.config.busy_comma else "STATUS BUSY"
        program = "MDI" if self.mode == "MDI" else self.program
        return f"PROGRAM, {program}, {self.status}, PARTS, {self.m30_1}"

    def variable(self, number: int) -> float:
        """What ``?Q600 number`` reads."""
        config = self.config
        if config.parts_required > 0 and number == config.parts_required_variable:
            return float(config.parts_required)
        values = {
            3901: float(self.m30_1),
            3902: float(self.m30_2),
            3027: self.spindle_rpm,
            1098: self.spindle_load_pct,
            3001: self.cycle_elapsed * 1000.0,
            5041: round(100.0 * math.sin(self.cycle_elapsed / 3), 4),
            5042: round(80.0 * math.cos(self.cycle_elapsed / 3), 4),
            5043: -5.0 if self.status == BUSY else 0.0,
        }
        return values.get(number, 0.0)

    def _say(self, payload: str) -> None:
        body = payload.encode("ascii")
        if self.config.framing == "stx":
            frame = STX + body + ETB + b"\r\n>"
        else:
            frame = b">" + body + b"\r\n"
        if len(self._out) + len(frame) > OUTPUT_CAP:
            self.output_dropped += len(frame)
            return
        self._out += frame

    def _set_status(self, status: str, now: float) -> None:
        if status == self.status:
            return
        self.status = status
        self._idle_since = now if status == IDLE else None
        self._log_state(now)

    def _log_state(self, now: float, state: str | None = None) -> None:
        self.state_log.append(StateChange(now, state or self.status, self.mode))
