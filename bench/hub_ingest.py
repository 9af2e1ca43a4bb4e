"""Hub ingest: messages/s from the broker to committed SQLite rows, against mosquitto_sub.

Per repetition, interleaved (which side goes first alternates):

- **A, ceiling**: ``mosquitto_sub -q 1 -C N`` reads the QoS 1 stream and prints it.
- **B, hub**: ``shopfloor hub run --config hub.toml`` (its own data dir) ingests the same
  stream: validate, batch, commit to SQLite (WAL), then PUBACK. The script polls the
  database through a read-only connection until all N rows are committed.

The stream: N contract envelopes (``kind = telemetry``, encoded with
``shopfloor.contract.encode_envelope``, one agent, one ``stream``, ``seq`` 1..N, each with
``--samples`` realistic GRBL samples in its body), pre-generated into one file per machine
topic, because ``mosquitto_pub -l`` publishes every line on one topic. One ``mosquitto_pub
-l -q 1`` per machine topic publishes its file; their stdin stays open until the receiver
has everything (``mosquitto_pub`` 2.0.11 drops its QoS 1 queue at EOF: baselines.md note 1).

Timing, the same for both: from the start of the publishers to the N-th message received
(A) or committed (B, polled every 20 ms). Before that, each side proves it is subscribed:
one probe message (a valid envelope of another agent) must arrive or be committed first.
Every measurement gets a fresh private Mosquitto (``max_queued_messages 0``: nothing is
dropped; ``max_inflight_messages`` from ``--max-inflight``, default 0 = unlimited), so no
session or queue carries over from one measurement to the next.

Checks: rows == N, no duplicate keys, the hub's own counters (received, stored,
duplicates, batches, clock corrections) from ``/api/v1/health``, and nothing rejected.
Every 2 s while it ingests: the hub's RSS and how many messages it has received but not
yet stored (a backlog held in its memory).

    .venv/bin/python -m bench.hub_ingest                 # N=50,000, 3 reps, ~1 min
    .venv/bin/python -m bench.hub_ingest -n 10000 --repeat 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from bench.benchutil import (
    SHOPFLOOR,
    Child,
    Mosquitto,
    environment,
    fmt,
    free_port,
    install_sigterm_exit,
    load1,
    memory,
    table,
)
from shopfloor.contract import AgentTopics, Channel, Envelope, RecordKind, encode_envelope

SITE = "bench"
AGENT = "bench-agent"
STREAM = "b3c4e0d2a1f94e6b8d7c6a5b4c3d2e1f"
PROBE_AGENT = "bench-probe"
MACHINES = ("router-1", "router-2", "laser")
SUB_FILTER = f"shopfloor/v1/{SITE}/+/+/telemetry"
POLL_S = 0.02


# ------------------------------------------------------------------------ the stream


def _sample(i: int, k: int, ts: int, laser: bool) -> dict[str, Any]:
    """One status report's values, as the agent's GRBL adapter names them."""
    t = i * 5 + k
    values: dict[str, float] = {
        "feed_mm_min": float(1200 + t % 300),
        "laser_power" if laser else "spindle": float(800 if laser else 12000 + t % 500),
        "x": round(12.5 + (t % 4000) * 0.0125, 3),
        "y": round(88.25 - (t % 3000) * 0.01, 3),
        "z": -1.5 if t % 7 else 5.0,
        "wx": round(2.5 + (t % 4000) * 0.0125, 3),
        "wy": round(78.25 - (t % 3000) * 0.01, 3),
        "wz": -6.5 if t % 7 else 0.0,
    }
    if t % 10 == 0:  # Ov: comes now and then; the adapter keeps it between reports
        values |= {"feed_override_pct": 100.0, "rapid_override_pct": 100.0}
        values["spindle_override_pct"] = 100.0
    return {"ts": ts, "values": values}


def envelope(i: int, samples: int, now_ms: int) -> tuple[str, bytes]:
    """(machine, payload) of the i-th record (0-based): seq = i + 1.

    ``ts`` and ``mono`` advance together and ``ts`` stays near the hub's clock (5 records
    per ms, so 50,000 span 10 s), as a live agent with a synced clock would send them: the
    hub's clock sanity check then leaves them alone. (Records an hour old with ``mono``
    running at another pace would be "corrected" one by one, a path live data rarely takes.)
    """
    machine = MACHINES[i % len(MACHINES)]
    ts = now_ms + i // 5
    body = {
        "samples": [
            _sample(i, k, ts - (samples - 1 - k) * 200, machine == "laser") for k in range(samples)
        ]
    }
    env = Envelope(
        kind=RecordKind.TELEMETRY,
        agent=AGENT,
        machine=machine,
        stream=STREAM,
        seq=i + 1,
        ts=ts,
        mono=123_456_789 + i // 5,
        body=body,
    )
    return machine, encode_envelope(env)


def topic(agent: str, machine: str) -> str:
    return AgentTopics(site=SITE, agent=agent).machine(machine, Channel.TELEMETRY)


def write_stream(folder: Path, n: int, samples: int) -> tuple[dict[str, Path], int]:
    """One file per machine topic; returns the files and the mean payload size in bytes."""
    now_ms = time.time_ns() // 1_000_000
    paths = {m: folder / f"stream-{m}.txt" for m in MACHINES}
    files = {m: p.open("wb") for m, p in paths.items()}
    total = 0
    try:
        for i in range(n):
            machine, payload = envelope(i, samples, now_ms)
            assert b"\n" not in payload
            files[machine].write(payload + b"\n")
            total += len(payload)
    finally:
        for f in files.values():
            f.close()
    return paths, round(total / n)


def probe_payload(attempt: int) -> tuple[str, bytes]:
    env = Envelope(
        kind=RecordKind.TELEMETRY,
        agent=PROBE_AGENT,
        machine="probe",
        stream="probe",
        seq=attempt + 1,
        ts=time.time_ns() // 1_000_000,
        body={"samples": []},
    )
    return topic(PROBE_AGENT, "probe"), encode_envelope(env)


def publish_one(port: int, topic_: str, payload: bytes) -> None:
    subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-t", topic_, "-s"],
        input=payload,
        check=True,
        timeout=10,
    )


# ------------------------------------------------------------------------ publishers


class Publishers:
    """One ``mosquitto_pub -l -q 1`` per machine topic, stdin held open until :meth:`close`."""

    def __init__(self, folder: Path, port: int, files: dict[str, Path]) -> None:
        self.t_start = time.monotonic()
        self.children: list[Child] = []
        self._threads = []
        for machine, path in files.items():
            argv = [
                "mosquitto_pub",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-q",
                "1",
                "-t",
                topic(AGENT, machine),
                "-l",
            ]
            child = Child(argv, folder / f"pub-{machine}.log", stdin=subprocess.PIPE)
            self.children.append(child)
            stdin = child.popen.stdin
            assert stdin is not None
            thread = threading.Thread(target=_feed, args=(path, stdin), daemon=True)
            thread.start()
            self._threads.append(thread)

    def cpu_s(self) -> float:
        return sum(c.cpu_s() for c in self.children if c.alive())

    def close(self) -> None:
        for thread in self._threads:
            thread.join(30)
        for child in self.children:
            stdin = child.popen.stdin
            if stdin is not None:
                with contextlib.suppress(BrokenPipeError):
                    stdin.close()
            child.stop()


def _feed(path: Path, stdin: IO[bytes]) -> None:
    try:
        with path.open("rb") as f:
            shutil.copyfileobj(f, stdin, 1 << 16)
        stdin.flush()
    except BrokenPipeError:
        pass


# ------------------------------------------------------------------------ one measurement


@dataclass(slots=True)
class Run:
    side: str
    rep: int
    n: int
    got: int
    secs: float
    cpu_s: float
    broker_cpu_s: float
    load1: float
    checks: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.got / self.secs if self.secs > 0 else float("nan")

    @property
    def cpu_per_100k(self) -> float:
        return self.cpu_s * 1e5 / self.got if self.got else float("nan")


@contextmanager
def broker(folder: Path, name: str, max_inflight: int) -> Iterator[Mosquitto]:
    with Mosquitto(folder, max_inflight=max_inflight, name=name) as b:
        yield b


def run_mosquitto_sub(folder: Path, rep: int, files: dict[str, Path], a: argparse.Namespace) -> Run:
    with broker(folder, f"mosquitto-sub-r{rep}", a.max_inflight) as b:
        argv = [
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            str(b.port),
            "-q",
            "1",
            "-t",
            SUB_FILTER,
            "-C",
            str(a.n + 1),
            "-W",
            str(a.timeout),
        ]
        sub = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            counter = _LineCounter(sub)
            attempt = 0
            deadline = time.monotonic() + 15
            while counter.count < 1:  # subscribed: the probe came through
                publish_one(b.port, *probe_payload(attempt))
                attempt += 1
                _wait(lambda: counter.count >= 1, 1.0)
                if time.monotonic() > deadline:
                    raise RuntimeError("mosquitto_sub did not receive the probe")
            broker0 = b.cpu_s()
            pubs = Publishers(folder, b.port, files)
            try:
                _, ru_cpu = _wait4(sub, a.timeout + 10)
                counter.thread.join(5)
                t_done = counter.t_last or time.monotonic()
                broker_cpu = b.cpu_s() - broker0
            finally:
                pubs.close()
        finally:
            if sub.poll() is None:
                sub.kill()
                sub.wait()
    got = counter.count - 1
    return Run(
        side="mosquitto_sub",
        rep=rep,
        n=a.n,
        got=got,
        secs=t_done - pubs.t_start,
        cpu_s=ru_cpu,
        broker_cpu_s=broker_cpu,
        load1=load1(),
        checks={"lost": a.n - got},
    )


class _LineCounter:
    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.count = 0
        self.t_last: float | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        while chunk := os.read(stdout.fileno(), 1 << 16):
            self.count += chunk.count(b"\n")
            self.t_last = time.monotonic()


def _wait(cond: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_S)
    return True


def _wait4(proc: subprocess.Popen[bytes], timeout_s: float) -> tuple[int | None, float]:
    """Reap ``proc``; (exit status or None if killed on timeout, its CPU seconds)."""
    deadline = time.monotonic() + timeout_s
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, ru.ru_utime + ru.ru_stime
        if time.monotonic() > deadline:
            proc.kill()
            _, status, ru = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            return None, ru.ru_utime + ru.ru_stime
        time.sleep(0.005)


def _count_rows(db: Path, agent: str) -> int:
    """Committed rows of ``agent``, read through a read-only connection (0 before the schema)."""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
    except sqlite3.OperationalError:
        return 0
    try:
        return int(
            conn.execute("SELECT count(*) FROM records WHERE agent = ?", (agent,)).fetchone()[0]
        )
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def _wait_rows(
    db: Path, hub: Child, api_port: int, n: int, idle_timeout_s: float
) -> tuple[int, float, list[tuple[int, int, float]]]:
    """Poll until ``n`` rows are committed, or none came for ``idle_timeout_s``.

    Returns (rows, monotonic time the last of them was seen, and every 2 s: (rows committed,
    messages the hub has received but not yet stored, hub RSS MiB)).
    """
    got = 0
    last_change = t_done = time.monotonic()
    rss_trace: list[tuple[int, int, float]] = []
    next_rss = last_change + 2.0
    while got < n:
        time.sleep(POLL_S)
        now = time.monotonic()
        rows = _count_rows(db, AGENT)
        if rows != got:
            got, last_change, t_done = rows, now, now
        elif now - last_change > idle_timeout_s:
            break  # nothing new for a while: report what arrived
        if now >= next_rss:
            counters = _health(api_port)["counters"]
            pending = counters.get("received", 0) - counters.get("stored", 0)
            rss_trace.append((rows, pending, round(hub.proc.memory_info().rss / 2**20, 1)))
            next_rss = now + 2.0
    return got, t_done, rss_trace


def _health(api_port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/api/v1/health", timeout=5) as r:
        data: dict[str, Any] = json.loads(r.read())
        return data


def run_hub(folder: Path, rep: int, files: dict[str, Path], a: argparse.Namespace) -> Run:
    hub_dir = folder / f"hub-r{rep}"
    hub_dir.mkdir()
    db = hub_dir / "hub.sqlite3"
    with ExitStack() as stack:
        b = stack.enter_context(broker(folder, f"mosquitto-hub-r{rep}", a.max_inflight))
        api_port = free_port()
        toml = hub_dir / "hub.toml"
        toml.write_text(
            f'[hub]\nsite = "{SITE}"\ndata_dir = "."\ndatabase = "hub.sqlite3"\n\n'
            f'[mqtt]\nurl = "mqtt://127.0.0.1:{b.port}"\nclient_id = "hub-bench-{rep}"\n\n'
            f'[api]\nhost = "127.0.0.1"\nport = {api_port}\n'
        )
        argv: list[str | Path] = [SHOPFLOOR, "hub", "run", "--config", toml]
        hub = stack.enter_context(Child(argv, hub_dir / "hub.log"))
        attempt = 0
        deadline = time.monotonic() + 30
        while _count_rows(db, PROBE_AGENT) < 1:  # subscribed: the probe got committed
            if not hub.alive():
                raise RuntimeError(f"the hub exited; see {hub.log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the hub never stored the probe; see {hub.log_path}")
            publish_one(b.port, *probe_payload(attempt))
            attempt += 1
            _wait(lambda: _count_rows(db, PROBE_AGENT) >= 1, 1.0)
        before = _health(api_port)["counters"]
        hub_rss0 = memory(hub.proc).rss
        hub0, broker0 = hub.cpu_s(), b.cpu_s()
        pubs = Publishers(folder, b.port, files)
        try:
            got, t_done, rss_trace = _wait_rows(db, hub, api_port, a.n, a.idle_timeout)
            hub_cpu, broker_cpu = hub.cpu_s() - hub0, b.cpu_s() - broker0
            hub_rss = memory(hub.proc).rss
        finally:
            pubs.close()
        after = _health(api_port)["counters"]
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            distinct = conn.execute(
                "SELECT count(*), count(DISTINCT seq), min(seq), max(seq) FROM records "
                "WHERE agent = ? AND stream = ?",
                (AGENT, STREAM),
            ).fetchone()
            rejected = conn.execute("SELECT count(*) FROM rejected").fetchone()[0]
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    batches = delta.get("batches", 0)
    return Run(
        side="hub",
        rep=rep,
        n=a.n,
        got=got,
        secs=t_done - pubs.t_start,
        cpu_s=hub_cpu,
        broker_cpu_s=broker_cpu,
        load1=load1(),
        checks={
            "lost": a.n - got,
            "rows": distinct[0],
            "distinct_seq": distinct[1],
            "seq_range": [distinct[2], distinct[3]],
            "received": delta.get("received", 0),
            "stored": delta.get("stored", 0),
            "duplicates": delta.get("duplicates", 0),
            "batches": batches,
            "rows_per_batch": round(delta.get("stored", 0) / batches, 1) if batches else 0,
            "rejected": rejected,
            "clock_corrected": delta.get("clock_corrected", 0),
            "clock_flagged": delta.get("clock_flagged", 0),
            "hub_rss_before_mib": round(hub_rss0 / 2**20, 1),
            "hub_rss_mib": round(hub_rss / 2**20, 1),
            "hub_max_uncommitted": max((p for _, p, _ in rss_trace), default=0),
            "hub_rss_peak_mib": max((m for _, _, m in rss_trace), default=0.0),
            "hub_trace_rows_uncommitted_rss": rss_trace,
            # uvicorn re-raises SIGTERM after its graceful shutdown, so the exit status is
            # -15 either way: the log tells whether the shutdown completed.
            "hub_stopped_cleanly": hub.stop() is not None
            and "Application shutdown complete" in hub.log_path.read_text(errors="replace"),
        },
    )


# ------------------------------------------------------------------------ main


def report(runs: list[tuple[Run, Run]], payload_bytes: int, a: argparse.Namespace) -> str:
    subs = [s for s, _ in runs]
    hubs = [h for _, h in runs]
    rows: list[tuple[str, list[float]]] = [
        ("mosquitto_sub, msg/s (publish start → N-th received)", [r.rate for r in subs]),
        ("hub, msg/s (publish start → N-th committed)", [r.rate for r in hubs]),
        ("**ratio hub/mosquitto_sub, msg/s (in-rep)**", [h.rate / s.rate for s, h in runs]),
        ("mosquitto_sub CPU, cpu-s per 100k msgs", [r.cpu_per_100k for r in subs]),
        ("hub CPU, cpu-s per 100k msgs", [r.cpu_per_100k for r in hubs]),
        (
            "ratio hub/mosquitto_sub, CPU per msg (in-rep)",
            [h.cpu_per_100k / s.cpu_per_100k for s, h in runs],
        ),
        (
            "broker CPU while feeding mosquitto_sub, cpu-s/100k",
            [r.broker_cpu_s * 1e5 / r.n for r in subs],
        ),
        (
            "broker CPU while feeding the hub, cpu-s/100k",
            [r.broker_cpu_s * 1e5 / r.n for r in hubs],
        ),
        ("hub rows per commit (batch)", [float(r.checks["rows_per_batch"]) for r in hubs]),
        ("hub RSS before the run, MiB", [float(r.checks["hub_rss_before_mib"]) for r in hubs]),
        ("hub RSS after the run, MiB", [float(r.checks["hub_rss_mib"]) for r in hubs]),
        (
            "hub RSS peak (sampled every 2 s), MiB",
            [float(r.checks["hub_rss_peak_mib"]) for r in hubs],
        ),
        (
            "hub: most messages received but not yet committed (every 2 s)",
            [float(r.checks["hub_max_uncommitted"]) for r in hubs],
        ),
        ("messages lost, mosquitto_sub", [float(r.checks["lost"]) for r in subs]),
        ("messages lost, hub (N - committed rows)", [float(r.checks["lost"]) for r in hubs]),
        ("hub duplicates (counter)", [float(r.checks["duplicates"]) for r in hubs]),
        ("hub rejected", [float(r.checks["rejected"]) for r in hubs]),
        (
            "hub clock corrections (corrected + flagged)",
            [float(r.checks["clock_corrected"] + r.checks["clock_flagged"]) for r in hubs],
        ),
    ]
    return (
        f"N = {a.n:,} telemetry envelopes, {a.samples} samples each, {payload_bytes} bytes on "
        f"average, QoS 1, {len(MACHINES)} topics; broker max_inflight_messages "
        f"{a.max_inflight} (0 = unlimited), max_queued_messages 0.\n\n" + table(rows)
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=50_000, help="messages per measurement")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--samples", type=int, default=5, help="samples per telemetry envelope")
    parser.add_argument(
        "--max-inflight",
        type=int,
        default=0,
        help="the broker's max_inflight_messages (0 = unlimited; Mosquitto's default is 20)",
    )
    parser.add_argument("--timeout", type=int, default=120, help="per measurement, s")
    parser.add_argument(
        "--idle-timeout", type=float, default=15.0, help="give up when no row arrives for this"
    )
    parser.add_argument("--json", type=Path, help="also write every measurement here (JSON)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, databases)")
    a = parser.parse_args()
    install_sigterm_exit()
    print(f"# hub_ingest: {environment()}", flush=True)
    folder = Path(tempfile.mkdtemp(prefix="shopfloor-bench-hub-"))
    runs: list[tuple[Run, Run]] = []
    payload_bytes = 0
    try:
        for rep in range(a.repeat):
            # Written again for every repetition, so that ts stays near the hub's clock.
            files, payload_bytes = write_stream(folder, a.n, a.samples)
            if rep % 2 == 0:
                sub = run_mosquitto_sub(folder, rep, files, a)
                hub = run_hub(folder, rep, files, a)
            else:
                hub = run_hub(folder, rep, files, a)
                sub = run_mosquitto_sub(folder, rep, files, a)
            runs.append((sub, hub))
            print(
                f"rep {rep}: mosquitto_sub {fmt(sub.rate)} msg/s "
                f"({sub.got:,}/{a.n:,}, {fmt(sub.cpu_per_100k)} cpu-s/100k, load1 {sub.load1:.2f})"
                f"  hub {fmt(hub.rate)} msg/s ({hub.got:,}/{a.n:,}, "
                f"{fmt(hub.cpu_per_100k)} cpu-s/100k, load1 {hub.load1:.2f})  "
                f"ratio {hub.rate / sub.rate:.2f}  hub checks {json.dumps(hub.checks)}",
                flush=True,
            )
    finally:
        if a.keep:
            print(f"# kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    if a.json:
        a.json.write_text(json.dumps([[asdict(s), asdict(h)] for s, h in runs], indent=1))
    print()
    print(report(runs, payload_bytes, a))
    print(f"\n# finished: load average {load1():.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
