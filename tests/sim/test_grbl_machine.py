"""The GRBL 1.1h machine model, driven directly with synthetic time."""

from __future__ import annotations

import pytest
from grbl_host import Host, fields, names

from shopfloor.sim.grbl import load_program
from shopfloor.sim.grbl.machine import BANNER, RX_BUFFER_SIZE

UNLOCK = "[MSG:'$H'|'$X' to unlock]"


def test_banner_on_power_up_and_on_every_reset() -> None:
    host = Host.make()
    assert host.machine.take_output() == BANNER
    host.send(b"\x18")
    assert host.machine.take_output() == BANNER  # idle: no ALARM:3, no lock
    assert host.machine.status == "Idle"


def test_status_report_is_immediate_with_gnea_fields() -> None:
    host = Host.make()
    host.lines()
    host.send(b"?")
    assert host.lines() == ["<Idle|MPos:0.000,0.000,0.000|FS:0,0|WCO:0.000,0.000,0.000>"]
    host.send(b"?")
    assert host.lines() == ["<Idle|MPos:0.000,0.000,0.000|FS:0,0|Ov:100,100,100>"]
    host.send(b"?")
    assert host.lines() == ["<Idle|MPos:0.000,0.000,0.000|FS:0,0>"]


def test_idle_cadence_wco_every_10_ov_pushed_back_one() -> None:
    host = Host.make()
    reports = [host.status() for _ in range(32)]
    wco = [i for i, r in enumerate(reports) if "WCO" in names(r)]
    ov = [i for i, r in enumerate(reports) if "Ov" in names(r)]
    assert wco == [0, 10, 20, 30]
    assert ov == [1, 11, 21, 31]
    assert not set(wco) & set(ov)


def test_busy_cadence_wco_every_30_ov_every_20() -> None:
    host = Host.make(acceleration=(50.0, 50.0, 50.0))
    host.send(b"G1 X500 F600\n")
    host.wait(0.5)
    assert host.machine.status == "Run"
    reports = []
    for _ in range(70):
        host.wait(0.05)
        reports.append(host.status())
    assert all(fields(r)["state"] == "Run" for r in reports)
    # The reset-time counters still apply: the first report of the session had WCO
    # (none was taken before), so count from it.
    wco = [i for i, r in enumerate(reports) if "WCO" in names(r)]
    ov = [i for i, r in enumerate(reports) if "Ov" in names(r)]
    assert wco == [0, 30, 60]
    assert ov == [1, 21, 41, 61]


def test_accessories_only_ride_with_ov() -> None:
    host = Host.make()
    host.send(b"M3 S10000\nM8\n")
    host.wait(1.0)
    reports = [host.status() for _ in range(25)]
    with_a = [r for r in reports if "A" in names(r)]
    assert with_a
    assert all("Ov" in names(r) and fields(r)["A"] == "SF" for r in with_a)
    assert fields(reports[-1])["FS"] == "0,10000"


def test_offset_change_puts_wco_in_next_report() -> None:
    host = Host.make()
    for _ in range(3):
        host.status()
    host.send(b"G0 X10 Y5\n")
    host.wait(2.0)
    host.send(b"G10 L20 P1 X0 Y0\n")
    assert host.lines()[-1] == "ok"
    report = host.status()
    assert fields(report)["WCO"] == "10.000,5.000,0.000"
    host.send(b"G92 Z-2\n")
    assert fields(host.status())["WCO"] == "10.000,5.000,2.000"
    host.send(b"$10=0\n")
    assert fields(host.status())["WPos"] == "0.000,0.000,-2.000"


def test_line_numbers_in_reports_and_build_info() -> None:
    host = Host.make(line_numbers=True)
    host.send(b"$I\n")
    assert host.lines()[-3:] == ["[VER:1.1h.20190830:]", "[OPT:VN,14,128]", "ok"]
    host.send(b"N123 G1 X20 F300\n")
    host.wait(0.5)
    assert fields(host.status())["Ln"] == "123"
    plain = Host.make()
    plain.send(b"$I\n")
    assert plain.lines()[-2] == "[OPT:V,15,128]"
    plain.send(b"N123 G1 X20 F300\n")
    plain.wait(0.5)
    assert "Ln" not in names(plain.status())


