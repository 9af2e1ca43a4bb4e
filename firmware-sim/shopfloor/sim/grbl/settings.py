"""Grbl's ``$`` settings: defaults for a simulated machine and how ``$$`` prints them."""

from __future__ import annotations

from typing import Final

from shopfloor.sim.grbl.config import GrblSimConfig
from shopfloor.sim.grbl.gcode import fmt

INT_SETTINGS: Final = frozenset({0, 1, 2, 3, 4, 5, 6, 10, 13, 20, 21, 22, 23, 26, 32})
ZERO_DECIMAL_SETTINGS: Final = frozenset({30, 31})


def fmt_setting(key: int, value: float) -> str:
    if key in INT_SETTINGS or key in ZERO_DECIMAL_SETTINGS:
        return str(int(value))
    return fmt(value, 3)


def default_settings(config: GrblSimConfig) -> dict[int, float]:
    settings: dict[int, float] = {
        0: 10,
        1: 25,
        2: 0,
        3: 0,
        4: 0,
        5: 0,
        6: 0,
        10: config.status_mask,
        11: 0.010,
        12: 0.002,
        13: 0,
        20: 0,
        21: 0,
        22: 1 if config.homing else 0,
        23: 0,
        24: 25.0,
        25: 500.0,
        26: 250,
        27: 1.0,
        30: config.spindle_max,
        31: config.min_spindle,
        32: 1 if config.laser else 0,
    }
    for i in range(3):
        settings[100 + i] = 250.0 if i < 2 else 400.0
        settings[110 + i] = config.max_rate[i]
        settings[120 + i] = config.acceleration[i]
        settings[130 + i] = config.max_travel[i]
    return {k: float(v) for k, v in settings.items()}
