"""Marlin events to readings, device events (alarms, jobs) and device info.

:class:`MarlinAdapter` is pure: time is passed in (``ts_ms`` wall, ``mono_ms`` monotonic).
It keeps what Marlin only says now and then (the SD status, the file name, pause hints,
the last temperatures) and decides the canonical observation with :func:`observe`:

- ALARM (detail: the error text): a fatal ``Error:`` (a heater fault, ``kill() called``,
  ``Printer stopped due to errors``), until ``start`` or SD bytes moving again (M999 and a
  new print). A halted Marlin then says nothing: the silence stays ALARM (contract table).
- PAUSED: ``busy: paused for user`` (detail ``paused for user``), ``//action:pause`` or
  ``paused`` (``paused``), or an SD file still open while ``Not SD printing`` (M25;
  ``sd paused``).
- RUNNING: ``SD printing byte x/y``; detail ``heating`` while M190/M109 wait (``W:`` lines)
  or a heater is more than 5 degrees below its set point, else ``printing``.
- IDLE: not printing; detail ``heating`` when a heater has a set point, else ``idle``.

Decision (documented in the report): preheating that belongs to an SD print (the file's
own M190/M109 at its start) is RUNNING with detail ``heating``; a preheat with no print
(LCD "Preheat PLA") is IDLE with detail ``heating``, so it never counts as productive time.
Nothing is reported until the SD status is known, so a connect mid-print never shows a
short IDLE first.

Jobs (``unit: "bytes"``, ``source: "firmware"``): ``job_started`` when an SD print is first
seen (held back until ``M27 C`` names the file, or until three status reports after the
file's heat-up, whose M190/M109 keep ``M27 C`` waiting),
``job_progress`` at most once a second with ``done``/``total`` from M27 and ``eta_s`` from
an M73 report when the firmware echoes one, ``job_ended`` ``completed`` on ``Done printing
file``, ``failed`` on a fatal error or a reboot mid-print, ``aborted`` when the print stops
otherwise (``M524``, the file closed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from shopfloor.agent.protocols.marlin import (
    Busy,
    Capability,
    CurrentFile,
    ErrorMessage,
    FirmwareInfo,
    HostAction,
    MarlinEvent,
    Ok,
    PrintTime,
    ProgressReport,
    SdDone,
    SdNotPrinting,
    SdPrinting,
    Start,
    TemperatureReport,
)
from shopfloor.agent.readings import DeviceEvent, DeviceInfo, Reading
from shopfloor.contract.states import Observation

__all__ = ["MarlinAdapter", "MarlinItem", "Status", "observe"]

MarlinItem = Reading | DeviceEvent | DeviceInfo

PROTOCOL: Final = "marlin"
#: ``busy: paused for user`` repeats every 2 s (DEFAULT_KEEPALIVE_INTERVAL): it holds this long.
_USER_PAUSE_HOLD_MS: Final = 5000
#: A ``W:`` heat-wait line arrives each second; "heating" holds this long after the last one.
_HEATING_HOLD_MS: Final = 3000
_PROGRESS_EVERY_MS: Final = 1000
#: SD status reports after which a job starts even if ``M27 C`` has not named the file.
_NAME_WAIT_REPORTS: Final = 3
_DETAIL_MAX: Final = 80
#: A heater this far below its set point is still heating up.
_BELOW_TARGET_C: Final = 5.0


@dataclass(slots=True)
class Status:
    """What the adapter believes about the printer (inputs of :func:`observe`)."""

    halted: str | None = None
    sd: str = "unknown"  # unknown, printing, not_printing
    file_open: bool | None = None
    action_paused: bool = False
    user_paused_until: int | None = None
    heating_until: int | None = None
    target_set: bool = False
    #: A heater with a set point is more than 5 degrees below it (heating up).
    below_target: bool = False
    checking_file: bool = False


def observe(status: Status, mono_ms: int) -> tuple[Observation, str] | None:
    """The canonical observation and detail for ``status`` at ``mono_ms``; None while the
    SD status is not known yet (nothing is reported)."""
    if status.halted is not None:
        return Observation.REPORTS_ALARM, status.halted[:_DETAIL_MAX]
    if status.sd == "unknown":
        return None
    if status.user_paused_until is not None and mono_ms < status.user_paused_until:
        return Observation.REPORTS_PAUSED, "paused for user"
    if status.action_paused and status.sd != "not_printing":
        return Observation.REPORTS_PAUSED, "paused"
    waiting = status.heating_until is not None and mono_ms < status.heating_until
    heating = waiting or status.below_target
    if status.sd == "printing":
        return Observation.REPORTS_RUNNING, "heating" if heating else "printing"
    if status.file_open or status.checking_file:
        # The file is still open (M25) or we are asking whether it is: a paused print.
        return Observation.REPORTS_PAUSED, "sd paused"
    return Observation.REPORTS_IDLE, "heating" if heating or status.target_set else "idle"


@dataclass(slots=True)
class _Job:
    id: str
    total: int
    done: int
    started_ts: int
    announced: bool = False
    reports: int = 0
    last_progress_mono: int | None = None
    last_progress_done: int = -1
    cancelled: bool = False


class MarlinAdapter:
    """Maps :data:`~shopfloor.agent.protocols.marlin.MarlinEvent` to readings. See the
    module docstring. ``wants_file_name`` is set when the session should ask ``M27 C``."""

    def __init__(self) -> None:
        self.status = Status()
        self.program: str | None = None
        self.job: _Job | None = None
        self.eta_s: int | None = None
        self.wants_file_name = False
        self._capabilities: dict[str, bool] = {}
        self._caps_pending = False
        self._firmware: FirmwareInfo | None = None
        self._jobs = 0
        self._halt_bytes: int | None = None

    # -- connection lifecycle

    def new_connection(self) -> None:
        """A new link: say nothing until the SD status is known again; keep the job."""
        self.status.sd = "unknown"
        self.status.checking_file = False
        self.wants_file_name = self.job is not None

    def note_no_sd(self) -> None:
        """M27 was answered with a bare ``ok``: no SD support, so never an SD print."""
        if self.status.sd == "unknown":
            self.status.sd = "not_printing"

    @property
    def capabilities(self) -> dict[str, bool]:
        return dict(self._capabilities)

    # -- translation

    def translate(self, event: MarlinEvent, *, ts_ms: int, mono_ms: int) -> list[MarlinItem]:
        out: list[MarlinItem] = []
        if self._caps_pending and not isinstance(event, Capability):
            self._caps_pending = False
            out.append(self._device_info())
        handler = _HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event, ts_ms, mono_ms, out)
        return out

    def reading(
        self, ts_ms: int, mono_ms: int, values: dict[str, float] | None = None
    ) -> Reading | None:
        seen = observe(self.status, mono_ms)
        if seen is None:
            return None
        observation, detail = seen
        return Reading(
            ts_ms=ts_ms,
            mono_ms=mono_ms,
            observation=observation,
            detail=detail,
            values=values or {},
            program=self.program,
        )

    def _emit_reading(
        self, out: list[MarlinItem], ts: int, mono: int, values: dict[str, float] | None = None
    ) -> None:
        reading = self.reading(ts, mono, values)
        if reading is not None:
            out.append(reading)

    # -- handlers (one per event type)

    def _on_ok(self, _event: MarlinEvent, ts: int, mono: int, out: list[MarlinItem]) -> None:
        self._emit_reading(out, ts, mono)

    def _on_temperatures(
        self, event: MarlinEvent, ts: int, mono: int, out: list[MarlinItem]
    ) -> None:
        assert isinstance(event, TemperatureReport)
        if event.kind == "wait":
            self.status.heating_until = mono + _HEATING_HOLD_MS
        self.status.target_set = any(h.target for h in event.heaters if h.target is not None)
        self.status.below_target = any(
            h.target is not None and h.target > 0 and h.actual < h.target - _BELOW_TARGET_C
            for h in event.heaters
        )
        self._emit_reading(out, ts, mono, temperature_values(event))

    def _on_sd_printing(
        self, event: MarlinEvent, ts: int, mono: int, out: list[MarlinItem]
    ) -> None:
        assert isinstance(event, SdPrinting)
        status = self.status
        if status.halted is not None:
            # Bytes moving again (M999 and a new print) end the alarm; a stale report does not.
            before, self._halt_bytes = self._halt_bytes, event.done
            if before is None or event.done <= before:
                self._emit_reading(out, ts, mono)
                return
            status.halted = None
        self._halt_bytes = None
        job = self.job
        status.sd = "printing"
        status.file_open = True
        status.checking_file = False
        status.action_paused = False
        if job is not None and (event.total != job.total or event.done < job.done):
            self._end_job(out, ts, mono, "aborted")  # another file, or the same one restarted
            job = None
        if job is None:
            self._jobs += 1
            job = self.job = _Job(
                id=f"{ts:x}-{self._jobs}", total=event.total, done=event.done, started_ts=ts
            )
            self.program = None  # M27 C names the new file
            self.wants_file_name = True
        job.done = event.done
        job.reports += 1
        heating = status.heating_until is not None and mono < status.heating_until
        if not job.announced and job.reports > _NAME_WAIT_REPORTS and not heating:
            # ``M27 C`` did not name the file (it waits while M109 blocks the queue).
            self._announce(out, ts, mono)
        values = {
            "sd_bytes_done": float(event.done),
            "sd_bytes_total": float(event.total),
        }
        if event.total > 0:
            values["progress_pct"] = round(100.0 * event.done / event.total, 2)
        self._emit_reading(out, ts, mono, values)
        if job.announced and job.done != job.last_progress_done:
            last = job.last_progress_mono
            if last is None or mono - last >= _PROGRESS_EVERY_MS:
                job.last_progress_mono = mono
                job.last_progress_done = job.done
                data: dict[str, object] = {
                    "job": job.id,
                    "done": job.done,
                    "total": job.total,
                    "unit": "bytes",
                }
                if self.eta_s is not None:
                    data["eta_s"] = self.eta_s
                out.append(DeviceEvent(ts, mono, "job_progress", data=data))

    def _on_sd_not_printing(
        self, _event: MarlinEvent, ts: int, mono: int, out: list[MarlinItem]
    ) -> None:
        status = self.status
        was = status.sd
        status.sd = "not_printing"
        if self.job is not None and was != "not_printing" and not status.checking_file:
            # Paused (file still open) or stopped (file closed)? ``M27 C`` tells.
            status.checking_file = True
            self.wants_file_name = True
        elif self.job is None:
            status.file_open = False
        self._emit_reading(out, ts, mono)

    def _on_current_file(
        self, event: MarlinEvent, ts: int, mono: int, out: list[MarlinItem]
    ) -> None:
        assert isinstance(event, CurrentFile)
        status = self.status
        status.file_open = event.name is not None
        status.checking_file = False
        if event.display_name is not None:
            self.program = event.display_name
        job = self.job
        if job is not None:
            if not job.announced and event.name is not None:
                self._announce(out, ts, mono)
            if event.name is None and status.sd != "printing":
                self._end_job(out, ts, mono, "aborted")
        self._emit_reading(out, ts, mono)

    def _on_done(self, _event: MarlinEvent, ts: int, mono: int, out: list[MarlinItem]) -> None:
        job = self.job
        if job is not None:
            job.done = job.total
            self._end_job(out, ts, mono, "completed")
        self.status.sd = "not_printing"
        self.status.file_open = False
        self.status.checking_file = False
        self._emit_reading(out, ts, mono)

    def _on_busy(self, event: MarlinEvent, ts: int, mono: int, out: list[MarlinItem]) -> None:
        assert isinstance(event, Busy)
        self.status.user_paused_until = mono + _USER_PAUSE_HOLD_MS if event.paused else None
        self._emit_reading(out, ts, mono)

    def _on_error(self, event: MarlinEvent, ts: int, mono: int, out: list[MarlinItem]) -> None:
        assert isinstance(event, ErrorMessage)
        if not event.fatal:
            out.append(DeviceEvent(ts, mono, "error_reply", None, event.text))
            return
        first = self.status.halted is None
        if first:  # keep the cause, not the "kill() called" that follows it
            self.status.halted = event.text
            out.append(DeviceEvent(ts, mono, "alarm_raised", None, event.text))
        if self.job is not None:
            self._end_job(out, ts, mono, "failed")
        self._emit_reading(out, ts, mono)

    def _on_start(self, _event: MarlinEvent, ts: int, mono: int, out: list[MarlinItem]) -> None:
        if self.job is not None:
            self._end_job(out, ts, mono, "failed")
        self.status = Status()
        self.eta_s = None
        self._capabilities.clear()
        out.append(DeviceEvent(ts, mono, "device_reset", None, "start"))

    def _on_action(self, event: MarlinEvent, ts: int, mono: int, out: list[MarlinItem]) -> None:
        assert isinstance(event, HostAction)
        action = event.action
        if action in ("pause", "paused"):
            self.status.action_paused = True
        elif action in ("resume", "resumed"):
            self.status.action_paused = False
        elif action in ("cancel", "canceled", "cancelled"):
            self.status.action_paused = False
            if self.job is not None:
                self.job.cancelled = True
        elif action == "notification" and event.args:
            out.append(DeviceEvent(ts, mono, "message", None, event.args))
            return
        else:
            return
        self._emit_reading(out, ts, mono)

    def _on_print_time(self, event: MarlinEvent, ts: int, mono: int, out: list[MarlinItem]) -> None:
        assert isinstance(event, PrintTime)
        self._emit_reading(out, ts, mono, {"print_time_s": float(event.seconds)})

    def _on_progress(self, event: MarlinEvent, ts: int, mono: int, out: list[MarlinItem]) -> None:
        assert isinstance(event, ProgressReport)
        self.eta_s = event.remaining_s
        values: dict[str, float] = {}
        if event.remaining_s is not None:
            values["eta_s"] = float(event.remaining_s)
        if event.percent is not None:
            values["m73_progress_pct"] = event.percent
        self._emit_reading(out, ts, mono, values)

    def _on_firmware(
        self, event: MarlinEvent, _ts: int, _mono: int, _out: list[MarlinItem]
    ) -> None:
        assert isinstance(event, FirmwareInfo)
        self._firmware = event
        self._capabilities.clear()
        self._caps_pending = True

    def _on_capability(
        self, event: MarlinEvent, _ts: int, _mono: int, _out: list[MarlinItem]
    ) -> None:
        assert isinstance(event, Capability)
        self._capabilities[event.name] = event.enabled
        self._caps_pending = True

    # -- jobs and info

    def _announce(self, out: list[MarlinItem], ts: int, mono: int) -> None:
        job = self.job
        assert job is not None
        job.announced = True
        self.wants_file_name = False
        data = {
            "job": job.id,
            "program": self.program,
            "unit": "bytes",
            "total": job.total,
            "source": "firmware",
        }
        out.append(DeviceEvent(ts, mono, "job_started", data=data))

    def _end_job(self, out: list[MarlinItem], ts: int, mono: int, outcome: str) -> None:
        job, self.job = self.job, None
        self.eta_s = None
        if job is None:
            return
        if not job.announced:
            self.job = job
            self._announce(out, ts, mono)
            self.job = None
        if job.cancelled and outcome != "completed":
            outcome = "aborted"
        data = {"job": job.id, "outcome": outcome, "done": job.done, "total": job.total}
        out.append(DeviceEvent(ts, mono, "job_ended", data=data))

    def _device_info(self) -> DeviceInfo:
        fw = self._firmware
        options: dict[str, str] = {}
        if fw is not None:
            for key, name in (
                ("MACHINE_TYPE", "machine_type"),
                ("EXTRUDER_COUNT", "extruders"),
                ("PROTOCOL_VERSION", "protocol_version"),
                ("UUID", "uuid"),
            ):
                if fw.fields.get(key):
                    options[name] = fw.fields[key]
        if self._capabilities:
            options["capabilities"] = ",".join(
                sorted(name for name, on in self._capabilities.items() if on)
            )
        return DeviceInfo(protocol=PROTOCOL, firmware=fw.name if fw else "", options=options)


def temperature_values(report: TemperatureReport) -> dict[str, float]:
    """Stable telemetry names: ``hotend_c``/``hotend_target_c`` (active tool),
    ``bed_c``/``bed_target_c``, ``chamber_c``, and ``hotend<n>_c`` per extruder when the
    report lists ``T0``, ``T1`` ..."""
    values: dict[str, float] = {}

    def put(prefix: str, name: str) -> None:
        heater = report.heater(name)
        if heater is None:
            return
        values[f"{prefix}_c"] = heater.actual
        if heater.target is not None:
            values[f"{prefix}_target_c"] = heater.target

    hotend = report.hotend
    if hotend is not None:
        values["hotend_c"] = hotend.actual
        if hotend.target is not None:
            values["hotend_target_c"] = hotend.target
    put("bed", "B")
    put("chamber", "C")
    tools = [h.name for h in report.heaters if len(h.name) == 2 and h.name[0] == "T"]
    if len(tools) > 1:
        for name in tools:
            put(f"hotend{name[1]}", name)
    return values


_HANDLERS: Final = {
    Ok: MarlinAdapter._on_ok,
    TemperatureReport: MarlinAdapter._on_temperatures,
    SdPrinting: MarlinAdapter._on_sd_printing,
    SdNotPrinting: MarlinAdapter._on_sd_not_printing,
    CurrentFile: MarlinAdapter._on_current_file,
    SdDone: MarlinAdapter._on_done,
    Busy: MarlinAdapter._on_busy,
    ErrorMessage: MarlinAdapter._on_error,
    Start: MarlinAdapter._on_start,
    HostAction: MarlinAdapter._on_action,
    PrintTime: MarlinAdapter._on_print_time,
    ProgressReport: MarlinAdapter._on_progress,
    FirmwareInfo: MarlinAdapter._on_firmware,
    Capability: MarlinAdapter._on_capability,
}
