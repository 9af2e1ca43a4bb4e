"""Utilization over 90 days for 50 machines, computed in the database, against Python.

The data: ``--machines`` machines x ``--days`` days with about ``--per-minute`` state rows a
minute each (default 50 x 90 x 1 = 6.48 M rows), written with ``executemany`` in batches
into a temporary SQLite file created by :class:`~shopfloor.hub.store.SqliteStore` (same
schema, same index). Each row is a state change at a jittered minute with a state drawn
from a realistic mix (RUNNING 55 %, IDLE 25 %, SETUP 8 %, PAUSED 6 %, ALARM 3 %, OFFLINE
3 %), so roughly one change a minute.

Measured in the same run, on the same file, by day in Europe/Berlin, with a Mon-Fri
07:00-15:30 shift calendar (so planned-time windows are summed too):

- **db**: the hub's own path: :class:`~shopfloor.hub.domain.utilization.Planner` plans a
  window per day and per planned shift part for every machine, one
  ``SqliteStore.time_in_state`` call sums them in SQL (lead() over rows by ts, clipped,
  carry-in), then the figures are formed.
- **python**: the naive alternative: ``SELECT machine_key, ts, state ... ORDER BY
  machine_key, ts, id`` over the same rows, every row loaded into Python and walked to sum
  the same windows. Its answer must equal the database's to the millisecond.
- **floor**: ``SELECT count(*)`` and a full scan ``SELECT sum(ts)`` over the table.

    .venv/bin/python -m bench.utilization                     # 50 x 90 days, ~2-3 min
    .venv/bin/python -m bench.utilization --machines 10 --days 30   # quick look
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import random
import resource
import sqlite3
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from datetime import time as clock
from pathlib import Path
from typing import Final
from zoneinfo import ZoneInfo

from shopfloor.contract import MachineState
from shopfloor.hub.domain.shifts import Bucket, ShiftCalendar, WeeklyShift
from shopfloor.hub.domain.utilization import (
    Figures,
    MachinePlan,
    Planner,
    Probe,
    figures,
    total,
)
from shopfloor.hub.store import SqliteStore

TZ: Final = ZoneInfo("Europe/Berlin")
#: Monday 2026-08-24 00:00 Berlin; 90 days from it cross the October DST change.
START: Final = int(datetime(2026, 8, 24, tzinfo=TZ).timestamp() * 1000)
MINUTE: Final = 60_000
BATCH: Final = 100_000
MIX: Final = (
    (MachineState.RUNNING, 55),
    (MachineState.IDLE, 25),
    (MachineState.SETUP, 8),
    (MachineState.PAUSED, 6),
    (MachineState.ALARM, 3),
    (MachineState.OFFLINE, 3),
)
CALENDAR: Final = ShiftCalendar(
    "weekdays", (WeeklyShift("early", frozenset(range(5)), clock(7), clock(15, 30)),)
)
PRODUCTIVE: Final = frozenset({MachineState.RUNNING})


def _rows(machines: int, days: int, per_minute: float, seed: int) -> Iterator[tuple[object, ...]]:
    rnd = random.Random(seed)
    states = [s for s, _ in MIX]
    weights = [w for _, w in MIX]
    step = MINUTE / per_minute
    count = int(days * 24 * 60 * per_minute)
    for m in range(machines):
        key = f"pi-{m // 10}/m{m:03d}"
        picks = rnd.choices(states, weights, k=count)
        for i in range(count):
            ts = START + int(i * step) + rnd.randrange(int(step))
            yield (key, ts, str(picks[i]), "", "agent")


def generate(path: Path, machines: int, days: int, per_minute: float, seed: int) -> int:
    asyncio.run(_create(path))
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA journal_mode=WAL")
    rows = _rows(machines, days, per_minute, seed)
    n = 0
    while True:
        batch = [r for _, r in zip(range(BATCH), rows, strict=False)]
        if not batch:
            break
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO state_changes (machine_key, ts, state, detail, source)"
            " VALUES (?, ?, ?, ?, ?)",
            batch,
        )
        conn.execute("COMMIT")
        n += len(batch)
    conn.execute("ANALYZE")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return n


async def _create(path: Path) -> None:
    async with SqliteStore(path):
        pass


def _plans(keys: Sequence[str], days: int, now: int) -> tuple[Planner, list[MachinePlan]]:
    planner = Planner()
    plans = [
        planner.plan(
            k.rsplit("/", 1)[1],
            k,
            bucket=Bucket.DAY,
            from_ms=START,
            to_ms=_local_end(days),
            now_ms=now,
            tz=TZ,
            calendar=CALENDAR,
        )
        for k in keys
    ]
    return planner, plans


def _local_end(days: int) -> int:
    first = datetime.fromtimestamp(START / 1000, TZ).date()
    last = datetime.combine(first + timedelta(days=days), clock(0), tzinfo=TZ)
    return int(last.timestamp() * 1000)


async def in_database(
    path: Path, keys: Sequence[str], days: int, now: int
) -> tuple[float, dict[int, dict[MachineState, int]], Figures, int]:
    async with SqliteStore(path) as store:
        t0 = time.perf_counter()
        planner, plans = _plans(keys, days, now)
        sums = await store.time_in_state(planner.probes, now_ms=now, heartbeat_gap_ms=60_000)
        per = [figures(b, sums, PRODUCTIVE) for p in plans for b in p.buckets]
        elapsed = time.perf_counter() - t0
    return elapsed, sums, total(per), len(planner.probes)


def in_python(
    path: Path, probes: Sequence[Probe], now: int
) -> tuple[float, dict[int, dict[MachineState, int]]]:
    """Load every row and sum the same windows in Python (per machine: sorted rows, bisect
    to the carry-in row of each window, walk to its end)."""
    t0 = time.perf_counter()
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    by_key: dict[str, tuple[list[int], list[str]]] = {}
    for key, ts, state in conn.execute(
        "SELECT machine_key, ts, state FROM state_changes ORDER BY machine_key, ts, id"
    ):
        entry = by_key.get(key)
        if entry is None:
            entry = by_key[key] = ([], [])
        entry[0].append(ts)
        entry[1].append(state)
    conn.close()
    out: dict[int, dict[MachineState, int]] = {}
    for p in probes:
        start, end = p.start, min(p.end, now)
        if end <= start:
            continue
        tss, sts = by_key.get(p.key, ([], []))
        acc: dict[str, int] = {}
        i = bisect.bisect_right(tss, start) - 1
        current, since = "OFFLINE", start
        if i >= 0:
            # Carry-in: the last row at or before start (last of equal ts wins).
            current = sts[i]
            i += 1
        else:
            i = 0
        while i < len(tss) and tss[i] < end:
            ts = tss[i]
            if ts > since:
                acc[current] = acc.get(current, 0) + ts - since
                since = ts
            current = sts[i]
            i += 1
        acc[current] = acc.get(current, 0) + end - since
        out[p.id] = {MachineState(s): ms for s, ms in acc.items() if ms}
    return time.perf_counter() - t0, out


def floor(path: Path) -> tuple[float, float, int]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    t0 = time.perf_counter()
    (count,) = conn.execute("SELECT count(*) FROM state_changes").fetchone()
    t1 = time.perf_counter()
    conn.execute("SELECT total(ts) FROM state_changes").fetchone()
    t2 = time.perf_counter()
    conn.close()
    return t1 - t0, t2 - t1, int(count)


def _same(
    a: Mapping[int, Mapping[MachineState, int]], b: Mapping[int, Mapping[MachineState, int]]
) -> bool:
    keys = set(a) | set(b)
    return all(
        {k: v for k, v in a.get(i, {}).items() if v} == {k: v for k, v in b.get(i, {}).items() if v}
        for i in keys
    )


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--machines", type=int, default=50)
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--per-minute", type=float, default=1.0)
    ap.add_argument(
        "--repeat", type=int, default=3, help="timed runs of each side (best is reported)"
    )
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-util-") as tmp:
        path = Path(tmp) / "hub.sqlite3"
        t0 = time.perf_counter()
        n = generate(path, args.machines, args.days, args.per_minute, args.seed)
        gen_s = time.perf_counter() - t0
        size_mb = path.stat().st_size / 1e6
        print(
            f"generated {n:,} rows ({args.machines} machines x {args.days} days)"
            f" in {gen_s:.1f} s, {size_mb:.0f} MB"
        )
        keys = [f"pi-{m // 10}/m{m:03d}" for m in range(args.machines)]
        now = _local_end(args.days) + 1
        db_times, py_times = [], []
        sums: dict[int, dict[MachineState, int]] = {}
        probes: list[Probe] = []
        tot = Figures()
        rss_start = _peak_mb()
        rss_db = rss_start
        for _ in range(args.repeat):
            elapsed, sums, tot, _nprobes = asyncio.run(in_database(path, keys, args.days, now))
            db_times.append(elapsed)
            if len(db_times) == 1:
                rss_db = _peak_mb()  # before any python run: the db path's own peak
            planner, _ = _plans(keys, args.days, now)
            probes = planner.probes
            py_s, py_sums = in_python(path, probes, now)
            py_times.append(py_s)
            assert _same(sums, py_sums), "the database and Python disagree"
        count_s, scan_s, count = floor(path)
        days_buckets = sum(1 for p in probes if p.end - p.start >= 23 * 3_600_000)
        db, py = min(db_times), min(py_times)
        runs_db = ", ".join(f"{t:.2f}" for t in db_times)
        runs_py = ", ".join(f"{t:.2f}" for t in py_times)
        print(f"windows summed: {len(probes):,} ({days_buckets:,} days + planned-shift parts)")
        print(f"db (time_in_state, by day): best {db:.2f} s  runs {runs_db}")
        print(f"python (load all rows, walk): best {py:.2f} s  runs {runs_py}")
        print(
            f"floor: SELECT count(*) {count_s:.3f} s ({count:,} rows),"
            f" full scan total(ts) {scan_s:.2f} s"
        )
        print(
            f"peak RSS of this process: {rss_start:.0f} MB before, {rss_db:.0f} MB after the first"
            f" db run, {_peak_mb():.0f} MB after the python runs"
        )
        print(f"ratio python / db = {py / db:.2f}; db / full scan = {db / scan_s:.1f}")
        print(
            f"answers identical: yes; fleet utilization {tot.utilization:.4f} of window, "
            f"{tot.utilization_planned:.4f} of planned, coverage {tot.coverage:.4f}"
        )


if __name__ == "__main__":
    main()
