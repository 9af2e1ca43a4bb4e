"""A Marlin 2.x printer, sans-IO and time-driven, printing a file from its "SD card".

Follows serial-protocols.md section 2: ``start`` banner, one ``ok`` per line, ``N<n> ...*<cs>``
with ``Error:checksum mismatch, Last Line: n`` / ``Resend: n+1`` (and an ``ok`` after it, or
not: ``ok_after_resend``), ``ok T:...`` for M105, M155 and M27 S auto-reports, ``SD printing
byte x/y``, ``Not SD printing`` (also while paused, as current 2.x does), ``Current file:``,
``Done printing file``, M115 with ``Cap:`` lines, M31, echoed M73 (``M73_REPORT``),
``//action:pause``/``resume``, heat-wait lines with ``W:`` while the file's M190/M109 wait,
``echo:busy: processing`` while a host G28 runs, ``echo:busy: paused for user`` for an M0.

Nothing here does I/O or reads a clock: the caller passes ``now`` (its monotonic seconds)
to :meth:`MarlinMachine.receive` and :meth:`MarlinMachine.advance` and collects the output
with :meth:`MarlinMachine.take_output`. Physics and print progress run ``time_scale`` times
faster; serial timers (auto-reports, keep-alives) run on the caller's clock.
"""

from __future__ import annotations

import random
import re
from collections import deque
from dataclasses import dataclass
from typing import Final, NamedTuple

from shopfloor.sim.errors import SimError
from shopfloor.sim.marlin.config import MarlinSimConfig
from shopfloor.sim.marlin.scenario import Fault, FaultKind

OUTPUT_CAP: Final = 64 * 1024
_LINE_MAX: Final = 96  # MAX_CMD_SIZE
_STEP: Final = 0.05  # longest slice of machine time integrated at once
#: Share of the file before its heat-up commands (the slicer's header).
_HEADER_SHARE: Final = 0.002
_RESIDENCY_C: Final = 1.0
_NUMBERED_RE: Final = re.compile(r"N(-?[0-9]+)\s*(.*)")


class StateChange(NamedTuple):
    """At caller time ``t`` the printer entered ``state`` (``Idle``, ``Heating``,
    ``Printing``, ``Paused``, ``Halted``, ``Off``)."""

    t: float
    state: str


class MarlinSimError(SimError):
    """Misuse of the model (not a G-code error, which is answered on the wire)."""


@dataclass(slots=True)
class _Active:
    fault: Fault
    until: float | None


