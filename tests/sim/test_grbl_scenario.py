"""Fault scripts and the demo job loop, on synthetic time."""

from __future__ import annotations

import random

import pytest
from grbl_host import Host

from shopfloor.sim.errors import SimConfigError
from shopfloor.sim.grbl import (
    Fault,
    FaultKind,
    GrblSimConfig,
    JobLoop,
    Script,
    bundled_programs,
    load_program,
    parse_fault,
)
from shopfloor.sim.grbl.scenario import Driver, drivers_from_config


def drive(host: Host, drivers: list[Driver], seconds: float, step: float = 0.05) -> list[Fault]:
    """Tick drivers and machine like a runner would; return faults handed to the runner."""
    out: list[Fault] = []
    end = host.t + seconds
    while host.t < end:
        host.t += step
        for driver in drivers:
            out.extend(driver.tick(host.machine, host.t))
        host.machine.advance(host.t)
    return out


def states(host: Host) -> list[str]:
    return [s.state for s in host.machine.state_log]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("hard-limit@30", Fault(FaultKind.HARD_LIMIT, at=30.0, code=1)),
        ("soft-limit@L12", Fault(FaultKind.SOFT_LIMIT, at_line=12, code=2)),
        ("hold@10+5", Fault(FaultKind.HOLD, at=10.0, duration=5.0)),
        ("alarm:5@2", Fault(FaultKind.ALARM, at=2.0, code=5)),
        ("vanish@40+6!", Fault(FaultKind.VANISH, at=40.0, duration=6.0, reboot=True)),
        ("DOOR@L3+1.5", Fault(FaultKind.DOOR, at_line=3, duration=1.5)),
    ],
)
def test_parse_fault(spec: str, expected: Fault) -> None:
    assert parse_fault(spec) == expected


@pytest.mark.parametrize("spec", ["hold", "explode@3", "hold@x", "hold@3+y", "alarm:x@1"])
def test_parse_fault_rejects_nonsense(spec: str) -> None:
    with pytest.raises(SimConfigError):
        parse_fault(spec)


def test_bundled_programs_have_headers_naming_them() -> None:
    assert set(bundled_programs()) == {"router-sign", "laser-badge"}
    for name in bundled_programs():
        program = load_program(name)
        assert program.lines[0] == f"(Program: {name})"
        assert program.lines[1] == f"(Lines: {len(program.lines)})"
    laser = load_program("laser-badge")
    assert any("M4" in line for line in laser.lines)
    assert load_program("router-sign").lines[-1].endswith("M30")


@pytest.mark.parametrize(("name", "laser"), [("router-sign", False), ("laser-badge", True)])
def test_program_durations_at_demo_speed(name: str, laser: bool) -> None:
    host = Host.make(laser=laser, time_scale=4.0)
    host.lines()
    loop = JobLoop([load_program(name)], repeat=False, hold_chance=0, alarm_chance=0)
    drive(host, [loop], 70.0, 0.1)
    assert loop.finished, states(host)
    started = next(s.t for s in host.machine.state_log if s.state == "Run")
    took = loop.finished[0][0] - started
    assert 20.0 <= took <= 60.0
    assert loop.finished[0][1:] == (name, "done")
    assert "[MSG:Pgm End]" in host.machine.program_responses
    assert host.lines() == []  # the built-in sender's answers do not reach the port


def test_script_hold_then_resume_after_duration() -> None:
    host = Host.make(acceleration=(20.0, 20.0, 20.0))
    host.send(b"G1 X300 F1200\n")
    script = Script([Fault(FaultKind.HOLD, at=1.0, duration=2.0)])
    drive(host, [script], 6.0)
    assert states(host) == ["Idle", "Run", "Hold:1", "Hold:0", "Run"]
    hold_t = next(s.t for s in host.machine.state_log if s.state == "Hold:1")
    resume_t = host.machine.state_log[-1].t
    assert hold_t == pytest.approx(1.05, abs=0.06)
    assert resume_t == pytest.approx(hold_t + 2.0, abs=0.1)
    assert script.done


