"""MarlinAdapter: the state mapping over every input that matters, and job events."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from shopfloor.agent.adapters.marlin import MarlinAdapter, Status, observe, temperature_values
from shopfloor.agent.protocols.marlin import MarlinEvent, MarlinProtocol, TemperatureReport
from shopfloor.agent.readings import DeviceEvent, DeviceInfo, Reading
from shopfloor.agent.tracker import MachineTracker
from shopfloor.contract.states import MachineState, Observation

NOW = 100_000


# --------------------------------------------------------------------- the state table

SD_STATES = ("unknown", "printing", "not_printing")


def all_statuses() -> list[Status]:
    out = []
    for halted, sd, file_open, action, user, heating, target, below, checking in itertools.product(
        (None, "Thermal Runaway"),
        SD_STATES,
        (None, False, True),
        (False, True),
        (None, NOW - 1, NOW + 1000),
        (None, NOW - 1, NOW + 1000),
        (False, True),
        (False, True),
        (False, True),
    ):
        out.append(
            Status(
                halted=halted,
                sd=sd,
                file_open=file_open,
                action_paused=action,
                user_paused_until=user,
                heating_until=heating,
                target_set=target,
                below_target=below,
                checking_file=checking,
            )
        )
    return out


def expected(status: Status) -> tuple[Observation, str] | None:
    """The table of the adapter's docstring, written out independently."""
    if status.halted:
        return Observation.REPORTS_ALARM, status.halted
    if status.sd == "unknown":
        return None
    if status.user_paused_until is not None and status.user_paused_until > NOW:
        return Observation.REPORTS_PAUSED, "paused for user"
    if status.action_paused and status.sd == "printing":
        return Observation.REPORTS_PAUSED, "paused"
    heating = (
        status.heating_until is not None and status.heating_until > NOW
    ) or status.below_target
    if status.sd == "printing":
        return Observation.REPORTS_RUNNING, "heating" if heating else "printing"
    if status.file_open or status.checking_file:
        return Observation.REPORTS_PAUSED, "sd paused"
    return Observation.REPORTS_IDLE, "heating" if heating or status.target_set else "idle"


def test_observe_over_every_status() -> None:
    statuses = all_statuses()
    assert len(statuses) == 2 * 3 * 3 * 2 * 3 * 3 * 2 * 2 * 2
    for status in statuses:
        assert observe(status, NOW) == expected(status), status


@pytest.mark.parametrize(
    ("lines", "state", "detail"),
    [
        (["Not SD printing", " T:22.00 /0.00 B:21.00 /0.00 @:0 B@:0"], "IDLE", "idle"),
        (["Not SD printing", " T:80.00 /210.00 B:40.00 /60.00 @:127 B@:127"], "IDLE", "heating"),
        (["SD printing byte 10/100"], "RUNNING", "printing"),
        (["SD printing byte 10/100", " T:80.00 /210.00 B:60.00 /60.00 W:?"], "RUNNING", "heating"),
        (["SD printing byte 10/100", " T:80.00 /210.00 B:60.00 /60.00"], "RUNNING", "heating"),
        (["SD printing byte 10/100", " T:208.00 /210.00 B:60.00 /60.00"], "RUNNING", "printing"),
        (["SD printing byte 10/100", "//action:pause"], "PAUSED", "paused"),
        (["SD printing byte 10/100", "echo:busy: paused for user"], "PAUSED", "paused for user"),
        (["SD printing byte 10/100", "Not SD printing"], "PAUSED", "sd paused"),
        (
            ["SD printing byte 10/100", "Not SD printing", "Current file: A~1.GCO a.gcode"],
            "PAUSED",
            "sd paused",
        ),
        (["SD printing byte 10/100", "Not SD printing", "Current file: (no file)"], "IDLE", "idle"),
        (["SD printing byte 10/100", "Done printing file"], "IDLE", "idle"),
        (["Not SD printing", "Error:Printer halted. kill() called!"], "ALARM", None),
        (
            ["SD printing byte 10/100", "Error:Thermal Runaway, system stopped! Heater_ID: 0"],
            "ALARM",
            None,
        ),
        (["Error:Printer halted. kill() called!", "start", "Not SD printing"], "IDLE", "idle"),
        (
            [
                "Error:Printer stopped due to errors.",
                "SD printing byte 5/100",
                "SD printing byte 5/100",
            ],
            "ALARM",
            None,
        ),
        (
            [
                "Error:Printer stopped due to errors.",
                "SD printing byte 5/100",
                "SD printing byte 9/100",
            ],
            "RUNNING",
            None,
        ),
        (["SD printing byte 10/100", "//action:pause", "//action:resume"], "RUNNING", "printing"),
        (
            ["SD printing byte 10/100", "Error:checksum mismatch, Last Line: 3"],
            "RUNNING",
            "printing",
        ),
    ],
)
def test_state_after_lines(lines: list[str], state: str, detail: str | None) -> None:
    tracker = MachineTracker("p1", kind="printer_3d")
    for item in run(MarlinAdapter(), lines):
        tracker.update(item)
    assert tracker.state is MachineState(state)
    if detail is not None:
        assert tracker.detail == detail


