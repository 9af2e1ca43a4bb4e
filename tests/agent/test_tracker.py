"""MachineTracker: state records on change only, telemetry batches, alarms, heartbeat, meta."""

from __future__ import annotations

from typing import Any

import pytest

from shopfloor.agent.readings import DeviceEvent, DeviceInfo, Reading, Record
from shopfloor.agent.tracker import MachineTracker
from shopfloor.contract.envelope import RecordKind
from shopfloor.contract.states import Observation

WALL0 = 1_700_000_000_000
Obs = Observation


def reading(t: int, obs: Observation, detail: str = "", **values: float) -> Reading:
    return Reading(WALL0 + t, t, obs, detail, values)


def kinds(records: list[Record]) -> list[RecordKind]:
    return [r.kind for r in records]


def bodies(records: list[Record], kind: RecordKind) -> list[Any]:
    return [dict(r.body) for r in records if r.kind is kind]


def test_starts_offline() -> None:
    tracker = MachineTracker("m1")
    assert tracker.snapshot() == {
        "state": "OFFLINE",
        "since": None,
        "detail": "",
        "line": None,
        "alarm": None,
        "program": None,
        "phase": None,
        "job": None,
    }


def test_state_record_on_change_only() -> None:
    tracker = MachineTracker("m1")
    out = tracker.update(reading(0, Obs.REPORTS_IDLE, "Idle"))
    assert bodies(out, RecordKind.STATE) == [
        {
            "state": "IDLE",
            "since": WALL0,
            "detail": "Idle",
            "line": None,
            "alarm": None,
            "program": None,
            "phase": None,
            "job": None,
        }
    ]
    assert out[0].machine == "m1"
    assert tracker.update(reading(200, Obs.REPORTS_IDLE, "Idle")) == []
    out = tracker.update(reading(400, Obs.REPORTS_RUNNING, "Run"))
    assert bodies(out, RecordKind.STATE)[0]["state"] == "RUNNING"
    assert bodies(out, RecordKind.STATE)[0]["since"] == WALL0 + 400


def test_detail_change_within_a_state_keeps_since() -> None:
    tracker = MachineTracker("m1")
    tracker.update(reading(0, Obs.REPORTS_PAUSED, "Hold:1"))
    out = tracker.update(reading(300, Obs.REPORTS_PAUSED, "Hold:0"))
    (body,) = bodies(out, RecordKind.STATE)
    assert body["state"] == "PAUSED"
    assert body["detail"] == "Hold:0"
    assert body["since"] == WALL0


def test_line_is_carried_but_does_not_trigger() -> None:
    tracker = MachineTracker("m1")
    tracker.update(Reading(WALL0, 0, Obs.REPORTS_RUNNING, "Run", {}, 10))
    assert tracker.update(Reading(WALL0 + 200, 200, Obs.REPORTS_RUNNING, "Run", {}, 11)) == []
    assert tracker.snapshot()["line"] == 11


def test_silence_and_link_loss() -> None:
    tracker = MachineTracker("m1")
    tracker.update(reading(0, Obs.REPORTS_RUNNING, "Run"))
    out = tracker.update(reading(2000, Obs.SILENT, "no status report"))
    (body,) = bodies(out, RecordKind.STATE)
    assert (body["state"], body["detail"]) == ("OFFLINE", "silent")
    assert tracker.update(reading(2100, Obs.LINK_LOST)) == []  # still OFFLINE: no record
    out = tracker.update(reading(3000, Obs.REPORTS_RUNNING, "Run"))
    assert bodies(out, RecordKind.STATE)[0]["state"] == "RUNNING"


def test_silence_keeps_alarm() -> None:
    tracker = MachineTracker("m1")
    tracker.update(reading(0, Obs.REPORTS_ALARM, "Alarm"))
    assert tracker.update(reading(2000, Obs.SILENT)) == []
    assert tracker.snapshot()["state"] == "ALARM"
    assert tracker.snapshot()["detail"] == "Alarm"


def test_telemetry_batches_by_time() -> None:
    tracker = MachineTracker("m1", telemetry_interval_ms=1000, max_samples_per_batch=50)
    out: list[Record] = []
    for t in range(0, 1000, 200):
        out += tracker.update(reading(t, Obs.REPORTS_RUNNING, "Run", feed_mm_min=float(t)))
    assert RecordKind.TELEMETRY not in kinds(out)
    out = tracker.update(reading(1000, Obs.REPORTS_RUNNING, "Run", feed_mm_min=1000.0))
    (batch,) = bodies(out, RecordKind.TELEMETRY)
    assert [s["ts"] for s in batch["samples"]] == [WALL0 + t for t in range(0, 1001, 200)]
    assert batch["samples"][-1]["values"] == {"feed_mm_min": 1000.0}


