"""``shopfloor agent probe``: the Marlin prober against the simulator on a real pty."""

from __future__ import annotations

from pathlib import Path

from shopfloor.agent.links.serial import SerialLink
from shopfloor.agent.probe.cli import probe_port
from shopfloor.agent.probe.marlin import probe_marlin
from shopfloor.sim.marlin import MarlinMachine, MarlinSimConfig, PtyRunner


async def test_probe_finds_marlin_and_sends_only_m115(tmp_path: Path) -> None:
    machine = MarlinMachine(MarlinSimConfig())
    path = tmp_path / "ttyMARLIN"
    async with PtyRunner(machine, path):
        link = SerialLink(str(path))
        await link.open()
        try:
            result = await probe_marlin(link)
        finally:
            await link.close()
    assert result is not None
    assert result.protocol == "marlin"
    assert result.firmware.startswith("Marlin 2.1.2.1")
    assert result.details["machine_type"] == "Shopfloor Sim i3"
    assert "AUTOREPORT_TEMP" in str(result.details["capabilities"])
    assert "note" not in result.details
    assert 'protocol = "marlin"' in result.config_snippet
    assert f'port = "{path}"' in result.config_snippet
    assert list(machine.received) == ["M115"]
    assert machine.state == "Idle"


async def test_probe_notes_missing_auto_reports(tmp_path: Path) -> None:
    machine = MarlinMachine(MarlinSimConfig(autoreport_temp=False, autoreport_sd=False))
    path = tmp_path / "ttyMARLIN"
    async with PtyRunner(machine, path):
        link = SerialLink(str(path))
        await link.open()
        try:
            result = await probe_marlin(link, timeout_s=1.0)
        finally:
            await link.close()
    assert result is not None
    assert "polls M105/M27" in str(result.details["note"])


async def test_probe_finds_nothing_on_a_silent_port(tmp_path: Path) -> None:
    machine = MarlinMachine(MarlinSimConfig())
    machine.thermal_runaway(0.0)  # halted: answers nothing
    path = tmp_path / "ttyMARLIN"
    async with PtyRunner(machine, path):
        link = SerialLink(str(path))
        await link.open()
        try:
            assert await probe_marlin(link, timeout_s=0.3) is None
        finally:
            await link.close()


async def test_probe_port_tries_grbl_first_then_finds_marlin(tmp_path: Path) -> None:
    machine = MarlinMachine(MarlinSimConfig())
    path = tmp_path / "ttyMARLIN"
    async with PtyRunner(machine, path):
        report = await probe_port(str(path), 115200)
    assert report.result is not None
    assert report.result.protocol == "marlin"
    assert "M115" in machine.received
    assert machine.state == "Idle"
