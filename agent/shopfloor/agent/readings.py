"""What a device session hands the tracker, whatever the protocol.

A protocol adapter (GRBL today; Haas, Modbus kilns and Marlin later) turns its own typed
events into these. The tracker knows nothing about any protocol.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shopfloor.contract.envelope import RecordKind
from shopfloor.contract.states import Observation


@dataclass(frozen=True, slots=True)
class Reading:
    """One observation of a machine at one moment.

    ``ts_ms`` is wall-clock epoch ms, ``mono_ms`` the monotonic clock at the same moment.
    ``detail`` is the device's own word for its state (``Hold:0``, ``Door:1``) so nothing
    is lost in the mapping to a canonical state. ``values`` are numeric telemetry samples
    with stable names (``feed_mm_min``, ``spindle``, ``x``, ``feed_override_pct``...).
    ``program`` and ``phase`` (a kiln's heating/soaking/cooling) are None when this reading
    does not say; the tracker then keeps what it knew.
    """

    ts_ms: int
    mono_ms: int
    observation: Observation
    detail: str = ""
    values: Mapping[str, float] = field(default_factory=dict)
    line: int | None = None
    program: str | None = None
    phase: str | None = None


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """What a device said about itself (banner, ``$I``): published on the meta topic."""

    protocol: str
    firmware: str = ""
    options: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeviceEvent:
    """Something that happened once: an alarm, a message, an error reply."""

    ts_ms: int
    mono_ms: int
    event: str  # alarm_raised, alarm_cleared, message, error_reply, device_reset, job_*, ...
    code: int | None = None
    text: str = ""
    #: More fields for the event body (job id, program, done/total/unit, outcome, count).
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Record:
    """What the tracker hands the publisher: one machine record before it gets its seq.

    The publisher adds agent, stream and seq (persisted) and turns it into an
    :class:`~shopfloor.contract.envelope.Envelope`.
    """

    kind: RecordKind
    machine: str
    ts_ms: int
    mono_ms: int
    body: Mapping[str, Any]
