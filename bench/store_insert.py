"""Event-store insert rate and time in state: SQLite and PostgreSQL side by side.

**Insert rate** through the hub's ingest write path: ``store.write(WriteBatch(records=...))``,
exactly what ``Ingest._commit`` calls, with batches of 10, 100 and 500 records (ingest's
``max_batch`` is 500; a quiet shop commits small batches every ``max_delay_s``). The records
are what 50 machines on 10 agents publish: telemetry batches (5 samples x 4 values), state
heartbeats and job-progress events, ts a few seconds apart, in arrival order across
machines. Each store starts empty; each run writes ``--records`` records. The same records
are then written again at batch 500: the all-duplicates case of a replay after an outage.

**Time in state** for 50 machines over 30 days: ``--per-minute`` state rows a minute per
machine (default 1: 2.16 M rows), written through ``store.add_states`` (the write path
again, in 10 000-row batches), then the hub's utilization query: per machine, a window per
local day (Europe/Berlin) and per planned shift part, all in one ``time_in_state`` call, as
``bench/utilization.py`` does on SQLite. Both answers must be equal to the millisecond.

Per repetition the two backends run back to back, the order alternating; ratios are formed
inside a repetition. SQLite is a file in a temp dir on the same disk as PostgreSQL's data
directory. PostgreSQL runs in a fresh database ``shopfloor_bench_<pid>_<random>`` on the
server given by ``--pg`` (default: the local one, user postgres), dropped at the end.

    .venv/bin/python -m bench.store_insert                       # ~3-4 min
    .venv/bin/python -m bench.store_insert --records 5000 --days 3 --repeat 1   # quick look
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import asyncpg

from bench.benchutil import environment, fmt, install_sigterm_exit, table
from bench.utilization import PRODUCTIVE, START, _plans, _rows
from shopfloor.contract import Envelope, MachineState, RecordKind
from shopfloor.hub.database_url import PostgresUrl, parse_postgres_url
from shopfloor.hub.domain.utilization import figures, total
from shopfloor.hub.store import Incoming, SqliteStore, StateRow, StateSource, WriteBatch
from shopfloor.hub.store.postgres import PostgresStore

AnyStore = SqliteStore | PostgresStore
MACHINES: Final = 50
PER_AGENT: Final = 5
BATCH_SIZES: Final = (10, 100, 500)
STATES_BATCH: Final = 10_000
BACKENDS: Final = ("sqlite", "postgres")


def records(count: int, seed: int) -> list[Incoming]:
    """``count`` records from 50 machines in arrival order: per machine and 5 s, one
    telemetry batch, a state heartbeat every third tick, a job-progress event every fifth."""
    rnd = random.Random(seed)
    out: list[Incoming] = []
    seqs: dict[str, int] = {}  # one outbox stream per agent, seqs contiguous across machines
    tick = 0
    while len(out) < count:
        for m in range(MACHINES):
            agent, machine = f"pi-{m // PER_AGENT}", f"m{m:03d}"
            ts = START + tick * 5_000 + rnd.randrange(5_000)
            kinds = [RecordKind.TELEMETRY]
            if tick % 3 == 0:
                kinds.append(RecordKind.STATE)
            if tick % 5 == 0:
                kinds.append(RecordKind.EVENT)
            for kind in kinds:
                seqs[agent] = seqs.get(agent, 0) + 1
                body: dict[str, Any]
                if kind is RecordKind.TELEMETRY:
                    body = {
                        "samples": [
                            {
                                "ts": ts - 4_000 + i * 1_000,
                                "values": {
                                    "spindle_load": round(rnd.uniform(0, 100), 1),
                                    "feed": rnd.randrange(0, 3000),
                                    "temp_c": round(rnd.uniform(20, 45), 2),
                                    "power_w": rnd.randrange(0, 7500),
                                },
                            }
                            for i in range(5)
                        ]
                    }
                elif kind is RecordKind.STATE:
                    state = rnd.choices(["RUNNING", "IDLE", "PAUSED"], [6, 3, 1])[0]
                    body = {"state": state, "since": ts - 60_000, "detail": "", "program": "O1234"}
                else:
                    body = {"event": "job_progress", "job": f"j{tick // 100}", "done": tick}
                env = Envelope(
                    kind=kind,
                    agent=agent,
                    machine=machine,
                    stream=f"s-{agent}",
                    seq=seqs[agent],
                    ts=ts,
                    body=body,
                    mono=ts,
                )
                out.append(Incoming(envelope=env, site="shop1", received_at=ts + 50))
        tick += 1
    return out[:count]


class Postgres:
    """This run's own database on the server, created here and dropped at the end."""

    def __init__(self, admin: PostgresUrl) -> None:
        self.admin = admin
        self.name = f"shopfloor_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"

    async def _admin(self, sql: str) -> None:
        a = self.admin
        conn = await asyncpg.connect(
            host=a.host, port=a.port, user=a.user, password=a.password, database=a.database
        )
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def create(self) -> None:
        await self._admin(f"CREATE DATABASE {self.name}")

    async def drop(self) -> None:
        await self._admin(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")

    def store(self, schema: str) -> PostgresStore:
        return PostgresStore(self.admin.with_database(self.name), schema=schema)


def new_store(backend: str, folder: Path, pg: Postgres, name: str) -> AnyStore:
    if backend == "sqlite":
        return SqliteStore(folder / f"{name}.sqlite3")
    return pg.store(name)


async def insert_rate(store: AnyStore, recs: Sequence[Incoming], batch: int) -> float:
    """Records per second written in batches of ``batch``; every record must be new."""
    t0 = time.perf_counter()
    new = 0
    for i in range(0, len(recs), batch):
        result = await store.write(WriteBatch(records=recs[i : i + batch]))
        new += len(result.new)
    elapsed = time.perf_counter() - t0
    assert new == len(recs), f"{new} of {len(recs)} stored"
    return len(recs) / elapsed


async def duplicate_rate(store: AnyStore, recs: Sequence[Incoming], batch: int) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(recs), batch):
        result = await store.write(WriteBatch(records=recs[i : i + batch]))
        assert not result.new
    return len(recs) / (time.perf_counter() - t0)