def test_telemetry_batches_by_size() -> None:
    tracker = MachineTracker("m1", telemetry_interval_ms=60_000, max_samples_per_batch=3)
    batches = []
    for t in range(7):
        batches += bodies(
            tracker.update(reading(t, Obs.REPORTS_IDLE, "Idle", x=float(t))), RecordKind.TELEMETRY
        )
    assert [len(b["samples"]) for b in batches] == [3, 3]


def test_flush_emits_a_due_batch_and_nothing_else() -> None:
    tracker = MachineTracker("m1", telemetry_interval_ms=1000)
    tracker.update(reading(0, Obs.REPORTS_IDLE, "Idle", x=1.0))
    assert tracker.flush(WALL0 + 500, 500) == []
    out = tracker.flush(WALL0 + 1000, 1000)
    assert kinds(out) == [RecordKind.TELEMETRY]
    assert tracker.flush(WALL0 + 5000, 5000) == []


def test_pending_telemetry_goes_out_before_a_state_change() -> None:
    tracker = MachineTracker("m1")
    tracker.update(reading(0, Obs.REPORTS_RUNNING, "Run", x=1.0))
    out = tracker.update(reading(200, Obs.REPORTS_IDLE, "Idle", x=2.0))
    assert kinds(out) == [RecordKind.TELEMETRY, RecordKind.STATE]
    assert bodies(out, RecordKind.TELEMETRY)[0]["samples"] == [{"ts": WALL0, "values": {"x": 1.0}}]


def test_heartbeat() -> None:
    tracker = MachineTracker("m1", heartbeat_ms=60_000)
    tracker.update(reading(0, Obs.REPORTS_IDLE, "Idle"))
    assert tracker.flush(WALL0 + 59_999, 59_999) == []
    out = tracker.flush(WALL0 + 60_000, 60_000)
    assert bodies(out, RecordKind.STATE) == [tracker.snapshot()]
    assert tracker.flush(WALL0 + 61_000, 61_000) == []
    out = tracker.update(reading(120_000, Obs.REPORTS_IDLE, "Idle"))
    assert kinds(out) == [RecordKind.STATE]


def test_alarm_raised_and_cleared() -> None:
    tracker = MachineTracker("m1")
    tracker.update(reading(0, Obs.REPORTS_RUNNING, "Run"))
    out = tracker.update(DeviceEvent(WALL0 + 100, 100, "alarm_raised", 1, "Hard limit"))
    assert bodies(out, RecordKind.EVENT) == [
        {"event": "alarm_raised", "code": 1, "text": "Hard limit"}
    ]
    out = tracker.update(reading(200, Obs.REPORTS_ALARM, "Alarm"))
    (state,) = bodies(out, RecordKind.STATE)
    assert state["state"] == "ALARM"
    assert state["alarm"] == {"code": 1, "text": "Hard limit"}
    # silent after the critical alarm: still ALARM, nothing cleared
    assert tracker.update(reading(2200, Obs.SILENT)) == []
    out = tracker.update(reading(3000, Obs.REPORTS_IDLE, "Idle"))
    assert kinds(out) == [RecordKind.EVENT, RecordKind.STATE]
    assert bodies(out, RecordKind.EVENT) == [
        {"event": "alarm_cleared", "code": 1, "text": "Hard limit"}
    ]
    assert bodies(out, RecordKind.STATE)[0]["alarm"] is None


def test_alarm_push_while_in_alarm_updates_state() -> None:
    tracker = MachineTracker("m1")
    tracker.update(reading(0, Obs.REPORTS_ALARM, "Alarm"))
    out = tracker.update(DeviceEvent(WALL0 + 1, 1, "alarm_raised", 2, "Soft limit"))
    assert kinds(out) == [RecordKind.EVENT, RecordKind.STATE]
    assert bodies(out, RecordKind.STATE)[0]["alarm"]["code"] == 2


def test_alarm_without_alarm_state_is_cleared_by_next_report() -> None:
    tracker = MachineTracker("m1")
    tracker.update(reading(0, Obs.REPORTS_IDLE, "Idle"))
    tracker.update(DeviceEvent(WALL0 + 10, 10, "alarm_raised", 3, "Reset while in motion"))
    out = tracker.update(reading(200, Obs.REPORTS_IDLE, "Idle"))
    assert bodies(out, RecordKind.EVENT) == [
        {"event": "alarm_cleared", "code": 3, "text": "Reset while in motion"}
    ]


def test_leaving_alarm_without_a_push_still_clears() -> None:
    tracker = MachineTracker("m1")
    tracker.update(reading(0, Obs.REPORTS_ALARM, "Alarm"))
    out = tracker.update(reading(200, Obs.REPORTS_IDLE, "Idle"))
    assert bodies(out, RecordKind.EVENT) == [{"event": "alarm_cleared", "code": None, "text": ""}]


