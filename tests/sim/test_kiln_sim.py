"""The simulated kiln: physics and schedules, the Modbus RTU device side (checked with
pymodbus's own client over a real pty, ``device_id=``), faults and the command line."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusSerialClient
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU
from pymodbus.pdu.register_message import ReadHoldingRegistersRequest

from shopfloor.agent.protocols.modbus_rtu import (
    ExceptionReply,
    ModbusRtuClient,
    RegistersRead,
    read_holding_registers,
    write_register,
)
from shopfloor.sim.errors import SimConfigError
from shopfloor.sim.kiln import (
    SCHEDULES,
    KilnMachine,
    KilnPtyRunner,
    KilnSimConfig,
    Script,
    parse_fault,
)
from shopfloor.sim.kiln.cli import config_from_args, parser
from shopfloor.sim.kiln.machine import SENSOR_BREAK_RAW


def ask(machine: KilnMachine, request: bytes, now: float) -> bytes:
    machine.receive(request, now)
    return machine.take_output()


def test_schedule_shape() -> None:
    glaze = SCHEDULES["cone6-glaze"]
    assert glaze.segments[2].target_c == 1222.0  # cone 6 at 60 C/h (2232 F)
    assert SCHEDULES["bisque"].segments[-1].target_c == 1060.0  # cone 04 (1940 F)
    total = glaze.duration_s(20.0)
    assert 13 * 3600 < total < 14 * 3600
    assert glaze.at(0, 20.0)[:2] == (20.0, 0)
    sp, segment, _, finished = glaze.at(total + 1, 20.0)
    assert (sp, segment, finished) == (816.0, 3, True)


def run(machine: KilnMachine, until: float, step: float = 0.05) -> list[tuple[float, float]]:
    """(set point, temperature) every step of caller time while the firing runs."""
    out = []
    t = 0.0
    machine.advance(0.0)
    while t < until:
        t += step
        machine.advance(t)
        if machine.running:
            out.append((machine.setpoint_c, machine.temperature_c))
    return out


def test_healthy_kiln_follows_the_glaze_firing_and_a_weak_one_lags() -> None:
    healthy = KilnMachine(KilnSimConfig(time_scale=600))
    healthy.start_firing(0.0)
    trace = run(healthy, 90)
    assert max(abs(sp - pv) for sp, pv in trace) < 15
    assert max(pv for _, pv in trace) == pytest.approx(1222, abs=3)
    assert not healthy.running
    assert healthy.firings_completed == 1
    assert [s.state for s in healthy.state_log] == ["Idle", "Heating", "Soaking", "Cooling", "Idle"]
    weak = KilnMachine(KilnSimConfig(time_scale=600, element_factor=0.7))
    weak.start_firing(0.0)
    trace = run(weak, 90)
    assert max(sp - pv for sp, pv in trace) > 60
    assert max(pv for _, pv in trace) < 1200


def test_modbus_device_side() -> None:
    machine = KilnMachine(KilnSimConfig(initial_c=100.0))
    machine.advance(0.0)
    client = ModbusRtuClient()
    [reply] = client.feed(ask(machine, client.send(read_holding_registers(0x1000, 2)), 0.0))
    assert isinstance(reply, RegistersRead)
    assert reply.registers == (1000, 0)
    [refused] = client.feed(ask(machine, client.send(read_holding_registers(0x2000, 1)), 0.0))
    assert isinstance(refused, ExceptionReply)
    assert refused.code == 2
    [locked] = client.feed(ask(machine, client.send(write_register(0x1001, 5)), 0.0))
    assert isinstance(locked, ExceptionReply)
    assert locked.code == 3
    # Another unit, a broken CRC, and a request split in two.
    assert ask(machine, read_holding_registers(0x1000, device_id=9).encode(), 0.0) == b""
    bad = bytearray(read_holding_registers(0x1000).encode())
    bad[-1] ^= 1
    assert ask(machine, bytes(bad), 0.0) == b""
    request = read_holding_registers(0x1000)
    client.send(request)
    assert ask(machine, request.encode()[:3], 0.0) == b""
    [split] = client.feed(ask(machine, request.encode()[3:], 0.0))
    assert isinstance(split, RegistersRead)


def test_thermocouple_break_and_scripted_faults() -> None:
    machine = KilnMachine(KilnSimConfig(time_scale=60))
    script = Script((parse_fault("tc-break@1+1"), parse_fault("stall@3+1")), start_after_s=0.0)
    client = ModbusRtuClient()
    states = []
    for i in range(100):
        now = i * 0.05
        script.tick(machine, now)
        machine.advance(now)
        out = ask(machine, client.send(read_holding_registers(0x1000, 1)), now)
        events = client.feed(out)
        client.expire()
        if 1.1 < now < 1.9:
            assert isinstance(events[0], RegistersRead)
            assert events[0].registers == (SENSOR_BREAK_RAW,)
        if 3.1 < now < 3.9:
            assert out == b""
        states.append(machine.state)
    assert "Alarm" in states
    assert states[-1] == "Heating"


def test_fault_specs() -> None:
    fault = parse_fault("vanish@15+3!")
    assert (fault.at, fault.duration, fault.reboot) == (15.0, 3.0, True)
    with pytest.raises(SimConfigError, match="unknown kind"):
        parse_fault("meltdown@3")
    with pytest.raises(SimConfigError):
        parse_fault("stall")


async def test_pymodbus_client_reads_the_simulator_over_a_pty(tmp_path: Path) -> None:
    machine = KilnMachine(KilnSimConfig(device_id=3, initial_c=250.0))
    async with KilnPtyRunner(machine, tmp_path / "ttyKILN") as runner:
        client = AsyncModbusSerialClient(
            str(runner.path), baudrate=9600, timeout=1, retries=0, reconnect_delay=0
        )
        try:
            assert await client.connect()
            result = await client.read_holding_registers(0x1000, count=2, device_id=3)
            assert not result.isError()
            assert result.registers == [2500, 0]
            coil = await client.read_coils(0x0814, count=1, device_id=3)
            assert coil.bits[0] is False
            refused = await client.read_holding_registers(0x3000, count=1, device_id=3)
            assert refused.isError()
        finally:
            client.close()
            await asyncio.sleep(0.05)


def test_our_requests_decode_as_pymodbus_server_requests() -> None:
    framer = FramerRTU(DecodePDU(is_server=True))
    used, pdu = framer.handleFrame(read_holding_registers(0x1034, 4, device_id=5).encode(), 0, 0)
    assert isinstance(pdu, ReadHoldingRegistersRequest)
    assert (pdu.dev_id, pdu.address, pdu.count, used) == (5, 0x1034, 4, 8)


def test_cli_config() -> None:
    args = parser().parse_args(["--schedule", "bisque", "--weak", "--fault", "noise@3+2"])
    config = config_from_args(args)
    assert config.schedule == "bisque"
    assert config.element_factor == 0.7
    assert config.time_scale == 600
    assert config.faults[0].kind == "noise"
    with pytest.raises(SimConfigError):
        config_from_args(parser().parse_args(["--time-scale", "0"]))


def test_cli_serves_a_pty_and_stops_on_sigterm(tmp_path: Path) -> None:
    path = tmp_path / "ttyK"
    proc = subprocess.Popen(
        [sys.executable, "-m", "shopfloor.sim.kiln.cli", "--pty", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while not path.is_symlink() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert path.is_symlink()
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        try:
            import tty

            tty.setraw(fd)
            os.write(fd, read_holding_registers(0x102F).encode())
            client = ModbusRtuClient()
            client.send(read_holding_registers(0x102F))
            got: list[object] = []
            while not got:
                got = [e for e in client.feed(os.read(fd, 64)) if isinstance(e, RegistersRead)]
            assert got[0].registers == (0x0100,)  # type: ignore[attr-defined]
        finally:
            os.close(fd)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert b"kiln simulator" in out
