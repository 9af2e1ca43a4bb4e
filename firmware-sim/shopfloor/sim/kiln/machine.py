"""A simulated electric kiln with a SOLO / Delta DTB / Omega CN7500-style controller.

:class:`KilnMachine` is sans-IO and time-driven, like the GRBL simulator's machine: the
runner calls :meth:`receive` with request bytes, :meth:`advance` with the time, and sends
what :meth:`take_output` returns. Times passed in are caller seconds; the kiln lives
``time_scale`` times faster, so a 13-hour cone-6 firing takes 80 s at 600.

Physics: one thermal mass. Elements give up to ``max_rate_c_per_h`` (times
``element_factor``: 0.7 is a kiln with worn elements that cannot keep up) and losses grow
with temperature (linear plus quadratic, so the top of a glaze firing is slow). The
controller follows a :class:`~shopfloor.sim.kiln.schedules.Schedule` in time without
waiting for the kiln (like a SOLO ramp/soak pattern), with a proportional output plus
feed-forward, and serves the CN7500 register map over Modbus RTU.

Register map served (0-based, unit ``device_id``): holding 0x1000 PV x0.1 (0x8003 when
the thermocouple is broken), 0x1001 SV x0.1, 0x1005 control mode (3 = ramp/soak),
0x1012 output x0.1 %, 0x102A LED bits (b3 C, b4 ALM1, b6 OUT1), 0x102F firmware 0x0100,
0x1030 start pattern, 0x1032/0x1033 remaining step time s/min, 0x1034 step, 0x1035
pattern, 0x1040 last step of pattern 0; coil 0x0814 run (1) / stop (0), writable with
FC05 to start and stop the program.
Other addresses answer exception 02. Frames for other units are ignored, as on a bus.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, NamedTuple

from shopfloor.sim.kiln.config import KilnSimConfig
from shopfloor.sim.kiln.schedules import Schedule, schedule

__all__ = ["SENSOR_BREAK_RAW", "KilnMachine", "StateChange", "crc16"]

SENSOR_BREAK_RAW: Final = 0x8003
FIRMWARE: Final = 0x0100
RUN_COIL: Final = 0x0814
_MAX_STEP_S: Final = 5.0  # kiln seconds per integration step
_RX_CAP: Final = 256


def crc16(data: bytes) -> int:
    """CRC-16/MODBUS; written low byte first."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def _frame(body: bytes) -> bytes:
    return body + crc16(body).to_bytes(2, "little")


class StateChange(NamedTuple):
    """The kiln's own truth: ``state`` is Idle, Heating, Soaking, Cooling, Alarm or Off."""

    t: float
    state: str


@dataclass(slots=True)
class _Program:
    schedule: Schedule
    start_c: float
    elapsed_s: float = 0.0


