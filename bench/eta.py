"""ETA accuracy on simulated runs: plain linear vs. the hub's estimator without and with history.

The hub's estimator code is used as it runs in the hub (:mod:`shopfloor.hub.jobs.eta`, the
:class:`~shopfloor.hub.jobs.eta.ProfileRecorder` that records a run's progress profile and
the :class:`~shopfloor.hub.jobs.timeline.Timeline` that tells working from held time); only
the machine is simulated, with nothing but time passed in, so the numbers are the same on
every computer for the same ``--seed``.

The simulation (``simulate``):

- ``--programs`` G-code programs of 300 to 30,000 lines and about 4 minutes to 4 hours. Each
  is a sequence of 2 to 7 phases of a kind a router or laser runs: facing or pocketing (few
  long moves, seconds a line), contour (arcs, around a second a line), 3-D finishing or
  V-carving (many short lines, planner-limited: 20 to 150 ms a line), raster engraving (very
  many lines, 5 to 30 ms), drilling (pecks and dwells). So the rate in lines per second
  varies by up to 100x within one program, and linear extrapolation of lines is misled.
  A program's line times are fixed (it is the same file every time).
- ``--runs`` runs of every program, one after the other on the same machine. Run-to-run
  noise: a feed override / material factor for the whole run (log-normal, sigma 6 %), a
  factor per phase (sigma 5 %), line-level jitter (sigma 10 %), in one run of five a feed
  override turned mid-run (x0.75..1.3 from a random line on); with probability 0.35 a
  run has one or two holds (a tool change or an open door: PAUSED for 1 to 15 minutes) at
  random points, the machine reporting PAUSED then RUNNING.
- The agent reports progress about once a second (``job_progress``): the estimators see the
  figures as of the last report, exactly as the book does.

At 25, 50 and 75 % of each run's lines, three estimates of the end are made from the same
figures:

- **(a) linear**: wall-clock time since the start / progress (what CNCjs, bCNC and most
  senders show) -- :func:`~shopfloor.hub.jobs.eta.plain_linear`.
- **(b) hub, no history**: :func:`~shopfloor.hub.jobs.eta.estimate` with no past runs:
  working time (held time not counted) / progress.
- **(c) hub, with history**: :func:`~shopfloor.hub.jobs.eta.estimate` with the last 10
  completed runs of the same program on the same machine (their durations and progress
  profiles): history blended with the live pace.

The error is |estimated end - actual end|. Reported: the median over runs (and the 90th
percentile), in minutes and as a share of the time that was really left; and how often the
actual end fell inside the estimate's range (low..high). (c) needs a previous run, so every
figure is over the runs that have one (all but each program's first), for all three
estimators alike; ``--json FILE`` writes every estimate.

    .venv/bin/python -m bench.eta                 # 40 programs x 8 runs, a few seconds
    .venv/bin/python -m bench.eta --programs 200 --runs 10 --seed 7
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from shopfloor.contract import MachineState
from shopfloor.hub.jobs.eta import (
    Estimate,
    EtaInputs,
    LiveRun,
    PastRun,
    ProfileRecorder,
    estimate,
    plain_linear,
)
from shopfloor.hub.jobs.timeline import Timeline

MARKS: Final = (0.25, 0.50, 0.75)
HISTORY_RUNS: Final = 10
REPORT_EVERY_MS: Final = 1000
#: Phase kinds: (name, seconds per line low..high, lines low..high as a share of weight).
PHASES: Final = (
    ("facing", 1.5, 6.0),
    ("contour", 0.4, 1.5),
    ("finishing", 0.02, 0.15),
    ("raster", 0.005, 0.03),
    ("drilling", 0.8, 3.0),
)


@dataclass(frozen=True, slots=True)
class Program:
    name: str
    line_ms: tuple[float, ...]  # nominal time of every line
    phase_of: tuple[int, ...]  # phase index of every line
    phases: int


@dataclass(slots=True)
class Run:
    """One simulated run: cumulative working and wall time after each line."""

    program: str
    index: int
    active_ms: list[float]  # after line i (0-based) is acknowledged
    wall_ms: list[float]
    holds: list[tuple[float, float]] = field(default_factory=list)  # (wall start, length)

    @property
    def lines(self) -> int:
        return len(self.active_ms)


def make_program(rng: random.Random, index: int) -> Program:
    """2..7 phases of random kinds; 300..30,000 lines; ~4 min..4 h of nominal time."""
    target_s = math.exp(rng.uniform(math.log(240), math.log(4 * 3600)))
    count = rng.randint(2, 7)
    kinds = [rng.choice(PHASES) for _ in range(count)]
    shares = [rng.uniform(0.3, 1.0) for _ in kinds]
    total_share = sum(shares)
    line_ms: list[float] = []
    phase_of: list[int] = []
    for p, ((_, lo, hi), share) in enumerate(zip(kinds, shares, strict=True)):
        per_line = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        seconds = target_s * share / total_share
        n = max(20, round(seconds / per_line))
        for _ in range(n):
            line_ms.append(per_line * 1000 * math.exp(rng.gauss(0, 0.35)))
            phase_of.append(p)
    if len(line_ms) > 30_000:  # keep the biggest files realistic: merge the fine phases
        step = len(line_ms) / 30_000
        picks = [int(k * step) for k in range(30_000)]
        line_ms = [line_ms[i] * step for i in picks]
        phase_of = [phase_of[i] for i in picks]
    return Program(f"p{index:03d}", tuple(line_ms), tuple(phase_of), count)


def simulate(rng: random.Random, program: Program, index: int) -> Run:
    overall = math.exp(rng.gauss(0, 0.06))
    per_phase = [math.exp(rng.gauss(0, 0.05)) for _ in range(program.phases)]
    # The operator turns the feed override mid-run (one run in five).
    turn_at = rng.randrange(len(program.line_ms)) if rng.random() < 0.2 else -1
    turned = rng.uniform(0.75, 1.3)
    active: list[float] = []
    t = 0.0
    for i, (ms, phase) in enumerate(zip(program.line_ms, program.phase_of, strict=True)):
        override = turned if 0 <= turn_at <= i else 1.0
        t += ms * overall * per_phase[phase] * override * math.exp(rng.gauss(0, 0.10))
        active.append(t)
    count = rng.randint(1, 2) if rng.random() < 0.35 else 0
    holds = sorted((rng.randrange(len(active)), rng.uniform(1, 15) * 60_000) for _ in range(count))
    wall: list[float] = []
    extra = 0.0
    pending = list(holds)
    run_holds: list[tuple[float, float]] = []
    for i, a in enumerate(active):
        while pending and pending[0][0] == i:
            _, length = pending.pop(0)
            run_holds.append((a + extra, length))  # held after line i was acknowledged
            extra += length
        wall.append(a + extra)
    return Run(program.name, index, active, wall, run_holds)


def report_index(run: Run, fraction: float) -> int:
    """The last progress report at or after ``fraction`` of the lines: the line count the
    agent reported in the first report (1 Hz) once that many lines were done."""
    i = max(0, math.ceil(fraction * run.lines) - 1)
    t = run.wall_ms[i]
    report_at = math.ceil(t / REPORT_EVERY_MS) * REPORT_EVERY_MS
    j = i
    while j + 1 < run.lines and run.wall_ms[j + 1] <= report_at:
        j += 1
    return j


def timeline_of(run: Run) -> Timeline:
    line = Timeline()
    line.add(0, MachineState.RUNNING)
    for start, length in run.holds:
        line.add(round(start), MachineState.PAUSED)
        line.add(round(start + length), MachineState.RUNNING)
    return line


def past_run(run: Run) -> PastRun:
    """What the book stores when a run completes: working time and progress profile."""
    recorder = ProfileRecorder()
    n = run.lines
    step = max(1, n // 400)  # reports as the book gets them, thinned for speed
    for i in range(0, n, step):
        recorder.add((i + 1) / n, round(run.active_ms[i]))
    recorder.add(1.0, round(run.active_ms[-1]))
    return PastRun(
        active_ms=round(run.active_ms[-1]), total=float(n), profile=tuple(recorder.marks)
    )


@dataclass(frozen=True, slots=True)
class Sample:
    program: str
    run: int
    held: bool  # the run had a hold (tool change, door)
    mark: float
    left_min: float  # the time really left
    estimates: dict[str, tuple[float, float, float] | None]  # name -> (at, low, high) min


def evaluate(run: Run, history: Sequence[PastRun]) -> list[Sample]:
    out = []
    timeline = timeline_of(run)
    end = run.wall_ms[-1]
    for mark in MARKS:
        i = report_index(run, mark)
        at = round(run.wall_ms[i])
        live = LiveRun(
            started_at=0,
            as_of=at,
            done=float(i + 1),
            total=float(run.lines),
            active_ms=timeline.active_ms(0, at),
            progress_at=at,
        )
        found: dict[str, Estimate | None] = {
            "a": plain_linear(live),
            "b": estimate(EtaInputs(live=live, unit="lines")),
            "c": estimate(EtaInputs(live=live, unit="lines", history=history[-HISTORY_RUNS:])),
        }
        out.append(
            Sample(
                program=run.program,
                run=run.index,
                held=bool(run.holds),
                mark=mark,
                left_min=(end - at) / 60_000,
                estimates={
                    k: None if e is None else (e.at / 60_000, e.low / 60_000, e.high / 60_000)
                    for k, e in found.items()
                },
            )
        )
    return out


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    k = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[k]


def summarize(
    samples: Sequence[Sample], ends: dict[tuple[str, int], float], *, ranges: bool = True
) -> str:
    names = {"a": "(a) linear (wall clock)", "b": "(b) hub, no history", "c": "(c) hub, history"}
    header = "| estimator | " + " | ".join(f"at {round(m * 100)} %" for m in MARKS) + " |"
    rule = "|---|" + "---|" * len(MARKS)
    rows = [header, rule]

    def err(s: Sample, key: str) -> float | None:
        e = s.estimates[key]
        return None if e is None else abs(e[0] - ends[(s.program, s.run)])

    for key, label in names.items():
        cells = []
        for mark in MARKS:
            errors = [x for s in samples if s.mark == mark if (x := err(s, key)) is not None]
            rel = [
                x / s.left_min
                for s in samples
                if s.mark == mark and s.left_min > 0
                if (x := err(s, key)) is not None
            ]
            missing = sum(1 for s in samples if s.mark == mark and s.estimates[key] is None)
            cell = (
                f"{statistics.median(errors):.1f} ({pct(errors, 0.9):.1f}) · "
                f"{statistics.median(rel) * 100:.0f} %"
            )
            if missing:
                cell += f" [{missing} none]"
            cells.append(cell)
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    if not ranges:
        return "\n".join(rows)
    rows += ["", "How often the actual end fell inside the estimate's range (low..high):", ""]
    rows += [header, rule]
    for key, label in names.items():
        cells = []
        for mark in MARKS:
            hits = [
                e[1] <= ends[(s.program, s.run)] <= e[2]
                for s in samples
                if s.mark == mark and (e := s.estimates[key]) is not None
            ]
            cells.append(f"{100 * sum(hits) / max(1, len(hits)):.0f} %")
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.eta", description=__doc__.split("\n")[0])
    parser.add_argument("--programs", type=int, default=40)
    parser.add_argument("--runs", type=int, default=8, help="runs of every program (>= 2)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write every estimate here")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    samples: list[Sample] = []
    ends: dict[tuple[str, int], float] = {}
    durations: list[float] = []
    lines: list[int] = []
    held = 0
    for p in range(args.programs):
        program = make_program(rng, p)
        history: list[PastRun] = []
        for r in range(max(2, args.runs)):
            run = simulate(rng, program, r)
            ends[(run.program, r)] = run.wall_ms[-1] / 60_000
            if r > 0:  # (c) needs a previous run: compare all three on the same runs
                samples += evaluate(run, history)
                durations.append(run.wall_ms[-1] / 60_000)
                lines.append(run.lines)
                held += bool(run.holds)
            history.append(past_run(run))
    report: Callable[[str], None] = print
    report(
        f"# bench.eta: seed {args.seed}, {args.programs} programs x {max(2, args.runs)} runs; "
        f"compared on {len(durations)} runs (each program's first has no history)"
    )
    report(
        f"# run length: median {statistics.median(durations):.0f} min, "
        f"{min(durations):.1f}..{max(durations):.0f} min; lines {min(lines)}..{max(lines)}; "
        f"{held} runs ({100 * held / len(durations):.0f} %) with a hold"
    )
    report("")
    report(
        "Median absolute error of the estimated end in minutes (90th percentile in brackets)"
        " · the median error as a share of the time really left. All runs:"
    )
    report("")
    report(summarize(samples, ends))
    report("")
    report(f"Only the {held} runs with a hold (a tool change or an open door):")
    report("")
    report(summarize([s for s in samples if s.held], ends, ranges=False))
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                [
                    {
                        "program": s.program,
                        "run": s.run,
                        "mark": s.mark,
                        "left_min": s.left_min,
                        "end_min": ends[(s.program, s.run)],
                        "estimates": s.estimates,
                    }
                    for s in samples
                ],
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
