"""Scripted faults and the built-in demo job loop for the GRBL simulator.

Two *drivers* act on a :class:`~shopfloor.sim.grbl.machine.GrblMachine` from outside, the way
a shop floor would: a :class:`Script` of timed :class:`Fault` s (hard limit mid-job, a feed
hold and resume, an opened door, the port vanishing), and a :class:`JobLoop` that streams
bundled G-code programs into the machine as if an operator's sender did it. A runner calls
``tick(machine, now)`` on each driver every few milliseconds; faults the machine cannot do by
itself (``VANISH``: the port disappears) are handed back to the runner.

Times and durations here are caller seconds (the runner's clock), not machine seconds.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Final, Protocol

from shopfloor.sim.errors import SimConfigError
from shopfloor.sim.faultspec import numbers, split_fault
from shopfloor.sim.grbl.config import GrblSimConfig
from shopfloor.sim.grbl.machine import GrblMachine


class FaultKind(enum.StrEnum):
    HARD_LIMIT = "hard-limit"  # ALARM:1, then silence until a reset
    SOFT_LIMIT = "soft-limit"  # ALARM:2, then silence until a reset
    ALARM = "alarm"  # ALARM:<code>
    HOLD = "hold"  # feed hold (`!`); with a duration, resume (`~`) afterwards
    RESUME = "resume"  # cycle start (`~`), retried while the machine is still decelerating
    DOOR = "door"  # door opened; with a duration, closed again and resumed afterwards
    RESET = "reset"  # soft reset (0x18) as a sender would send it
    VANISH = "vanish"  # the port disappears for `duration` seconds (done by the runner)


@dataclass(frozen=True, slots=True)
class Fault:
    """One scripted event.

    It fires ``at`` seconds after the script starts, or once ``at_line`` lines of the running
    program (or, without a program, of the serial host) have been answered. ``duration``:
    how long a hold or open door lasts, how long an alarm stands before the operator resets and
    unlocks (0 = until someone else does), how long the port is gone. ``reboot``: the machine
    power-cycles while the port is gone (USB re-plug of a board that resets).
    """

    kind: FaultKind
    at: float | None = None
    at_line: int | None = None
    duration: float = 0.0
    code: int = 1
    reboot: bool = False

    def __post_init__(self) -> None:
        if (self.at is None) == (self.at_line is None):
            raise SimConfigError(f"fault {self.kind}: give exactly one of at= and at_line=")
        if self.duration < 0:
            raise SimConfigError(f"fault {self.kind}: duration must not be negative")


_KIND_CODES: Final = {FaultKind.HARD_LIMIT: 1, FaultKind.SOFT_LIMIT: 2}


def parse_fault(spec: str) -> Fault:
    """Parse a command-line fault: ``KIND@WHEN[+DURATION][!]``.

    ``WHEN`` is seconds after start (``12.5``) or ``L<n>`` for "after n answered lines".
    ``alarm:<code>`` picks the alarm code; a trailing ``!`` on ``vanish`` power-cycles the
    machine. Examples: ``hard-limit@30``, ``hold@10+5``, ``door@L120+8``, ``vanish@40+6!``.
    """
    s = split_fault(spec, FaultKind, usage="KIND@WHEN, e.g. hold@10+5", numbered=True)
    code = 1
    if s.number is not None:
        if not s.number.isdigit():
            raise SimConfigError(f"fault {spec!r}: alarm code must be a number")
        code = int(s.number)
    code = _KIND_CODES.get(s.kind, code)
    with numbers(spec):
        duration = float(s.duration) if s.duration is not None else 0.0
        if s.when[:1] in ("L", "l"):
            at_line = int(s.when[1:])
            return Fault(s.kind, at_line=at_line, duration=duration, code=code, reboot=s.reboot)
        return Fault(s.kind, at=float(s.when), duration=duration, code=code, reboot=s.reboot)


class Driver(Protocol):
    """Something that acts on the machine as time passes (a script, the job loop)."""

    def tick(self, machine: GrblMachine, now: float) -> list[Fault]:
        """Act on ``machine``; return the faults the runner must carry out (``VANISH``)."""
        ...


def _operator(machine: GrblMachine, line: str, now: float) -> None:
    machine.operator_line(line, now)


@dataclass(slots=True)
class _Later:
    due: float
    action: Callable[[GrblMachine, float], bool]  # True when done, False to retry next tick


def _resume(machine: GrblMachine, now: float) -> bool:
    if machine.silent or machine.status in ("Hold:1", "Door:1", "Door:2"):
        return machine.silent  # give up on a dead machine, else retry next tick
    if machine.status in ("Hold:0", "Door:0"):
        machine.receive(b"~", now)
    return True


def _close_door(machine: GrblMachine, now: float) -> bool:
    machine.set_door(False, now)
    return True


def _reset_and_unlock(machine: GrblMachine, now: float) -> bool:
    machine.receive(b"\x18", now)
    if machine.status == "Alarm":
        _operator(machine, "$H" if machine.settings[22] else "$X", now)
    return True


class Script:
    """Timed faults. ``Script([Fault(FaultKind.HOLD, at=5, duration=3)])``."""

    def __init__(self, faults: Sequence[Fault]) -> None:
        self._faults = sorted(faults, key=lambda f: (f.at_line is not None, f.at or 0.0))
        self._fired: list[bool] = [False] * len(self._faults)
        self._later: list[_Later] = []
        self._start: float | None = None
        self._host_base = 0
        #: (caller time, fault) for every fault that fired, for tests and logs.
        self.fired: list[tuple[float, Fault]] = []

    @property
    def done(self) -> bool:
        return all(self._fired) and not self._later

    def tick(self, machine: GrblMachine, now: float) -> list[Fault]:
        if self._start is None:
            self._start = now
            self._host_base = machine.lines_answered
        out: list[Fault] = []
        progress = self._progress(machine)
        for i, fault in enumerate(self._faults):
            if self._fired[i]:
                continue
            due = (fault.at is not None and now - self._start >= fault.at) or (
                fault.at_line is not None and progress >= fault.at_line
            )
            if not due:
                continue
            self._fired[i] = True
            self.fired.append((now, fault))
            if fault.kind is FaultKind.VANISH:
                out.append(fault)
            else:
                self._apply(fault, machine, now)
        still: list[_Later] = []
        for later in self._later:
            if now >= later.due and later.action(machine, now):
                continue
            still.append(later)
        self._later = still
        return out

    def _progress(self, machine: GrblMachine) -> int:
        program = machine.program
        if program is not None and not program.finished:
            return program.answered
        return machine.lines_answered - self._host_base

    def _apply(self, fault: Fault, machine: GrblMachine, now: float) -> None:
        kind = fault.kind
        if kind in (FaultKind.HARD_LIMIT, FaultKind.SOFT_LIMIT, FaultKind.ALARM):
            machine.trigger_alarm(fault.code, now)
            if fault.duration > 0:
                self._later.append(_Later(now + fault.duration, _reset_and_unlock))
        elif kind is FaultKind.HOLD:
            machine.receive(b"!", now)
            if fault.duration > 0:
                self._later.append(_Later(now + fault.duration, _resume))
        elif kind is FaultKind.RESUME:
            self._later.append(_Later(now, _resume))
        elif kind is FaultKind.DOOR:
            machine.set_door(True, now)
            if fault.duration > 0:
                self._later.append(_Later(now + fault.duration, _close_door))
                self._later.append(_Later(now + fault.duration, _resume))
        elif kind is FaultKind.RESET:
            machine.receive(b"\x18", now)


# ------------------------------------------------------------------------------ programs


@dataclass(frozen=True, slots=True)
class Program:
    """A G-code program: its name and its lines (as in the file)."""

    name: str
    lines: tuple[str, ...]


_PROGRAM_DIR: Final = "programs"


def bundled_programs() -> list[str]:
    """Names of the programs shipped with the simulator."""
    folder = resources.files("shopfloor.sim.grbl").joinpath(_PROGRAM_DIR)
    return sorted(
        p.name.removesuffix(".gcode") for p in folder.iterdir() if p.name.endswith(".gcode")
    )


def load_program(name_or_path: str) -> Program:
    """A bundled program by name (``router-sign``) or a ``.gcode`` file by path."""
    folder = resources.files("shopfloor.sim.grbl").joinpath(_PROGRAM_DIR)
    bundled = folder.joinpath(f"{name_or_path}.gcode")
    if bundled.is_file():
        text = bundled.read_text(encoding="ascii")
        name = name_or_path
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise SimConfigError(
                f"program {name_or_path!r}: not a bundled program ({', '.join(bundled_programs())})"
                " and no such file"
            )
        text = path.read_text(encoding="ascii", errors="replace")
        name = path.stem
    lines = tuple(line for line in text.splitlines() if line.strip())
    return Program(name=name, lines=lines)


# ------------------------------------------------------------------------------ job loop


class _Phase(enum.Enum):
    WAITING = enum.auto()
    RUNNING = enum.auto()
    STOPPED = enum.auto()


@dataclass(slots=True)
class _Incident:
    kind: FaultKind
    at_fraction: float
    fired: bool = False


@dataclass(slots=True)
class JobLoop:
    """The simulator streams programs to itself: Idle -> Run (-> Hold -> Run) -> Idle ...

    ``programs`` run in turn with ``pause_s`` of Idle in between. Each job, with probability
    ``hold_chance``, gets a feed hold of ``hold_s`` somewhere in the middle, and with probability
    ``alarm_chance`` a hard-limit alarm that the "operator" clears after ``alarm_s`` (reset and
    unlock); the aborted job is not restarted. ``repeat=False`` runs each program once.
    """

    programs: Sequence[Program]
    pause_s: float = 6.0
    hold_chance: float = 0.4
    hold_s: float = 5.0
    alarm_chance: float = 0.15
    alarm_s: float = 6.0
    repeat: bool = True
    first_delay_s: float = 1.0
    rng: random.Random = field(default_factory=random.Random)
    #: (caller time, program name, how it ended: "done" or "aborted") per finished job.
    finished: list[tuple[float, str, str]] = field(default_factory=list)
    _phase: _Phase = _Phase.WAITING
    _next_start: float | None = None
    _index: int = 0
    _incident: _Incident | None = None
    _later: list[_Later] = field(default_factory=list)

    def tick(self, machine: GrblMachine, now: float) -> list[Fault]:
        if self._next_start is None:
            self._next_start = now + self.first_delay_s
        still: list[_Later] = []
        for later in self._later:
            if now >= later.due and later.action(machine, now):
                continue
            still.append(later)
        self._later = still
        if self._phase is _Phase.WAITING and now >= self._next_start and not self._later:
            self._start_job(machine, now)
        elif self._phase is _Phase.RUNNING:
            self._watch_job(machine, now)
        return []

    @property
    def running(self) -> bool:
        return self._phase is _Phase.RUNNING

    def _start_job(self, machine: GrblMachine, now: float) -> None:
        if machine.silent:
            return
        if machine.status == "Alarm":
            _operator(machine, "$H" if machine.settings[22] else "$X", now)
            return
        if machine.status != "Idle":
            return
        program = self.programs[self._index % len(self.programs)]
        self._index += 1
        machine.start_program(program.name, program.lines)
        self._phase = _Phase.RUNNING
        self._incident = None
        roll = self.rng.random()
        if roll < self.alarm_chance:
            self._incident = _Incident(FaultKind.HARD_LIMIT, self.rng.uniform(0.3, 0.8))
        elif roll < self.alarm_chance + self.hold_chance:
            self._incident = _Incident(FaultKind.HOLD, self.rng.uniform(0.2, 0.8))

    def _watch_job(self, machine: GrblMachine, now: float) -> None:
        progress = machine.program
        if progress is None:
            return
        incident = self._incident
        if (
            incident is not None
            and not incident.fired
            and progress.answered >= incident.at_fraction * progress.total
        ):
            incident.fired = True
            if incident.kind is FaultKind.HOLD:
                machine.receive(b"!", now)
                self._later.append(_Later(now + self.hold_s, _resume))
            else:
                machine.trigger_alarm(1, now)
                self._later.append(_Later(now + self.alarm_s, _reset_and_unlock))
        if progress.aborted:
            self._end(now, progress.name, "aborted")
        elif progress.finished and machine.status == "Idle":
            self._end(now, progress.name, "done")

    def _end(self, now: float, name: str, how: str) -> None:
        self.finished.append((now, name, how))
        if not self.repeat and self._index >= len(self.programs):
            self._phase = _Phase.STOPPED
            return
        self._phase = _Phase.WAITING
        self._next_start = now + self.pause_s


def drivers_from_config(config: GrblSimConfig) -> list[Driver]:
    """The drivers a runner should tick for ``config`` (auto-run, demo loop, faults)."""
    drivers: list[Driver] = []
    if config.demo_loop:
        # A laser runs the laser programs, a router the others (bundled names say which).
        names = [n for n in bundled_programs() if n.startswith("laser-") == config.laser]
        programs = [load_program(name) for name in names or bundled_programs()]
        drivers.append(JobLoop(programs=programs, rng=random.Random(config.seed)))
    elif config.auto_run is not None:
        drivers.append(
            JobLoop(
                programs=[load_program(config.auto_run)],
                repeat=False,
                hold_chance=0.0,
                alarm_chance=0.0,
                rng=random.Random(config.seed),
            )
        )
    if config.faults:
        drivers.append(Script(config.faults))
    return drivers
