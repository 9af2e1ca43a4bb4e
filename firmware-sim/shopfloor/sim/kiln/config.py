"""Configuration of the simulated kiln and its controller."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shopfloor.sim.kiln.scenario import KilnFault


@dataclass(frozen=True, slots=True)
class KilnSimConfig:
    """What the simulated kiln is and how the simulator drives it.

    Temperatures in degrees C, rates in C per hour of kiln time. ``time_scale`` is kiln
    seconds per caller second (600: a 10-hour firing in a minute).
    """

    #: Register map served. Only the SOLO / Delta DTB / Omega CN7500 map is simulated.
    profile: str = "cn7500"
    #: Modbus unit id.
    device_id: int = 1
    #: Bundled firing schedule: ``cone6-glaze`` or ``bisque``.
    schedule: str = "cone6-glaze"
    time_scale: float = 1.0
    ambient_c: float = 20.0
    initial_c: float = 20.0
    #: Full element power as a heating rate at ambient (no losses), C/h.
    max_rate_c_per_h: float = 600.0
    #: 1.0 healthy; 0.7 worn elements that fall behind at the top of a glaze firing.
    element_factor: float = 1.0
    #: Losses, C/h: linear x (T - ambient) + quadratic x (T - ambient)^2.
    loss_linear: float = 0.15
    loss_quadratic: float = 1.5e-4
    #: Start the firing this many caller seconds after the simulator starts (None: wait for a
    #: FC05 write of the run coil, or a ``start`` fault).
    start_after_s: float | None = 1.0
    #: Start the next firing this many caller seconds after one ends (None: fire once).
    repeat_after_s: float | None = None
    #: Scenario faults (see :mod:`shopfloor.sim.kiln.scenario`).
    faults: tuple[KilnFault, ...] = ()
    #: Probability per byte of a flipped or dropped byte while a ``noise`` fault lasts.
    noise_probability: float = 0.05
    seed: int | None = None
    state_log_size: int = 10_000
