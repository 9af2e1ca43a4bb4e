"""Scripted faults for the Marlin simulator.

A fault fires ``at`` caller seconds after the printer first runs, or when the SD print
reaches ``at_pct`` percent. ``duration`` is how long it lasts (0: until someone else acts).
The machine carries them out itself (:meth:`~shopfloor.sim.marlin.machine.MarlinMachine.
advance`); ``VANISH`` (the port disappears) is handed to the runner.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from shopfloor.sim.errors import SimConfigError
from shopfloor.sim.faultspec import numbers, split_fault


class FaultKind(enum.StrEnum):
    VANISH = "vanish"  # the port disappears for `duration` s (`!`: the board resets too)
    NOISE = "noise"  # flipped and dropped bytes, both ways, for `duration` s
    STALL = "stall"  # the firmware stops answering (input lost) for `duration` s
    REBOOT = "reboot"  # power cycle mid-print: `start` banner, the print is lost
    THERMAL_RUNAWAY = "thermal-runaway"  # Error:Thermal Runaway + kill(); reset after duration
    PAUSE = "pause"  # M25 from the LCD; M24 after `duration`
    USER_PAUSE = "user-pause"  # M0 in the file: busy: paused for user, resumed after duration
    ABORT = "abort"  # M524 from the LCD
    START = "start"  # M23 + M24 from the LCD


@dataclass(frozen=True, slots=True)
class Fault:
    kind: FaultKind
    at: float | None = None
    at_pct: float | None = None
    duration: float = 0.0
    reboot: bool = False

    def __post_init__(self) -> None:
        if (self.at is None) == (self.at_pct is None):
            raise SimConfigError(f"fault {self.kind}: give exactly one of at= and at_pct=")
        if self.duration < 0:
            raise SimConfigError(f"fault {self.kind}: duration must not be negative")


def parse_fault(spec: str) -> Fault:
    """``KIND@WHEN[+DURATION][!]``: WHEN is seconds (``12.5``) or ``<pct>%`` of the print.

    Examples: ``pause@40%+5``, ``thermal-runaway@30+10``, ``vanish@20+4!``, ``noise@10+5``.
    """
    s = split_fault(spec, FaultKind, usage="KIND@WHEN, e.g. pause@40%+5", numbered=False)
    with numbers(spec):
        duration = float(s.duration) if s.duration is not None else 0.0
        if s.when.endswith("%"):
            return Fault(s.kind, at_pct=float(s.when[:-1]), duration=duration, reboot=s.reboot)
        return Fault(s.kind, at=float(s.when), duration=duration, reboot=s.reboot)
