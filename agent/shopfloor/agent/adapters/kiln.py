"""Kiln controller values to readings: state and phase, telemetry, firing jobs.

Pure (time is passed in). :func:`decode_sample` turns the raw words a profile's fields
returned into a :class:`KilnSample`; :func:`classify` is the state table (sample and set
point trend in, observation, detail and phase out); :class:`FiringJobs` turns the run flag
into ``job_started``/``job_progress``/``job_ended`` events; :class:`KilnAdapter` ties them
together for the driver.

Phase while firing: a rising set point is ``heating``, a falling one ``cooling``; a set
point that has not moved for ``flat_after_s`` is a hold, shown as ``soaking`` once the
kiln is within ``soak_window_c`` of it (``heating`` while it still climbs to it,
``cooling`` if it is above it).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from shopfloor.agent.adapters.kiln_profile import KilnProfile
from shopfloor.agent.readings import DeviceEvent, DeviceInfo, Reading
from shopfloor.contract.states import Observation

__all__ = [
    "FiringJobs",
    "FiringSchedule",
    "FiringSegment",
    "KilnAdapter",
    "KilnItem",
    "KilnSample",
    "Phase",
    "SetpointTrend",
    "Trend",
    "classify",
    "decode_sample",
]

KilnItem = Reading | DeviceEvent | DeviceInfo
PROTOCOL: Final = "modbus_kiln"


class Phase(enum.StrEnum):
    HEATING = "heating"
    SOAKING = "soaking"
    COOLING = "cooling"


class Trend(enum.Enum):
    UNKNOWN = "unknown"
    RISING = "rising"
    FLAT = "flat"
    FALLING = "falling"


@dataclass(frozen=True, slots=True)
class KilnSample:
    """One full read of the controller, in degrees C. None: the profile has no such field
    (or the device refused it)."""

    pv_c: float | None = None
    sp_c: float | None = None
    output_pct: float | None = None
    segment: int | None = None
    last_segment: int | None = None
    pattern: int | None = None
    remaining_s: float | None = None
    running: bool | None = None
    alarm: bool = False
    sensor_break: bool = False
    firmware: int | None = None


def _to_c(value: float, unit: str) -> float:
    return (value - 32.0) * 5.0 / 9.0 if unit == "F" else value


def decode_sample(
    profile: KilnProfile, words: Mapping[str, tuple[int, ...]], *, unit: str = "C"
) -> KilnSample:
    """A sample from each field's raw words (fields missing from ``words`` stay None)."""
    fields = profile.fields
    values: dict[str, Any] = {}
    sensor_break = alarm = False
    running: bool | None = None
    for name, raw_words in words.items():
        f = fields[name]
        raw = f.raw(raw_words)
        if name == "pv":
            if raw in f.sensor_break:
                sensor_break = True
            else:
                values["pv_c"] = round(_to_c(f.value(raw_words), unit), 2)
        elif name == "sp":
            values["sp_c"] = round(_to_c(f.value(raw_words), unit), 2)
        elif name in ("output_pct", "remaining_s"):
            values[name] = f.value(raw_words)
        elif name in ("segment", "last_segment", "pattern", "firmware"):
            values[name] = round(f.value(raw_words))
        elif name == "alarm":
            alarm = alarm or bool(raw & f.alarm_mask)
        elif name == "status":
            alarm = alarm or bool(raw & f.alarm_mask)
            sensor_break = sensor_break or bool(raw & f.sensor_break_mask)
            if f.stop_mask:
                running = not raw & f.stop_mask
        elif name == "run":
            running = raw in f.running
    if "pv_c" in values and not math.isfinite(values["pv_c"]):
        del values["pv_c"]
        sensor_break = True
    return KilnSample(running=running, alarm=alarm, sensor_break=sensor_break, **values)


class SetpointTrend:
    """Is the set point rising, flat or falling? Any change sets the direction at once; a
    set point that has not moved for ``flat_after_ms`` is flat."""

    def __init__(self, flat_after_ms: int = 90_000, resolution: float = 0.05) -> None:
        self.flat_after_ms = flat_after_ms
        self.resolution = resolution
        self.reset()

    def reset(self) -> None:
        self._last: float | None = None
        self._changed_mono = 0
        self.trend = Trend.UNKNOWN

    def update(self, sp: float | None, mono_ms: int) -> Trend:
        if sp is None:
            self.reset()
            return self.trend
        if self._last is None:
            self._last, self._changed_mono = sp, mono_ms
            return self.trend
        delta = sp - self._last
        if abs(delta) >= self.resolution:
            self.trend = Trend.RISING if delta > 0 else Trend.FALLING
            self._last, self._changed_mono = sp, mono_ms
        elif mono_ms - self._changed_mono >= self.flat_after_ms:
            self.trend = Trend.FLAT
        return self.trend


