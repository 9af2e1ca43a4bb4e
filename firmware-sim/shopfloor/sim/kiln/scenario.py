"""Scripted faults for the kiln simulator, on the runner's (caller) clock.

``KIND@SECONDS[+DURATION][!]``: ``tc-break@20+5`` (thermocouple break for 5 s),
``weak@0`` (the elements wear out: the kiln falls behind), ``noise@10+4`` (flipped and
dropped bytes both ways), ``stall@12+3`` (the controller stops answering), ``vanish@15+3``
(the port disappears and returns; ``!`` power-cycles the controller meanwhile, losing the
program), ``reboot@30+2`` (the controller power-cycles mid-firing; the port stays),
``start@0`` / ``stop@40`` (an operator starts or stops the program).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from shopfloor.sim.errors import SimConfigError
from shopfloor.sim.faultspec import numbers, split_fault
from shopfloor.sim.kiln.machine import KilnMachine

__all__ = ["FaultKind", "KilnFault", "Script", "parse_fault"]


class FaultKind(enum.StrEnum):
    TC_BREAK = "tc-break"
    WEAK = "weak"
    NOISE = "noise"
    STALL = "stall"
    VANISH = "vanish"
    REBOOT = "reboot"
    START = "start"
    STOP = "stop"


@dataclass(frozen=True, slots=True)
class KilnFault:
    kind: FaultKind
    at: float
    duration: float = 0.0
    reboot: bool = False

    def __post_init__(self) -> None:
        if self.at < 0 or self.duration < 0:
            raise SimConfigError(f"fault {self.kind}: times must not be negative")


def parse_fault(spec: str) -> KilnFault:
    """``tc-break@20+5``, ``vanish@15+3!``, ``weak@0`` ..."""
    usage = "KIND@SECONDS[+DURATION], e.g. stall@10+3"
    s = split_fault(spec, FaultKind, usage=usage, numbered=False)
    with numbers(spec):
        at = float(s.when)
        duration = float(s.duration) if s.duration is not None else 0.0
        return KilnFault(s.kind, at, duration, s.reboot)


class Script:
    """Applies faults to the machine as time passes; returns the ones the runner must do
    (``VANISH``). Also starts firings (``start_after_s``, ``repeat_after_s``)."""

    def __init__(
        self,
        faults: tuple[KilnFault, ...] = (),
        *,
        start_after_s: float | None = None,
        repeat_after_s: float | None = None,
        noise_probability: float = 0.05,
    ) -> None:
        self._pending = sorted(faults, key=lambda f: f.at)
        self._undo: list[tuple[float, FaultKind]] = []
        self._start_after = start_after_s
        self._repeat_after = repeat_after_s
        self._noise = noise_probability
        self._t0: float | None = None
        self._next_start: float | None = None
        self._was_running = False
        #: (caller time, fault) for every fault that fired.
        self.fired: list[tuple[float, KilnFault]] = []

    def tick(self, machine: KilnMachine, now: float) -> list[KilnFault]:
        if self._t0 is None:
            self._t0 = now
            if self._start_after is not None:
                self._next_start = now + self._start_after
        out: list[KilnFault] = []
        while self._pending and now - self._t0 >= self._pending[0].at:
            fault = self._pending.pop(0)
            self.fired.append((now, fault))
            if fault.kind is FaultKind.VANISH:
                out.append(fault)
            else:
                self._apply(machine, fault, now)
        for due, kind in list(self._undo):
            if now >= due:
                self._undo.remove((due, kind))
                self._revert(machine, kind, now)
        if self._was_running and not machine.running and self._repeat_after is not None:
            self._next_start = now + self._repeat_after
        self._was_running = machine.running
        if self._next_start is not None and now >= self._next_start and machine.powered:
            self._next_start = None
            if not machine.running:
                machine.start_firing(now)
                self._was_running = True
        return out

    def _apply(self, machine: KilnMachine, fault: KilnFault, now: float) -> None:
        kind = fault.kind
        if kind is FaultKind.TC_BREAK:
            machine.set_sensor_break(True, now)
        elif kind is FaultKind.WEAK:
            machine.element_factor = min(machine.element_factor, 0.7)
        elif kind is FaultKind.NOISE:
            machine.noise = self._noise
        elif kind is FaultKind.STALL:
            machine.stalled = True
        elif kind is FaultKind.REBOOT:
            machine.power_off(now)
            self._undo.append((now + max(fault.duration, 0.1), kind))
            return
        elif kind is FaultKind.START:
            machine.start_firing(now)
        elif kind is FaultKind.STOP:
            machine.stop_firing(now)
        if fault.duration > 0:
            self._undo.append((now + fault.duration, kind))

    @staticmethod
    def _revert(machine: KilnMachine, kind: FaultKind, now: float) -> None:
        if kind is FaultKind.TC_BREAK:
            machine.set_sensor_break(False, now)
        elif kind is FaultKind.WEAK:
            machine.element_factor = machine.config.element_factor
        elif kind is FaultKind.NOISE:
            machine.noise = 0.0
        elif kind is FaultKind.STALL:
            machine.stalled = False
        elif kind is FaultKind.REBOOT:
            machine.power_on(now)
