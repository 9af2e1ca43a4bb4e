"""Configuration of the simulated Marlin 2.x printer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shopfloor.sim.marlin.scenario import Fault


@dataclass(frozen=True, slots=True)
class MarlinSimConfig:
    """What the simulated printer is and how the simulator drives it.

    ``print_s`` and the heating rates are *machine* seconds, which run ``time_scale`` times
    faster than the caller's clock; serial timers (auto-reports, keep-alives) run on the
    caller's clock, as the host sees them.
    """

    #: The file on the simulated SD card (its long name; the 8.3 name is derived).
    file_name: str = "benchy.gcode"
    file_size: int = 1_048_576
    #: How long the print takes once hot (machine seconds).
    print_s: float = 120.0
    #: Start printing the file (M23 + M24 from the LCD) ``start_delay_s`` after power-up.
    auto_start: bool = False
    start_delay_s: float = 1.0
    time_scale: float = 1.0
    ambient_c: float = 22.0
    hotend_target_c: float = 210.0
    bed_target_c: float = 60.0
    #: Heating rates at full power (degrees per machine second) and cooling constant (1/s).
    hotend_rate_c_s: float = 6.0
    bed_rate_c_s: float = 2.0
    cooling_per_s: float = 0.03
    #: M115 capabilities: AUTOREPORT_TEMP and AUTOREPORT_SD_STATUS.
    autoreport_temp: bool = True
    autoreport_sd: bool = True
    #: Built with M73_REPORT: the file's M73 lines are echoed to the host.
    m73_report: bool = True
    #: HOST_ACTION_COMMANDS: ``//action:pause`` / ``resume`` on M25 / M24.
    host_actions: bool = True
    #: Current 2.x prints ``ok`` after ``Resend:``; one older 2.0 revision does not.
    ok_after_resend: bool = True
    #: DEFAULT_KEEPALIVE_INTERVAL (caller seconds) for ``busy:`` lines.
    keepalive_s: float = 2.0
    #: How long a host G28 takes (machine seconds); ``busy: processing`` meanwhile.
    homing_s: float = 4.0
    machine_type: str = "Shopfloor Sim i3"
    firmware_version: str = "2.1.2.1"
    #: Line noise: chance per byte that a bit flips / the byte is lost while noise is on.
    noise_flip: float = 0.02
    noise_drop: float = 0.01
    #: Scenario: faults to inject (see :mod:`shopfloor.sim.marlin.scenario`).
    faults: tuple[Fault, ...] = ()
    seed: int | None = None
    #: How many state changes the printer keeps in :attr:`MarlinMachine.state_log`.
    state_log_size: int = 10_000

    @property
    def short_name(self) -> str:
        """The DOS 8.3 name Marlin prints first (``BENCHY~1.GCO``)."""
        stem, _, ext = self.file_name.rpartition(".")
        if not stem:
            stem, ext = ext, ""
        clean = "".join(ch for ch in stem.upper() if ch.isalnum())[:6] or "FILE"
        return f"{clean}~1.{ext.upper()[:3]}" if ext else f"{clean}~1"
