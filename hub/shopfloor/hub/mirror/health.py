"""The mirror's figures, as ``GET /api/v1/health`` shows them under ``mirror``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class MirrorHealth:
    target: str  # the server's URL, without credentials
    running: bool
    #: Highest record cursor delivered and committed, and the highest stored.
    cursor: int
    head: int
    #: Records stored but not yet mirrored (head - cursor).
    lag: int
    last_success_at: int | None  # epoch ms of the last accepted write (or empty batch)
    last_error: str | None  # the last failure, kept after a success for diagnosis
    last_error_at: int | None
    consecutive_failures: int
    records_mirrored: int  # since the hub started
    points_written: int
    #: Records the server refused for good (HTTP 400/413/422), skipped one by one.
    records_refused: int
    #: Values, samples and records that could not become points, by reason.
    skipped: Mapping[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.running and self.consecutive_failures == 0