def test_other_events() -> None:
    tracker = MachineTracker("m1")
    out = tracker.update(DeviceEvent(WALL0, 0, "error_reply", 20, "Unsupported"))
    assert out == [
        Record(
            RecordKind.EVENT,
            "m1",
            WALL0,
            0,
            {"event": "error_reply", "code": 20, "text": "Unsupported"},
        )
    ]


def test_meta_merges_and_only_emits_on_change() -> None:
    tracker = MachineTracker("m1", kind="laser")
    tracker.update(DeviceEvent(WALL0 + 5, 5, "device_reset", None, "Grbl 1.1h"))
    (meta,) = tracker.update(DeviceInfo("grbl", "grbl 1.1h", {"flavor": "grbl"}))
    assert meta.kind is RecordKind.META
    assert (meta.ts_ms, meta.mono_ms) == (WALL0 + 5, 5)
    assert meta.body == {
        "protocol": "grbl",
        "firmware": "grbl 1.1h",
        "options": {"flavor": "grbl"},
        "kind": "laser",
    }
    (meta,) = tracker.update(DeviceInfo("grbl", "1.1h.20190830", {"option_letters": "V"}))
    assert meta.body["firmware"] == "1.1h.20190830"
    assert meta.body["options"] == {"flavor": "grbl", "option_letters": "V"}
    assert tracker.update(DeviceInfo("grbl", "1.1h.20190830", {"option_letters": "V"})) == []


def test_rejects_nonsense_settings() -> None:
    with pytest.raises(ValueError, match="positive"):
        MachineTracker("m1", telemetry_interval_ms=0)


def test_program_and_phase_changes_are_state_changes_and_are_kept() -> None:
    tracker = MachineTracker("kiln")
    first = Reading(WALL0, 0, Obs.REPORTS_RUNNING, "Run", program="Cone 6 glaze", phase="heating")
    (state,) = bodies(tracker.update(first), RecordKind.STATE)
    assert (state["program"], state["phase"]) == ("Cone 6 glaze", "heating")
    # A reading that does not say keeps what was known, and is no change.
    same = Reading(WALL0 + 100, 100, Obs.REPORTS_RUNNING, "Run")
    assert bodies(tracker.update(same), RecordKind.STATE) == []
    soak = Reading(WALL0 + 200, 200, Obs.REPORTS_RUNNING, "Run", phase="soaking")
    (state,) = bodies(tracker.update(soak), RecordKind.STATE)
    assert (state["program"], state["phase"], state["since"]) == ("Cone 6 glaze", "soaking", WALL0)


def test_job_events_travel_as_events_and_show_in_the_snapshot() -> None:
    tracker = MachineTracker("router")
    tracker.update(reading(0, Obs.REPORTS_RUNNING, "Run"))
    start = DeviceEvent(
        WALL0 + 10,
        10,
        "job_started",
        data={"job": "j1", "program": "sign.nc", "unit": "lines", "total": 200},
    )
    out = tracker.update(start)
    assert kinds(out) == [RecordKind.EVENT, RecordKind.STATE]
    event = bodies(out, RecordKind.EVENT)[0]
    assert (event["event"], event["job"], event["total"]) == ("job_started", "j1", 200)
    state = bodies(out, RecordKind.STATE)[0]
    assert state["program"] == "sign.nc"
    assert state["job"] == {
        "job": "j1",
        "program": "sign.nc",
        "unit": "lines",
        "total": 200,
        "done": 0,
        "started": WALL0 + 10,
    }
    progress = DeviceEvent(WALL0 + 20, 20, "job_progress", data={"job": "j1", "done": 50})
    assert kinds(tracker.update(progress)) == [RecordKind.EVENT]
    assert tracker.snapshot()["job"]["done"] == 50
    # Progress for another job does not touch this one.
    tracker.update(DeviceEvent(WALL0 + 25, 25, "job_progress", data={"job": "zz", "done": 9}))
    assert tracker.snapshot()["job"]["done"] == 50
    end = DeviceEvent(WALL0 + 30, 30, "job_ended", data={"job": "j1", "outcome": "completed"})
    out = tracker.update(end)
    assert kinds(out) == [RecordKind.EVENT, RecordKind.STATE]
    assert bodies(out, RecordKind.STATE)[0]["job"] is None
    assert tracker.snapshot()["program"] == "sign.nc"


def test_phase_ends_with_the_firing() -> None:
    tracker = MachineTracker("kiln")
    tracker.update(Reading(WALL0, 0, Obs.REPORTS_RUNNING, "Run", phase="cooling"))
    (state,) = bodies(tracker.update(reading(100, Obs.REPORTS_IDLE, "stopped")), RecordKind.STATE)
    assert state["phase"] is None
