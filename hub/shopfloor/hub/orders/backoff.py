"""When a failed webhook delivery is tried again: exponential backoff with jitter."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Attempt ``n`` (1-based) that failed is retried after a delay drawn uniformly from
    ``[d/2, d]`` with ``d = min(max_delay_s, base_delay_s * 2 ** (n - 1))``; after
    ``max_attempts`` failed attempts the delivery is dead."""

    max_attempts: int = 12
    base_delay_s: float = 10.0
    max_delay_s: float = 3600.0

    def delay_s(self, failed_attempts: int, rng: random.Random) -> float:
        ceiling = min(self.max_delay_s, self.base_delay_s * 2 ** max(0, failed_attempts - 1))
        return rng.uniform(ceiling / 2, ceiling)

    def gives_up(self, failed_attempts: int) -> bool:
        return failed_attempts >= self.max_attempts
