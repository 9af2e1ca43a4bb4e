"""Agent CPU per GRBL status report, and its memory, against a minimal floor in the same run.

Per repetition, side by side:

- **agent**: ``shopfloor agent run --config agent.toml`` with 3 machines polled at 5 Hz
  (``poll_interval_s = 0.2``), publishing to a private Mosquitto. Its status reports are
  counted independently of the agent: a ``mosquitto_sub`` on the private broker receives
  the telemetry batches, and every sample in them is one status report that was read,
  parsed, tracked and published. Samples are counted by their acquisition time ``ts``, so
  the count covers exactly the CPU window (the batch with the window's last samples comes
  up to ``telemetry_interval_s`` later; the script waits for it), and each envelope
  once (``stream`` + ``seq``). A hub (``shopfloor hub run``) on the same broker sends the
  ``_ack`` watermarks, so the agent's outbox drains as it would in a shop; without one the
  agent re-sends every un-acked record after 30 s, which is a different workload.
- **floor**: ``bench/floor_reader.py`` on 3 other simulators: the same library
  (pyserial-asyncio-fast), the same ``?`` every 0.2 s, and only splitting lines. It counts
  its reports itself (it has nothing else to count them by) and prints the count on SIGUSR1.

Each side reads 3 GRBL simulators of its own (``shopfloor sim grbl --pty ... --demo-loop
--time-scale 4``, the third with ``--laser``), each a separate process so that their CPU
is not charged to the reader. Both sides run at the same time, so every ratio compares the
same minute on this shared machine; which side starts first alternates per repetition.
After a warm-up, CPU (user+system, all threads, from ``/proc/PID/task/*/schedstat``) and
memory (RSS, and PSS/USS from smaps, via psutil) of both readers are sampled at the start
and the end of the window.

    .venv/bin/python -m bench.agent_cpu                      # 3 reps x 60 s window, ~4 min
    .venv/bin/python -m bench.agent_cpu --window 20 --repeat 2   # quick look
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.benchutil import (
    PYTHON,
    REPO,
    SHOPFLOOR,
    Child,
    Memory,
    Mosquitto,
    environment,
    fmt,
    free_port,
    install_sigterm_exit,
    load1,
    memory,
    summarize,
    table,
    wait_path,
)

SITE = "bench"
MIB = 1024 * 1024


# ------------------------------------------------------------------------ telemetry counter


class TelemetrySink:
    """``mosquitto_sub -v`` on every telemetry topic of the site, kept in memory."""

    def __init__(self, folder: Path, port: int) -> None:
        topic = f"shopfloor/v1/{SITE}/+/+/telemetry"
        self.child = Child(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-v", "-t", topic],
            folder / "mosquitto_sub.log",
            stdout=subprocess.PIPE,
        )
        self._lock = threading.Lock()
        self._messages: list[tuple[str, bytes]] = []
        self._thread = threading.Thread(target=self._read, name="telemetry-sink", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        stdout = self.child.popen.stdout
        assert stdout is not None
        for line in stdout:
            topic, _, payload = line.rstrip(b"\n").partition(b" ")
            with self._lock:
                self._messages.append((topic.decode(), payload))

    def samples(self, agent: str, t0_ms: int, t1_ms: int) -> tuple[int, int, int]:
        """Samples of ``agent`` with t0 <= ts < t1; telemetry messages; repeated messages.

        Each envelope counts once (by ``stream`` + ``seq``): an outbox resend or replay of
        the same record carries the same samples again.
        """
        prefix = f"shopfloor/v1/{SITE}/{agent}/"
        with self._lock:
            mine = [p for t, p in self._messages if t.startswith(prefix)]
        seen: set[tuple[str, int]] = set()
        count = repeats = 0
        for payload in mine:
            env = json.loads(payload)
            key = (env["stream"], env["seq"])
            if key in seen:
                repeats += 1
                continue
            seen.add(key)
            for sample in env["body"]["samples"]:
                if t0_ms <= sample["ts"] < t1_ms:
                    count += 1
        return count, len(seen), repeats

    def covered_until(self, agent: str, machines: int) -> int:
        """The newest sample time that every one of ``machines`` machines has reached."""
        prefix = f"shopfloor/v1/{SITE}/{agent}/"
        latest: dict[str, int] = {}
        with self._lock:
            mine = [(t, p) for t, p in self._messages if t.startswith(prefix)]
        for topic, payload in mine:
            machine = topic[len(prefix) :].split("/")[0]
            for sample in json.loads(payload)["body"]["samples"]:
                latest[machine] = max(latest.get(machine, 0), sample["ts"])
        return min(latest.values()) if len(latest) == machines else 0

    def stop(self) -> None:
        self.child.stop()
        self._thread.join(5)


# ------------------------------------------------------------------------ the hub


@contextmanager
def start_hub(folder: Path, mqtt_port: int) -> Iterator[Child]:
    """A hub on the private broker, so that the agent's outbox gets its ``_ack`` watermarks
    and stays small, as in a real shop (without one, every record is resent after 30 s).
    Its CPU is not the agent's."""
    hub_dir = folder / "hub"
    hub_dir.mkdir()
    api_port = free_port()
    toml = hub_dir / "hub.toml"
    toml.write_text(
        f'[hub]\nsite = "{SITE}"\ndata_dir = "."\n\n'
        f'[mqtt]\nurl = "mqtt://127.0.0.1:{mqtt_port}"\nclient_id = "hub-bench"\n\n'
        f'[api]\nhost = "127.0.0.1"\nport = {api_port}\n'
    )
    argv: list[str | Path] = [SHOPFLOOR, "hub", "run", "--config", toml]
    with Child(argv, hub_dir / "hub.log") as hub:
        deadline = time.monotonic() + 30
        while True:
            try:
                url = f"http://127.0.0.1:{api_port}/api/v1/health"
                with urllib.request.urlopen(url, timeout=2) as r:
                    if json.loads(r.read())["mqtt"]["connected"]:
                        break
            except OSError:
                pass
            if not hub.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the hub did not connect; see {hub.log_path}")
            time.sleep(0.2)
        yield hub


