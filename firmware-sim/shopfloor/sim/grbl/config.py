"""Configuration of the simulated GRBL 1.1h controller."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shopfloor.sim.grbl.scenario import Fault


@dataclass(frozen=True, slots=True)
class GrblSimConfig:
    """What the simulated machine is and how the simulator drives it.

    Lengths are in mm, rates in mm/min, accelerations in mm/s^2 (as in Grbl's ``$`` settings).
    Durations (``homing_s``, ``sync_pause_s`` ...) are *machine* seconds: they run
    ``time_scale`` times faster than the caller's clock.
    """

    #: ``$32=1``: S is laser power, M4 scales it with speed, G0 turns it off.
    laser: bool = False
    #: Built with ``USE_LINE_NUMBERS``: ``Ln:`` in reports, 14 planner blocks, ``[OPT:VN,14,128]``.
    line_numbers: bool = False
    #: ``$22=1``: starts locked in Alarm until ``$H`` or ``$X``.
    homing: bool = False
    #: Machine seconds per caller second (10 = everything runs ten times faster).
    time_scale: float = 1.0
    #: ``$10`` status mask: 1 = MPos (else WPos), 2 = add ``Bf:``.
    status_mask: int = 1
    #: ``$110..$112`` maximum rate per axis, mm/min.
    max_rate: tuple[float, float, float] = (5000.0, 5000.0, 1500.0)
    #: ``$120..$122`` acceleration per axis, mm/s^2.
    acceleration: tuple[float, float, float] = (400.0, 400.0, 200.0)
    #: ``$130..$132`` maximum travel per axis, mm.
    max_travel: tuple[float, float, float] = (600.0, 400.0, 80.0)
    #: ``$30`` / ``$31`` maximum and minimum spindle speed (laser: power scale).
    max_spindle: float | None = None
    min_spindle: float = 0.0
    #: How long a simulated ``$H`` takes.
    homing_s: float = 3.0
    #: Extra Idle time at a spindle-speed sync (observed: jobs that change S run stop-and-go).
    sync_pause_s: float = 0.15
    #: Spindle spin-up time when resuming from a safety door (Door:3).
    door_restore_s: float = 2.0
    #: Scenario: stream this bundled program (name or path) once at start-up.
    auto_run: str | None = None
    #: Scenario: cycle the bundled programs forever with pauses, holds and an occasional alarm.
    demo_loop: bool = False
    #: Scenario: faults to inject (see :mod:`shopfloor.sim.grbl.scenario`).
    faults: tuple[Fault, ...] = ()
    #: Seed for the demo loop's random choices (``None``: different every run).
    seed: int | None = None
    #: How many state changes the machine keeps in :attr:`GrblMachine.state_log`.
    state_log_size: int = 10_000

    @property
    def spindle_max(self) -> float:
        """``$30``: 1000 for a laser (power in S units), 24000 rpm for a router."""
        if self.max_spindle is not None:
            return self.max_spindle
        return 1000.0 if self.laser else 24000.0