def test_nothing_is_reported_before_the_sd_status_is_known() -> None:
    items = run(
        MarlinAdapter(), [" T:22.00 /0.00 B:21.00 /0.00 @:0 B@:0", "ok", "busy: processing"]
    )
    assert [i for i in items if isinstance(i, Reading)] == []


def run(
    adapter: MarlinAdapter, lines: list[str], *, start: int = NOW, step: int = 1000
) -> list[Reading | DeviceEvent | DeviceInfo]:
    proto = MarlinProtocol()
    items: list[Reading | DeviceEvent | DeviceInfo] = []
    t = start
    for line in lines:
        events: list[MarlinEvent] = proto.feed(line.encode() + b"\n")
        for event in events:
            items.extend(adapter.translate(event, ts_ms=t, mono_ms=t))
        t += step
    return items


def job_events(items: list[Reading | DeviceEvent | DeviceInfo]) -> list[tuple[str, dict[str, Any]]]:
    return [(i.event, dict(i.data)) for i in items if isinstance(i, DeviceEvent) and i.data]


# --------------------------------------------------------------------- jobs


def test_a_complete_print() -> None:
    adapter = MarlinAdapter()
    items = run(
        adapter,
        [
            "Not SD printing",
            "SD printing byte 100/1000",
            "Current file: BENCHY~1.GCO benchy.gcode",
            "SD printing byte 400/1000",
            "echo: M73 Progress: 40%; Time left: 2m;",
            "SD printing byte 800/1000",
            "Done printing file",
            "Not SD printing",
        ],
    )
    events = job_events(items)
    kinds = [e for e, _ in events]
    assert kinds == ["job_started", "job_progress", "job_progress", "job_ended"]
    started = events[0][1]
    assert started["program"] == "benchy.gcode"
    assert (started["unit"], started["total"], started["source"]) == ("bytes", 1000, "firmware")
    assert events[1][1]["done"] == 400
    assert events[2][1] == {
        "job": started["job"],
        "done": 800,
        "total": 1000,
        "unit": "bytes",
        "eta_s": 120,
    }
    assert events[3][1] == {
        "job": started["job"],
        "outcome": "completed",
        "done": 1000,
        "total": 1000,
    }
    readings = [i for i in items if isinstance(i, Reading) and "progress_pct" in i.values]
    assert [r.values["progress_pct"] for r in readings] == [10.0, 40.0, 80.0]
    assert readings[-1].program == "benchy.gcode"


def test_progress_is_at_most_once_a_second() -> None:
    lines = ["SD printing byte 1/100", "Current file: A~1.GCO a.gcode"]
    lines += [f"SD printing byte {n}/100" for n in range(2, 30)]
    events = job_events(run(MarlinAdapter(), lines, step=250))
    assert sum(1 for e, _ in events if e == "job_progress") <= 30 * 250 // 1000 + 1


def test_abort_via_m524_ends_the_job_aborted() -> None:
    events = job_events(
        run(
            MarlinAdapter(),
            [
                "SD printing byte 100/1000",
                "Current file: A~1.GCO a.gcode",
                "SD printing byte 300/1000",
                "Not SD printing",
                "Current file: (no file)",
            ],
        )
    )
    assert events[-1][0] == "job_ended"
    assert events[-1][1]["outcome"] == "aborted"
    assert events[-1][1]["done"] == 300


