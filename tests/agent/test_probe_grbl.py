"""``shopfloor agent probe`` and ``ports``: the GRBL prober against the simulator on a real
pty, stable names from a stand-in /dev/serial folder, and a busy port."""

from __future__ import annotations

import asyncio
import functools
import os
import subprocess
import tty
from dataclasses import dataclass
from pathlib import Path

import pytest
from grbl_proxy_support import RecordingMachine

from shopfloor.agent.links.serial import SerialLink
from shopfloor.agent.probe import probe_link
from shopfloor.agent.probe.cli import (
    format_ports,
    format_report,
    ports_main,
    probe_main,
    probe_port,
)
from shopfloor.agent.probe.grbl import probe_grbl
from shopfloor.agent.probe.ports import holders, list_ports
from shopfloor.sim.grbl.config import GrblSimConfig
from shopfloor.sim.grbl.runner import PtyRunner


@pytest.mark.parametrize("laser", [False, True])
async def test_probe_finds_grbl_and_changes_nothing(tmp_path: Path, laser: bool) -> None:
    machine = RecordingMachine(GrblSimConfig(laser=laser))
    settings_before = dict(machine.settings)
    async with PtyRunner(machine, tmp_path / "ttyGRBL"):
        report = await probe_port(str(tmp_path / "ttyGRBL"), 115200)
    result = report.result
    assert result is not None
    assert result.protocol == "grbl"
    assert result.firmware == "1.1h.20190830"
    assert result.details["flavor"] == "Grbl"
    assert result.details["state"] == "Idle"
    assert result.details["rx_buffer_bytes"] == 128
    assert result.details["laser_mode"] is laser
    assert ("laser" in result.what) is laser
    assert f'port = "{tmp_path / "ttyGRBL"}"' in result.config_snippet
    assert 'protocol = "grbl"' in result.config_snippet
    # Read-only: only $I and $$ were sent as lines, and no setting changed.
    assert machine.received == ["$I", "$$"]
    assert machine.settings == settings_before
    assert report.tried == (("grbl", "found"),)


async def test_probe_in_alarm_reads_build_info_but_not_settings(tmp_path: Path) -> None:
    machine = RecordingMachine(GrblSimConfig(homing=True))  # locked in Alarm at power-up
    async with PtyRunner(machine, tmp_path / "ttyGRBL"):
        report = await probe_port(str(tmp_path / "ttyGRBL"), 115200)
    assert report.result is not None
    assert report.result.details["state"] == "Alarm"
    assert machine.received == ["$I"]
    assert "laser_mode" not in report.result.details


async def test_probe_of_a_silent_port_finds_nothing(tmp_path: Path) -> None:
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        link = SerialLink(os.ttyname(slave))
        await link.open()
        try:
            quick = functools.partial(probe_grbl, banner_wait_s=0.2)
            report = await probe_link(link, [("grbl", quick), ("marlin", None)])
        finally:
            await link.close()
        assert report.result is None
        assert report.tried == (("grbl", "no"), ("marlin", "not installed"))
        os.set_blocking(master, False)
        sent = b""
        while True:
            try:
                sent += os.read(master, 100)
            except BlockingIOError:
                break
        assert sent == b"??\n"  # status queries, then the line ended
        text = format_report(report, baud=115200)
        assert "nothing recognised" in text
        assert "--baud" in text
    finally:
        os.close(master)
        os.close(slave)


async def test_probe_command_prints_grbl_and_a_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    machine = RecordingMachine(GrblSimConfig())
    async with PtyRunner(machine, tmp_path / "ttyGRBL"):
        rc = await asyncio.to_thread(probe_main, [str(tmp_path / "ttyGRBL"), "--baud", "250000"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "Grbl 1.1h CNC controller" in out
    assert "firmware: 1.1h.20190830" in out
    assert "[[machines]]" in out
    assert "baudrate = 250000" in out


def test_probe_refuses_a_port_another_program_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    device = tmp_path / "ttyBUSY"
    device.write_bytes(b"")
    with device.open("rb") as held:
        proc = subprocess.Popen(["sleep", "30"], stdin=held)
    try:
        assert (proc.pid, "sleep") in holders(str(device))
        assert probe_main([str(device)]) == 1
    finally:
        proc.kill()
        proc.wait()
    err = capsys.readouterr().err
    assert f"sleep (pid {proc.pid})" in err


@dataclass
class FakePort:
    device: str
    description: str = "n/a"
    vid: int | None = None
    pid: int | None = None
    serial_number: str | None = None


def test_ports_resolves_by_id_and_by_path(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "ttyUSB0").write_bytes(b"")
    (dev / "ttyACM0").write_bytes(b"")
    serial = tmp_path / "serial"
    (serial / "by-id").mkdir(parents=True)
    (serial / "by-path").mkdir()
    by_id = serial / "by-id" / "usb-1a86_USB_Serial-if00-port0"
    by_id.symlink_to("../../dev/ttyUSB0")  # relative, as udev makes them
    by_path = serial / "by-path" / "platform-fd500000.pcie-usb-0:1.3:1.0-port0"
    by_path.symlink_to(dev / "ttyUSB0")
    fakes = [
        FakePort(str(dev / "ttyUSB0"), "USB Serial", 0x1A86, 0x7523),
        FakePort(str(dev / "ttyACM0"), "Arduino Mega", 0x2341, 0x0042, "9573"),
    ]
    ports = list_ports(serial, comports=lambda: fakes)
    usb0, acm0 = ports
    assert usb0.by_id == (str(by_id),)
    assert usb0.by_path == (str(by_path),)
    assert usb0.usb_id == "1a86:7523"
    assert usb0.best_name == str(by_id)
    assert acm0.by_id == ()
    assert acm0.best_name == str(dev / "ttyACM0")
    text = format_ports(ports)
    assert f"by-id:   {by_id}" in text
    assert "[USB 2341:0042]" in text
    assert f'config:  port = "{by_id}"' in text


def test_ports_with_nothing_found_says_what_to_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert list_ports(tmp_path, comports=list) == []
    assert "No serial ports found" in format_ports([])
    assert ports_main(["--serial-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out