class KilnMachine:
    """See the module docstring. ``rng`` drives line noise only."""

    def __init__(self, config: KilnSimConfig, *, rng: random.Random | None = None) -> None:
        self.config = config
        self.rng = rng or random.Random(config.seed)
        self.schedule = schedule(config.schedule)
        self.temperature_c = config.initial_c
        self.setpoint_c = 0.0
        self.output = 0.0  # 0..1
        self.program: _Program | None = None
        self.segment = 0
        self.remaining_s = 0.0
        self.sensor_broken = False
        self.powered = True
        self.stalled = False
        self.noise = 0.0  # probability per byte of a flip or a drop
        self.element_factor = config.element_factor
        self.firings_completed = 0
        self._rx = bytearray()
        self._tx = bytearray()
        self._now: float | None = None
        self.state_log: list[StateChange] = []
        #: Requests answered, and requests ignored (other unit, stalled, bad CRC).
        self.answered = 0
        self.ignored = 0

    # -- what the outside world does -----------------------------------------------------

    @property
    def running(self) -> bool:
        return self.program is not None

    @property
    def state(self) -> str:
        if not self.powered:
            return "Off"
        if self.sensor_broken:
            return "Alarm"
        if self.program is None:
            return "Idle"
        return self._phase()

    def start_firing(self, now: float, name: str | None = None) -> None:
        """Start the schedule (or another bundled one) from the current temperature."""
        self.advance(now)
        if name is not None:
            self.schedule = schedule(name)
        if self.powered:
            self.program = _Program(self.schedule, self.temperature_c)
            self._update_program(0.0)
            self._log(now)

    def stop_firing(self, now: float) -> None:
        self.advance(now)
        self.program = None
        self.output = 0.0
        self._log(now)

    def set_sensor_break(self, broken: bool, now: float) -> None:
        self.advance(now)
        self.sensor_broken = broken
        self._log(now)

    def power_off(self, now: float) -> None:
        """The controller loses power: the program is lost, the kiln starts cooling."""
        self.advance(now)
        self.powered = False
        self.program = None
        self.output = 0.0
        self._rx.clear()
        self._tx.clear()
        self._log(now)

    def power_on(self, now: float) -> None:
        self.advance(now)
        self.powered = True
        self.setpoint_c = 0.0
        self._log(now)

    # -- time ----------------------------------------------------------------------------

    def advance(self, now: float) -> None:
        """Run the kiln up to caller time ``now``."""
        if self._now is None:
            self._now = now
            self._log(now)
            return
        kiln_s = (now - self._now) * self.config.time_scale
        self._now = now
        while kiln_s > 0:
            step = min(kiln_s, _MAX_STEP_S)
            self._step(step)
            kiln_s -= step
        self._log(now)

    def _loss_c_per_h(self, t: float) -> float:
        d = max(0.0, t - self.config.ambient_c)
        return self.config.loss_linear * d + self.config.loss_quadratic * d * d

    def _step(self, dt: float) -> None:
        cfg = self.config
        power = cfg.max_rate_c_per_h * self.element_factor
        program = self.program
        if program is not None and self.powered and not self.sensor_broken:
            program.elapsed_s += dt
            self._update_program(program.elapsed_s)
        if self.program is not None and self.powered and not self.sensor_broken:
            # Proportional band plus feed-forward for losses and the ramp.
            ramp = self._ramp_c_per_h()
            ff = (self._loss_c_per_h(self.setpoint_c) + ramp) / power if power > 0 else 1.0
            self.output = min(1.0, max(0.0, (self.setpoint_c - self.temperature_c) / 15.0 + ff))
        else:
            self.output = 0.0
        rate = power * self.output - self._loss_c_per_h(self.temperature_c)
        self.temperature_c = max(cfg.ambient_c, self.temperature_c + rate * dt / 3600.0)

    def _ramp_c_per_h(self) -> float:
        program = self.program
        if program is None:
            return 0.0
        seg = program.schedule.segments[self.segment]
        here = program.schedule.at(program.elapsed_s + 1.0, program.start_c)[0]
        if abs(here - self.setpoint_c) < 1e-9:
            return 0.0
        return seg.rate_c_per_h if here > self.setpoint_c else -seg.rate_c_per_h

    def _update_program(self, elapsed: float) -> None:
        program = self.program
        assert program is not None
        sp, index, left, finished = program.schedule.at(elapsed, program.start_c)
        self.setpoint_c, self.segment, self.remaining_s = sp, index, left
        if finished:
            self.program = None
            self.output = 0.0
            self.firings_completed += 1

    def _phase(self) -> str:
        program = self.program
        assert program is not None
        ramp = self._ramp_c_per_h()
        if ramp > 0:
            return "Heating"
        if ramp < 0:
            return "Cooling"
        return "Soaking"

    def _log(self, now: float) -> None:
        state = self.state
        if not self.state_log or self.state_log[-1].state != state:
            self.state_log.append(StateChange(now, state))
            if len(self.state_log) > self.config.state_log_size:
                del self.state_log[0]

    # -- Modbus RTU ------------------------------------------------------------------------

    def receive(self, data: bytes, now: float) -> None:
        """Bytes from the bus (requests, possibly several, split or noisy)."""
        self.advance(now)
        if not self.powered:
            return
        self._rx += self._corrupt(data)
        if len(self._rx) > _RX_CAP:
            del self._rx[: len(self._rx) - _RX_CAP]
        while (found := self._find_request()) is not None:
            start, length = found
            frame = bytes(self._rx[start : start + length])
            self.ignored += start > 0  # noise or a frame with a bad CRC before this one
            del self._rx[: start + length]
            if frame[0] != self.config.device_id or self.stalled:
                self.ignored += 1
                continue
            reply = self._handle(frame[1], frame[2:-2])
            self.answered += 1
            self._tx += self._corrupt(_frame(bytes((self.config.device_id,)) + reply))

    def _find_request(self) -> tuple[int, int] | None:
        """(offset, length) of the first complete request with a good CRC, by content."""
        rx = self._rx
        for start in range(len(rx) - 7):
            function = rx[start + 1]
            if function in (1, 2, 3, 4, 5, 6):
                length = 8
            elif function in (15, 16) and len(rx) > start + 6:
                length = 9 + rx[start + 6]
            else:
                continue
            if len(rx) - start < length:
                continue
            body = rx[start : start + length - 2]
            if crc16(bytes(body)) == int.from_bytes(
                rx[start + length - 2 : start + length], "little"
            ):
                return start, length
        return None

    def take_output(self) -> bytes:
        out, self._tx = bytes(self._tx), bytearray()
        return out

    def _corrupt(self, data: bytes) -> bytes:
        if self.noise <= 0 or not data:
            return data
        out = bytearray()
        for byte in data:
            roll = self.rng.random()
            if roll < self.noise / 2:
                continue  # dropped
            if roll < self.noise:
                byte ^= 1 << self.rng.randrange(8)  # noqa: PLW2901 - a flipped bit
            out.append(byte)
        return bytes(out)

    def _handle(self, function: int, body: bytes) -> bytes:
        address = int.from_bytes(body[0:2], "big")
        second = int.from_bytes(body[2:4], "big") if len(body) >= 4 else 0
        if function == 3:
            values = [self._register(address + i) for i in range(second)]
            if not 1 <= second <= 125 or any(v is None for v in values):
                return bytes((function | 0x80, 2))
            data = b"".join(int(v or 0).to_bytes(2, "big") for v in values)
            return bytes((function, len(data))) + data
        if function == 1:
            if address != RUN_COIL or second != 1:
                return bytes((function | 0x80, 2))
            return bytes((1, 1, int(self.running)))
        if function == 5:
            if address != RUN_COIL or second not in (0x0000, 0xFF00):
                return bytes((function | 0x80, 2 if address != RUN_COIL else 3))
            now = self._now or 0.0
            if second and not self.running:
                self.start_firing(now)
            elif not second and self.running:
                self.stop_firing(now)
            return bytes((function,)) + body
        if function == 6:
            return bytes((function | 0x80, 3))  # writes locked (On-Line Configuration off)
        return bytes((function | 0x80, 1))

    def _register(self, address: int) -> int | None:
        readers: dict[int, Callable[[], int]] = {
            0x1000: self._pv_raw,
            0x1001: lambda: round(self.setpoint_c * 10),
            0x1005: lambda: 3,
            0x1012: lambda: round(self.output * 1000),
            0x102A: self._leds,
            0x102F: lambda: FIRMWARE,
            0x1030: lambda: 0,
            0x1032: lambda: min(0xFFFF, round(self.remaining_s)),
            0x1033: lambda: min(0xFFFF, round(self.remaining_s / 60)),
            0x1034: lambda: self.segment,
            0x1035: lambda: 0,
            0x1040: lambda: len(self.schedule.segments) - 1,  # last step of pattern 0
        }
        reader = readers.get(address)
        return None if reader is None else reader() & 0xFFFF

    def _pv_raw(self) -> int:
        if self.sensor_broken:
            return SENSOR_BREAK_RAW
        return round(self.temperature_c * 10)

    def _leds(self) -> int:
        bits = 0x08  # degrees C
        if self.sensor_broken:
            bits |= 0x10  # ALM1
        if self.output > 0:
            bits |= 0x40  # OUT1
        return bits
