"""The Haas simulator: replies in the fact-sheet formats, the part cycle, faults, the state
log, and serving over a real pseudo-terminal and TCP with the shared runners."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import termios
import time
import tty
from pathlib import Path

import pytest

from shopfloor.agent.protocols.haas import (
    CycleTime,
    Garbage,
    HaasEvent,
    HaasProtocol,
    MacroValue,
    Mode,
    Model,
    PartsCounter,
    ProgramStatus,
    Rejected,
    SerialNumber,
    SoftwareVersion,
    TimeCounter,
)
from shopfloor.contract.states import MachineState
from shopfloor.sim.errors import SimConfigError
from shopfloor.sim.haas import (
    Fault,
    FaultKind,
    HaasMachine,
    HaasSimConfig,
    PtyRunner,
    Script,
    TcpRunner,
    parse_fault,
)
from shopfloor.sim.haas.cli import build_parser, config_from_args
from shopfloor.sim.haas.truth import canonical_intervals


def ask(machine: HaasMachine, query: bytes, now: float = 0.0) -> list[HaasEvent]:
    machine.receive(query, now)
    return HaasProtocol().feed(machine.take_output())


def test_replies_in_fact_sheet_formats() -> None:
    machine = HaasMachine(HaasSimConfig(auto_run=False, swallow_first_q100=False))
    machine.advance(0.0)
    assert machine.take_output() == b""
    machine.receive(b"?Q100\r\n", 0.0)
    assert machine.take_output() == b"\x02SERIAL NUMBER, 1098765\x17\r\n>"
    assert ask(machine, b"?Q101\r\n") == [SoftwareVersion("100.21.000.1100")]
    assert ask(machine, b"Q102\n") == [Model("VF-2")]  # no "?" and LF only: accepted too
    assert ask(machine, b"?Q104\r\n") == [Mode("MEM")]
    assert ask(machine, b"?Q500\r\n") == [ProgramStatus("IDLE", "O01234", 0)]
    assert ask(machine, b"?Q402\r\n") == [PartsCounter(1, 0)]
    assert ask(machine, b"?Q300\r\n") == [TimeCounter("power_on", 1234 * 3600)]
    assert ask(machine, b"?Q303\r\n") == [CycleTime("last", 0)]
    assert ask(machine, b"?Q600 500\r\n") == [MacroValue(10.0)]
    assert ask(machine, b"?Q999\r\n") == [Rejected("UNKNOWN")]
    assert ask(machine, b"?Q600\r\n") == [Rejected("UNKNOWN")]


def test_reply_variants_are_configurable() -> None:
    machine = HaasMachine(
        HaasSimConfig(framing="line", busy_comma=False, unknown_reply=None, auto_run=False)
    )
    machine.cycle_start(0.0)
    machine.receive(b"?Q500\r\n", 0.0)
    assert machine.take_output() == b">STATUS BUSY\r\n"
    machine.receive(b"?E3901 1\r\n", 0.0)  # not answered at all
    assert machine.take_output() == b""


def test_first_q100_after_power_up_is_swallowed() -> None:
    machine = HaasMachine(HaasSimConfig(auto_run=False))
    assert ask(machine, b"?Q100\r\n") == []
    assert ask(machine, b"?Q100\r\n") == [SerialNumber("1098765")]


def test_part_cycle_counts_parts_until_the_batch_is_done() -> None:
    config = HaasSimConfig(cycle_s=2.0, load_s=1.0, parts_required=3, next_batch_s=None)
    machine = HaasMachine(config)
    seen: list[str] = []
    t = 0.0
    while t < 20.0:
        machine.advance(t)
        (event,) = ask(machine, b"?Q500\r\n", t)
        assert isinstance(event, ProgramStatus)
        if not seen or seen[-1] != event.status:
            seen.append(event.status)
        t += 0.1
    assert machine.m30_1 == 3
    assert seen == ["IDLE", "BUSY", "IDLE", "BUSY", "IDLE", "BUSY", "IDLE"]
    assert machine.last_cycle_s == pytest.approx(2.0, abs=0.15)
    assert ask(machine, b"?Q600 3901\r\n", t) == [MacroValue(3.0)]


def test_next_batch_resets_counter_one() -> None:
    config = HaasSimConfig(cycle_s=1.0, load_s=0.0, parts_required=2, next_batch_s=1.0)
    machine = HaasMachine(config)
    t = 0.0
    counts = set()
    while t < 8.0:
        machine.advance(t)
        counts.add(machine.m30_1)
        t += 0.05
    assert {0, 2} <= counts
    assert machine.m30_2 >= 3002 + 2


def test_hold_alarm_stall_noise_reboot_through_a_script() -> None:
    machine = HaasMachine(HaasSimConfig(cycle_s=100.0, load_s=0.0, seed=1))
    script = Script(
        [
            Fault(FaultKind.HOLD, at=1.0, duration=1.0),
            Fault(FaultKind.ALARM, at=3.0, duration=1.0, code=108),
            Fault(FaultKind.STALL, at=5.0, duration=1.0),
            Fault(FaultKind.NOISE, at=7.0, duration=1.0, code=100),
            Fault(FaultKind.REBOOT, at=9.0, duration=1.0),
            Fault(FaultKind.VANISH, at=11.0, duration=1.0),
        ]
    )
    statuses: dict[float, str] = {}
    vanished = []
    t = 0.0
    while t < 12.5:
        vanished += script.tick(machine, t)
        machine.advance(t)
        statuses[round(t, 1)] = "OFF" if not machine.powered else machine.status
        if round(t, 1) in (5.5, 7.5):
            machine.receive(b"?Q500\r\n", t)
            out = machine.take_output()
            if round(t, 1) == 5.5:
                assert out == b""  # stalled
            else:
                assert out != b"\x02STATUS, BUSY\x17\r\n>"  # every byte hit
        t = round(t + 0.1, 1)
    assert statuses[0.5] == "BUSY"
    assert statuses[1.5] == "FEED HOLD"
    assert statuses[2.5] == "BUSY"
    assert statuses[3.5] == "ALARM ON"
    assert statuses[4.5] == "BUSY"  # reset, then the operator starts the next part
    assert statuses[9.5] == "OFF"
    assert statuses[10.5] == "BUSY"
    assert [f.kind for f in vanished] == [FaultKind.VANISH]
    assert script.done
    states = {i.state for i in canonical_intervals(machine.state_log, 12.5)}
    assert states == {"RUNNING", "PAUSED", "ALARM", "OFFLINE"}  # load_s=0: no Idle time


def test_truth_setup_when_busy_outside_mem() -> None:
    machine = HaasMachine(HaasSimConfig(auto_run=False))
    machine.advance(0.0)
    machine.set_mode("MDI", 1.0)
    machine.cycle_start(2.0)
    assert [i.state for i in canonical_intervals(machine.state_log, 3.0)] == [
        MachineState.IDLE.value,
        MachineState.SETUP.value,
    ]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("hold@10+5", Fault(FaultKind.HOLD, at=10, duration=5)),
        ("alarm:108@30+8", Fault(FaultKind.ALARM, at=30, duration=8, code=108)),
        ("noise:30@15+10", Fault(FaultKind.NOISE, at=15, duration=10, code=30)),
        ("noise@15+10", Fault(FaultKind.NOISE, at=15, duration=10, code=20)),
        ("vanish@50+6!", Fault(FaultKind.VANISH, at=50, duration=6, reboot=True)),
        ("stall@2+1", Fault(FaultKind.STALL, at=2, duration=1)),
        ("reboot@4+3", Fault(FaultKind.REBOOT, at=4, duration=3)),
    ],
)
def test_parse_fault(spec: str, expected: Fault) -> None:
    assert parse_fault(spec) == expected


@pytest.mark.parametrize(
    "spec", ["hold", "melt@3", "alarm:x@3", "noise:0@1", "noise:101@1", "stall@x", "hold@3!"]
)
def test_parse_fault_rejects(spec: str) -> None:
    with pytest.raises(SimConfigError):
        parse_fault(spec)


def test_cli_arguments() -> None:
    args = build_parser().parse_args(
        ["--pty", "/tmp/x", "--cycle-s", "3", "--parts-required", "4", "--fault", "stall@1+2"]
    )
    config = config_from_args(args)
    assert (config.cycle_s, config.parts_required) == (3.0, 4)
    assert config.faults == (Fault(FaultKind.STALL, at=1, duration=2),)
    with pytest.raises(SimConfigError):
        config_from_args(build_parser().parse_args(["--cycle-s", "0"]))


class PortReader:
    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd, termios.TCSANOW)
        self.parser = HaasProtocol()

    def close(self) -> None:
        os.close(self.fd)

    async def ask(self, query: bytes, within: float = 2.0) -> HaasEvent:
        os.write(self.fd, query)
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                chunk = os.read(self.fd, 1024)
            except BlockingIOError:
                await asyncio.sleep(0.01)
                continue
            events = self.parser.feed(chunk)
            if events:
                return events[0]
        raise TimeoutError(f"no reply to {query!r}")


async def test_pty_runner_serves_the_mill(tmp_path: Path) -> None:
    link = tmp_path / "ttyHAAS"
    machine = HaasMachine(HaasSimConfig(cycle_s=0.3, load_s=0.1, swallow_first_q100=False))
    async with PtyRunner(machine, link, tick_s=0.005, name="haas") as runner:
        assert runner.present
        port = PortReader(link)
        try:
            assert await port.ask(b"?Q100\r\n") == SerialNumber("1098765")
            await asyncio.sleep(1.0)
            reply = await port.ask(b"?Q600 3901\r\n")
            assert isinstance(reply, MacroValue)
            assert reply.value >= 1
        finally:
            port.close()
    assert not link.exists()


async def test_tcp_runner_serves_the_mill() -> None:
    machine = HaasMachine(HaasSimConfig(auto_run=False, framing="line"))
    async with TcpRunner(machine, 0, tick_s=0.005, name="haas") as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(b"?Q100\r\n?Q100\r\n?Q500\r\n")
            parser = HaasProtocol()
            got: list[HaasEvent] = []
            while len(got) < 2:
                got += parser.feed(await asyncio.wait_for(reader.read(1024), 2.0))
            assert got == [SerialNumber("1098765"), ProgramStatus("IDLE", "O01234", 0)]
            assert not any(isinstance(e, Garbage) for e in got)
        finally:
            writer.close()
            await writer.wait_closed()


def test_cli_help_and_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    from shopfloor.sim.haas.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--pty", "--tcp", "--cycle-s", "--parts-required", "--fault", "stall"):
        assert flag in out
    with pytest.raises(SystemExit) as exit_info:
        main(["--fault", "explode@3"])
    assert exit_info.value.code == 2
    assert "unknown kind 'explode'" in capsys.readouterr().err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_cli_runs_on_a_pty_and_exits_quietly_on_a_signal(
    tmp_path: Path, sig: signal.Signals
) -> None:
    link = tmp_path / "ttyHAAS"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "shopfloor.sim.haas.cli", "--pty", str(link)),
            *("--cycle-s", "0.5", "--load-s", "0.2"),
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
            parser = HaasProtocol()
            statuses: set[str] = set()
            while "BUSY" not in statuses:
                assert time.monotonic() < deadline + 5, statuses
                os.write(fd, b"?Q500\r\n")
                time.sleep(0.1)
                for event in parser.feed(os.read(fd, 4096)):
                    if isinstance(event, ProgramStatus):
                        statuses.add(event.status)
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