def test_feed_ramps_with_acceleration() -> None:
    host = Host.make(acceleration=(20.0, 20.0, 20.0))
    host.send(b"G1 X100 F1200\n")
    feeds = []
    for _ in range(20):
        host.wait(0.1, 0.01)
        feeds.append(int(fields(host.status())["FS"].split(",")[0]))
    assert feeds[0] < feeds[5] < 1200  # accelerating at 20 mm/s^2: 120 mm/min per 0.1 s
    assert feeds[-1] == 1200
    assert feeds == sorted(feeds)


def test_diagonal_rapid_limited_by_axis_rate() -> None:
    host = Host.make(max_rate=(500.0, 500.0, 500.0), acceleration=(100.0, 100.0, 100.0))
    host.send(b"G0 X100 Y50\n")
    host.wait(2.0)
    assert fields(host.status())["FS"] == "559,0"  # observed on the real 1.1h firmware


def test_laser_fs_zero_on_rapid_scaled_with_m4() -> None:
    host = Host.make(laser=True, acceleration=(10.0, 10.0, 10.0))
    host.send(b"$$\n")
    assert "$32=1" in host.lines()
    host.send(b"M4 S500\nG0 X5\n")
    host.wait(0.3)
    assert fields(host.status())["state"] == "Run"
    assert fields(host.status())["FS"].endswith(",0")  # G0: laser off
    host.until("Idle")
    host.send(b"G1 X60 F600\n")
    host.wait(0.3, 0.01)
    feed, power = (int(v) for v in fields(host.status())["FS"].split(","))
    assert 0 < feed < 600
    assert 0 < power < 500
    assert power == pytest.approx(500 * feed / 600, abs=15)
    host.wait(2.0)
    assert fields(host.status())["FS"] == "600,500"
    host.until("Idle")
    assert fields(host.status())["FS"] == "0,0"  # M4: off when motion stops


def test_spindle_mode_s_change_syncs_with_short_idle() -> None:
    host = Host.make()
    host.send(b"M3 S1000\nG1 X5 F600\nS2000\nG1 X10\nS3000\nG1 X15\n")
    host.wait(10.0, 0.01)
    states = [s.state for s in host.machine.state_log]
    assert states.count("Run") >= 3
    assert states[-1] == "Idle"
    runs = [i for i, s in enumerate(states) if s == "Run"]
    assert all(states[i + 1] == "Idle" for i in runs[:-1])


def test_hold_then_resume_and_tilde_dropped_in_hold1() -> None:
    host = Host.make(acceleration=(20.0, 20.0, 20.0))
    host.send(b"G1 X200 F1200\n")
    host.wait(2.0)
    host.send(b"!")
    assert host.machine.status == "Hold:1"
    host.send(b"~")  # dropped: still decelerating
    host.wait(0.3)
    assert host.machine.status == "Hold:1"
    host.until("Hold:0")
    host.wait(1.0)
    assert host.machine.status == "Hold:0"  # the early ~ did not count
    report = fields(host.status())
    assert report["FS"].startswith("0,")
    host.send(b"~")
    assert host.machine.status == "Run"
    host.wait(0.5)
    assert int(fields(host.status())["FS"].split(",")[0]) > 0
    seq = [s.state for s in host.machine.state_log]
    assert seq == ["Idle", "Run", "Hold:1", "Hold:0", "Run"]