class MarlinMachine:
    """The device side of a Marlin 2.x printer. See the module docstring."""

    def __init__(self, config: MarlinSimConfig) -> None:
        if config.time_scale <= 0:
            raise MarlinSimError("time_scale must be positive")
        if config.file_size <= 0 or config.print_s <= 0:
            raise MarlinSimError("file_size and print_s must be positive")
        self.config = config
        self.state_log: deque[StateChange] = deque(maxlen=config.state_log_size)
        #: (caller time, file name, "completed" | "aborted" | "failed") per finished print.
        self.prints: list[tuple[float, str, str]] = []
        #: (caller time, fault) for every fault that fired.
        self.fired: list[tuple[float, Fault]] = []
        self.lines_received = 0
        #: The last lines received as sent (checksums and all), for tests.
        self.received: deque[str] = deque(maxlen=256)
        self.resends = 0
        self.output_dropped = 0
        self._rng = random.Random(config.seed)
        self._out = bytearray()
        self._rx = bytearray()
        self._now: float | None = None
        self._start: float | None = None
        self._faults = list(config.faults)
        self._later: list[tuple[float, FaultKind]] = []
        self._vanish: list[tuple[float, bool]] = []
        self._noise_until: float | None = None
        self._stall_until: float | None = None
        self._powered = True
        self._halted = False
        self._auto_started = False
        self._hotend = self._bed = config.ambient_c
        self._power_up(0.0)

    # ---------------------------------------------------------------- public API

    @property
    def state(self) -> str:
        if not self._powered:
            return "Off"
        if self._halted:
            return "Halted"
        if self._paused or self._user_paused:
            return "Paused"
        if self._printing:
            return "Heating" if self._heating_wait else "Printing"
        return "Idle"

    @property
    def bytes_done(self) -> int:
        return int(self._pos)

    @property
    def progress_pct(self) -> float:
        return 100.0 * self._pos / self.config.file_size

    @property
    def temperatures(self) -> tuple[float, float, float, float]:
        """(hotend, hotend target, bed, bed target)."""
        return (self._hotend, self._hotend_target, self._bed, self._bed_target)

    @property
    def silent(self) -> bool:
        """True while the printer says nothing (halted, stalled or off)."""
        return self._halted or not self._powered or self._stalled

    @property
    def powered(self) -> bool:
        return self._powered

    def receive(self, data: bytes, now: float) -> None:
        """Bytes arrive on the serial line at caller time ``now``."""
        self.advance(now)
        if not self._powered or self._halted or self._stalled:
            return
        for byte in self._noisy(data):
            if byte in (0x0A, 0x0D):
                line = self._rx.decode("ascii", errors="replace")
                self._rx.clear()
                if line.strip():
                    self._on_line(line.strip())
            elif len(self._rx) < _LINE_MAX:
                self._rx.append(byte)
        self._log_state()

    def advance(self, now: float) -> None:
        """Let the printer run up to caller time ``now``."""
        if self._now is None:
            self._now = now
            self._start = now
            self._timers_from(now)
            self._log_state()
            return
        while self._now < now:
            step = min(_STEP / self.config.time_scale, now - self._now)
            self._now += step
            self._tick(step)
        self._log_state()

    def take_output(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def take_vanish(self) -> list[tuple[float, bool]]:
        """Port-vanish requests from the fault script: (seconds, reboot) for the runner."""
        out, self._vanish = self._vanish, []
        return out

    # --- hooks: what the LCD, the operator or a fault can do --------------------------------

    def start_print(self, now: float) -> None:
        """M23 <file> + M24 from the LCD."""
        self.advance(now)
        if self._powered and not self._halted and not self._file_open:
            self._open_file()
            self._start_or_resume()
        self._log_state()

    def pause(self, now: float) -> None:
        self.advance(now)
        self._m25()
        self._log_state()

    def resume(self, now: float) -> None:
        self.advance(now)
        self._user_paused = False
        self._m24()
        self._log_state()

    def abort(self, now: float) -> None:
        self.advance(now)
        self._m524()
        self._log_state()

    def thermal_runaway(self, now: float, heater: str = "0") -> None:
        self.advance(now)
        if not self._powered or self._halted:
            return
        self._emit(f"Error:Thermal Runaway, system stopped! Heater_ID: {heater}")
        self._emit("Error:Printer halted. kill() called!")
        self._end_print("failed")
        self._hotend_target = self._bed_target = 0.0
        self._halted = True
        self._log_state()

    def power_off(self, now: float) -> None:
        self.advance(now)
        if self._printing or self._file_open:
            self._end_print("failed")
        self._powered = False
        self._hotend_target = self._bed_target = 0.0
        self._log_state()

    def power_on(self, now: float) -> None:
        self.advance(now)
        if self._powered:
            return
        self._powered = True
        self._power_up(now)
        self._log_state()

    def reboot(self, now: float) -> None:
        """Reset button or watchdog: off and on at once."""
        self.power_off(now)
        self.power_on(now)

    # ---------------------------------------------------------------- internals

    def _power_up(self, now: float) -> None:
        cfg = self.config
        self._halted = False
        self._last_n = 0
        self._pending: deque[str] = deque()
        self._auto_temp_s = 0
        self._auto_sd_s = 0
        self._printing = False
        self._file_open = False
        self._paused = False
        self._user_paused = False
        self._heating_wait = False
        self._pos = 0.0
        self._m73_pct = -1
        self._print_time = 0.0
        self._homing_left = 0.0
        self._hotend_target = self._bed_target = 0.0
        self._rx = bytearray()
        self._timers_from(now)
        self._emit("start")
        self._emit("echo:PowerUp")
        self._emit(f"echo:Marlin {cfg.firmware_version}")
        self._emit("echo: Last Updated: 2023-06-01 | Author: (shopfloor sim)")
        self._emit("echo:SD card ok")

    def _timers_from(self, now: float) -> None:
        self._next_temp = now
        self._next_sd = now
        self._next_keepalive = now + self.config.keepalive_s
        self._next_wait_line = now + 1.0

    @property
    def _stalled(self) -> bool:
        return self._stall_until is not None

    def _emit(self, line: str) -> None:
        if self._stalled or not self._powered:
            return
        data = self._noisy((line + "\n").encode("ascii", errors="replace"))
        if len(self._out) + len(data) > OUTPUT_CAP:
            self.output_dropped += len(data)
            return
        self._out += data

    def _noisy(self, data: bytes) -> bytes:
        if self._noise_until is None:
            return data
        cfg = self.config
        out = bytearray()
        for byte in data:
            roll = self._rng.random()
            if roll < cfg.noise_drop:
                continue
            if roll < cfg.noise_drop + cfg.noise_flip:
                out.append(byte ^ (1 << self._rng.randrange(7)))
            else:
                out.append(byte)
        return bytes(out)

    def _log_state(self) -> None:
        label = self.state
        if not self.state_log or self.state_log[-1].state != label:
            self.state_log.append(StateChange(self._now or 0.0, label))

    # -- time

    def _tick(self, dt: float) -> None:
        now = self._now
        assert now is not None
        self._run_faults(now)
        if not self._powered:
            self._cool(dt * self.config.time_scale)
            return
        machine_dt = dt * self.config.time_scale
        self._physics(machine_dt)
        if self._halted:
            return
        if self._homing_left > 0:
            self._homing_left -= machine_dt
            if self._homing_left <= 0:
                self._emit("ok")
                self._drain_pending()
        if self._printing and not self._paused and not self._user_paused:
            self._print_step(machine_dt)
        self._serial_timers(now)
        if (
            self.config.auto_start
            and not self._auto_started
            and self._start is not None
            and now - self._start >= self.config.start_delay_s
        ):
            self._auto_started = True
            if not self._file_open:
                self._open_file()
                self._start_or_resume()

    def _physics(self, dt: float) -> None:
        cfg = self.config
        self._hotend = _approach(self._hotend, self._hotend_target, cfg.hotend_rate_c_s, cfg, dt)
        self._bed = _approach(self._bed, self._bed_target, cfg.bed_rate_c_s, cfg, dt)

    def _cool(self, dt: float) -> None:
        cfg = self.config
        self._hotend = _approach(self._hotend, 0.0, 0.0, cfg, dt)
        self._bed = _approach(self._bed, 0.0, 0.0, cfg, dt)

    def _print_step(self, dt: float) -> None:
        cfg = self.config
        size = cfg.file_size
        if self._heating_wait:
            hot = self._hotend >= self._hotend_target - _RESIDENCY_C
            bed = self._bed >= self._bed_target - _RESIDENCY_C
            if hot and bed:
                self._heating_wait = False
                self._drain_pending()
            return
        self._print_time += dt
        self._pos = min(float(size), self._pos + size * dt / cfg.print_s)
        if self._pos < size * _HEADER_SHARE * 2:
            return
        pct = int(self.progress_pct)
        if cfg.m73_report and pct != self._m73_pct and pct < 100:
            self._m73_pct = pct
            left = max(0, round(cfg.print_s * (1 - self._pos / size) / 60))
            self._emit(f"echo: M73 Progress: {pct}%; Time left: {left}m;")
        if self._pos >= size:
            self._hotend_target = self._bed_target = 0.0
            self._emit("Done printing file")
            self._end_print("completed")

    def _serial_timers(self, now: float) -> None:
        cfg = self.config
        if self._auto_temp_s and now >= self._next_temp:
            self._next_temp = now + self._auto_temp_s
            self._emit(" " + self._temp_text())
        if self._auto_sd_s and now >= self._next_sd:
            self._next_sd = now + self._auto_sd_s
            self._emit(self._sd_status())
        if self._printing and self._heating_wait and not self._paused:
            if now >= self._next_wait_line:
                self._next_wait_line = now + 1.0
                self._emit(f" {self._temp_text()} W:?")
        else:
            self._next_wait_line = now + 1.0
        if now >= self._next_keepalive:
            self._next_keepalive = now + cfg.keepalive_s
            if self._user_paused:
                self._emit("echo:busy: paused for user")
            elif self._homing_left > 0:
                self._emit("echo:busy: processing")

    def _temp_text(self) -> str:
        power = 127 if self._hotend < self._hotend_target - 0.5 else 0
        bed_power = 127 if self._bed < self._bed_target - 0.5 else 0
        return (
            f"T:{self._hotend:.2f} /{self._hotend_target:.2f} "
            f"B:{self._bed:.2f} /{self._bed_target:.2f} @:{power} B@:{bed_power}"
        )

    def _sd_status(self) -> str:
        if self._printing and not self._paused:
            return f"SD printing byte {int(self._pos)}/{self.config.file_size}"
        return "Not SD printing"

    # -- faults

    def _run_faults(self, now: float) -> None:
        start = self._start if self._start is not None else now
        for fault in list(self._faults):
            due = (fault.at is not None and now - start >= fault.at) or (
                fault.at_pct is not None and self._printing and self.progress_pct >= fault.at_pct
            )
            if due:
                self._faults.remove(fault)
                self.fired.append((now, fault))
                self._apply(fault, now)
        for item in list(self._later):
            due_at, kind = item
            if now >= due_at:
                self._later.remove(item)
                self._finish(kind, now)

    def _apply(self, fault: Fault, now: float) -> None:
        kind = fault.kind
        until = now + fault.duration
        if kind is FaultKind.VANISH:
            self._vanish.append((fault.duration, fault.reboot))
        elif kind is FaultKind.NOISE:
            self._noise_until = until
            self._later.append((until, kind))
        elif kind is FaultKind.STALL:
            self._stall_until = until
            self._later.append((until, kind))
        elif kind is FaultKind.REBOOT:
            self._reboot_now(now)
        elif kind is FaultKind.THERMAL_RUNAWAY:
            self._thermal_now()
            if fault.duration > 0:
                self._later.append((until, kind))
        elif kind is FaultKind.PAUSE:
            self._m25()
            if fault.duration > 0:
                self._later.append((until, kind))
        elif kind is FaultKind.USER_PAUSE:
            if self._printing:
                self._user_paused = True
                self._next_keepalive = now
                if fault.duration > 0:
                    self._later.append((until, kind))
        elif kind is FaultKind.ABORT:
            self._m524()
        elif kind is FaultKind.START and not self._file_open and not self._halted:
            self._open_file()
            self._start_or_resume()

    def _finish(self, kind: FaultKind, now: float) -> None:
        if kind is FaultKind.NOISE:
            self._noise_until = None
        elif kind is FaultKind.STALL:
            self._stall_until = None
        elif kind is FaultKind.THERMAL_RUNAWAY:
            self._reboot_now(now)  # the operator presses reset
        elif kind is FaultKind.PAUSE:
            self._m24()
        elif kind is FaultKind.USER_PAUSE:
            self._user_paused = False

    def _reboot_now(self, now: float) -> None:
        if self._printing or self._file_open:
            self._end_print("failed")
        self._powered = True
        self._power_up(now)

    def _thermal_now(self) -> None:
        if self._halted:
            return
        self._emit("Error:Thermal Runaway, system stopped! Heater_ID: 0")
        self._emit("Error:Printer halted. kill() called!")
        self._end_print("failed")
        self._hotend_target = self._bed_target = 0.0
        self._halted = True

    def _end_print(self, how: str) -> None:
        was = self._printing or self._file_open
        self._printing = self._file_open = self._paused = self._user_paused = False
        self._heating_wait = False
        if was:
            self.prints.append((self._now or 0.0, self.config.file_name, how))

    # -- SD printing

    def _open_file(self) -> None:
        self._file_open = True
        self._pos = 0.0
        self._m73_pct = -1
        self._print_time = 0.0

    def _start_or_resume(self) -> None:
        cfg = self.config
        if not self._file_open:
            return
        if not self._printing:
            self._printing = True
            self._heating_wait = True
            self._pos = max(self._pos, cfg.file_size * _HEADER_SHARE)
            self._hotend_target = cfg.hotend_target_c
            self._bed_target = cfg.bed_target_c
        self._paused = False

    def _m24(self) -> None:
        if not self._file_open or self._halted:
            return
        self._start_or_resume()
        if self.config.host_actions:
            self._emit("//action:resume")

    def _m25(self) -> None:
        if not self._printing or self._paused:
            return
        self._paused = True
        if self.config.host_actions:
            self._emit("//action:pause")

    def _m524(self) -> None:
        if not self._file_open:
            return
        self._end_print("aborted")
        self._hotend_target = self._bed_target = 0.0

    # -- serial lines (queue.cpp)

    def _on_line(self, line: str) -> None:
        self.lines_received += 1
        self.received.append(line)
        line = line.split(";", 1)[0].strip()
        if not line:
            return
        if line.startswith("N"):
            command = self._numbered(line)
            if command is None:
                return
        else:
            command = line.split("*", 1)[0].strip()
        if self._homing_left > 0 or (self._printing and self._heating_wait):
            # A blocking command runs: the line waits in the command buffer.
            if len(self._pending) < 4:
                self._pending.append(command)
            return
        self._execute(command)

    def _numbered(self, line: str) -> str | None:
        match = _NUMBERED_RE.fullmatch(line)
        if match is None:
            self._line_error("Line Number is not Last Line Number+1")
            return None
        number = int(match.group(1))
        rest = match.group(2)
        if "*" not in rest:
            self._line_error("No Checksum with line number")
            return None
        body, _, cs_text = line.rpartition("*")
        command = rest.rpartition("*")[0].strip()
        if number != self._last_n + 1 and not command.startswith("M110"):
            self._line_error("Line Number is not Last Line Number+1")
            return None
        expected = 0
        for ch in body.encode("ascii", errors="replace"):
            expected ^= ch
        if not cs_text.strip().isdigit() or int(cs_text.strip()) != expected:
            self._line_error("checksum mismatch")
            return None
        self._last_n = number
        return command

    def _line_error(self, text: str) -> None:
        self.resends += 1
        self._emit(f"Error:{text}, Last Line: {self._last_n}")
        self._emit(f"Resend: {self._last_n + 1}")
        if self.config.ok_after_resend:
            self._emit("ok")

    def _drain_pending(self) -> None:
        while self._pending and self._homing_left <= 0 and not self._heating_wait:
            self._execute(self._pending.popleft())

    def _execute(self, command: str) -> None:  # noqa: PLR0915 - one branch per G-code
        words = command.split()
        if not words:
            self._emit("ok")
            return
        code = words[0].upper()
        args = {w[0].upper(): w[1:] for w in words[1:] if w}
        if code == "M105":
            self._emit("ok " + self._temp_text())
            return
        if code == "M110":
            self._last_n = _int(args.get("N"), self._last_n)
        elif code == "M115":
            self._m115()
        elif code == "M155":
            self._auto_temp_s = _int(args.get("S"), 0) if self.config.autoreport_temp else 0
            self._next_temp = (self._now or 0.0) + self._auto_temp_s
        elif code == "M27":
            if "C" in args:
                if self._file_open:
                    self._emit(f"Current file: {self.config.short_name} {self.config.file_name}")
                else:
                    self._emit("Current file: (no file)")
            elif "S" in args and self.config.autoreport_sd:
                self._auto_sd_s = _int(args.get("S"), 0)
                self._next_sd = (self._now or 0.0) + self._auto_sd_s
            else:
                self._emit(self._sd_status())
        elif code == "M31":
            self._emit(f"echo:Print time: {_duration(self._print_time)}")
        elif code == "M23":
            name = command[3:].strip()
            if name.lower() in (self.config.file_name.lower(), self.config.short_name.lower()):
                self._open_file()
                self._emit(f"File opened: {self.config.short_name} Size: {self.config.file_size}")
                self._emit("File selected")
            else:
                self._emit(f"open failed, File: {name}.")
        elif code == "M24":
            self._m24()
        elif code == "M25":
            self._m25()
        elif code == "M524":
            self._m524()
        elif code == "M73":
            pass  # progress goes to the (absent) LCD
        elif code in ("M104", "M140"):
            value = _float(args.get("S"), 0.0)
            if code == "M104":
                self._hotend_target = value
            else:
                self._bed_target = value
        elif code == "M108":
            self._user_paused = False
        elif code == "M112":
            self._emit("Error:Printer halted. kill() called!")
            self._end_print("failed")
            self._halted = True
            return
        elif code == "M999":
            pass
        elif code == "G28":
            self._homing_left = self.config.homing_s
            self._next_keepalive = (self._now or 0.0) + self.config.keepalive_s
            return  # ok when homing is done
        elif code[:1] == "G" or code in ("M114", "M106", "M107", "M84", "M400"):
            pass
        else:
            self._emit(f'echo:Unknown command: "{command}"')
        self._emit("ok")

    def _m115(self) -> None:
        cfg = self.config
        self._emit(
            f"FIRMWARE_NAME:Marlin {cfg.firmware_version} (Jun  1 2023 12:00:00) "
            "SOURCE_CODE_URL:github.com/MarlinFirmware/Marlin PROTOCOL_VERSION:1.0 "
            f"MACHINE_TYPE:{cfg.machine_type} EXTRUDER_COUNT:1 "
            "UUID:cede2a2f-41a2-4748-9b12-c55c62f367ff"
        )
        caps = {
            "SERIAL_XON_XOFF": False,
            "BINARY_FILE_TRANSFER": False,
            "EEPROM": True,
            "VOLUMETRIC": True,
            "AUTOREPORT_POS": False,
            "AUTOREPORT_TEMP": cfg.autoreport_temp,
            "PROGRESS": False,
            "PRINT_JOB": True,
            "AUTOLEVEL": False,
            "RUNOUT": False,
            "Z_PROBE": False,
            "LEVELING_DATA": False,
            "BUILD_PERCENT": False,
            "SOFTWARE_POWER": False,
            "TOGGLE_LIGHTS": False,
            "CASE_LIGHT_BRIGHTNESS": False,
            "EMERGENCY_PARSER": False,
            "HOST_ACTION_COMMANDS": cfg.host_actions,
            "PROMPT_SUPPORT": False,
            "SDCARD": True,
            "REPEAT": False,
            "SD_WRITE": True,
            "AUTOREPORT_SD_STATUS": cfg.autoreport_sd,
            "LONG_FILENAME": True,
            "EXTENDED_M20": False,
            "THERMAL_PROTECTION": True,
        }
        for name, on in caps.items():
            self._emit(f"Cap:{name}:{int(on)}")


def _approach(temp: float, target: float, rate: float, cfg: MarlinSimConfig, dt: float) -> float:
    """Heat towards ``target`` at ``rate`` (slowing near it); otherwise cool to ambient."""
    if target > temp:
        step = min(rate * dt, max(0.05, (target - temp) * 0.5) * dt * 4)
        return min(target, temp + step)
    floor = max(cfg.ambient_c, target)
    return max(floor, temp - (temp - cfg.ambient_c) * cfg.cooling_per_s * dt)


def _duration(seconds: float) -> str:
    total = int(seconds)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if total >= size or parts:
            parts.append(f"{total // size}{unit}")
            total %= size
    parts.append(f"{total}s")
    return " ".join(parts)


def _int(text: str | None, default: int) -> int:
    try:
        return int(float(text)) if text else default
    except ValueError:
        return default


def _float(text: str | None, default: float) -> float:
    try:
        return float(text) if text else default
    except ValueError:
        return default
