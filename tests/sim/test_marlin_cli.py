"""``python -m shopfloor.sim.marlin.cli`` as a user runs it: a pty, M115, SIGTERM ends it."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from shopfloor.agent.links.serial import SerialLink
from shopfloor.agent.probe.marlin import probe_marlin


async def test_the_simulator_runs_standalone_on_a_pty(tmp_path: Path) -> None:
    path = tmp_path / "ttyMARLIN"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shopfloor.sim.marlin.cli",
        "--pty",
        str(path),
        "--file",
        "bracket.gcode",
        "--size",
        "4096",
        "--print-s",
        "5",
        "--auto-start",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 10)
        assert line.decode().startswith(f"Marlin simulator on {path}")
        link = SerialLink(str(path))
        await link.open()
        try:
            result = await probe_marlin(link)
        finally:
            await link.close()
        assert result is not None
        assert result.protocol == "marlin"
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
    assert not path.exists()