def test_hard_limit_is_silent_until_reset_then_locked() -> None:
    host = Host.make()
    for i in range(20):
        host.send(f"G1 X{i + 1} F100\n".encode())
    oks_before = host.lines().count("ok")
    assert oks_before == 15  # the 16th line waits for a planner block
    host.wait(1.0)
    host.lines()
    host.machine.trigger_alarm(1, host.t)
    assert host.lines() == ["ALARM:1", "[MSG:Reset to continue]"]
    host.send(b"?")
    host.send(b"$X\n")
    host.send(b"~!")
    host.wait(1.0)
    assert host.lines() == []
    assert host.machine.silent
    host.send(b"\x18")
    # The line that was waiting is answered, then the banner, then the lock.
    assert host.lines() == ["ok", "", "Grbl 1.1h ['$' for help]", UNLOCK]
    assert fields(host.status())["state"] == "Alarm"
    host.send(b"G0 X0\n")
    assert host.lines() == ["error:9"]
    host.send(b"$X\n")
    assert host.lines() == ["[MSG:Caution: Unlocked]", "ok"]
    assert host.machine.status == "Idle"


def test_soft_reset_while_moving_gives_alarm_3() -> None:
    host = Host.make()
    host.send(b"G1 X50 F500\n")
    host.wait(0.5)
    host.lines()
    host.send(b"\x18")
    assert host.lines() == ["ALARM:3", "", "Grbl 1.1h ['$' for help]", UNLOCK]
    assert host.machine.status == "Alarm"


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"G1 X5 Y5 Q2", 20),
        (b"G5", 20),
        (b"G1 X", 2),
        (b"G1 X-.", 2),
        (b"G0 G1 X1", 21),
        (b"G0 X1 X2", 25),
        (b"G1 X10", 22),
        (b"F-5", 4),
        (b"G4", 28),
        (b"G0 X1 P3", 36),
        (b"N99999999 G0 X1", 27),
        (b"X" + b"1" * 90, 11),
        (b"$Q", 3),
        (b"$1234=5", 3),
        (b"$10=abc", 2),
        (b"$H", 5),
        (b"1X", 1),
        (b"G1.5 X1", 23),
        (b"M3.5", 23),
        (b"M6", 20),
        (b"T300", 38),
        (b"N-1 G0 X1", 4),
        (b"G43.1 X1", 37),
        (b"G10 L2 P9 X1", 29),
        (b"G2 X10 Y10 F100", 35),
    ],
)
def test_error_codes(line: bytes, code: int) -> None:
    host = Host.make()
    host.lines()
    host.send(line + b"\n")
    assert host.lines() == [f"error:{code}"]


def test_locked_when_homing_enabled_and_homing_unlocks() -> None:
    host = Host.make(homing=True, homing_s=1.0)
    assert host.lines() == ["", "Grbl 1.1h ['$' for help]", UNLOCK]
    host.send(b"G0 X1\n")
    assert host.lines() == ["error:9"]
    host.send(b"$H\n")
    assert host.machine.status == "Home"
    host.send(b"?")  # not answered while homing ...
    assert host.lines() == []
    host.wait(1.5)
    lines = host.lines()
    assert lines[0].startswith("<Idle|MPos:-1.000,-1.000,-1.000")  # ... but afterwards
    assert lines[1] == "ok"
    host.send(b"\x18")  # a reset from Idle does not lock again
    assert host.lines() == ["", "Grbl 1.1h ['$' for help]"]


def test_input_filtering_and_crlf_pitfall() -> None:
    host = Host.make()
    host.lines()
    host.send(b"g1 x10 (move) f300 ; comment\r\n")
    assert host.lines() == ["ok", "ok"]  # \r ends the line, \n is an empty line
    host.send(b"$g\n")
    assert host.lines()[0].startswith("[GC:G1 G54 G17 G21 G90 G94 M5 M9 T0 F300 S0]")


def test_realtime_bytes_never_buffered_and_high_bytes_dropped() -> None:
    host = Host.make()
    host.lines()
    host.send(b"G0 X?1\xff\x87\n")
    lines = host.lines()
    assert lines[0].startswith("<Idle|")
    assert lines[1] == "ok"
    host.wait(1.0)
    assert host.machine.position == (1.0, 0.0, 0.0)


