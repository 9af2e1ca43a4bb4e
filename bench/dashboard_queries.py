"""Every Grafana panel query of the wall and the utilization report, timed on PostgreSQL.

Issue 6: "the wall dashboard's heaviest query time at 50 machines x 30 days". A fresh
database ``shopfloor_dash_bench_<pid>_<random>`` on ``--pg`` (default: the local server, user
postgres) is filled through the hub's :class:`PostgresStore` (public schema, as a hub would
have it, so the dashboards' unqualified table names resolve), then every panel target of
``dashboards/json/wall.json`` and ``utilization.json`` is expanded the way Grafana expands it
(``tests/dashboards/grafana_sql.py``) and run; the database is dropped at the end.

The data, all written through the store's write path (``store.write`` / ``add_states``):

- **state changes**: ``bench.store_insert``'s 30-day data (``bench.utilization._rows``: 50
  machines ``pi-<m // 10>/m<NNN>``, one state row a minute per machine at a jittered minute,
  state drawn from the mix RUNNING 55 %, IDLE 25 %, SETUP 8 %, PAUSED 6 %, ALARM 3 %,
  OFFLINE 3 %), from Monday 2026-08-24 00:00 (Europe/Berlin) until "now" =
  Wednesday 2026-09-23 15:00, i.e. 30 days and 15 hours;
- **heartbeats**: between two of those rows the agent's heartbeat, the same state again every
  ``--heartbeat-s`` (15 s, the agent's ``HEARTBEAT_MS``; ``bench.store_insert``'s record
  stream sends one every 15 s too), as the hub stores them (one ``state_changes`` row each);
- **hub OFFLINE marks**: one a day per machine at a random time (source ``hub``, "no data"),
  each voided by the heartbeats around it, so the dashboards' voiding subqueries run;
- **machines**: a ``meta`` record per machine (m048 and m049 are kilns, the rest routers);
- **jobs**: per machine back-to-back jobs over the whole span (routers 20-150 min with 5-60
  min between, 20 programs each; kilns one 8-14 h firing a day), ``job_started``, a
  ``job_progress`` every 15 min and ``job_ended`` (10 % aborted), written as ``event``
  records and handed to the hub's real :class:`JobBook` after each commit, as ingest does;
- **kiln telemetry**: for the two kilns, one telemetry batch every 5 s with 5 samples
  (temperature, set point, output) over the last ``--telemetry-hours`` (48) before now.

Then ``VACUUM ANALYZE`` (a hub's database would have been autovacuumed). The queries run on
one connection with the server's default settings, as Grafana's connection has them (JIT
on in PostgreSQL 15), and, interleaved, on one with ``jit = off`` as the hub sets it. Ranges:
the wall its default, the last 12 h (the "today" panels: today so far), the utilization
report the last 30 days; default variables (All machines, All groups). Each query once as a
warm-up, then ``--repeat`` times, the panels round-robin; median and max per query. The
heaviest query (and the heaviest of the wall) is run once more under
``EXPLAIN (ANALYZE, BUFFERS)``.

    .venv/bin/python -m bench.dashboard_queries                  # ~6 min
    .venv/bin/python -m bench.dashboard_queries --days 3 --repeat 3   # quick look
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import itertools
import json
import random
import re
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

import asyncpg

from bench.benchutil import REPO, environment, install_sigterm_exit
from bench.store_insert import MACHINES, STATES_BATCH, Postgres
from bench.utilization import START, TZ, _rows
from shopfloor.contract import Envelope, MachineState, RecordKind
from shopfloor.hub.config import load_config
from shopfloor.hub.database_url import PostgresUrl, parse_postgres_url
from shopfloor.hub.jobs import JobBook
from shopfloor.hub.store import Incoming, StateRow, StateSource, WriteBatch
from shopfloor.hub.store.postgres import PostgresStore

# The Grafana macro expander of the dashboard tests (pytest finds it through rootdir).
sys.path.insert(0, str(REPO / "tests" / "dashboards"))
grafana_sql = importlib.import_module("grafana_sql")

DASHBOARDS: Final = REPO / "dashboards" / "json"
EXAMPLE_CONFIG: Final = REPO / "dashboards" / "hub-example.toml"
HOUR: Final = 3_600_000
MINUTE: Final = 60_000
SITE: Final = "shop"
KILNS: Final = frozenset({MACHINES - 2, MACHINES - 1})
#: The wall's "now": 15:00 on the 31st day of the data (a Wednesday, mid-shift).
NOW_HOUR: Final = 15
WALL_SLOW_MS: Final = 2_000  # the wall refreshes every 30 s
WRITE_BATCH: Final = 500  # ingest's max_batch


def _agent(m: int) -> str:
    return f"pi-{m // 10}"  # bench.utilization's keys: pi-<m // 10>/m<NNN>


def _machine(m: int) -> str:
    return f"m{m:03d}"


def _key(m: int) -> str:
    return f"{_agent(m)}/{_machine(m)}"


# -- the data ------------------------------------------------------------------------------------


@dataclass
class Counts:
    changes: int = 0
    heartbeats: int = 0
    hub_marks: int = 0
    records: int = 0
    job_events: int = 0
    telemetry: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


def state_rows(
    days: int, per_minute: float, heartbeat_s: float, now: int, counts: Counts
) -> Iterator[list[StateRow]]:
    """``bench.store_insert``'s state rows up to ``now``, with the agent's heartbeats
    between them and one (void) hub OFFLINE mark per machine and day, in chunks."""
    rnd = random.Random(11)
    states = {s.value: s for s in MachineState}
    hb = int(heartbeat_s * 1000)
    chunk: list[StateRow] = []
    prev: tuple[str, int, str] | None = None

    def close(key: str, ts: int, state: str, until: int) -> Iterator[StateRow]:
        if hb <= 0:
            return
        for t in range(ts + hb, until, hb):
            counts.heartbeats += 1
            yield StateRow(key, t, states[state], "", StateSource.AGENT)

    def marks(key: str) -> Iterator[StateRow]:
        for d in range(days + 1):
            t = START + d * 86_400_000 + rnd.randrange(86_400_000)
            if t < now:
                counts.hub_marks += 1
                yield StateRow(key, t, MachineState.OFFLINE, "no data", StateSource.HUB)

    def rows() -> Iterator[StateRow]:
        nonlocal prev
        # days + 1: _rows starts at START; the span ends at 15:00 on the day after `days`.
        for key, ts, state, _, _ in _rows(MACHINES, days + 1, per_minute, seed=1):
            assert isinstance(key, str)
            assert isinstance(ts, int)
            assert isinstance(state, str)
            if prev is not None and prev[0] != key:
                yield from close(*prev, until=now + 1)
                yield from marks(prev[0])
                prev = None
            if ts > now:
                continue
            if prev is not None:
                yield from close(*prev, until=ts)
            counts.changes += 1
            yield StateRow(key, ts, states[state], "", StateSource.AGENT)
            prev = (key, ts, state)
        if prev is not None:
            yield from close(*prev, until=now + 1)
            yield from marks(prev[0])

    for row in rows():
        chunk.append(row)
        if len(chunk) == STATES_BATCH:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class Records:
    """Envelopes of the 50 machines, numbered per agent stream as the agents would."""

    def __init__(self) -> None:
        self.seqs: dict[str, itertools.count[int]] = {}

    def make(self, m: int, kind: RecordKind, ts: int, body: dict[str, Any]) -> Incoming:
        agent = _agent(m)
        seq = self.seqs.setdefault(agent, itertools.count(1))
        env = Envelope(
            kind=kind,
            agent=agent,
            machine=_machine(m),
            stream=f"s-{agent}",
            seq=next(seq),
            ts=ts,
            body=body,
            mono=ts,
        )
        return Incoming(envelope=env, site=SITE, received_at=ts + 150)


def metas(recs: Records) -> list[Incoming]:
    out = []
    for m in range(MACHINES):
        kiln = m in KILNS
        body: dict[str, Any] = {
            "protocol": "modbus_kiln" if kiln else "grbl",
            "firmware": "1.0",
            "kind": "kiln" if kiln else "cnc_router",
            "name": f"Kiln {m:03d}" if kiln else f"Router {m:03d}",
            "options": {},
        }
        out.append(recs.make(m, RecordKind.META, START - HOUR, body))
    return out


def job_events(recs: Records, now: int) -> list[Incoming]:
    """Back-to-back jobs per machine up to ``now``, every event in ts order."""
    rnd = random.Random(5)
    events: list[tuple[int, int, dict[str, Any]]] = []
    for m in range(MACHINES):
        kiln = m in KILNS
        t = START + rnd.randrange(2 * HOUR)
        n = 0
        while t < now:
            n += 1
            job = f"j{n}"
            if kiln:
                length, unit, program = rnd.randrange(8 * HOUR, 14 * HOUR), "seconds", "cone6"
                total = length // 1000
            else:
                length, unit = rnd.randrange(20 * MINUTE, 150 * MINUTE), "lines"
                program, total = f"part-{rnd.randrange(20):02d}.nc", rnd.randrange(500, 20_000)
            events.append(
                (
                    t,
                    m,
                    {
                        "event": "job_started",
                        "job": job,
                        "program": program,
                        "unit": unit,
                        "total": total,
                        "source": "schedule" if kiln else "proxy",
                    },
                )
            )
            aborted = rnd.random() < 0.1
            end = t + (length * rnd.randrange(10, 90) // 100 if aborted else length)
            for p in range(t + 15 * MINUTE, min(end, now), 15 * MINUTE):
                done = total * (p - t) // length
                events.append(
                    (p, m, {"event": "job_progress", "job": job, "done": done, "total": total})
                )
            if end <= now:
                done = total * (end - t) // length
                outcome = "aborted" if aborted else "completed"
                body = {"event": "job_ended", "job": job, "outcome": outcome, "done": done}
                events.append((end, m, body | {"total": total}))
            t = end + (
                rnd.randrange(2 * HOUR, 12 * HOUR) if kiln else rnd.randrange(5, 60) * MINUTE
            )
    events.sort(key=lambda e: e[0])
    return [
        recs.make(m, RecordKind.EVENT, ts, {"code": None, "text": "", **body})
        for ts, m, body in events
    ]


def kiln_telemetry(recs: Records, now: int, hours: float) -> list[Incoming]:
    rnd = random.Random(9)
    out = []
    for ts in range(now - int(hours * HOUR), now, 5_000):
        for m in sorted(KILNS):
            samples = [
                {
                    "ts": ts - 4_000 + i * 1_000,
                    "values": {
                        "temperature_c": round(900 + rnd.uniform(-5, 5), 1),
                        "setpoint_c": 900.0,
                        "output_pct": round(rnd.uniform(30, 70), 1),
                    },
                }
                for i in range(5)
            ]
            out.append(recs.make(m, RecordKind.TELEMETRY, ts, {"samples": samples}))
    return out


async def fill(store: PostgresStore, args: argparse.Namespace, now: int) -> Counts:
    counts = Counts()
    t0 = time.perf_counter()
    for chunk in state_rows(args.days, args.per_minute, args.heartbeat_s, now, counts):
        await store.add_states(chunk)
    counts.seconds["states"] = time.perf_counter() - t0
    print(
        f"state rows: {counts.changes:,} from store_insert's data + {counts.heartbeats:,}"
        f" heartbeats + {counts.hub_marks:,} hub OFFLINE marks in"
        f" {counts.seconds['states']:.0f} s",
        flush=True,
    )

    t0 = time.perf_counter()
    recs = Records()
    clock = [0]
    book = JobBook(store, settings=load_config(EXAMPLE_CONFIG).jobs, clock=lambda: clock[0])
    await book.load()
    events = job_events(recs, now)
    counts.job_events = len(events)
    for batch in (metas(recs), *_chunks(events, WRITE_BATCH)):
        clock[0] = max(i.received_at for i in batch)
        result = await store.write(WriteBatch(records=batch))
        await book.apply(result.new)
        counts.records += len(result.new)
    telemetry = kiln_telemetry(recs, now, args.telemetry_hours)
    counts.telemetry = len(telemetry)
    for batch in _chunks(telemetry, WRITE_BATCH):
        counts.records += len((await store.write(WriteBatch(records=batch))).new)
    counts.seconds["records"] = time.perf_counter() - t0
    return counts


def _chunks(items: Sequence[Incoming], size: int) -> Iterator[Sequence[Incoming]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# -- the queries -----------------------------------------------------------------------------


@dataclass
class Query:
    dashboard: str
    panel: str
    range_text: str
    sql: str
    rows: int = 0
    default_ms: list[float] = field(default_factory=list)  # server defaults (JIT on)
    nojit_ms: list[float] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.dashboard} · {self.panel}"


def _span(text: str) -> timedelta:
    """A dashboard's ``now-12h`` default (the plain relative form only)."""
    assert text.startswith("now-"), text
    return grafana_sql.parse_interval(text.removeprefix("now-"))  # type: ignore[no-any-return]


