"""When will a job be done: pure estimators, time passed in (sans-IO).

Each estimator takes what the hub knows about a running job and answers an
:class:`Estimate`: the expected end, a range around it and where it came from
(:class:`~shopfloor.hub.store.base.EtaOrigin`). :func:`estimate` picks the best one the
job's data allows, in this order:

``schedule``
    A kiln firing (unit ``seconds``, a known total): the schedule's remaining time, plus
    the time the controller's own schedule clock has fallen behind the wall clock
    (``slip_ms``: it waited for a kiln that could not keep up), so the ETA slips with it.
``firmware``
    The machine's own estimate (``eta_s`` of a ``job_progress``: Marlin's M73).
``history`` (parts)
    Haas parts: the parts still to make times the median of the recent part-to-part cycle
    times; the range from their spread.
``history``
    Past completed runs of the same program on the same machine (:class:`PastRun`): each
    run's duration and *progress profile* (how much of its working time it had used at
    every 5 % of progress) gives a remaining time two ways: the history's own
    (``duration * (1 - f(p))``) and the live pace applied to the history's shape
    (``working time so far * (1 - f(p)) / f(p)``). They are blended, the weight moving
    from history to live as progress goes from 0 to 1 (:func:`blend_weight`). The range
    is the spread of the per-run answers, never narrower than a floor that shrinks with
    more runs.
``linear``
    Working time so far / progress, extrapolated; the range is a factor that is wide early
    and narrows as progress grows (:func:`linear_band`).

"Working time" (``active_ms``) is the time since the start minus the time the machine was
PAUSED or in ALARM: a ten-minute tool change or door stop is not part of the machining
rate. Plain wall-clock extrapolation (:func:`plain_linear`) is kept as the benchmark's
baseline.

The chosen estimate counts from ``as_of``: when nothing moved since the last progress
(the machine is held), the remaining working time is unchanged and the ETA slides with
the clock.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from shopfloor.hub.store.base import EtaOrigin

__all__ = [
    "MIN_FRACTION",
    "PROFILE_STEPS",
    "Estimate",
    "EtaInputs",
    "LiveRun",
    "PastRun",
    "ProfileRecorder",
    "blend_weight",
    "estimate",
    "firmware",
    "from_history",
    "linear",
    "linear_band",
    "parts",
    "plain_linear",
    "schedule",
]

#: A progress profile has a point every 1/PROFILE_STEPS of progress (5 %), 0 % included.
PROFILE_STEPS: Final = 20
#: Below this progress a linear extrapolation says nothing useful: no estimate.
MIN_FRACTION: Final = 0.01
#: ... nor before the machine worked this long on the job.
MIN_ACTIVE_MS: Final = 5_000
#: A firmware estimate's range: this share of the remaining time, plus a minute.
FIRMWARE_SPREAD: Final = 0.10
FIRMWARE_FLOOR_MS: Final = 60_000
#: The range floor of the history estimate: HISTORY_FLOOR + HISTORY_FLOOR_FEW / runs.
HISTORY_FLOOR: Final = 0.05
HISTORY_FLOOR_FEW: Final = 0.10
#: How far a kiln may slip beyond what it already did: this share of the remaining time.
SCHEDULE_SPREAD: Final = 0.05
#: No estimate reaches further than this (a year).
MAX_REMAINING_MS: Final = 366 * 86_400_000
#: A parts range covers this many standard deviations of the sum of the remaining cycles.
PARTS_Z: Final = 1.64


@dataclass(frozen=True, slots=True)
class Estimate:
    """The expected end (epoch ms), its range ``low <= at <= high`` and its origin."""

    at: int
    low: int
    high: int
    origin: EtaOrigin
    #: When the estimate was made (the ``as_of`` of its inputs), epoch ms.
    made_at: int = 0

    @property
    def remaining_ms(self) -> int:
        return self.at - self.made_at


@dataclass(frozen=True, slots=True)
class LiveRun:
    """What is known about the running job at ``as_of``.

    ``done``/``total`` and ``active_ms`` are as of the last progress (``progress_at``);
    ``active_since_progress_ms`` is the working time since then (0 while the machine is
    held)."""

    started_at: int
    as_of: int
    done: float | None
    total: float | None
    active_ms: int
    progress_at: int | None = None
    active_since_progress_ms: int = 0

    @property
    def fraction(self) -> float | None:
        if self.done is None or not self.total or self.total <= 0:
            return None
        return max(0.0, min(1.0, self.done / self.total))


@dataclass(frozen=True, slots=True)
class PastRun:
    """A completed run of the same program on the same machine.

    ``active_ms`` is its whole working time; ``profile`` the working time at every
    1/PROFILE_STEPS of progress (``profile[0] == 0``, ``profile[-1] == active_ms``), or
    empty when it was not recorded (then progress is taken as even)."""

    active_ms: int
    total: float | None
    profile: tuple[int, ...] = ()

    def fraction_at(self, progress: float) -> float:
        """The share of its working time this run had used at ``progress``."""
        p = max(0.0, min(1.0, progress))
        prof = self.profile
        if len(prof) != PROFILE_STEPS + 1 or prof[-1] <= 0:
            return p
        x = p * PROFILE_STEPS
        k = min(int(x), PROFILE_STEPS - 1)
        value = prof[k] + (prof[k + 1] - prof[k]) * (x - k)
        return max(0.0, min(1.0, value / prof[-1]))


@dataclass(slots=True)
class ProfileRecorder:
    """Builds a run's progress profile from (fraction, working ms) observations in time
    order: each 1/PROFILE_STEPS mark gets the working time interpolated between the two
    observations around it. Plain data, so it can be stored with the job."""

    marks: list[int] = field(default_factory=lambda: [0])
    last: tuple[float, int] = (0.0, 0)

    def add(self, fraction: float, active_ms: int) -> None:
        f0, a0 = self.last
        f1 = max(0.0, min(1.0, fraction))
        a1 = max(active_ms, a0)
        if f1 <= f0:
            return  # no progress (or an older figure): the mark stays where it was reached
        while len(self.marks) <= PROFILE_STEPS:
            mark = len(self.marks) / PROFILE_STEPS
            if mark > f1 + 1e-12:
                break
            self.marks.append(round(a0 + (a1 - a0) * (mark - f0) / (f1 - f0)))
        self.last = (f1, a1)

    @property
    def complete(self) -> bool:
        return len(self.marks) == PROFILE_STEPS + 1

    def to_json(self) -> dict[str, object]:
        return {"marks": list(self.marks), "last": [self.last[0], self.last[1]]}

    @classmethod
    def from_json(cls, value: object) -> ProfileRecorder:
        if not isinstance(value, dict):
            return cls()
        marks = value.get("marks")
        last = value.get("last")
        rec = cls()
        if isinstance(marks, list) and marks and all(isinstance(m, int) for m in marks):
            rec.marks = list(marks[: PROFILE_STEPS + 1])
        if (
            isinstance(last, list)
            and len(last) == 2
            and all(isinstance(v, int | float) for v in last)
        ):
            rec.last = (float(last[0]), int(last[1]))
        return rec


def _make(made_at: int, remaining: float, low: float, high: float, origin: EtaOrigin) -> Estimate:
    """An estimate ``remaining`` ms after ``made_at``, with ``low <= remaining <= high``,
    rounded to whole seconds (so recomputing it does not change it every time)."""
    rem = _sane(remaining)
    lo = min(_sane(low), rem)
    hi = max(_sane(high), rem)

    def at(ms: float) -> int:
        return round((made_at + ms) / 1000.0) * 1000

    return Estimate(at=at(rem), low=at(lo), high=at(hi), origin=origin, made_at=made_at)


def _sane(ms: float) -> float:
    """``ms`` within [0, MAX_REMAINING_MS] (a tiny progress can make a rate explode)."""
    if math.isnan(ms):
        return 0.0
    return max(0.0, min(ms, MAX_REMAINING_MS))


def _after_progress(live: LiveRun, remaining_at_progress: float) -> float:
    """The remaining working time now, given what remained at the last progress."""
    return max(0.0, remaining_at_progress - live.active_since_progress_ms)


# ----------------------------------------------------------------------------- linear


def linear_band(fraction: float) -> float:
    """The factor ``k`` of a linear estimate's range at ``fraction``: the end lies between
    remaining / k and remaining * k. Wide on purpose: how many lines are done says little
    about time when a program's rate changes (a roughing pass of long moves, then
    thousands of short finishing lines); k is 4.25 at the start, 2 at 75 %, 1.25 at the
    end. ``bench/eta.py`` reports how often the real end falls inside."""
    return 1.25 + 3.0 * (1.0 - fraction)


def plain_linear(live: LiveRun) -> Estimate | None:
    """Wall-clock time since the start ÷ progress: what most senders show (the baseline)."""
    p = live.fraction
    at = live.progress_at if live.progress_at is not None else live.as_of
    elapsed = at - live.started_at
    if p is None or p < MIN_FRACTION or elapsed <= 0:
        return None
    remaining = max(0.0, elapsed * (1.0 - p) / p - (live.as_of - at))
    k = linear_band(p)
    return _make(live.as_of, remaining, remaining / k, remaining * k, EtaOrigin.LINEAR)


def linear(live: LiveRun) -> Estimate | None:
    """Working time ÷ progress, extrapolated; pauses do not count as working time."""
    p = live.fraction
    if p is None or p < MIN_FRACTION or live.active_ms < MIN_ACTIVE_MS:
        return None
    remaining = _after_progress(live, live.active_ms * (1.0 - p) / p)
    k = linear_band(p)
    return _make(live.as_of, remaining, remaining / k, remaining * k, EtaOrigin.LINEAR)


# ----------------------------------------------------------------------------- history


def blend_weight(fraction: float) -> float:
    """The live side's weight in the history blend at ``fraction``: sqrt(fraction), so 0
    at the start (only the history's duration is known), half at 25 %, all at the end.
    Chosen with ``bench/eta.py`` over p and p squared (which trust the history longer)
    and 1 (live pace from the first line): this run's feed override and material show
    in its pace early, but the first lines alone are too few to go on."""
    return math.sqrt(max(0.0, min(1.0, fraction)))


def _run_remaining(run: PastRun, live: LiveRun, p: float) -> float:
    """One past run's answer: the remaining working time at progress ``p``."""
    scale = 1.0
    if run.total and live.total and run.total > 0:
        scale = live.total / run.total  # a longer file of the same program: rate per unit
    duration = run.active_ms * scale
    f = run.fraction_at(p)
    history = duration * (1.0 - f)
    if f < MIN_FRACTION or live.active_ms <= 0:
        return history  # too little of the run to judge its pace
    pace = live.active_ms * (1.0 - f) / f
    w = blend_weight(p)
    return (1.0 - w) * history + w * pace


def from_history(live: LiveRun, runs: Sequence[PastRun]) -> Estimate | None:
    """Past runs' durations and shapes blended with the live pace (see the module doc)."""
    usable = [r for r in runs if r.active_ms > 0]
    if not usable:
        return None
    p = live.fraction
    if p is None and live.total:
        p = 0.0  # not started yet: the history's duration
    if p is None:
        # No total: only the history's durations, less the working time already spent.
        answers = [max(0.0, r.active_ms - live.active_ms) for r in usable]
    else:
        answers = [_run_remaining(r, live, p) for r in usable]
    answers = [_after_progress(live, a) for a in answers]
    remaining = statistics.median(answers)
    floor = HISTORY_FLOOR + HISTORY_FLOOR_FEW / len(answers)
    low = min(*answers, remaining * (1 - floor))
    high = max(*answers, remaining * (1 + floor))
    return _make(live.as_of, remaining, low, high, EtaOrigin.HISTORY)


# ----------------------------------------------------------------------------- others


def firmware(live: LiveRun, eta_s: float) -> Estimate:
    """The machine's own estimate of the time left, as of its last progress."""
    at = live.progress_at if live.progress_at is not None else live.as_of
    remaining = max(0.0, eta_s * 1000.0 - (live.as_of - at))
    spread = FIRMWARE_SPREAD * remaining + FIRMWARE_FLOOR_MS
    return _make(live.as_of, remaining, remaining - spread, remaining + spread, EtaOrigin.FIRMWARE)


def schedule(live: LiveRun, slip_ms: int = 0) -> Estimate | None:
    """A firing: the schedule's time left, plus how far its clock fell behind (``slip_ms``).

    ``done`` is the time since the firing started and ``total`` the schedule's length, both
    in seconds. A controller that waits for a lagging kiln (holdback, "catching up") runs
    its schedule clock slower than the wall clock; the agent's figures cannot show that,
    the controller's own time left in the segment does (the job book measures it). The
    range: never earlier than the schedule allows; up to as much slip again, or
    SCHEDULE_SPREAD of the remaining time, later."""
    if live.total is None or live.done is None:
        return None
    at = live.progress_at if live.progress_at is not None else live.as_of
    left = max(0.0, (live.total - live.done) * 1000.0 + slip_ms - (live.as_of - at))
    extra = max(float(slip_ms), SCHEDULE_SPREAD * left, 60_000.0)
    return _make(live.as_of, left, left, left + extra, EtaOrigin.SCHEDULE)


def parts(
    live: LiveRun, cycles_ms: Sequence[int], *, last_part_at: int, origin: EtaOrigin
) -> Estimate | None:
    """Parts still to make times the median cycle time, less the time already in this cycle.

    ``cycles_ms`` are recent part-to-part intervals (most recent last); a job without a
    total is one part. The range covers PARTS_Z standard deviations of the sum of the
    remaining cycles, the deviation taken from the cycles' interquartile range."""
    cycles = [c for c in cycles_ms if c > 0]
    if not cycles:
        return None
    done = live.done or 0.0
    left = max(1, math.ceil(live.total - done)) if live.total is not None else 1
    if live.total is not None and done >= live.total:
        return None
    cycle = statistics.median(cycles)
    if len(cycles) >= 4:
        q = statistics.quantiles(cycles, n=4)
        sigma = max((q[2] - q[0]) / 1.349, 0.02 * cycle)
    else:
        sigma = 0.15 * cycle
    in_cycle = max(0, live.as_of - last_part_at)
    remaining = max(0.0, cycle - in_cycle) + (left - 1) * cycle
    spread = PARTS_Z * sigma * math.sqrt(left)
    return _make(live.as_of, remaining, remaining - spread, remaining + spread, origin)


# ----------------------------------------------------------------------------- choice


@dataclass(frozen=True, slots=True)
class EtaInputs:
    """Everything :func:`estimate` may use; what a job does not have stays empty."""

    live: LiveRun
    unit: str
    firmware_eta_s: float | None = None
    slip_ms: int = 0
    history: Sequence[PastRun] = ()
    #: Recent part-to-part intervals (ms) of the machine's program, most recent last.
    cycles_ms: Sequence[int] = ()
    #: Whether any of ``cycles_ms`` is from before this job (then the origin is history).
    cycles_from_history: bool = False
    last_part_at: int | None = None


def estimate(inputs: EtaInputs) -> Estimate | None:
    """The best estimate the inputs allow (order in the module docstring), or None."""
    live = inputs.live
    if inputs.unit == "seconds" and live.total is not None:
        found = schedule(live, inputs.slip_ms)
        if found is not None:
            return found
    if inputs.firmware_eta_s is not None and inputs.firmware_eta_s >= 0:
        return firmware(live, inputs.firmware_eta_s)
    if inputs.unit == "parts" and inputs.cycles_ms:
        found = parts(
            live,
            inputs.cycles_ms,
            last_part_at=(
                inputs.last_part_at if inputs.last_part_at is not None else live.started_at
            ),
            origin=EtaOrigin.HISTORY if inputs.cycles_from_history else EtaOrigin.LINEAR,
        )
        if found is not None:
            return found
    if inputs.history:
        found = from_history(live, inputs.history)
        if found is not None:
            return found
    return linear(live)
