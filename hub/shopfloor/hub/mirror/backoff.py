"""Retry delays: exponential, bounded, with jitter. Pure; the random source is passed in."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    initial_s: float
    max_s: float

    def delay(self, failures: int, rand: Callable[[], float] = random.random) -> float:
        """The wait after the ``failures``-th failure in a row (1, 2, ...): the ceiling
        ``min(max_s, initial_s * 2 ** (failures - 1))``, of which a random half is taken off
        (so hubs that lost the same server do not all retry in the same instant)."""
        exponent = min(max(failures, 1) - 1, 60)
        ceiling = min(self.max_s, self.initial_s * 2.0**exponent)
        return ceiling * (0.5 + 0.5 * rand())