def classify(
    sample: KilnSample,
    trend: Trend,
    *,
    over_temperature_c: float | None = None,
    soak_window_c: float = 10.0,
    idle_setpoint_c: float = 40.0,
) -> tuple[Observation, str, Phase | None]:
    """The state table: (observation, detail, phase) for one sample.

    ALARM wins (broken thermocouple, over-temperature, the controller's alarm bit); then
    RUNNING with a phase while the program runs (or, without a run flag, while the set
    point is above ``idle_setpoint_c``); IDLE otherwise.
    """
    if sample.sensor_break:
        return Observation.REPORTS_ALARM, "sensor_break", None
    pv, sp = sample.pv_c, sample.sp_c
    if over_temperature_c is not None and pv is not None and pv > over_temperature_c:
        return Observation.REPORTS_ALARM, "over_temperature", None
    if sample.alarm:
        return Observation.REPORTS_ALARM, "controller_alarm", None
    running = sample.running
    if running is None:
        running = sp is not None and sp > idle_setpoint_c
    if not running:
        return Observation.REPORTS_IDLE, "stopped", None
    phase = _phase(pv, sp, trend, soak_window_c)
    return Observation.REPORTS_RUNNING, str(phase) if phase else "running", phase


def _phase(pv: float | None, sp: float | None, trend: Trend, window: float) -> Phase | None:
    if trend is Trend.RISING:
        return Phase.HEATING
    if trend is Trend.FALLING:
        return Phase.COOLING
    if pv is None or sp is None:
        return None
    if pv < sp - window:
        return Phase.HEATING
    if pv > sp + window:
        return Phase.COOLING
    return Phase.SOAKING if trend is Trend.FLAT else None


# --------------------------------------------------------------------------- schedules


@dataclass(frozen=True, slots=True)
class FiringSegment:
    """Ramp at ``rate_c_per_h`` (always positive) to ``target_c``, then hold ``hold_min``."""

    rate_c_per_h: float
    target_c: float
    hold_min: float = 0.0


@dataclass(frozen=True, slots=True)
class FiringSchedule:
    name: str
    segments: tuple[FiringSegment, ...]

    def scheduled_s(self, start_c: float = 20.0) -> float:
        """How long the schedule takes if the kiln keeps up, starting at ``start_c``."""
        total = 0.0
        here = start_c
        for seg in self.segments:
            total += abs(seg.target_c - here) / seg.rate_c_per_h * 3600.0 + seg.hold_min * 60.0
            here = seg.target_c
        return total


# --------------------------------------------------------------------------- jobs


class FiringJobs:
    """A firing is a job: it starts when the program starts running and ends when it stops.

    Progress is elapsed seconds against the schedule's duration (when the schedule is known)
    and the controller's segment, at most every ``progress_every_ms``. The outcome is
    ``failed`` if the kiln was in alarm when it stopped; else, when the controller says
    which segment is its last, ``completed`` if the firing got there; else ``completed``
    if it ran at least ``complete_fraction`` of the scheduled time (or no schedule is
    known); else ``aborted``.
    """

    def __init__(
        self,
        schedule: FiringSchedule | None = None,
        *,
        progress_every_ms: int = 5000,
        complete_fraction: float = 0.9,
    ) -> None:
        self.schedule = schedule
        self.progress_every_ms = progress_every_ms
        self.complete_fraction = complete_fraction
        self.job: str | None = None
        self._start_mono = 0
        self._last_progress = 0
        self._total: float | None = None
        self._alarm = False
        self._segment: int | None = None
        self._last_segment: int | None = None

    def update(
        self,
        running: bool | None,
        alarm: bool,
        sample: KilnSample,
        ts_ms: int,
        mono_ms: int,
    ) -> list[DeviceEvent]:
        out: list[DeviceEvent] = []
        if running is None:  # the run state is unknown this time: change nothing
            return out
        if self.job is None:
            if running and not alarm:
                out.append(self._start(sample, ts_ms, mono_ms))
            return out
        self._alarm = alarm
        if sample.segment is not None:
            self._segment = max(self._segment or 0, sample.segment)
        if sample.last_segment is not None:
            self._last_segment = sample.last_segment
        if not running:
            out.append(self._end(ts_ms, mono_ms))
        elif mono_ms - self._last_progress >= self.progress_every_ms:
            out.append(self._progress(sample, ts_ms, mono_ms))
        return out

    def _start(self, sample: KilnSample, ts_ms: int, mono_ms: int) -> DeviceEvent:
        self.job = f"firing-{ts_ms:x}"
        self._start_mono = self._last_progress = mono_ms
        start_c = sample.pv_c if sample.pv_c is not None else 20.0
        self._total = round(self.schedule.scheduled_s(start_c)) if self.schedule else None
        data = {
            "job": self.job,
            "program": self.schedule.name if self.schedule else None,
            "unit": "seconds",
            "total": self._total,
            "source": "schedule" if self.schedule else "firmware",
        }
        return DeviceEvent(ts_ms, mono_ms, "job_started", data=data)

    def _elapsed(self, mono_ms: int) -> int:
        return max(0, round((mono_ms - self._start_mono) / 1000))

    def _progress(self, sample: KilnSample, ts_ms: int, mono_ms: int) -> DeviceEvent:
        self._last_progress = mono_ms
        data: dict[str, Any] = {
            "job": self.job,
            "done": self._elapsed(mono_ms),
            "total": self._total,
            "unit": "seconds",
        }
        if sample.segment is not None:
            data["segment"] = sample.segment
        return DeviceEvent(ts_ms, mono_ms, "job_progress", data=data)

    def _end(self, ts_ms: int, mono_ms: int) -> DeviceEvent:
        done = self._elapsed(mono_ms)
        if self._alarm:
            outcome = "failed"
        elif self._last_segment is not None and self._segment is not None:
            outcome = "completed" if self._segment >= self._last_segment else "aborted"
        elif self._total is None or done >= self.complete_fraction * self._total:
            outcome = "completed"
        else:
            outcome = "aborted"
        data = {"job": self.job, "outcome": outcome, "done": done, "total": self._total}
        self.job = None
        self._alarm = False
        self._segment = self._last_segment = None
        return DeviceEvent(ts_ms, mono_ms, "job_ended", data=data)


