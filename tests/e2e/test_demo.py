"""``shopfloor demo`` as a user runs it: one command, the whole shop changing on the wall."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.slow]

#: What each demo machine must be seen doing within the first minute.
EXPECTED = {
    "router-1": {"IDLE", "RUNNING"},
    "router-2": {"IDLE", "RUNNING"},
    "laser": {"IDLE", "RUNNING"},
    "mill": {"RUNNING"},
    "kiln": {"RUNNING"},
    "printer": {"RUNNING"},
}


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def _run_demo(tmp_path: Path, port: int, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shopfloor",
            "demo",
            "--data-dir",
            str(tmp_path / "demo"),
            "--port",
            str(port),
            "--time-scale",
            "8",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _wait_for_banner(proc: subprocess.Popen[str]) -> list[str]:
    assert proc.stdout is not None
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        if line.startswith("Press Ctrl-C"):
            return lines
    pytest.fail(f"the demo did not start: {lines}")


def _watch_states(port: int, seconds: float) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for machine in _get(f"http://127.0.0.1:{port}/api/v1/machines")["machines"]:
            seen.setdefault(machine["id"], set()).add(machine["state"])
        if set(seen) == set(EXPECTED) and all(
            EXPECTED[machine] <= states for machine, states in seen.items()
        ):
            break
        time.sleep(0.25)
    return seen


def _stop(proc: subprocess.Popen[str]) -> str:
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
    out, _ = proc.communicate(timeout=30)
    return out


@pytest.mark.parametrize("broker", ["mosquitto", "amqtt"])
def test_demo_shows_three_machines_changing_state_and_stops_on_ctrl_c(
    tmp_path: Path, unused_port: int, broker: str
) -> None:
    port = unused_port
    proc = _run_demo(tmp_path, port, "--broker", broker)
    try:
        banner = _wait_for_banner(proc)
        text = "\n".join(banner)
        assert f"http://127.0.0.1:{port}/wall" in text
        assert f"http://127.0.0.1:{port}/api/v1/machines" in text
        assert ("MQTT 3.1.1 only" in text) == (broker == "amqtt")

        seen = _watch_states(port, 60)
        assert set(seen) == set(EXPECTED)
        for machine, states in seen.items():
            assert EXPECTED[machine] <= states, f"{machine} only showed {states}"

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/wall", timeout=5) as page:
            assert page.status == 200
            assert b"<html" in page.read().lower()
    finally:
        out = _stop(proc)
    assert proc.returncode == 0, out
    assert "Traceback" not in out
    # Everything the demo started is gone: its pseudo-terminals are unlinked.
    assert not any((tmp_path / "demo" / "ports").iterdir())
