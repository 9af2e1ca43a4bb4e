"""Soak: a shop at ten times a normal shop's rate for a while; do the agents and hub stay flat?

A *normal shop* (``--normal``) is 10 machines on 3 agents with the agent's defaults: a
status question every 0.25 s (4 reports/s per machine), a telemetry batch every 5 s, and
the state changes, heartbeats and events of the simulators' demo job loop at real speed.

The soak (the default) is 20 GRBL machines on 4 agents, polled at 5 Hz with a telemetry
batch every 0.3 s and the demo job loop running 8x faster, so that state changes, holds
and alarms come 8x as often: about 13x a normal shop's records per second (measured: 42
against 3.3) through the agents' outboxes, one Mosquitto and the hub's SQLite store, and
2.4x its status reports (94 against 39 per second). Each run prints its own rate. All is
real: ``shopfloor sim grbl`` on pseudo-terminals, ``shopfloor agent run`` and ``shopfloor
hub run`` as processes, a private Mosquitto on a free loopback port.

After ``--warmup-s``, the RSS (and USS) of every agent and of the hub is sampled every
``--sample-s``; the report gives, per process, the RSS at the start and the end of the
window, the least-squares slope over the window (KiB per minute) and the spread. It also
counts the records the hub stored per second, and at the end checks that every record the
agents wrote reached the hub (watermark = last seq written).

    .venv/bin/python -m bench.soak --minutes 20          # the long run (README figures)
    .venv/bin/python -m bench.soak --minutes 2 --warmup-s 30 --sample-s 2   # quick
    .venv/bin/python -m bench.soak --normal --minutes 3  # a normal shop, for the baseline

``tests/faults/test_soak_memory.py`` runs a short one in CI and asserts the slopes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.benchutil import (
    SHOPFLOOR,
    Child,
    Mosquitto,
    environment,
    free_port,
    install_sigterm_exit,
    memory,
    wait_path,
)

SITE = "soak"


@dataclass(frozen=True, slots=True)
class Shape:
    machines: int
    agents: int
    poll_s: float
    telemetry_s: float
    time_scale: float


NORMAL = Shape(machines=10, agents=3, poll_s=0.25, telemetry_s=5.0, time_scale=1.0)
SOAK = Shape(machines=20, agents=4, poll_s=0.2, telemetry_s=0.3, time_scale=8.0)


@dataclass
class Series:
    """RSS samples of one process over the measuring window."""

    name: str
    pid: int
    t: list[float] = field(default_factory=list)  # seconds since the window began
    rss: list[int] = field(default_factory=list)  # bytes
    uss: list[int | None] = field(default_factory=list)

    def slope_kib_per_min(self) -> float:
        n = len(self.t)
        if n < 2:
            return float("nan")
        mt, mr = sum(self.t) / n, sum(self.rss) / n
        var = sum((x - mt) ** 2 for x in self.t)
        cov = sum((x - mt) * (y - mr) for x, y in zip(self.t, self.rss, strict=True))
        return cov / var * 60 / 1024 if var else float("nan")

    def summary(self) -> dict[str, Any]:
        uss = [u for u in self.uss if u is not None]
        return {
            "process": self.name,
            "samples": len(self.rss),
            "rss_start_mib": round(self.rss[0] / 2**20, 2),
            "rss_end_mib": round(self.rss[-1] / 2**20, 2),
            "rss_min_mib": round(min(self.rss) / 2**20, 2),
            "rss_max_mib": round(max(self.rss) / 2**20, 2),
            "growth_kib": round((self.rss[-1] - self.rss[0]) / 1024, 1),
            "slope_kib_per_min": round(self.slope_kib_per_min(), 1),
            "uss_start_mib": round(uss[0] / 2**20, 2) if uss else None,
            "uss_end_mib": round(uss[-1] / 2**20, 2) if uss else None,
        }


def query(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return [tuple(r) for r in conn.execute(sql, params).fetchall()]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def hub_counts(db: Path) -> tuple[int, int]:
    """(records stored, status reports in the stored telemetry)."""
    rows = query(
        db,
        "SELECT count(*), coalesce(sum(CASE WHEN kind = 'telemetry' THEN"
        " json_array_length(body, '$.samples') END), 0) FROM records",
    )
    return (int(rows[0][0]), int(rows[0][1])) if rows else (0, 0)


def start_hub(stack: ExitStack, folder: Path, mqtt_url: str) -> tuple[Child, Path]:
    folder.mkdir()
    port = free_port()
    toml = folder / "hub.toml"
    toml.write_text(
        f'[hub]\nsite = "{SITE}"\ndata_dir = "."\n'
        f'[mqtt]\nurl = "{mqtt_url}"\nclient_id = "hub-soak"\n'
        f'[api]\nhost = "127.0.0.1"\nport = {port}\n'
    )
    hub = stack.enter_context(
        Child([SHOPFLOOR, "hub", "run", "--config", toml], folder / "hub.log")
    )
    deadline = time.monotonic() + 40
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health", timeout=2) as r:
                if json.loads(r.read())["mqtt"]["connected"]:
                    return hub, folder / "hub.sqlite3"
        except OSError:
            pass
        if not hub.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the hub did not start; see {folder / 'hub.log'}")
        time.sleep(0.2)


def start_sims(stack: ExitStack, folder: Path, shape: Shape) -> tuple[list[Path], list[Child]]:
    paths = []
    children = []
    for i in range(shape.machines):
        path = folder / f"tty-{i}"
        argv: list[str | Path] = [
            SHOPFLOOR, "sim", "grbl", "--pty", path, "--demo-loop",
            "--time-scale", str(shape.time_scale), "--seed", str(i),
        ]  # fmt: skip
        if i % 4 == 3:
            argv.append("--laser")
        children.append(stack.enter_context(Child(argv, folder / f"sim-{i}.log")))
        paths.append(path)
    for path in paths:
        wait_path(path)
    return paths, children


def agent_config(folder: Path, agent: str, mqtt_url: str, ptys: list[Path], shape: Shape) -> Path:
    folder.mkdir()
    lines = [
        f'[agent]\nid = "{agent}"\nsite = "{SITE}"\ndata_dir = "."\n',
        f'[mqtt]\nurl = "{mqtt_url}"\n',
    ]
    for i, pty in enumerate(ptys):
        lines.append(
            f'[[machines]]\nid = "m{i}"\nkind = "cnc_router"\nprotocol = "grbl"\n'
            f'port = "pty:{pty}"\npoll_interval_s = {shape.poll_s}\n'
            f"telemetry_interval_s = {shape.telemetry_s}\n"
        )
    toml = folder / "agent.toml"
    toml.write_text("\n".join(lines))
    return toml


def outbox_state(db: Path) -> tuple[str, int]:
    """(stream, last seq written) of a stopped agent's outbox."""
    meta = dict(query(db, "SELECT key, value FROM meta"))
    return str(meta.get("stream", "")), int(meta.get("next_block", 1)) - 1