async def queries(conn: asyncpg.Connection, now: datetime, report_days: int) -> list[Query]:
    out = []
    for file, span, interval in (
        ("wall.json", None, timedelta(minutes=1)),
        ("utilization.json", timedelta(days=report_days), timedelta(hours=1)),
    ):
        dash = json.loads((DASHBOARDS / file).read_text(encoding="utf-8"))
        assert dash["time"]["to"] == "now"
        start = now - (span or _span(dash["time"]["from"]))
        variables = grafana_sql.variables_of(dash)
        (var,) = [v for v in dash["templating"]["list"] if v["name"] == "machine"]
        options = [r["__value"] for r in await conn.fetch(var["query"])]
        variables["machine"] = grafana_sql.Variable(
            "machine", ["$__all"], multi=True, include_all=True, options=options
        )
        for panel in dash["panels"]:
            s, e = grafana_sql.panel_range(panel, start, now, dash["timezone"])
            for target in panel.get("targets", []):
                ctx = grafana_sql.QueryContext(s, e, interval, variables)
                sql = grafana_sql.expand(target["rawSql"], ctx)
                hours = (e - s).total_seconds() / 3600
                text = f"{hours:g} h" if hours <= 48 else f"{hours / 24:g} d"
                out.append(Query(file.removesuffix(".json"), panel["title"], text, sql))
    return out