# ------------------------------------------------------------------------ simulators


@contextmanager
def simulators(folder: Path, tag: str, count: int, time_scale: float) -> Iterator[list[Path]]:
    """``count`` GRBL simulators on ptys; the last is a laser. Seeds match across sides."""
    with ExitStack() as stack:
        paths = []
        for i in range(count):
            path = folder / f"tty-{tag}-{i}"
            argv: list[str | Path] = [
                SHOPFLOOR,
                "sim",
                "grbl",
                "--pty",
                path,
                "--demo-loop",
                "--time-scale",
                str(time_scale),
                "--seed",
                str(i),
            ]
            if i == count - 1:
                argv.append("--laser")
            stack.enter_context(Child(argv, folder / f"sim-{tag}-{i}.log"))
            paths.append(path)
        for path in paths:
            wait_path(path)
        yield paths


# ------------------------------------------------------------------------ the two readers


@dataclass(slots=True)
class Sample:
    wall_ms: int
    cpu_s: float
    mem: Memory


@dataclass(slots=True)
class Result:
    side: str
    rep: int
    window_s: float
    cpu_s: float
    reports: int
    rss_end: int
    rss_growth: int
    pss_end: int | None
    uss_end: int | None
    uss_growth: int | None
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def us_per_report(self) -> float:
        return self.cpu_s * 1e6 / self.reports if self.reports else float("nan")

    @property
    def reports_per_s(self) -> float:
        return self.reports / self.window_s


def write_agent_config(folder: Path, agent: str, port: int, ptys: list[Path], tel_s: float) -> Path:
    data = folder / agent
    data.mkdir()
    parts = [
        f'[agent]\nid = "{agent}"\nsite = "{SITE}"\ndata_dir = "{data}"\n',
        f'[mqtt]\nurl = "mqtt://127.0.0.1:{port}"\n',
    ]
    for i, pty in enumerate(ptys):
        laser = i == len(ptys) - 1
        parts.append(
            f'[[machines]]\nid = "m{i + 1}"\nkind = "{"laser" if laser else "cnc_router"}"\n'
            f'protocol = "grbl"\nport = "pty:{pty}"\npoll_interval_s = 0.2\n'
            f"laser_mode = {'true' if laser else 'false'}\ntelemetry_interval_s = {tel_s}\n"
        )
    path = folder / f"{agent}.toml"
    path.write_text("\n".join(parts))
    return path


class FloorProcess:
    """bench/floor_reader.py as a child; reads its COUNT lines."""

    def __init__(self, folder: Path, tag: str, ptys: list[Path], poll_s: float) -> None:
        self.child = Child(
            [PYTHON, "-m", "bench.floor_reader", "--poll", str(poll_s), *ptys],
            folder / f"floor-{tag}.log",
            stdout=subprocess.PIPE,
            cwd=REPO,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, name=f"floor-{tag}", daemon=True).start()
        first = self.lines.get(timeout=20)
        if first != "READY":
            raise RuntimeError(f"floor reader said {first!r}; see {self.child.log_path}")

    def _read(self) -> None:
        stdout = self.child.popen.stdout
        assert stdout is not None
        for line in stdout:
            self.lines.put(line.decode().strip())

    def count(self) -> tuple[int, int]:
        """(reports so far, the floor's wall ms when it counted)."""
        self.child.popen.send_signal(signal.SIGUSR1)
        word, reports, wall = self.lines.get(timeout=10).split()
        assert word == "COUNT"
        return int(reports), int(wall)


