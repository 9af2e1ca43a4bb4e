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
    text = spec.strip()
    reboot = text.endswith("!")
    if reboot:
        text = text[:-1]
    kind_text, sep, when_text = text.partition("@")
    if not sep:
        raise SimConfigError(f"fault {spec!r}: expected KIND@WHEN, e.g. pause@40%+5")
    try:
        kind = FaultKind(kind_text.strip().lower())
    except ValueError:
        names = ", ".join(k.value for k in FaultKind)
        raise SimConfigError(
            f"fault {spec!r}: unknown kind {kind_text!r} (one of {names})"
        ) from None
    when, plus, duration_text = when_text.partition("+")
    try:
        duration = float(duration_text) if plus else 0.0
        if when.endswith("%"):
            return Fault(kind, at_pct=float(when[:-1]), duration=duration, reboot=reboot)
        return Fault(kind, at=float(when), duration=duration, reboot=reboot)
    except ValueError as exc:
        raise SimConfigError(f"fault {spec!r}: bad number ({exc})") from exc