def sample(procs: list[tuple[str, Child]], a: argparse.Namespace) -> dict[str, Series]:
    """RSS of every process every ``sample_s`` for ``minutes``."""
    series = {name: Series(name, child.pid) for name, child in procs}
    t0 = time.monotonic()
    end = t0 + a.minutes * 60
    while True:
        now = time.monotonic()
        for name, child in procs:
            if not child.alive():
                raise RuntimeError(f"{name} died; see {child.log_path}")
            mem = memory(child.proc)
            s = series[name]
            s.t.append(now - t0)
            s.rss.append(mem.rss)
            s.uss.append(mem.uss)
        if now >= end:
            return series
        time.sleep(min(a.sample_s, max(0.0, end - now)))


def lags(agents: list[tuple[str, Child, Path]], hub_db: Path) -> dict[str, dict[str, int]]:
    """Stop the agents cleanly; then whether the hub has everything each one wrote."""
    for _, child, _ in agents:
        child.stop()
    time.sleep(3)
    out = {}
    for name, _, db in agents:
        stream, last = outbox_state(db)
        rows = query(hub_db, "SELECT contiguous_seq FROM stream_progress WHERE stream = ?", stream)
        out[name] = {
            "last_written": last,
            "hub_watermark": int(rows[0][0]) if rows else 0,
            "outbox": int(query(db, "SELECT count(*) FROM outbox")[0][0]),
        }
    return out