def state_rows(days: int, per_minute: float, seed: int) -> Iterator[list[StateRow]]:
    chunk: list[StateRow] = []
    for key, ts, state, _, _ in _rows(MACHINES, days, per_minute, seed):
        assert isinstance(key, str)
        assert isinstance(ts, int)
        assert isinstance(state, str)
        chunk.append(StateRow(key, ts, MachineState(state), "", StateSource.AGENT))
        if len(chunk) == STATES_BATCH:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def load_states(store: AnyStore, days: int, per_minute: float) -> tuple[int, float]:
    t0 = time.perf_counter()
    n = 0
    for chunk in state_rows(days, per_minute, seed=1):
        await store.add_states(chunk)
        n += len(chunk)
    return n, n / (time.perf_counter() - t0)


async def utilization(
    store: AnyStore, days: int, now: int
) -> tuple[float, dict[int, dict[MachineState, int]], int]:
    keys = sorted({f"pi-{m // 10}/m{m:03d}" for m in range(MACHINES)})  # bench.utilization's
    t0 = time.perf_counter()
    planner, plans = _plans(keys, days, now)
    sums = await store.time_in_state(planner.probes, now_ms=now, heartbeat_gap_ms=60_000)
    per = [figures(b, sums, PRODUCTIVE) for p in plans for b in p.buckets]
    total(per)
    return time.perf_counter() - t0, sums, len(planner.probes)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    recs = records(args.records, seed=7)
    pg = Postgres(parse_postgres_url(args.pg))
    await pg.create()
    raw: dict[str, Any] = {"insert": [], "tis": []}
    try:
        with tempfile.TemporaryDirectory(prefix="store-insert-", dir=args.tmp) as tmp:
            folder = Path(tmp)
            for rep in range(args.repeat):
                order = BACKENDS if rep % 2 == 0 else BACKENDS[::-1]
                row: dict[str, Any] = {"rep": rep}
                for size in BATCH_SIZES:
                    for backend in order:
                        async with new_store(backend, folder, pg, f"i{rep}_{size}") as s:
                            row[f"{backend}_{size}"] = await insert_rate(s, recs, size)
                            if size == BATCH_SIZES[-1]:
                                row[f"{backend}_dup"] = await duplicate_rate(s, recs, size)
                raw["insert"].append(row)
                print(
                    f"rep {rep}: "
                    + "  ".join(
                        f"b{n}: sqlite {fmt(row[f'sqlite_{n}'])}/s pg {fmt(row[f'postgres_{n}'])}/s"
                        for n in BATCH_SIZES
                    )
                    + f"  dup: sqlite {fmt(row['sqlite_dup'])}/s pg {fmt(row['postgres_dup'])}/s",
                    flush=True,
                )
            # Time in state: load once per backend, query --repeat times, alternating.
            now = START + (args.days + 1) * 86_400_000
            stores = {b: new_store(b, folder, pg, "tis") for b in BACKENDS}
            for b, s in stores.items():
                await s.open()
                n, rate = await load_states(s, args.days, args.per_minute)
                raw[f"{b}_state_rows"], raw[f"{b}_state_load_rate"] = n, rate
                print(f"{b}: loaded {n:,} state rows at {fmt(rate)}/s", flush=True)
            try:
                for rep in range(args.repeat):
                    order = BACKENDS if rep % 2 == 0 else BACKENDS[::-1]
                    got: dict[str, Any] = {}
                    for b in order:
                        got[b] = await utilization(stores[b], args.days, now)
                    assert got["sqlite"][1] == got["postgres"][1], "backends disagree"
                    raw["tis"].append(
                        {"rep": rep, "windows": got["sqlite"][2]} | {b: got[b][0] for b in BACKENDS}
                    )
                    ms = {b: f"{got[b][0] * 1000:.0f} ms" for b in BACKENDS}
                    print(
                        f"rep {rep}: time_in_state {got['sqlite'][2]} windows: sqlite "
                        f"{ms['sqlite']}, postgres {ms['postgres']} (answers equal)",
                        flush=True,
                    )
            finally:
                for s in stores.values():
                    await s.close()
    finally:
        await pg.drop()
    return raw


