"""Fixtures every test shares: real brokers, free ports, and leak checks.

Tests talk to real parts: the Mosquitto that runs on 127.0.0.1:1883 on this machine and in
CI (never stopped or reconfigured by a test), private ``mosquitto`` processes on free ports
for fault injection (stopped by PID), real pseudo-terminals, and a real Chromium.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright

SYSTEM_BROKER_HOST = "127.0.0.1"
SYSTEM_BROKER_PORT = 1883


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@pytest.fixture
def unused_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    return free_port()


@pytest.fixture
def topic_root() -> str:
    """A topic root no other test (or a demo running on this machine) uses."""
    return f"t{uuid.uuid4().hex[:10]}/v1"


@pytest.fixture
def mqtt_url() -> str:
    """The system Mosquitto. Tests share it, so each uses its own ``topic_root``."""
    return f"mqtt://{SYSTEM_BROKER_HOST}:{SYSTEM_BROKER_PORT}"


@dataclass
class PrivateBroker:
    """A ``mosquitto`` this test started on a free port; only this one may be stopped."""

    port: int
    config: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.process = subprocess.Popen(
            [exe, "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[Callable[..., PrivateBroker]]:
    """Factory: ``private_broker(persistence=False)`` starts a mosquitto on a free port."""
    started: list[PrivateBroker] = []

    def make(*, persistence: bool = False) -> PrivateBroker:
        port = free_port()
        data = tmp_path / f"mosquitto-{port}"
        data.mkdir()
        conf = data / "mosquitto.conf"
        lines = [
            f"listener {port} 127.0.0.1",
            "allow_anonymous true",
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {data}/",
            "max_queued_messages 100000",
        ]
        conf.write_text("\n".join(lines) + "\n")
        broker = PrivateBroker(port=port, config=conf)
        broker.start()
        started.append(broker)
        return broker

    yield make
    for broker in started:
        broker.stop()


# --- a real browser ------------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
#: How this machine's Chromium must run: as root, headless, and without reaching for the
#: network it does not have (background networking, component updates, sync).
CHROMIUM_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium driven by Playwright (never Playwright's own browser download)."""
    if not os.path.exists(CHROMIUM):  # noqa: ASYNC240 - one stat before the browser starts
        pytest.fail(f"{CHROMIUM} is missing: run ./scripts/setup, which installs Debian's chromium")
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=str(CHROMIUM), args=list(CHROMIUM_ARGS))
        try:
            yield chromium
        finally:
            await chromium.close()


# --- leak checks -------------------------------------------------------------------------

_IGNORED_THREAD_PREFIXES = ("asyncio_", "ThreadPoolExecutor", "pydevd", "Dummy-")


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves a thread running (a server, a reader, a client loop)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5.0
    while True:
        leaked = [
            t
            for t in threading.enumerate()
            if t not in before and t.is_alive() and not t.name.startswith(_IGNORED_THREAD_PREFIXES)
        ]
        if not leaked:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"test leaked threads: {[t.name for t in leaked]}")
        time.sleep(0.05)


@pytest.fixture(autouse=True)
async def _no_leaked_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves asyncio tasks running after it returns."""
    yield
    current = asyncio.current_task()
    for _ in range(40):
        pending = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        if not pending:
            return
        await asyncio.sleep(0.05)
    names = sorted(t.get_name() for t in pending)
    for task in pending:
        task.cancel()
    pytest.fail(f"test leaked asyncio tasks: {names}")


@pytest.fixture(autouse=True)
def _no_leaked_fds() -> Iterator[None]:
    """Fail a test that leaks many file descriptors (ptys, sockets, databases)."""
    fd_dir = Path(f"/proc/{os.getpid()}/fd")
    before = len(list(fd_dir.iterdir()))
    yield
    for _ in range(40):
        after = len(list(fd_dir.iterdir()))
        if after <= before + 2:  # allow the logging/coverage machinery a little slack
            return
        time.sleep(0.05)
    pytest.fail(f"test leaked {after - before} file descriptors")