def run(a: argparse.Namespace) -> dict[str, Any]:
    shape = NORMAL if a.normal else SOAK
    shape = Shape(
        a.machines or shape.machines,
        a.agents or shape.agents,
        shape.poll_s,
        a.telemetry_s or shape.telemetry_s,
        shape.time_scale,
    )
    folder = Path(tempfile.mkdtemp(prefix="shopfloor-soak-"))
    result: dict[str, Any] = {"shape": asdict(shape), "environment": environment()}
    try:
        with ExitStack() as stack:
            broker = stack.enter_context(Mosquitto(folder))
            ptys, sims = start_sims(stack, folder, shape)
            hub, hub_db = start_hub(stack, folder / "hub", broker.url)
            agents: list[tuple[str, Child, Path]] = []
            for n in range(shape.agents):
                agent_dir = folder / f"agent-{n}"
                toml = agent_config(
                    agent_dir, f"pi-{n}", broker.url, ptys[n :: shape.agents], shape
                )
                argv: list[str | Path] = [SHOPFLOOR, "agent", "run", "--config", toml]
                child = stack.enter_context(Child(argv, agent_dir / "agent.log"))
                agents.append((f"pi-{n}", child, agent_dir / "agent.sqlite3"))
            print(
                f"# soak: {shape.machines} machines on {shape.agents} agents, poll"
                f" {shape.poll_s} s, telemetry {shape.telemetry_s} s, time scale"
                f" {shape.time_scale}; warm-up {a.warmup_s:g} s, then {a.minutes:g} min,"
                f" a sample every {a.sample_s:g} s",
                flush=True,
            )
            time.sleep(a.warmup_s)
            groups: dict[str, list[Child]] = {
                "agents": [c for _, c, _ in agents],
                "hub": [hub],
                "simulators": sims,
                "mosquitto": [broker],
            }
            t0 = time.monotonic()
            cpu0 = {k: sum(c.cpu_s() for c in v) for k, v in groups.items()}
            stored0, reports0 = hub_counts(hub_db)
            series = sample([(name, child) for name, child, _ in agents] + [("hub", hub)], a)
            window = time.monotonic() - t0
            stored1, reports1 = hub_counts(hub_db)
            cpu = {
                k: round(100 * (sum(c.cpu_s() for c in v) - cpu0[k]) / window, 1)
                for k, v in groups.items()
            }
            result.update(
                window_s=round(window, 1),
                records_per_s=round((stored1 - stored0) / window, 2),
                reports_per_s=round((reports1 - reports0) / window, 2),
                stored_total=stored1,
                cpu_percent_of_one_core=cpu,
                memory=[s.summary() for s in series.values()],
                series={name: {"t": s.t, "rss": s.rss} for name, s in series.items()},
                lag=lags(agents, hub_db),
            )
    finally:
        if a.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return result


def report(result: dict[str, Any]) -> str:
    lines = [
        f"# {result['environment']}",
        f"window {result['window_s']} s: the hub stored {result['records_per_s']} records/s"
        f" carrying {result['reports_per_s']} status reports/s; CPU, % of one core:"
        f" {result['cpu_percent_of_one_core']}",
        "",
        "| process | RSS start, MiB | RSS end, MiB | min-max, MiB | growth, KiB"
        " | slope, KiB/min | USS end, MiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines.extend(
        f"| {m['process']} | {m['rss_start_mib']} | {m['rss_end_mib']} |"
        f" {m['rss_min_mib']}-{m['rss_max_mib']} | {m['growth_kib']} |"
        f" {m['slope_kib_per_min']} | {m['uss_end_mib']} |"
        for m in result["memory"]
    )
    lines.append("")
    lines.extend(
        f"{name}: wrote up to seq {lag['last_written']}, hub watermark {lag['hub_watermark']},"
        f" {lag['outbox']} rows left in the outbox"
        for name, lag in result["lag"].items()
    )
    return "\n".join(lines)


def main() -> int:
    install_sigterm_exit()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="measuring window (default 10)")
    parser.add_argument(
        "--warmup-s", type=float, default=60.0, help="before the window (default 60)"
    )
    parser.add_argument("--sample-s", type=float, default=5.0, help="between samples (default 5)")
    parser.add_argument("--normal", action="store_true", help="a normal shop instead of 10x")
    parser.add_argument("--machines", type=int, help="override the number of machines")
    parser.add_argument("--agents", type=int, help="override the number of agents")
    parser.add_argument("--telemetry-s", type=float, help="override the telemetry interval")
    parser.add_argument("--json", type=Path, help="write every figure and sample here")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    a = parser.parse_args()
    result = run(a)
    print(report(result), flush=True)
    if a.json:
        a.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