def test_pause_keeps_the_job_and_resume_continues_it() -> None:
    adapter = MarlinAdapter()
    items = run(
        adapter,
        [
            "SD printing byte 100/1000",
            "Current file: A~1.GCO a.gcode",
            "Not SD printing",
            "Current file: A~1.GCO a.gcode",
            "SD printing byte 200/1000",
        ],
    )
    kinds = [e for e, _ in job_events(items)]
    assert "job_ended" not in kinds
    assert adapter.job is not None
    assert adapter.job.done == 200


def test_thermal_runaway_fails_the_job_and_raises_the_alarm_once() -> None:
    items = run(
        MarlinAdapter(),
        [
            "SD printing byte 100/1000",
            "Current file: A~1.GCO a.gcode",
            "Error:Thermal Runaway, system stopped! Heater_ID: 0",
            "Error:Printer halted. kill() called!",
        ],
    )
    alarms = [i for i in items if isinstance(i, DeviceEvent) and i.event == "alarm_raised"]
    assert len(alarms) == 1
    assert "Thermal Runaway" in alarms[0].text
    assert job_events(items)[-1][1]["outcome"] == "failed"
    last = [i for i in items if isinstance(i, Reading)][-1]
    assert last.observation is Observation.REPORTS_ALARM
    assert "Thermal Runaway" in last.detail


def test_reboot_mid_print_fails_the_job() -> None:
    items = run(
        MarlinAdapter(),
        ["SD printing byte 100/1000", "Current file: A~1.GCO a.gcode", "start"],
    )
    assert job_events(items)[-1][1]["outcome"] == "failed"
    assert any(isinstance(i, DeviceEvent) and i.event == "device_reset" for i in items)


def test_cancel_action_makes_the_end_aborted() -> None:
    items = run(
        MarlinAdapter(),
        [
            "SD printing byte 100/1000",
            "Current file: A~1.GCO a.gcode",
            "//action:cancel",
            "Error:Printer halted. kill() called!",
        ],
    )
    assert job_events(items)[-1][1]["outcome"] == "aborted"


def test_a_job_without_a_file_name_starts_after_three_reports() -> None:
    items = run(MarlinAdapter(), [f"SD printing byte {n}/1000" for n in (1, 2, 3, 4)])
    started = [d for e, d in job_events(items) if e == "job_started"]
    assert len(started) == 1
    assert started[0]["program"] is None


def test_a_new_file_ends_the_old_job() -> None:
    items = run(
        MarlinAdapter(),
        [
            "SD printing byte 900/1000",
            "Current file: A~1.GCO a.gcode",
            "SD printing byte 10/500",
            "Current file: B~1.GCO b.gcode",
        ],
    )
    events = job_events(items)
    assert [e for e, _ in events] == ["job_started", "job_ended", "job_started"]
    assert events[-1][1]["program"] == "b.gcode"


def test_device_info_from_m115() -> None:
    items = run(
        MarlinAdapter(),
        [
            "FIRMWARE_NAME:Marlin 2.1.2 (x) MACHINE_TYPE:Ender 3 EXTRUDER_COUNT:1",
            "Cap:AUTOREPORT_TEMP:1",
            "Cap:AUTOREPORT_SD_STATUS:0",
            "ok",
        ],
    )
    infos = [i for i in items if isinstance(i, DeviceInfo)]
    assert infos == [
        DeviceInfo(
            protocol="marlin",
            firmware="Marlin 2.1.2 (x)",
            options={
                "machine_type": "Ender 3",
                "extruders": "1",
                "capabilities": "AUTOREPORT_TEMP",
            },
        )
    ]


def test_temperature_values_names() -> None:
    (report,) = MarlinProtocol().feed(
        b"T:200.0 /205.0 T0:200.0 /205.0 T1:30.0 /0.0 B:60.0 /60.0 C:30.0\n"
    )
    assert isinstance(report, TemperatureReport)
    assert temperature_values(report) == {
        "hotend_c": 200.0,
        "hotend_target_c": 205.0,
        "bed_c": 60.0,
        "bed_target_c": 60.0,
        "chamber_c": 30.0,
        "hotend0_c": 200.0,
        "hotend0_target_c": 205.0,
        "hotend1_c": 30.0,
        "hotend1_target_c": 0.0,
    }
