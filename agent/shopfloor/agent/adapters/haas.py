"""Haas Q-command replies to readings, part counts and jobs.

:class:`HaasAdapter` is pure (time is passed in). It remembers what the slower queries said
(mode, cycle time, macro variables, the parts counter) and puts it into the reading that every
Q500 reply produces, so each reading is a full picture.

**States** are data (:class:`StateMap`): the Q500 status word gives an observation
(``IDLE`` -> idle, ``BUSY`` -> running, ``FEED HOLD`` -> paused, ``ALARM ON`` -> alarm), and a
running machine whose Q104 mode is not a program mode (``MDI``, ``JOG``, ``ZERO RET`` ...) is
in SETUP: it moves, but no program from memory runs. Both tables are configurable.

**Parts**: the counter is Q500's ``PARTS`` field (M30 counter #1 [3P]) unless a macro variable
is configured for it. Each increase gives a ``part_counted`` event; a decrease (the operator
reset the counter) only moves the baseline.

**Jobs** (a job is one run of one program):

- with a required quantity (a configured number, or a macro variable the program sets), a job
  is the batch: it starts at the first cycle start of the program, runs through the cycles
  (Idle between parts, holds, alarms), reports ``job_progress`` in ``parts`` per part, and ends
  ``completed`` when the parts done reach the quantity, or when another program is loaded or the
  counter is reset (``completed`` if the quantity was reached, else ``aborted``);
- without one, a job is one cycle: it starts at cycle start and ends when the machine is
  stopped again, ``completed`` if the counter went up, ``aborted`` if not (reset, alarm).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from shopfloor.agent.protocols.haas import (
    CycleTime,
    HaasEvent,
    MacroValue,
    Mode,
    Model,
    PartsCounter,
    ProgramStatus,
    SerialNumber,
    SoftwareVersion,
    TimeCounter,
    ToolChanges,
    ToolInUse,
)
from shopfloor.agent.readings import DeviceEvent, DeviceInfo, Reading
from shopfloor.contract.states import Observation

__all__ = [
    "DEFAULT_SETUP_MODES",
    "DEFAULT_STATUS_OBSERVATIONS",
    "HaasAdapter",
    "HaasItem",
    "StateMap",
]

HaasItem = Reading | DeviceEvent | DeviceInfo

PROTOCOL: Final = "haas"

#: Q500 status words [3P] to what they tell the tracker.
DEFAULT_STATUS_OBSERVATIONS: Final[Mapping[str, Observation]] = MappingProxyType(
    {
        "IDLE": Observation.REPORTS_IDLE,
        "BUSY": Observation.REPORTS_RUNNING,
        "FEED HOLD": Observation.REPORTS_PAUSED,
        "ALARM ON": Observation.REPORTS_ALARM,
        "ALARM": Observation.REPORTS_ALARM,
    }
)

#: Q104 modes in which a BUSY machine is being set up rather than running a program.
DEFAULT_SETUP_MODES: Final = frozenset(
    {"MDI", "JOG", "HAND JOG", "HANDLE", "ZERO RET", "ZERO RETURN", "EDIT", "LIST PROG"}
)


@dataclass(frozen=True, slots=True)
class StateMap:
    """Status word and mode to an observation. Keys are upper case, blanks collapsed."""

    status: Mapping[str, Observation] = field(default_factory=lambda: DEFAULT_STATUS_OBSERVATIONS)
    setup_modes: frozenset[str] = DEFAULT_SETUP_MODES

    def observe(self, status: str, mode: str | None) -> Observation | None:
        """The observation for a Q500 ``status`` in Q104 ``mode`` (None: not known yet).

        None for a status word the map does not know."""
        observation = self.status.get(_norm(status))
        if (
            observation is Observation.REPORTS_RUNNING
            and mode is not None
            and _norm(mode) in self.setup_modes
        ):
            return Observation.REPORTS_SETUP
        return observation


def _whole(value: float) -> int | None:
    """A macro value that should be a count: Haas stores numbers as binary floats, so 7 may
    read as 6.999999 (Haas mill manual, macros: round-off)."""
    nearest = round(value)
    return int(nearest) if abs(value - nearest) < 1e-3 else None


def _norm(word: str) -> str:
    return " ".join(word.split()).upper()


@dataclass(slots=True)
class _Job:
    id: str
    program: str | None
    total: int | None
    base: int | None  # counter value at the start
    done: int = 0


@dataclass(slots=True)
class _Latest:
    mode: str | None = None
    program: str | None = None
    count: int | None = None
    required: int | None = None
    values: dict[str, float] = field(default_factory=dict)


class HaasAdapter:
    """Maps :data:`~shopfloor.agent.protocols.haas.HaasEvent` to readings and events.

    The caller (the driver) says which Q600 variable a :class:`MacroValue` answers through
    :meth:`macro`. ``part_counter_variable`` / ``parts_required_variable``: macro variables
    that hold the parts count / required quantity; ``parts_required``: a fixed quantity.
    ``macro_names``: variable number to telemetry name.
    """

    def __init__(
        self,
        *,
        state_map: StateMap | None = None,
        part_counter_variable: int | None = None,
        parts_required_variable: int | None = None,
        parts_required: int | None = None,
        macro_names: Mapping[int, str] | None = None,
    ) -> None:
        self.state_map = state_map or StateMap()
        self.part_counter_variable = part_counter_variable
        self.parts_required_variable = parts_required_variable
        self.parts_required = parts_required
        self.macro_names = dict(macro_names or {})
        self.unknown_states = 0
        self._latest = _Latest()
        self._job: _Job | None = None
        self._observation: Observation | None = None
        self._info: dict[str, str] = {}
        self._firmware = ""

    @property
    def job(self) -> Mapping[str, Any] | None:
        """The open job (id, program, done, total), for tests and logs."""
        job = self._job
        if job is None:
            return None
        return {"job": job.id, "program": job.program, "done": job.done, "total": job.total}

    def reconnected(self) -> None:
        """A new connection: the mode may have changed while we could not see it."""
        self._latest.mode = None

    # -- events

    def translate(self, event: HaasEvent, *, ts_ms: int, mono_ms: int) -> list[HaasItem]:
        latest = self._latest
        if isinstance(event, ProgramStatus):
            return self._on_status(event, ts_ms, mono_ms)
        if isinstance(event, Mode):
            latest.mode = event.mode
        elif isinstance(event, CycleTime):
            latest.values["cycle_time_s" if event.which == "last" else "previous_cycle_s"] = float(
                event.seconds
            )
        elif isinstance(event, TimeCounter):
            name = "power_on_time_s" if event.which == "power_on" else "motion_time_s"
            latest.values[name] = float(event.seconds)
        elif isinstance(event, ToolChanges):
            latest.values["tool_changes"] = float(event.count)
        elif isinstance(event, ToolInUse):
            latest.values["tool"] = float(event.tool)
        elif isinstance(event, PartsCounter):
            latest.values[f"m30_counter_{event.counter}"] = float(event.count)
        elif isinstance(event, SerialNumber | SoftwareVersion | Model):
            return self._on_info(event)
        return []

    def macro(
        self, variable: int, event: MacroValue, *, ts_ms: int, mono_ms: int
    ) -> list[HaasItem]:
        """The value of Q600 ``variable``."""
        latest = self._latest
        value = event.value
        name = self.macro_names.get(variable)
        if name is not None:
            latest.values[name] = value
        out: list[HaasItem] = []
        whole = _whole(value)
        if variable == self.parts_required_variable:
            latest.required = whole if whole is not None and whole >= 1 else None
            job = self._job
            if job is not None and job.total is None and latest.required is not None:
                # The quantity came after the cycle start: the job becomes the batch.
                job.total = latest.required
                out.append(self._job_event("job_progress", ts_ms, mono_ms, job))
        if variable == self.part_counter_variable and whole is not None and whole >= 0:
            out.extend(self._on_count(whole, ts_ms, mono_ms))
        return out

    def _on_info(self, event: SerialNumber | SoftwareVersion | Model) -> list[HaasItem]:
        if isinstance(event, SerialNumber):
            self._info["serial"] = event.serial
        elif isinstance(event, Model):
            self._info["model"] = event.model
        else:
            self._firmware = event.version
        return [DeviceInfo(protocol=PROTOCOL, firmware=self._firmware, options=dict(self._info))]

    # -- Q500

    def _on_status(self, event: ProgramStatus, ts_ms: int, mono_ms: int) -> list[HaasItem]:
        latest = self._latest
        out: list[HaasItem] = []
        observation = self.state_map.observe(event.status, latest.mode)
        if observation is None:
            self.unknown_states += 1
            return []
        if event.program is not None:
            job = self._job
            if job is not None and job.program is None:
                # Q500 names no program while BUSY: a job that started before the agent
                # saw the machine idle learns its program now, and says so.
                job.program = event.program
                out.append(self._job_event("job_progress", ts_ms, mono_ms, job))
            elif job is not None and event.program != job.program:
                out.extend(self._end_job(ts_ms, mono_ms))
            latest.program = event.program
        if event.parts is not None and self.part_counter_variable is None:
            out.extend(self._on_count(event.parts, ts_ms, mono_ms))
        previous, self._observation = self._observation, observation
        if observation is Observation.REPORTS_ALARM and previous is not observation:
            out.append(DeviceEvent(ts_ms, mono_ms, "alarm_raised", None, event.status))
        if observation is Observation.REPORTS_RUNNING and self._job is None:
            out.append(self._start_job(ts_ms, mono_ms))
        elif (
            observation is Observation.REPORTS_IDLE
            and self._job is not None
            and self._job.total is None
        ):
            # A one-cycle job that stopped without a new part (a part would have ended it).
            out.extend(self._end_job(ts_ms, mono_ms))
        out.append(
            Reading(
                ts_ms=ts_ms,
                mono_ms=mono_ms,
                observation=observation,
                detail=event.status if latest.mode is None else f"{event.status} ({latest.mode})",
                values=self.values(),
                program=event.program,
            )
        )
        return out

    def values(self) -> dict[str, float]:
        """Telemetry with stable names: parts_count, parts_required, cycle_time_s, macros..."""
        latest = self._latest
        out = dict(latest.values)
        if latest.count is not None:
            out["parts_count"] = float(latest.count)
        required = self._required()
        if required is not None:
            out["parts_required"] = float(required)
        return out

    def _required(self) -> int | None:
        if self.parts_required_variable is not None and self._latest.required is not None:
            return self._latest.required
        return self.parts_required

    # -- parts and jobs

    def _on_count(self, count: int, ts_ms: int, mono_ms: int) -> list[HaasItem]:
        latest = self._latest
        before, latest.count = latest.count, count
        if before is None or count == before:
            return []
        job = self._job
        if count < before:  # the operator reset the counter
            if job is not None:
                if job.total is not None:
                    return self._end_job(ts_ms, mono_ms)
                job.base = count - job.done
            return []
        out: list[HaasItem] = [
            DeviceEvent(
                ts_ms,
                mono_ms,
                "part_counted",
                data={"count": count, "program": latest.program},
            )
        ]
        if job is None:
            return out
        if job.base is None:
            job.base = before
        job.done = count - job.base
        if job.total is None:
            out.extend(self._end_job(ts_ms, mono_ms))
            return out
        out.append(self._job_event("job_progress", ts_ms, mono_ms, job))
        if job.done >= job.total:
            out.extend(self._end_job(ts_ms, mono_ms))
        return out

    def _start_job(self, ts_ms: int, mono_ms: int) -> DeviceEvent:
        latest = self._latest
        job = _Job(
            id=f"haas-{ts_ms}",
            program=latest.program,
            total=self._required(),
            base=latest.count,
        )
        self._job = job
        return DeviceEvent(
            ts_ms,
            mono_ms,
            "job_started",
            data={
                "job": job.id,
                "program": job.program,
                "unit": "parts",
                "total": job.total,
                "source": "counter",
            },
        )

    def _end_job(self, ts_ms: int, mono_ms: int) -> list[HaasItem]:
        job, self._job = self._job, None
        if job is None:
            return []
        if job.total is None:
            outcome = "completed" if job.done > 0 else "aborted"
        else:
            outcome = "completed" if job.done >= job.total else "aborted"
        return [self._job_event("job_ended", ts_ms, mono_ms, job, outcome=outcome)]

    @staticmethod
    def _job_event(
        event: str, ts_ms: int, mono_ms: int, job: _Job, *, outcome: str | None = None
    ) -> DeviceEvent:
        data: dict[str, Any] = {
            "job": job.id,
            "done": job.done,
            "total": job.total,
            "unit": "parts",
        }
        if job.program is not None:
            data["program"] = job.program
        if outcome is not None:
            data["outcome"] = outcome
        return DeviceEvent(ts_ms, mono_ms, event, data=data)