async def timed(conn: asyncpg.Connection, q: Query) -> tuple[float, int]:
    t0 = time.perf_counter()
    rows = await conn.fetch(q.sql)
    return (time.perf_counter() - t0) * 1000, len(rows)


async def connect(url: PostgresUrl, settings: dict[str, str] | None = None) -> asyncpg.Connection:
    conn: asyncpg.Connection = await asyncpg.connect(
        host=url.host,
        port=url.port,
        user=url.user,
        password=url.password,
        database=url.database,
        server_settings=settings,
    )
    return conn


async def measure(url: PostgresUrl, qs: list[Query], repeat: int) -> None:
    # Grafana's connection: the server's defaults (JIT on); the hub's: JIT off.
    default = await connect(url)
    nojit = await connect(url, {"jit": "off"})
    try:
        for q in qs:  # warm-up, and the rows each returns
            _, q.rows = await timed(default, q)
            await timed(nojit, q)
        for rep in range(repeat):
            for q in qs:
                first, second = (default, nojit) if rep % 2 == 0 else (nojit, default)
                a, _ = await timed(first, q)
                b, _ = await timed(second, q)
                ms_default, ms_nojit = (a, b) if first is default else (b, a)
                q.default_ms.append(ms_default)
                q.nojit_ms.append(ms_nojit)
            print(f"rep {rep}: done", flush=True)
    finally:
        await default.close()
        await nojit.close()