def test_planner_full_back_pressure_and_bf() -> None:
    host = Host.make(status_mask=3)
    host.lines()
    for i in range(17):
        host.send(f"G1X{i + 1}F60\n".encode())
    assert host.lines().count("ok") == 15
    waiting = len(b"G1X17F60\n")  # the 16th line is out of the RX buffer, the 17th is in it
    assert fields(host.status())["Bf"] == f"0,{RX_BUFFER_SIZE - waiting}"
    host.wait(1.05)  # the first 1 mm block takes about a second at 60 mm/min
    assert host.lines().count("ok") >= 1


def test_rx_buffer_overflow_loses_bytes() -> None:
    host = Host.make()
    for i in range(15):
        host.send(f"G1X{i + 1}F60\n".encode())
    host.send(b"G1X99F60\n")  # now waiting for the planner: nothing more is read
    host.send(b"G0" * 100)
    assert host.machine.rx_free == 0
    assert host.machine.rx_dropped == 200 - RX_BUFFER_SIZE


def test_character_counting_sender_runs_program_to_pgm_end() -> None:
    host = Host.make(line_numbers=True)
    host.lines()
    program = load_program("router-sign")
    queue = [line.encode() + b"\n" for line in program.lines]
    in_flight: list[int] = []
    answered = 0
    errors = 0
    output: list[str] = []
    total = len(queue)
    while answered < total:
        while queue and sum(in_flight) + len(queue[0]) <= RX_BUFFER_SIZE:
            line = queue.pop(0)
            in_flight.append(len(line))
            host.send(line)
        host.wait(0.1)
        for out in host.lines():
            output.append(out)
            if out == "ok" or out.startswith("error:"):
                errors += out.startswith("error:")
                in_flight.pop(0)
                answered += 1
        assert host.t < 400
    assert errors == 0, output
    assert host.machine.rx_dropped == 0
    assert "[MSG:Pgm End]" in output
    host.until("Idle")
    assert host.machine.state_log[-1].state == "Idle"


def test_check_mode_parses_without_moving_and_resets_on_exit() -> None:
    host = Host.make()
    host.lines()
    host.send(b"$C\n")
    assert host.lines() == ["[MSG:Enabled]", "ok"]
    host.send(b"G1 X10 F100\nG4 P5\nM30\n")
    assert host.lines() == ["ok", "ok", "[MSG:Pgm End]", "ok"]
    assert fields(host.status())["state"] == "Check"
    assert host.machine.position == (0.0, 0.0, 0.0)
    host.send(b"$C\n")
    assert host.lines() == ["[MSG:Disabled]", "ok", "", "Grbl 1.1h ['$' for help]"]
    assert host.machine.status == "Idle"


def test_sleep_answers_nothing_but_status_until_reset() -> None:
    host = Host.make()
    host.lines()
    host.send(b"$SLP\n")
    assert host.lines() == ["ok", "[MSG:Sleeping]"]
    host.send(b"G0 X5\n$I\n")
    assert host.lines() == []
    assert fields(host.status())["state"] == "Sleep"
    host.send(b"\x18")
    assert host.lines() == ["", "Grbl 1.1h ['$' for help]", UNLOCK]


def test_program_end_and_dwell() -> None:
    host = Host.make()
    host.lines()
    host.send(b"G4 P2\n")
    assert host.lines() == []
    host.wait(1.0)
    assert host.lines() == []
    host.wait(1.1)
    assert host.lines() == ["ok"]
    host.send(b"M3 S5000\nM30\n")
    host.wait(1.0)
    assert host.lines()[-2:] == ["[MSG:Pgm End]", "ok"]
    assert fields(host.status())["FS"] == "0,0"


def test_settings_dump_has_the_usual_keys() -> None:
    host = Host.make()
    host.lines()
    host.send(b"$$\n")
    lines = host.lines()
    keys = [line.split("=")[0] for line in lines[:-1]]
    assert keys[:4] == ["$0", "$1", "$2", "$3"]
    for key in ("$10", "$30", "$31", "$32", "$110", "$132"):
        assert key in keys
    assert "$11=0.010" in lines
    assert lines[-1] == "ok"
    host.send(b"$#\n")
    assert host.lines()[0] == "[G54:0.000,0.000,0.000]"


