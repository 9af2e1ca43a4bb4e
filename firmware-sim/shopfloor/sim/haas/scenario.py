"""Scripted faults for the Haas simulator.

A :class:`Script` of timed :class:`Fault` s acts on a
:class:`~shopfloor.sim.haas.machine.HaasMachine` the way a shop floor would: a feed hold, an
alarm the operator resets, a control that stops answering (stall), line noise (dropped and
flipped bytes), a power cycle in the middle of a part (reboot), and the port that disappears
and comes back (vanish; done by the runner, with ``!`` the machine power-cycles meanwhile).
Times and durations are caller seconds from the start of the script.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from shopfloor.sim.errors import SimConfigError
from shopfloor.sim.faultspec import numbers, split_fault
from shopfloor.sim.haas.machine import HaasMachine


class FaultKind(enum.StrEnum):
    HOLD = "hold"  # feed hold; after the duration, cycle start again
    ALARM = "alarm"  # alarm (``alarm:<code>``); after the duration, the operator resets
    STALL = "stall"  # the control stops answering for the duration
    NOISE = "noise"  # replies lose and flip bytes for the duration (``noise:<percent>``)
    REBOOT = "reboot"  # power-cycle in place: silent for the duration, then Idle
    VANISH = "vanish"  # the port disappears for the duration (done by the runner)


@dataclass(frozen=True, slots=True)
class Fault:
    """One scripted event ``at`` seconds after the script starts, lasting ``duration``.

    ``code``: the alarm number, or the noise level in percent. ``reboot``: a vanishing port
    also power-cycles the machine.
    """

    kind: FaultKind
    at: float
    duration: float = 0.0
    code: int = 1
    reboot: bool = False

    def __post_init__(self) -> None:
        if self.at < 0 or self.duration < 0:
            raise SimConfigError(f"fault {self.kind}: times must not be negative")


_DEFAULT_CODES: Final = {FaultKind.ALARM: 1, FaultKind.NOISE: 20}


def parse_fault(spec: str) -> Fault:
    """``KIND[:N]@SECONDS[+DURATION][!]``: ``hold@10+5``, ``alarm:108@30+8``, ``stall@20+6``,
    ``noise:30@15+10`` (30 % of bytes hit), ``reboot@40+5``, ``vanish@50+6!``."""
    s = split_fault(spec, FaultKind, usage="KIND@SECONDS, e.g. hold@10+5", numbered=True)
    code = _DEFAULT_CODES.get(s.kind, 1)
    if s.number is not None:
        if not s.number.isdigit():
            raise SimConfigError(f"fault {spec!r}: {s.number!r} is not a number")
        code = int(s.number)
    if s.kind is FaultKind.NOISE and not 0 < code <= 100:
        raise SimConfigError(f"fault {spec!r}: noise is a percentage from 1 to 100")
    if s.reboot and s.kind is not FaultKind.VANISH:
        raise SimConfigError(f"fault {spec!r}: '!' (power-cycle) only goes with vanish")
    with numbers(spec):
        return Fault(
            s.kind,
            at=float(s.when),
            duration=float(s.duration) if s.duration is not None else 0.0,
            code=code,
            reboot=s.reboot,
        )


@dataclass(slots=True)
class _Later:
    due: float
    action: Callable[[HaasMachine, float], None]


class Script:
    """Timed faults: ``Script([Fault(FaultKind.STALL, at=5, duration=3)])``."""

    def __init__(self, faults: Sequence[Fault]) -> None:
        self._faults = sorted(faults, key=lambda f: f.at)
        self._next = 0
        self._later: list[_Later] = []
        self._start: float | None = None
        #: (caller time, fault) for every fault that fired.
        self.fired: list[tuple[float, Fault]] = []

    @property
    def done(self) -> bool:
        return self._next >= len(self._faults) and not self._later

    def tick(self, machine: HaasMachine, now: float) -> list[Fault]:
        if self._start is None:
            self._start = now
        out: list[Fault] = []
        while self._next < len(self._faults) and now - self._start >= self._faults[self._next].at:
            fault = self._faults[self._next]
            self._next += 1
            self.fired.append((now, fault))
            if fault.kind is FaultKind.VANISH:
                out.append(fault)
            else:
                self._apply(fault, machine, now)
        due = [later for later in self._later if now >= later.due]
        self._later = [later for later in self._later if now < later.due]
        for later in due:
            later.action(machine, now)
        return out

    def _apply(self, fault: Fault, machine: HaasMachine, now: float) -> None:
        kind, until = fault.kind, now + fault.duration
        if kind is FaultKind.HOLD:
            machine.feed_hold(now)
            if fault.duration > 0:
                self._later.append(_Later(until, lambda m, t: m.resume(t)))
        elif kind is FaultKind.ALARM:
            machine.trigger_alarm(fault.code, now)
            if fault.duration > 0:
                self._later.append(_Later(until, lambda m, t: m.reset(t)))
        elif kind is FaultKind.STALL:
            machine.stall(fault.duration, now)
        elif kind is FaultKind.NOISE:
            machine.noise(fault.code / 100.0, fault.duration, now)
        elif kind is FaultKind.REBOOT:
            machine.reboot(fault.duration, now)