def test_script_hard_limit_at_line_and_operator_clears_it() -> None:
    host = Host.make()
    host.lines()
    program = load_program("router-sign")
    host.machine.start_program(program.name, program.lines)
    script = Script([Fault(FaultKind.HARD_LIMIT, at_line=30, duration=2.0)])
    drive(host, [script], 60.0)
    lines = host.lines()
    assert lines[:2] == ["ALARM:1", "[MSG:Reset to continue]"]
    assert "Grbl 1.1h ['$' for help]" in lines  # the reset
    progress = host.machine.program
    assert progress is not None
    assert progress.aborted
    assert 30 <= progress.answered < progress.total
    assert states(host)[-3:] == ["Run", "Alarm", "Idle"]  # unlocked with $X


def test_script_door_opens_and_closes() -> None:
    host = Host.make(door_restore_s=0.2)
    host.send(b"G1 X300 F600\n")
    drive(host, [Script([Fault(FaultKind.DOOR, at=0.5, duration=1.0)])], 3.0)
    seq = states(host)
    assert seq[:4] == ["Idle", "Run", "Door:2", "Door:1"]
    assert seq[-3:] == ["Door:0", "Door:3", "Run"]


def test_script_hands_vanish_to_the_runner() -> None:
    host = Host.make()
    script = Script([Fault(FaultKind.VANISH, at=0.2, duration=3.0)])
    out = drive(host, [script], 1.0)
    assert out == [Fault(FaultKind.VANISH, at=0.2, duration=3.0)]


def test_job_loop_cycles_idle_run_hold_run_idle() -> None:
    host = Host.make(time_scale=8.0)
    loop = JobLoop(
        [load_program("router-sign")],
        pause_s=2.0,
        hold_chance=1.0,
        hold_s=1.0,
        alarm_chance=0.0,
        rng=random.Random(1),
    )
    drive(host, [loop], 45.0, 0.05)
    seq = states(host)
    assert len(loop.finished) >= 2
    assert all(how == "done" for _, _, how in loop.finished)
    first = seq.index("Hold:0")
    assert "Run" in seq[1:first]
    assert seq[first + 1] == "Run"
    assert seq.count("Hold:0") >= 2  # every job was held once


def test_job_loop_alarm_is_cleared_and_loop_goes_on() -> None:
    host = Host.make(time_scale=8.0, homing=True, homing_s=0.5)
    loop = JobLoop(
        [load_program("router-sign")],
        pause_s=1.0,
        hold_chance=0.0,
        alarm_chance=1.0,
        alarm_s=1.0,
        rng=random.Random(2),
    )
    drive(host, [loop], 25.0, 0.05)
    seq = states(host)
    assert seq[:3] == ["Alarm", "Home", "Idle"]  # locked at power-up: the operator homes
    assert "Run" in seq
    assert loop.finished
    assert loop.finished[0][2] == "aborted"
    alarm_at = seq.index("Alarm", 1)
    assert "Run" in seq[alarm_at:]  # the next job started after the alarm was cleared


def test_drivers_from_config() -> None:
    assert drivers_from_config(GrblSimConfig()) == []
    demo = drivers_from_config(GrblSimConfig(demo_loop=True, laser=True, seed=1))
    assert isinstance(demo[0], JobLoop)
    assert [p.name for p in demo[0].programs] == ["laser-badge"]
    faults = (parse_fault("hold@1+1"),)
    auto = drivers_from_config(GrblSimConfig(auto_run="router-sign", faults=faults))
    assert isinstance(auto[0], JobLoop)
    assert not auto[0].repeat
    assert isinstance(auto[1], Script)
    with pytest.raises(SimConfigError):
        drivers_from_config(GrblSimConfig(auto_run="no-such-program"))