# --------------------------------------------------------------------------- adapter


class KilnAdapter:
    """One full read of the profile's fields in, readings and events out."""

    def __init__(
        self,
        profile: KilnProfile,
        *,
        unit: str = "C",
        schedule: FiringSchedule | None = None,
        over_temperature_c: float | None = None,
        soak_window_c: float = 10.0,
        idle_setpoint_c: float = 40.0,
        flat_after_ms: int = 90_000,
        progress_every_ms: int = 5000,
    ) -> None:
        self.profile = profile
        self.unit = unit
        self.schedule = schedule
        self.over_temperature_c = over_temperature_c
        self.soak_window_c = soak_window_c
        self.idle_setpoint_c = idle_setpoint_c
        self.trend = SetpointTrend(flat_after_ms)
        self.jobs = FiringJobs(schedule, progress_every_ms=progress_every_ms)
        self._alarm_detail: str | None = None
        self._firmware: int | None = None

    def translate(
        self, words: Mapping[str, tuple[int, ...]], *, ts_ms: int, mono_ms: int
    ) -> list[KilnItem]:
        sample = decode_sample(self.profile, words, unit=self.unit)
        trend = self.trend.update(sample.sp_c, mono_ms)
        observation, detail, phase = classify(
            sample,
            trend,
            over_temperature_c=self.over_temperature_c,
            soak_window_c=self.soak_window_c,
            idle_setpoint_c=self.idle_setpoint_c,
        )
        out: list[KilnItem] = []
        if sample.firmware is not None and sample.firmware != self._firmware:
            self._firmware = sample.firmware
            out.append(self.device_info(sample.firmware))
        is_alarm = observation is Observation.REPORTS_ALARM
        if is_alarm and detail != self._alarm_detail:
            self._alarm_detail = detail
            out.append(DeviceEvent(ts_ms, mono_ms, "alarm_raised", None, _ALARM_TEXTS[detail]))
        elif not is_alarm:
            self._alarm_detail = None
        running = sample.running
        if running is None:
            running = sample.sp_c is not None and sample.sp_c > self.idle_setpoint_c
        if sample.sensor_break and sample.running is None:
            running = None  # without a run flag, a dead PV says nothing about the program
        out.append(
            Reading(
                ts_ms=ts_ms,
                mono_ms=mono_ms,
                observation=observation,
                detail=detail,
                values=_values(sample),
                program=self.schedule.name if self.schedule and running else None,
                phase=str(phase) if phase else None,
            )
        )
        out.extend(self.jobs.update(running, is_alarm, sample, ts_ms, mono_ms))
        return out

    def device_info(self, firmware: int) -> DeviceInfo:
        return DeviceInfo(
            protocol=PROTOCOL,
            firmware=f"V{firmware >> 8}.{firmware & 0xFF:02d}",
            options={"profile": self.profile.name, "controller": self.profile.title},
        )


_ALARM_TEXTS: Final = {
    "sensor_break": "Thermocouple break: the controller cannot read the temperature",
    "over_temperature": "Over temperature",
    "controller_alarm": "Controller alarm output on",
}


def _values(sample: KilnSample) -> dict[str, float]:
    out: dict[str, float] = {}
    pairs: Sequence[tuple[str, float | int | None]] = (
        ("temperature_c", sample.pv_c),
        ("setpoint_c", sample.sp_c),
        ("output_pct", sample.output_pct),
        ("segment", sample.segment),
        ("segment_remaining_s", sample.remaining_s),
    )
    for name, value in pairs:
        if value is not None:
            out[name] = float(value)
    return out