def report(raw: dict[str, Any]) -> str:
    ins = raw["insert"]
    rows: list[tuple[str, list[float]]] = []
    for n in BATCH_SIZES:
        rows.append((f"SQLite, batch {n}: records/s", [r[f"sqlite_{n}"] for r in ins]))
        rows.append((f"PostgreSQL, batch {n}: records/s", [r[f"postgres_{n}"] for r in ins]))
        rows.append(
            (
                f"**ratio PostgreSQL/SQLite, batch {n}**",
                [r[f"postgres_{n}"] / r[f"sqlite_{n}"] for r in ins],
            )
        )
    rows.append(("SQLite, all duplicates, batch 500: records/s", [r["sqlite_dup"] for r in ins]))
    rows.append(
        ("PostgreSQL, all duplicates, batch 500: records/s", [r["postgres_dup"] for r in ins])
    )
    rows.append(
        (
            "**ratio PostgreSQL/SQLite, duplicates**",
            [r["postgres_dup"] / r["sqlite_dup"] for r in ins],
        )
    )
    tis = raw["tis"]
    rows.append(("SQLite: time_in_state, ms", [t["sqlite"] * 1000 for t in tis]))
    rows.append(("PostgreSQL: time_in_state, ms", [t["postgres"] * 1000 for t in tis]))
    rows.append(
        ("**ratio PostgreSQL/SQLite, time_in_state**", [t["postgres"] / t["sqlite"] for t in tis])
    )
    rows.append(("SQLite: loading state rows, rows/s", [raw["sqlite_state_load_rate"]]))
    rows.append(("PostgreSQL: loading state rows, rows/s", [raw["postgres_state_load_rate"]]))
    return table(rows)


def main() -> None:
    install_sigterm_exit()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=20_000, help="records per insert run")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--per-minute", type=float, default=1.0)
    ap.add_argument(
        "--pg",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="a server and a database to connect to for CREATE/DROP DATABASE",
    )
    ap.add_argument("--tmp", default=None, help="where the SQLite files go (default: $TMPDIR)")
    ap.add_argument("--json", type=Path, help="write the raw repetitions here")
    args = ap.parse_args()
    print(f"# store_insert: {environment()}")
    print(
        f"# {args.records:,} records per run, {MACHINES} machines, {args.days} days x "
        f"{args.per_minute:g} state rows/min for time in state",
        flush=True,
    )
    raw = asyncio.run(run(args))
    print(report(raw))
    if args.json:
        args.json.write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
