"""The simulated Marlin printer, sans-IO: what it says, how it prints, how it fails."""

from __future__ import annotations

import argparse

import pytest

from shopfloor.agent.protocols.marlin import (
    Capability,
    CurrentFile,
    ErrorMessage,
    FirmwareInfo,
    MarlinEvent,
    MarlinProtocol,
    Ok,
    PrintTime,
    ProgressReport,
    Resend,
    SdDone,
    SdNotPrinting,
    SdPrinting,
    Start,
    TemperatureReport,
)
from shopfloor.contract.states import MachineState
from shopfloor.sim.errors import SimConfigError
from shopfloor.sim.marlin import Fault, FaultKind, MarlinMachine, MarlinSimConfig, parse_fault
from shopfloor.sim.marlin.cli import build_parser, config_from_args
from shopfloor.sim.marlin.truth import canonical_intervals


class Host:
    """Talks to a machine at a chosen time, parsing the answers with the agent's parser."""

    def __init__(self, machine: MarlinMachine) -> None:
        self.machine = machine
        self.proto = MarlinProtocol()
        self.t = 0.0
        machine.advance(0.0)

    def read(self) -> list[MarlinEvent]:
        return self.proto.feed(self.machine.take_output())

    def send(self, line: str, *, numbered: int | None = None) -> list[MarlinEvent]:
        self.machine.receive(MarlinProtocol.command(line, line_number=numbered), self.t)
        return self.read()

    def wait(self, seconds: float, step: float = 0.05) -> list[MarlinEvent]:
        events: list[MarlinEvent] = []
        end = self.t + seconds
        while self.t < end:
            self.t = min(end, self.t + step)
            self.machine.advance(self.t)
            events.extend(self.read())
        return events


def fast(**kwargs: object) -> MarlinMachine:
    """About 2 s of heating and 5 s of printing (caller time)."""
    settings: dict[str, object] = {
        "file_size": 10_000,
        "print_s": 10.0,
        "time_scale": 2.0,
        "bed_rate_c_s": 10.0,
        "hotend_rate_c_s": 40.0,
        "seed": 1,
    }
    settings.update(kwargs)
    return MarlinMachine(MarlinSimConfig(**settings))  # type: ignore[arg-type]


def test_power_up_banner_and_m115() -> None:
    host = Host(fast())
    assert host.read()[0] == Start()
    events = host.send("M115")
    assert isinstance(events[0], FirmwareInfo)
    assert events[0].name.startswith("Marlin 2.1")
    caps = {e.name: e.enabled for e in events if isinstance(e, Capability)}
    assert caps["AUTOREPORT_TEMP"]
    assert caps["AUTOREPORT_SD_STATUS"]
    assert events[-1] == Ok()


def test_m105_is_one_ok_line() -> None:
    host = Host(fast())
    host.read()
    events = host.send("M105")
    assert len(events) == 2
    assert isinstance(events[0], TemperatureReport)
    assert events[0].kind == "reply"
    assert events[1] == Ok()


def test_line_numbers_checksum_and_resend() -> None:
    host = Host(fast())
    host.read()
    assert host.send("M110 N0", numbered=0) == [Ok()]
    assert host.send("M31", numbered=1)[-1] == Ok()
    host.machine.receive(b"N2 M105*99\n", 0.0)  # wrong checksum
    assert host.read() == [
        ErrorMessage("checksum mismatch, Last Line: 1", last_line=1),
        Resend(2),
        Ok(),
    ]
    host.machine.receive(b"N3 M105*" + str(0).encode() + b"\n", 0.0)  # skipped a number
    assert isinstance(host.read()[1], Resend)
    assert host.send("M105", numbered=2)[-1] == Ok()


def test_no_ok_after_resend_on_old_firmware() -> None:
    host = Host(fast(ok_after_resend=False))
    host.read()
    host.machine.receive(b"N5 M105\n", 0.0)
    assert host.read() == [
        ErrorMessage("No Checksum with line number, Last Line: 0", last_line=0),
        Resend(1),
    ]


def test_a_print_heats_then_advances_then_finishes() -> None:
    host = Host(fast(auto_start=True, start_delay_s=0.1))
    host.read()
    assert host.send("M155 S1")[-1] == Ok()
    assert host.send("M27 S1")[-1] == Ok()
    events = host.wait(30)
    waits = [e for e in events if isinstance(e, TemperatureReport) and e.kind == "wait"]
    assert waits  # M190/M109 wait lines while heating
    done = [e.done for e in events if isinstance(e, SdPrinting)]
    assert done == sorted(done)
    assert len(set(done)) > 3
    assert SdDone() in events
    assert any(isinstance(e, ProgressReport) for e in events)
    assert SdNotPrinting() in events[events.index(SdDone()) :]
    assert host.machine.prints[-1][2] == "completed"
    states = [c.state for c in host.machine.state_log]
    assert states == ["Idle", "Heating", "Printing", "Idle"]
    assert host.send("M27 C") == [CurrentFile(None), Ok()]


def test_serial_commands_wait_while_the_file_heats() -> None:
    host = Host(fast(auto_start=True, start_delay_s=0.0))
    host.wait(0.2)
    assert host.machine.state == "Heating"
    assert host.send("M27 C") == []  # queued behind M109
    later = host.wait(20)
    assert CurrentFile("BENCHY~1.GCO", "benchy.gcode") in later