async def explain(url: PostgresUrl, q: Query) -> str:
    conn = await connect(url)
    try:
        rows = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + q.sql)
    finally:
        await conn.close()
    return "\n".join(r[0] for r in rows)


_ACTUAL: Final = re.compile(r"actual time=[\d.]+\.\.([\d.]+) rows=\d+ loops=(\d+)")


def condensed(plan: str, share: float) -> str:
    """The plan's nodes whose inclusive time (last row x loops) is at least ``share`` of
    the execution time, with the summary lines at the end (the whole plan is in --json)."""
    lines = plan.splitlines()
    total = next(
        (float(x.split(":")[1].split()[0]) for x in lines if x.startswith("Execution Time")), 0.0
    )
    out = []
    for line in lines:
        m = _ACTUAL.search(line)
        if m is not None and float(m[1]) * int(m[2]) >= share * total:
            out.append(line)
        elif m is None and not line.startswith(" "):
            out.append(line)  # Planning, JIT, Execution Time
        elif line.strip().startswith(("JIT", "Functions:", "Timing:", "Options:")):
            out.append(line)
    return "\n".join(out)


def _ms(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def report(qs: list[Query]) -> str:
    ranked = sorted(qs, key=lambda q: statistics.median(q.default_ms), reverse=True)
    out = [
        "| # | dashboard | panel | range | rows | median ms | max ms | median ms, jit off |",
        "|---:|---|---|---|---:|---:|---:|---:|",
    ]
    for i, q in enumerate(ranked, 1):
        med = statistics.median(q.default_ms)
        slow = " **SLOW**" if q.dashboard == "wall" and med > WALL_SLOW_MS else ""
        out.append(
            f"| {i} | {q.dashboard} | {q.panel}{slow} | {q.range_text} | {q.rows:,} | "
            f"{_ms(med)} | {_ms(max(q.default_ms))} | {_ms(statistics.median(q.nojit_ms))} |"
        )
    return "\n".join(out)


async def sizes(conn: asyncpg.Connection) -> str:
    parts = []
    for table in ("state_changes", "records", "jobs", "machines"):
        n = await conn.fetchval(f"SELECT count(*) FROM {table}")
        size = await conn.fetchval(
            "SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree($1::regclass)",
            table,
        )
        parts.append(f"{table} {n:,} rows, {int(size or 0) / 2**20:,.0f} MiB")
    return "; ".join(parts)


async def run(args: argparse.Namespace) -> None:
    pg = Postgres(parse_postgres_url(args.pg))
    pg.name = pg.name.replace("shopfloor_bench_", "shopfloor_dash_bench_")
    url = pg.admin.with_database(pg.name)
    first = datetime.fromtimestamp(START / 1000, TZ)
    now_dt = (first + timedelta(days=args.days)).replace(hour=NOW_HOUR)
    now = int(now_dt.timestamp() * 1000)
    print(f"# database {pg.name}; now = {now_dt.isoformat()}", flush=True)
    await pg.create()
    try:
        t0 = time.perf_counter()
        async with PostgresStore(url) as store:
            counts = await fill(store, args, now)
        conn = await connect(url)
        try:
            t1 = time.perf_counter()
            await conn.execute("VACUUM ANALYZE")
            vacuum_s = time.perf_counter() - t1
            print(
                f"records: {counts.records:,} ({MACHINES} meta, {counts.job_events:,} job events,"
                f" {counts.telemetry:,} kiln telemetry batches) in"
                f" {counts.seconds['records']:.0f} s; VACUUM ANALYZE {vacuum_s:.0f} s;"
                f" fill total {time.perf_counter() - t0:.0f} s",
                flush=True,
            )
            print(f"# {await sizes(conn)}", flush=True)
            qs = await queries(conn, now_dt, args.report_days)
        finally:
            await conn.close()
        t2 = time.perf_counter()
        await measure(url, qs, args.repeat)
        print(
            f"# {len(qs)} queries x (1 + {args.repeat}) x 2 connections in "
            f"{time.perf_counter() - t2:.0f} s; {environment()}"
        )
        print()
        print(report(qs))
        heaviest = max(qs, key=lambda q: statistics.median(q.default_ms))
        wall = max(
            (q for q in qs if q.dashboard == "wall"), key=lambda q: statistics.median(q.default_ms)
        )
        print(f"\nheaviest: {heaviest.name} ({_ms(statistics.median(heaviest.default_ms))} ms)")
        print(f"heaviest of the wall: {wall.name} ({_ms(statistics.median(wall.default_ms))} ms)")
        slow = [q for q in qs if q.dashboard == "wall" and statistics.median(q.default_ms) > 2000]
        for q in slow:
            print(
                f"SLOW: {q.name} takes more than {WALL_SLOW_MS / 1000:g} s; the wall refreshes "
                "every 30 s"
            )
        plans = {}
        for q in [heaviest] if wall is heaviest else [heaviest, wall]:
            plan = await explain(url, q)
            plans[q.name] = plan
            print(
                f"\nEXPLAIN (ANALYZE, BUFFERS), server defaults: {q.name}; nodes with >= 5 %"
                f" of the time (inclusive, x loops):\n{condensed(plan, 0.05)}"
            )
        if args.json:
            raw = {
                "now": now_dt.isoformat(),
                "counts": counts.__dict__,
                "queries": [
                    {
                        "dashboard": q.dashboard,
                        "panel": q.panel,
                        "range": q.range_text,
                        "rows": q.rows,
                        "ms": q.default_ms,
                        "ms_jit_off": q.nojit_ms,
                        "sql": q.sql,
                    }
                    for q in qs
                ],
                "plans": plans,
            }
            args.json.write_text(json.dumps(raw, indent=1), encoding="utf-8")
    finally:
        await pg.drop()


def main() -> None:
    install_sigterm_exit()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=int, default=30, help="days of data before today")
    ap.add_argument("--per-minute", type=float, default=1.0, help="state changes a minute")
    ap.add_argument("--heartbeat-s", type=float, default=15.0, help="0: no heartbeats")
    ap.add_argument("--telemetry-hours", type=float, default=48.0)
    ap.add_argument("--report-days", type=int, default=30, help="the report's range")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument(
        "--pg",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="a server and a database to connect to for CREATE/DROP DATABASE",
    )
    ap.add_argument("--json", type=Path, help="write the raw timings, SQL and plans here")
    args = ap.parse_args()
    print(f"# dashboard_queries: {environment()}", flush=True)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