def test_safety_door_while_running_then_resume() -> None:
    host = Host.make(acceleration=(20.0, 20.0, 20.0), door_restore_s=0.5)
    host.send(b"M3 S8000\nG1 X200 F1200\n")
    host.wait(2.0)
    host.send(b"\x84")
    assert host.machine.status == "Door:2"
    assert "[MSG:Check Door]" in host.lines()
    host.until("Door:0")
    assert fields(host.status())["FS"] == "0,0"  # spindle stopped for the door
    host.send(b"~")
    assert host.machine.status == "Door:3"
    host.until("Run")
    host.wait(0.5)
    assert fields(host.status())["FS"].endswith(",8000")
    host.machine.set_door(True, host.t)
    host.until("Door:1")
    assert fields(host.status())["Pn"] == "D"
    host.send(b"~")  # door still open: ignored
    assert host.machine.status == "Door:1"
    host.machine.set_door(False, host.t)
    assert host.machine.status == "Door:0"


def test_jog_and_jog_cancel() -> None:
    host = Host.make(acceleration=(50.0, 50.0, 50.0))
    host.lines()
    host.send(b"$J=G91 X10 F600\n")
    assert host.lines() == ["ok"]
    assert host.machine.status == "Jog"
    host.until("Idle")
    assert host.machine.position == pytest.approx((10.0, 0.0, 0.0))
    host.send(b"$J=G91 X100 F600\n")
    host.wait(0.5)
    host.send(b"\x85")
    host.until("Idle", timeout=5)
    assert host.machine.position[0] < 50
    host.send(b"$J=X5\n")
    assert host.lines()[-1] == "error:22"


def test_state_log_records_times_on_the_caller_clock() -> None:
    host = Host.make(time_scale=10.0)
    host.t = 100.0
    host.machine.advance(100.0)
    host.send(b"G1 X100 F6000\n")  # ~1 s of machine time = ~0.1 s of caller time
    host.wait(1.0, 0.01)
    log = list(host.machine.state_log)
    assert [s.state for s in log] == ["Idle", "Run", "Idle"]
    assert log[1].t == pytest.approx(100.0)
    assert 100.08 < log[2].t < 100.2


def test_feed_override_changes_feed_and_forces_ov() -> None:
    host = Host.make()
    host.send(b"G1 X500 F1000\n")
    host.wait(1.0)
    for _ in range(3):
        host.status()
    host.send(b"\x91\x91")
    host.wait(0.5)
    report = fields(host.status())
    assert report["Ov"] == "120,100,100"
    assert report["FS"].startswith("1200,")


def test_tool_length_offset_and_g28_position() -> None:
    host = Host.make()
    host.status()
    host.send(b"G43.1 Z-5\n")
    assert fields(host.status())["WCO"] == "0.000,0.000,-5.000"
    host.send(b"G49\nG0 X10 Y20\n")
    host.wait(2.0)
    host.send(b"G28.1\nG0 X0 Y0\n")
    host.wait(2.0)
    host.send(b"G28\n")
    host.wait(2.0)
    assert host.machine.position == pytest.approx((10.0, 20.0, 0.0))


def test_laser_s_changes_with_motion_do_not_sync() -> None:
    host = Host.make(laser=True)
    host.send(b"M4 S100\n")
    for i in range(10):
        host.send(f"G1 X{i + 1} S{100 * (i + 1)} F600\nG0 X{i + 1.5} S0\n".encode())
    host.wait(5.0, 0.01)
    states = [s.state for s in host.machine.state_log]
    assert states == ["Idle", "Run", "Idle"]  # one continuous run, no stop-and-go


def test_arc_ends_where_programmed() -> None:
    host = Host.make()
    host.send(b"G0 X10 Y0\nG2 X0 Y-10 I-10 J0 F3000\nG3 X10 Y0 R10\n")
    host.wait(1.0, 0.01)
    assert host.machine.status == "Run"
    assert host.machine.planner_blocks > 2  # the arc went into the planner in chords
    host.until("Idle")
    assert host.machine.position == pytest.approx((10.0, 0.0, 0.0), abs=1e-6)
