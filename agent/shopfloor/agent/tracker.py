"""One machine's canonical state, batched telemetry and events, as records to publish.

:class:`MachineTracker` is pure: no asyncio, no clock. Time comes from the items it is
given (``ts_ms``/``mono_ms``) and from :meth:`MachineTracker.flush`. The state follows the
one transition table, :func:`shopfloor.contract.states.next_state`, starting at OFFLINE.
Intervals (telemetry batching, heartbeat) are measured on the monotonic clock; bodies
carry wall-clock times.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from shopfloor.agent.readings import DeviceEvent, DeviceInfo, Reading, Record
from shopfloor.contract.envelope import RecordKind
from shopfloor.contract.states import MachineState, Observation, next_state

__all__ = ["MachineTracker", "TrackerItem"]

TrackerItem = Reading | DeviceEvent | DeviceInfo

_REPORTS: Final = frozenset(
    {
        Observation.REPORTS_IDLE,
        Observation.REPORTS_RUNNING,
        Observation.REPORTS_PAUSED,
        Observation.REPORTS_SETUP,
        Observation.REPORTS_ALARM,
    }
)


#: A state snapshot goes out at least this often, even when nothing changes, so the hub can
#: tell a quiet machine (say, silent in ALARM) from a dead agent: keep it well under the
#: hub's ``stale_after_s`` (default 60 s).
HEARTBEAT_MS: Final = 15_000


class MachineTracker:
    """Turns one machine's readings, events and device info into :class:`Record` objects.

    - STATE: on a change of state or detail, and every ``heartbeat_ms`` as a snapshot.
      Observations that are not reports (SILENT, LINK_LOST) only produce a record when they
      change the state; then the detail is the observation (``silent``, ``link_lost``).
    - TELEMETRY: ``{"samples": [{"ts", "values"}, ...]}`` when ``telemetry_interval_ms`` has
      passed since the batch's first sample, or it holds ``max_samples_per_batch`` samples.
      Pending telemetry goes out before a state change, so records stay in time order.
    - EVENT: every device event; ``alarm_cleared`` when a report shows the machine is no
      longer in ALARM after it was, or after an ``alarm_raised``.
    - META: the device's info merged over time, when it changes.
    """

    def __init__(
        self,
        machine_id: str,
        *,
        telemetry_interval_ms: int = 1000,
        max_samples_per_batch: int = 50,
        heartbeat_ms: int = HEARTBEAT_MS,
        kind: str = "cnc",
    ) -> None:
        if telemetry_interval_ms <= 0 or max_samples_per_batch <= 0 or heartbeat_ms <= 0:
            raise ValueError("tracker intervals and batch size must be positive")
        self.machine_id = machine_id
        self.telemetry_interval_ms = telemetry_interval_ms
        self.max_samples_per_batch = max_samples_per_batch
        self.heartbeat_ms = heartbeat_ms
        self.kind = kind
        self.state = MachineState.OFFLINE
        self.since_ms: int | None = None
        self.detail = ""
        self.line: int | None = None
        self.alarm: dict[str, Any] | None = None
        self.program: str | None = None
        self.phase: str | None = None
        self.job: dict[str, Any] | None = None
        self.last_seen_ms: int | None = None
        self._samples: list[dict[str, Any]] = []
        self._batch_start_mono: int | None = None
        self._last_state_mono: int | None = None
        self._meta: dict[str, Any] | None = None
        self._last_time: tuple[int, int] = (0, 0)

    # -- public

    def snapshot(self) -> dict[str, Any]:
        """The current state body, as published on the retained state topic."""
        return {
            "state": str(self.state),
            "since": self.since_ms,
            "detail": self.detail,
            "line": self.line,
            "alarm": dict(self.alarm) if self.alarm is not None else None,
            "program": self.program,
            "phase": self.phase,
            "job": dict(self.job) if self.job is not None else None,
        }

    def update(self, item: TrackerItem) -> list[Record]:
        if isinstance(item, Reading):
            return self._on_reading(item)
        if isinstance(item, DeviceEvent):
            return self._on_event(item)
        return self._on_info(item)

    def flush(self, now_wall_ms: int, now_mono_ms: int) -> list[Record]:
        """Records that are due by time alone: a telemetry batch, a heartbeat snapshot."""
        out: list[Record] = []
        self._last_time = (now_wall_ms, now_mono_ms)
        if (
            self._batch_start_mono is not None
            and now_mono_ms - self._batch_start_mono >= self.telemetry_interval_ms
        ):
            out.extend(self._emit_telemetry(now_wall_ms, now_mono_ms))
        if (
            self._last_state_mono is not None
            and now_mono_ms - self._last_state_mono >= self.heartbeat_ms
        ):
            out.append(self._state_record(now_wall_ms, now_mono_ms))
        return out

    # -- items

    def _on_reading(self, reading: Reading) -> list[Record]:
        out: list[Record] = []
        ts, mono = reading.ts_ms, reading.mono_ms
        self._last_time = (ts, mono)
        is_report = reading.observation in _REPORTS
        new_state = next_state(self.state, reading.observation)
        detail = reading.detail if is_report else str(reading.observation)
        changed = new_state is not self.state or (is_report and detail != self.detail)
        if is_report:
            self.last_seen_ms = ts
            self.line = reading.line
            if reading.program is not None and reading.program != self.program:
                self.program = reading.program
                changed = True
            if reading.phase is not None and reading.phase != self.phase:
                self.phase = reading.phase
                changed = True
        if changed:
            # Samples taken in the old state go out before the record that ends it.
            out.extend(self._emit_telemetry(ts, mono))
            if new_state is not MachineState.ALARM and is_report and self._alarm_active():
                out.append(self._alarm_cleared(ts, mono))
            if new_state is not self.state:
                self.since_ms = ts
                if new_state is not MachineState.RUNNING:
                    self.phase = None  # a phase (heating, soaking...) belongs to a running firing
            self.state = new_state
            self.detail = detail
            out.append(self._state_record(ts, mono))
        elif is_report and new_state is not MachineState.ALARM and self._alarm_active():
            # An alarm was pushed but the machine never reported ALARM (ALARM:3, then reset).
            out.append(self._alarm_cleared(ts, mono))
        if is_report and reading.values:
            if self._batch_start_mono is None:
                self._batch_start_mono = mono
            self._samples.append({"ts": ts, "values": dict(reading.values)})
            if len(self._samples) >= self.max_samples_per_batch:
                out.extend(self._emit_telemetry(ts, mono))
        out.extend(self.flush(ts, mono))
        return out

    def _on_event(self, event: DeviceEvent) -> list[Record]:
        out: list[Record] = []
        self._last_time = (event.ts_ms, event.mono_ms)
        if event.event == "alarm_raised":
            self.alarm = {"code": event.code, "text": event.text}
        body: dict[str, Any] = {"event": event.event, "code": event.code, "text": event.text}
        body.update(event.data)
        out.append(
            Record(
                kind=RecordKind.EVENT,
                machine=self.machine_id,
                ts_ms=event.ts_ms,
                mono_ms=event.mono_ms,
                body=body,
            )
        )
        snapshot_changed = self._on_job_event(event)
        if snapshot_changed or (event.event == "alarm_raised" and self.state is MachineState.ALARM):
            out.append(self._state_record(event.ts_ms, event.mono_ms))
        return out

    def _on_job_event(self, event: DeviceEvent) -> bool:
        """Keep the current job (shown in the state snapshot); True if the snapshot changed.

        Progress events update the job silently: they travel as events, and the snapshot
        picks the latest figures up with the next state record.
        """
        data = event.data
        if event.event == "job_started":
            self.job = {k: data.get(k) for k in ("job", "program", "unit", "total")}
            self.job.update(done=0, started=event.ts_ms)
            if data.get("program"):
                self.program = str(data["program"])
            return True
        if self.job is None or data.get("job") != self.job.get("job"):
            return False
        if event.event == "job_progress":
            self.job.update({k: data[k] for k in ("done", "total") if k in data})
            return False
        if event.event == "job_ended":
            self.job = None
            return True
        return False

    def _on_info(self, info: DeviceInfo) -> list[Record]:
        meta: dict[str, Any] = dict(self._meta) if self._meta else {}
        options: dict[str, str] = dict(meta.get("options", {}))
        options.update(info.options)
        meta.update(
            {
                "protocol": info.protocol,
                "firmware": info.firmware or meta.get("firmware", ""),
                "options": options,
                "kind": self.kind,
            }
        )
        if meta == self._meta:
            return []
        self._meta = meta
        # DeviceInfo carries no time of its own: stamp it with the last time we were given.
        ts, mono = self._last_time
        return [Record(RecordKind.META, self.machine_id, ts, mono, _copy(meta))]

    # -- helpers

    def _alarm_active(self) -> bool:
        return self.state is MachineState.ALARM or self.alarm is not None

    def _alarm_cleared(self, ts: int, mono: int) -> Record:
        alarm = self.alarm or {"code": None, "text": ""}
        self.alarm = None
        body = {"event": "alarm_cleared", "code": alarm["code"], "text": alarm["text"]}
        return Record(RecordKind.EVENT, self.machine_id, ts, mono, body)

    def _state_record(self, ts: int, mono: int) -> Record:
        self._last_state_mono = mono
        return Record(RecordKind.STATE, self.machine_id, ts, mono, self.snapshot())

    def _emit_telemetry(self, ts: int, mono: int) -> list[Record]:
        if not self._samples:
            return []
        samples, self._samples = self._samples, []
        self._batch_start_mono = None
        return [Record(RecordKind.TELEMETRY, self.machine_id, ts, mono, {"samples": samples})]


def _copy(meta: Mapping[str, Any]) -> dict[str, Any]:
    return {k: dict(v) if isinstance(v, dict) else v for k, v in meta.items()}
