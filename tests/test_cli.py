"""The ``shopfloor`` command as a person types it: the real entry point in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def shopfloor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shopfloor", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_help_lists_every_command() -> None:
    result = shopfloor("--help")
    assert result.returncode == 0
    for command in ("demo", "agent run", "hub", "sim"):
        assert command in result.stdout


def test_unknown_command_says_what_is_known() -> None:
    result = shopfloor("frobnicate")
    assert result.returncode == 2
    assert "unknown command 'frobnicate'" in result.stderr
    assert "agent run" in result.stderr


def test_hub_run_with_a_missing_config_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "hub.toml"
    result = shopfloor("hub", "run", "--config", str(missing))
    assert result.returncode == 2, result.stderr
    assert str(missing) in result.stderr
    assert "Traceback" not in result.stderr


def test_agent_run_with_a_typo_names_file_key_and_fix(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        '[agent]\nid = "pi-1"\nsite = "shop"\n[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n'
        '[[machines]]\nid = "router"\nprotocol = "grbl"\nport = "/dev/ttyUSB0"\n'
        "poll_intervall_s = 1\n"
    )
    result = shopfloor("agent", "run", "--config", str(config))
    assert result.returncode == 2
    assert str(config) in result.stderr
    assert "machines[0].poll_intervall_s" in result.stderr
    assert "Did you mean 'poll_interval_s'?" in result.stderr
    assert "Traceback" not in result.stderr


def test_hub_config_typo_names_file_key_and_fix(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text('[hub]\nsite = "shop"\nstale_after = 60\n')
    result = shopfloor("hub", "run", "--config", str(config))
    assert result.returncode == 2
    assert str(config) in result.stderr
    assert "stale_after" in result.stderr
    assert "stale_after_s" in result.stderr


def test_sim_help() -> None:
    result = shopfloor("sim", "grbl", "--help")
    assert result.returncode == 0
    assert "--pty" in result.stdout