def agent_outbox(log: Path) -> dict[str, float]:
    """The outbox counters the agent logs when it stops (best effort: {} if absent)."""
    found: dict[str, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        if "outbox counters {" in line:
            try:
                counters = ast.literal_eval(line[line.index("{") :])
            except (ValueError, SyntaxError):
                continue
            found = {
                f"outbox_{k}": float(counters[k])
                for k in ("depth", "resends", "dropped_telemetry", "acked")
                if isinstance(counters.get(k), int)
            }
    return found


def snapshot(child: Child) -> Sample:
    return Sample(time.time_ns() // 1_000_000, child.cpu_s(), memory(child.proc))


def growth(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else b - a


def one_rep(
    folder: Path, broker: Mosquitto, sink: TelemetrySink, rep: int, a: argparse.Namespace
) -> tuple[Result, Result]:
    rep_dir = folder / f"rep{rep}"
    rep_dir.mkdir()
    agent_id = f"bench-agent-{rep}"
    with (
        simulators(rep_dir, "agent", 3, a.time_scale) as agent_ptys,
        simulators(rep_dir, "floor", 3, a.time_scale) as floor_ptys,
        ExitStack() as stack,
    ):
        toml = write_agent_config(rep_dir, agent_id, broker.port, agent_ptys, a.telemetry_interval)

        def start_agent() -> Child:
            argv: list[str | Path] = [SHOPFLOOR, "agent", "run", "--config", toml]
            return stack.enter_context(Child(argv, rep_dir / "agent.log"))

        def start_floor() -> FloorProcess:
            floor = FloorProcess(rep_dir, "floor", floor_ptys, a.poll)
            stack.callback(floor.child.stop)
            return floor

        if rep % 2 == 0:
            agent, floor = start_agent(), start_floor()
        else:
            floor, agent = start_floor(), start_agent()
        time.sleep(a.warmup)
        for child, name in ((agent, "agent"), (floor.child, "floor")):
            if not child.alive():
                raise RuntimeError(f"the {name} exited early; see {child.log_path}")
        a0, f0 = snapshot(agent), snapshot(floor.child)
        floor_n0, _ = floor.count()
        time.sleep(a.window)
        a1, f1 = snapshot(agent), snapshot(floor.child)
        floor_n1, _ = floor.count()
        # The batch holding the window's last samples is published up to one telemetry
        # interval later: wait for it (and a little longer), then count by sample time.
        deadline = time.monotonic() + a.telemetry_interval + 5.0
        while sink.covered_until(agent_id, 3) < a1.wall_ms and time.monotonic() < deadline:
            time.sleep(0.2)
        reports, messages, repeats = sink.samples(agent_id, a0.wall_ms, a1.wall_ms)

    outbox = agent_outbox(rep_dir / "agent.log")
    results = []
    for side, s0, s1, n in (
        ("agent", a0, a1, reports),
        ("floor", f0, f1, floor_n1 - floor_n0),
    ):
        results.append(
            Result(
                side=side,
                rep=rep,
                window_s=(s1.wall_ms - s0.wall_ms) / 1000,
                cpu_s=s1.cpu_s - s0.cpu_s,
                reports=n,
                rss_end=s1.mem.rss,
                rss_growth=s1.mem.rss - s0.mem.rss,
                pss_end=s1.mem.pss,
                uss_end=s1.mem.uss,
                uss_growth=growth(s0.mem.uss, s1.mem.uss),
                extra={"telemetry_messages": messages, "telemetry_repeats": repeats, **outbox}
                if side == "agent"
                else {},
            )
        )
    return results[0], results[1]


def report(results: list[tuple[Result, Result]], a: argparse.Namespace) -> str:
    agents = [r[0] for r in results]
    floors = [r[1] for r in results]
    n_machines = 3

    def mib(x: int | None) -> float:
        return float("nan") if x is None else x / MIB

    rows: list[tuple[str, list[float]]] = [
        ("agent: CPU per status report, µs", [r.us_per_report for r in agents]),
        ("floor: CPU per status report, µs", [r.us_per_report for r in floors]),
        (
            "**ratio agent/floor, CPU per report**",
            [x.us_per_report / y.us_per_report for x, y in results],
        ),
        ("agent: status reports/s (3 machines)", [r.reports_per_s for r in agents]),
        ("floor: status reports/s (3 machines)", [r.reports_per_s for r in floors]),
        ("agent: CPU, % of one core", [100 * r.cpu_s / r.window_s for r in agents]),
        ("floor: CPU, % of one core", [100 * r.cpu_s / r.window_s for r in floors]),
        ("agent: RSS at end, MiB", [mib(r.rss_end) for r in agents]),
        ("floor: RSS at end, MiB", [mib(r.rss_end) for r in floors]),
        ("**ratio agent/floor, RSS**", [x.rss_end / y.rss_end for x, y in results]),
        ("agent: PSS at end, MiB", [mib(r.pss_end) for r in agents]),
        ("floor: PSS at end, MiB", [mib(r.pss_end) for r in floors]),
        ("agent: USS at end, MiB", [mib(r.uss_end) for r in agents]),
        ("floor: USS at end, MiB", [mib(r.uss_end) for r in floors]),
        (
            f"agent: RSS growth over the {a.window:g} s window, KiB",
            [r.rss_growth / 1024 for r in agents],
        ),
        (
            f"floor: RSS growth over the {a.window:g} s window, KiB",
            [r.rss_growth / 1024 for r in floors],
        ),
        (
            f"agent: USS growth over the {a.window:g} s window, KiB",
            [(r.uss_growth or 0) / 1024 for r in agents],
        ),
        (
            "agent: telemetry messages in/around the window",
            [r.extra.get("telemetry_messages", 0) for r in agents],
        ),
        (
            "agent: outbox depth when stopped (un-acked records)",
            [r.extra.get("outbox_depth", float("nan")) for r in agents],
        ),
        (
            "agent: outbox resends (whole run)",
            [r.extra.get("outbox_resends", float("nan")) for r in agents],
        ),
        (
            "agent: telemetry messages seen again (same stream+seq)",
            [r.extra.get("telemetry_repeats", 0) for r in agents],
        ),
    ]
    rows = [(name, [v for v in values if not math.isnan(v)]) for name, values in rows]
    med_agent = summarize([r.us_per_report for r in agents]).median
    budget = med_agent * n_machines * 5 / 1e4  # % of one core at 3 machines x 5 Hz
    return (
        table(rows)
        + f"\n\nAt 3 machines x 5 Hz the agent's median CPU per report is {budget:.2f} % of one "
        f"core of this machine ({fmt(med_agent)} µs x 15 reports/s)."
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--window", type=float, default=60.0, help="measured window, s")
    parser.add_argument("--warmup", type=float, default=8.0, help="before the window, s")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--poll", type=float, default=0.2, help="poll interval, s (GRBL: 5 Hz)")
    parser.add_argument("--time-scale", type=float, default=4.0, help="simulators' job speed")
    parser.add_argument(
        "--telemetry-interval", type=float, default=5.0, help="agent telemetry_interval_s"
    )
    parser.add_argument("--json", type=Path, help="also write every repetition here (JSON)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    a = parser.parse_args()
    install_sigterm_exit()
    print(f"# agent_cpu: {environment()}", flush=True)
    folder = Path(tempfile.mkdtemp(prefix="shopfloor-bench-agent-"))
    results: list[tuple[Result, Result]] = []
    try:
        with Mosquitto(folder) as broker, start_hub(folder, broker.port):
            sink = TelemetrySink(folder, broker.port)
            try:
                time.sleep(0.5)  # mosquitto_sub subscribed (loopback)
                for rep in range(a.repeat):
                    load = load1()
                    agent, floor = one_rep(folder, broker, sink, rep, a)
                    results.append((agent, floor))
                    print(
                        f"rep {rep}: load1 {load:.2f}  "
                        f"agent {fmt(agent.us_per_report)} µs/report "
                        f"({agent.reports} reports, {agent.reports_per_s:.2f}/s, "
                        f"cpu {agent.cpu_s:.2f} s, RSS {agent.rss_end / MIB:.1f} MiB, "
                        f"growth {agent.rss_growth / 1024:+.0f} KiB)  "
                        f"floor {fmt(floor.us_per_report)} µs/report "
                        f"({floor.reports} reports, {floor.reports_per_s:.2f}/s, "
                        f"cpu {floor.cpu_s:.2f} s, RSS {floor.rss_end / MIB:.1f} MiB)  "
                        f"ratio {agent.us_per_report / floor.us_per_report:.2f}",
                        flush=True,
                    )
            finally:
                sink.stop()
    finally:
        if a.keep:
            print(f"# kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    if a.json:
        a.json.write_text(json.dumps([[asdict(x), asdict(y)] for x, y in results], indent=1))
    print()
    print(report(results, a))
    print(f"\n# finished: load average {load1():.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
