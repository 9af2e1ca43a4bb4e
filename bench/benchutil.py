"""Helpers shared by the benchmarks: a private Mosquitto, child processes, CPU and memory.

Every process a benchmark starts is a :class:`Child`; it is stopped by its own PID
(SIGTERM, then SIGKILL) and never by name. The Mosquitto here is always our own, on a free
loopback port, with its config in the benchmark's temp dir: the system broker on 1883 is
never touched.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Self

import psutil  # type: ignore[import-untyped]  # no type information; types-psutil not installed

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
PYTHON = VENV_BIN / "python"
SHOPFLOOR = VENV_BIN / "shopfloor"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def install_sigterm_exit() -> None:
    """Turn SIGTERM (``timeout``, a CI runner) into SystemExit so ``finally:`` cleans up."""

    def _exit(signum: int, frame: FrameType | None) -> None:
        del signum, frame
        sys.exit(143)

    signal.signal(signal.SIGTERM, _exit)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(port: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on {HOST}:{port}") from None
            time.sleep(0.05)


def wait_path(path: Path, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} did not appear within {timeout_s:g} s")
        time.sleep(0.05)


class Child:
    """A child process we started: output to a log file, stopped by PID only."""

    def __init__(
        self,
        argv: Sequence[str | Path],
        log: Path,
        *,
        stdin: int | None = subprocess.DEVNULL,
        stdout: int | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.argv = [str(a) for a in argv]
        self.log_path = log
        self._log: IO[bytes] = log.open("wb")
        self.popen = subprocess.Popen(
            self.argv,
            stdin=stdin,
            stdout=self._log if stdout is None else stdout,
            stderr=self._log,
            cwd=cwd,
            start_new_session=True,  # a Ctrl-C in the terminal reaches us, not the children
        )
        self.pid = self.popen.pid
        self.proc = psutil.Process(self.pid)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def cpu_s(self) -> float:
        """CPU seconds (user + system) of the process so far; see :func:`cpu_seconds`."""
        return cpu_seconds(self.proc)

    def stop(self, timeout_s: float = 10.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()
        return self.popen.returncode

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def cpu_seconds(proc: psutil.Process) -> float:
    """CPU seconds (user + system) of every live thread of ``proc``, in nanoseconds' resolution.

    The scheduler's run time per thread (``/proc/PID/task/*/schedstat``) rather than
    ``utime + stime``, which count in clock ticks (10 ms): an agent spends well under a
    second of CPU in a minute, so ticks would be a few percent of noise on their own.
    Threads that already exited are not counted (the processes measured here keep theirs:
    asyncio's default executor and aiosqlite's connection threads live as long as they do).
    Falls back to psutil's tick counts where there is no schedstat.
    """
    total = 0
    try:
        for task in Path(f"/proc/{proc.pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                total += int((task / "schedstat").read_text().split()[0])
    except OSError:
        t = proc.cpu_times()
        return float(t.user + t.system)
    return total / 1e9


@dataclass(frozen=True, slots=True)
class Memory:
    rss: int
    pss: int | None
    uss: int | None


def memory(proc: psutil.Process) -> Memory:
    """RSS, and PSS/USS from smaps when this kernel and our permissions allow."""
    try:
        full = proc.memory_full_info()
    except (psutil.AccessDenied, NotImplementedError):
        return Memory(rss=int(proc.memory_info().rss), pss=None, uss=None)
    return Memory(rss=int(full.rss), pss=getattr(full, "pss", None), uss=getattr(full, "uss", None))


MOSQUITTO_CONF = """\
listener {port} 127.0.0.1
allow_anonymous true
persistence false
log_dest stdout
log_type error
log_type warning
# Never drop: the default (1000) silently drops QoS 1 messages for a subscriber that falls
# behind (reference/baselines.md note 2), which would make a slow subscriber look fast.
max_queued_messages 0
max_queued_bytes 0
# Outgoing QoS 1 window per client (0 = unlimited, Mosquitto's default is 20). For an MQTT 5
# client the client's own Receive Maximum also applies (the hub asks for 1000).
max_inflight_messages {max_inflight}
"""


class Mosquitto(Child):
    """Our own broker on a free loopback port; its config lives in ``folder``."""

    def __init__(self, folder: Path, *, max_inflight: int = 0, name: str = "mosquitto") -> None:
        self.port = free_port()
        conf = folder / f"{name}.conf"
        conf.write_text(MOSQUITTO_CONF.format(port=self.port, max_inflight=max_inflight))
        super().__init__([MOSQUITTO, "-c", conf], folder / f"{name}.log")
        try:
            wait_port(self.port)
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"mqtt://{HOST}:{self.port}"


@dataclass(frozen=True, slots=True)
class Summary:
    median: float
    low: float
    high: float
    n: int


def summarize(values: Sequence[float]) -> Summary:
    return Summary(statistics.median(values), min(values), max(values), len(values))


def fmt(value: float) -> str:
    """Three significant figures, thousands separated."""
    if math.isnan(value):
        return "n/a"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def table(rows: Sequence[tuple[str, Sequence[float]]], unit_col: str = "figure") -> str:
    """A Markdown table: name | median | min | max | n."""
    out = [f"| {unit_col} | median | min | max | n |", "|---|---:|---:|---:|---:|"]
    for name, values in rows:
        if not values:
            out.append(f"| {name} | n/a | n/a | n/a | 0 |")
            continue
        s = summarize(values)
        out.append(f"| {name} | {fmt(s.median)} | {fmt(s.low)} | {fmt(s.high)} | {s.n} |")
    return "\n".join(out)


def environment() -> str:
    load = os.getloadavg()
    versions = []
    for cmd in (["mosquitto", "-h"], ["uname", "-m"]):
        exe = MOSQUITTO if cmd[0] == "mosquitto" else cmd[0]
        try:
            out = subprocess.run(
                [exe, *cmd[1:]], check=False, capture_output=True, text=True, timeout=5
            )
            versions.append((out.stdout or out.stderr).splitlines()[0].strip())
        except (OSError, IndexError, subprocess.TimeoutExpired):
            versions.append("?")
    return (
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {os.cpu_count()} CPUs, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
        f"Python {sys.version.split()[0]}, {versions[0]}, {versions[1]}; {code_version()}"
    )


def code_version() -> str:
    """The commit measured, and how many tracked files differ from it (read-only git calls)."""
    git = ["git", "--no-optional-locks", "-C", str(REPO)]
    try:
        head = subprocess.run(
            [*git, "log", "-1", "--format=%h %cd", "--date=format:%Y-%m-%d %H:%M"],
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no"],
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return "code: unknown (no git)"
    return f"code: {head}" + (f" + {len(dirty)} modified tracked files" if dirty else "")


def load1() -> float:
    return os.getloadavg()[0]
