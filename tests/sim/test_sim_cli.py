"""``shopfloor sim grbl``: help, argument errors, and a real run stopped by Ctrl-C or SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import termios
import time
import tty
from pathlib import Path

import pytest

from shopfloor.sim.cli import _parser, config_from_args, main
from shopfloor.sim.grbl import FaultKind


def test_help_lists_the_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["grbl", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--pty", "--tcp", "--laser", "--line-numbers", "--homing", "--auto-run"):
        assert flag in out
    for flag in ("--demo-loop", "--time-scale", "--fault", "router-sign", "laser-badge"):
        assert flag in out


def test_bad_fault_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["grbl", "--fault", "explode@3"])
    assert exit_info.value.code == 2
    assert "unknown kind 'explode'" in capsys.readouterr().err


def test_flags_become_config() -> None:
    args = _parser().parse_args(
        [
            *("grbl", "--laser", "--line-numbers", "--homing", "--demo-loop"),
            *("--time-scale", "4", "--fault", "hold@5+2", "--fault", "vanish@9+3!"),
        ]
    )
    config = config_from_args(args)
    assert config.laser
    assert config.line_numbers
    assert config.homing
    assert config.demo_loop
    assert config.time_scale == 4.0
    assert [f.kind for f in config.faults] == [FaultKind.HOLD, FaultKind.VANISH]
    assert config.faults[1].reboot


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_runs_on_a_pty_and_exits_quietly_on_a_signal(tmp_path: Path, sig: signal.Signals) -> None:
    link = tmp_path / "ttyCLI"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "shopfloor.sim", "grbl", "--pty", str(link)),
            *("--time-scale", "8", "--auto-run", "router-sign"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while not link.exists():
            assert time.monotonic() < deadline, "the simulator never published its pty"
            assert proc.poll() is None
            time.sleep(0.05)
        fd = os.open(link, os.O_RDWR | os.O_NOCTTY)
        try:
            tty.setraw(fd, termios.TCSANOW)
            # The built-in sender starts the program about a second after start-up.
            seen = b""
            while b"<Run|" not in seen:
                assert time.monotonic() < deadline + 5, seen
                os.write(fd, b"?")
                time.sleep(0.1)
                seen += os.read(fd, 4096)
        finally:
            os.close(fd)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    assert b"Traceback" not in err
    assert str(link).encode() in out
    assert not link.exists()
