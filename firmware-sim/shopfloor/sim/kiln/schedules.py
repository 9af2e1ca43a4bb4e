"""Firing schedules for the simulated kiln: ramp in degrees C per hour, target, hold.

The bundled ones are illustrative electric-kiln schedules built on the cone table of the
fact sheet (serial-protocols.md 4.6): cone 6 is about 1222 C (2232 F) and cone 04 about
1060 C (1940 F) at the final rate of 60 C/h (108 F/h).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from shopfloor.sim.errors import SimConfigError

__all__ = ["SCHEDULES", "Schedule", "Segment", "schedule"]


@dataclass(frozen=True, slots=True)
class Segment:
    """Ramp at ``rate_c_per_h`` (positive) towards ``target_c``, then hold ``hold_min``."""

    rate_c_per_h: float
    target_c: float
    hold_min: float = 0.0


@dataclass(frozen=True, slots=True)
class Schedule:
    name: str
    segments: tuple[Segment, ...]

    def duration_s(self, start_c: float) -> float:
        """Kiln seconds the program takes from ``start_c`` (the controller does not wait)."""
        total, here = 0.0, start_c
        for seg in self.segments:
            total += abs(seg.target_c - here) / seg.rate_c_per_h * 3600.0 + seg.hold_min * 60.0
            here = seg.target_c
        return total

    def at(self, elapsed_s: float, start_c: float) -> tuple[float, int, float, bool]:
        """(set point, segment index, seconds left in the segment, finished) at ``elapsed_s``."""
        here = start_c
        t = elapsed_s
        for index, seg in enumerate(self.segments):
            ramp_s = abs(seg.target_c - here) / seg.rate_c_per_h * 3600.0
            hold_s = seg.hold_min * 60.0
            if t < ramp_s:
                frac = t / ramp_s
                return here + (seg.target_c - here) * frac, index, ramp_s + hold_s - t, False
            if t < ramp_s + hold_s:
                return seg.target_c, index, ramp_s + hold_s - t, False
            t -= ramp_s + hold_s
            here = seg.target_c
        return here, len(self.segments) - 1, 0.0, True


SCHEDULES: Final = {
    "cone6-glaze": Schedule(
        "cone6-glaze",
        (
            Segment(111.0, 538.0),  # 200 F/h to 1000 F
            Segment(222.0, 1149.0),  # 400 F/h to 2100 F
            Segment(67.0, 1222.0, 10.0),  # 120 F/h to 2232 F (cone 6), hold 10 min
            Segment(83.0, 816.0),  # controlled cool, 150 F/h to 1500 F
        ),
    ),
    "bisque": Schedule(
        "bisque",
        (
            Segment(56.0, 93.0, 60.0),  # candling: 100 F/h to 200 F, hold 1 h
            Segment(111.0, 566.0),  # 200 F/h to 1050 F
            Segment(167.0, 1000.0),  # 300 F/h to 1832 F
            Segment(60.0, 1060.0, 5.0),  # 108 F/h to 1940 F (cone 04), hold 5 min
        ),
    ),
}


def schedule(name: str) -> Schedule:
    try:
        return SCHEDULES[name]
    except KeyError:
        raise SimConfigError(
            f"schedule {name!r}: unknown (one of {', '.join(sorted(SCHEDULES))})"
        ) from None
