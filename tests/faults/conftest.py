"""The fault scenarios and the soak run once per test session, in two child processes.

The first test that asks for ``fault_runs`` or ``soak_run`` starts both:

- ``tests/faults/report.py --out-dir DIR --parallel N``: every selected scenario, N at a
  time, each writing ``NAME.json`` as it ends;
- ``python -m bench.soak`` with a short window, writing ``soak.json``.

Each test then waits for the file it checks. Running them in children keeps this process
free of their pipes, threads and processes (so the leak checks of tests/conftest.py stay
meaningful), and running them side by side keeps tests/faults within the CI budget: the
soak's warm-up and window (~2.7 min) cover the scenarios (~1.5 min). The soak adds about
half a core of simulators; the scenarios' state tolerance (0.5 s) holds with it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scenarios import FULL

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
#: Scenarios at once. Each is a broker, a hub, two agents and a simulator process, mostly
#: idle; three fit two cores.
PARALLEL = int(os.environ.get("SHOPFLOOR_FAULTS_PARALLEL", "3"))
#: The soak in the test run: its RSS has settled by 90 s (bench/README.md, "Soak").
SOAK_WARMUP_S = 90.0
SOAK_MINUTES = 10.0 if FULL else 1.0


class Child:
    """One child process writing result files into ``out``."""

    def __init__(self, name: str, argv: list[str], out: Path) -> None:
        self.name = name
        self.out = out
        self.log = out / f"{name}.log"
        with self.log.open("wb") as sink:
            self.proc = subprocess.Popen(
                argv,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def get(self, name: str, timeout_s: float) -> dict[str, Any]:
        """``name.json`` once written (fails the test if it never will be)."""
        deadline = time.monotonic() + timeout_s
        done, error = self.out / f"{name}.json", self.out / f"{name}.error"
        while not done.exists():
            if error.exists():
                pytest.fail(f"{name} did not run:\n{error.read_text()}")
            if self.proc.poll() is not None and not done.exists():
                pytest.fail(f"{self.name} ended ({self.proc.returncode}):\n{self.tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{name} not done within {timeout_s:g} s:\n{self.tail()}")
            time.sleep(0.5)
        result: dict[str, Any] = json.loads(done.read_text())
        return result

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # each ends its own children by PID
        self.proc.wait(60)


class FaultRuns:
    def __init__(self, runner: Child) -> None:
        self.runner = runner

    def get(self, name: str) -> dict[str, Any]:
        """The scenario's figures (``report.py``'s JSON), once it has run."""
        return self.runner.get(name, 1800 if FULL else 900)


_CHILDREN: dict[str, Child] = {}


@pytest.fixture(scope="session")
def _fault_children(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Child]]:
    out = tmp_path_factory.mktemp("faults")
    python = sys.executable
    _CHILDREN["runner"] = Child(
        "runner",
        [python, str(HERE / "report.py"), "--parallel", str(PARALLEL), "--out-dir", str(out)],
        out,
    )
    soak = ["--minutes", str(SOAK_MINUTES), "--warmup-s", str(SOAK_WARMUP_S), "--sample-s", "2"]
    _CHILDREN["soak"] = Child(
        "soak", [python, "-m", "bench.soak", *soak, "--json", str(out / "soak.json")], out
    )
    try:
        yield _CHILDREN
    finally:
        for child in _CHILDREN.values():
            child.stop()


@pytest.fixture(scope="session")
def fault_runs(_fault_children: dict[str, Child]) -> FaultRuns:
    return FaultRuns(_fault_children["runner"])


@pytest.fixture(scope="session")
def soak_run(_fault_children: dict[str, Child]) -> dict[str, Any]:
    soak = _fault_children["soak"]
    result = soak.get("soak", SOAK_MINUTES * 60 + SOAK_WARMUP_S + 600)
    result["log"] = soak.tail()
    return result


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The scenario table and the soak's memory table, in the test log."""
    for child in _CHILDREN.values():
        text = child.log.read_text(errors="replace") if child.log.exists() else ""
        if "| scenario |" in text:
            terminalreporter.section("fault-injection scenarios (tests/faults/report.py)")
            terminalreporter.write_line(text[text.index("| scenario |") :].rstrip())
        elif "| process |" in text:
            terminalreporter.section("soak (bench/soak.py)")
            terminalreporter.write_line(text[text.index("window ") :].rstrip())