def test_pause_and_resume_from_the_host() -> None:
    host = Host(fast(auto_start=True, start_delay_s=0.0))
    host.wait(3.5)
    assert host.machine.state == "Printing"
    host.send("M25")
    assert host.machine.state == "Paused"
    assert host.send("M27")[0] == SdNotPrinting()  # current 2.x: paused is "not printing"
    assert host.send("M27 C")[0] == CurrentFile("BENCHY~1.GCO", "benchy.gcode")
    before = host.machine.bytes_done
    host.wait(1)
    assert host.machine.bytes_done == before
    host.send("M24")
    host.wait(1)
    assert host.machine.bytes_done > before
    events = host.send("M31")
    assert isinstance(events[0], PrintTime)


def test_m524_aborts() -> None:
    host = Host(fast(auto_start=True, start_delay_s=0.0))
    host.wait(3.5)
    host.send("M524")
    assert host.machine.prints[-1][2] == "aborted"
    assert host.send("M27 C")[0] == CurrentFile(None)


def test_thermal_runaway_halts_and_resets_after_the_duration() -> None:
    host = Host(
        fast(auto_start=True, start_delay_s=0.0, faults=(parse_fault("thermal-runaway@3+2"),))
    )
    events = host.wait(3.2)
    errors = [e for e in events if isinstance(e, ErrorMessage)]
    assert [e.fatal for e in errors] == [True, True]
    assert host.machine.state == "Halted"
    assert host.send("M105") == []  # kill(): nothing answers
    events = host.wait(2)
    assert Start() in events
    assert host.machine.state == "Idle"
    assert host.machine.prints[-1][2] == "failed"


def test_stall_says_nothing_then_comes_back() -> None:
    host = Host(fast(faults=(parse_fault("stall@1+2"),)))
    host.send("M155 S1")
    host.wait(1.1)
    assert host.wait(1.5) == []
    assert host.send("M105") == []
    assert any(isinstance(e, TemperatureReport) for e in host.wait(2))


def test_noise_garbles_some_bytes() -> None:
    machine = fast(faults=(parse_fault("noise@0+100"),), noise_flip=0.2, noise_drop=0.1)
    host = Host(machine)
    host.wait(0.1)
    out = b""
    for _ in range(50):
        machine.receive(b"M105\n", host.t)
        out += machine.take_output()
    assert out.count(b"ok T:") < 50


def test_reboot_fault_mid_print() -> None:
    host = Host(fast(auto_start=True, start_delay_s=0.0, faults=(parse_fault("reboot@50%"),)))
    events = host.wait(30)
    assert Start() in events
    assert host.machine.prints[-1][2] == "failed"
    assert host.machine.state == "Idle"


def test_vanish_is_handed_to_the_runner() -> None:
    machine = fast(faults=(parse_fault("vanish@1+3!"),))
    host = Host(machine)
    host.wait(1.5)
    assert machine.take_vanish() == [(3.0, True)]
    assert machine.take_vanish() == []


def test_truth_in_canonical_states() -> None:
    host = Host(fast(auto_start=True, start_delay_s=0.5, faults=(parse_fault("pause@50%+1"),)))
    host.wait(30)
    intervals = canonical_intervals(host.machine.state_log, host.t)
    assert [i.state for i in intervals] == [
        MachineState.IDLE.value,
        MachineState.RUNNING.value,
        MachineState.PAUSED.value,
        MachineState.RUNNING.value,
        MachineState.IDLE.value,
    ]


@pytest.mark.parametrize(
    ("spec", "fault"),
    [
        ("pause@40%+5", Fault(FaultKind.PAUSE, at_pct=40.0, duration=5.0)),
        ("thermal-runaway@30+10", Fault(FaultKind.THERMAL_RUNAWAY, at=30.0, duration=10.0)),
        ("vanish@20+4!", Fault(FaultKind.VANISH, at=20.0, duration=4.0, reboot=True)),
        ("noise@10+5", Fault(FaultKind.NOISE, at=10.0, duration=5.0)),
    ],
)
def test_parse_fault(spec: str, fault: Fault) -> None:
    assert parse_fault(spec) == fault


@pytest.mark.parametrize("spec", ["pause", "melt@3", "pause@x", "pause@3+-1"])
def test_bad_faults(spec: str) -> None:
    with pytest.raises(SimConfigError):
        parse_fault(spec)


def test_cli_arguments() -> None:
    args = build_parser().parse_args(
        [
            "--pty",
            "/tmp/ttyX",
            "--file",
            "part.gcode",
            "--size",
            "5000",
            "--print-s",
            "30",
            "--auto-start",
            "--fault",
            "pause@50%+3",
            "--no-autoreport",
        ]
    )
    config = config_from_args(args)
    assert (config.file_name, config.file_size, config.print_s) == ("part.gcode", 5000, 30.0)
    assert config.auto_start
    assert not config.autoreport_temp
    assert config.faults == (Fault(FaultKind.PAUSE, at_pct=50.0, duration=3.0),)
    assert config.short_name == "PART~1.GCO"
    with pytest.raises(SimConfigError):
        config_from_args(argparse.Namespace(**{**vars(args), "time_scale": 0}))
