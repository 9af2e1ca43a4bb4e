"""GrblAdapter: every GRBL state to its observation, fields to stable names, events to events."""

from __future__ import annotations

import pytest

from shopfloor.agent.adapters.grbl import (
    ALARM_TEXTS,
    ERROR_TEXTS,
    STATE_OBSERVATIONS,
    GrblAdapter,
)
from shopfloor.agent.protocols.grbl import (
    AlarmPush,
    Banner,
    BuildInfo,
    ErrorReply,
    Feedback,
    GrblProtocol,
    Message,
    Ok,
    StatusReport,
)
from shopfloor.agent.readings import DeviceEvent, DeviceInfo, Reading
from shopfloor.agent.tracker import MachineTracker
from shopfloor.contract.states import MachineState, Observation

TS, MONO = 1_700_000_000_000, 5_000

STATES = [
    ("Idle", Observation.REPORTS_IDLE),
    ("Sleep", Observation.REPORTS_IDLE),
    ("Run", Observation.REPORTS_RUNNING),
    ("Run:1", Observation.REPORTS_RUNNING),
    ("Hold:0", Observation.REPORTS_PAUSED),
    ("Hold:1", Observation.REPORTS_PAUSED),
    ("Door:0", Observation.REPORTS_PAUSED),
    ("Door:1", Observation.REPORTS_PAUSED),
    ("Door:2", Observation.REPORTS_PAUSED),
    ("Door:3", Observation.REPORTS_PAUSED),
    ("Tool", Observation.REPORTS_PAUSED),
    ("Jog", Observation.REPORTS_SETUP),
    ("Home", Observation.REPORTS_SETUP),
    ("Check", Observation.REPORTS_SETUP),
    ("Alarm", Observation.REPORTS_ALARM),
    ("Alarm:11", Observation.REPORTS_ALARM),
]


def translate(adapter: GrblAdapter, wire: bytes) -> list[Reading | DeviceEvent | DeviceInfo]:
    out: list[Reading | DeviceEvent | DeviceInfo] = []
    for event in GrblProtocol().feed(wire):
        out.extend(adapter.translate(event, ts_ms=TS, mono_ms=MONO))
    return out


@pytest.mark.parametrize(("state", "observation"), STATES)
def test_every_state(state: str, observation: Observation) -> None:
    (reading,) = translate(GrblAdapter(), f"<{state}|MPos:1,2,3|FS:10,20>\r\n".encode())
    assert isinstance(reading, Reading)
    assert reading.observation is observation
    assert reading.detail == state
    assert (reading.ts_ms, reading.mono_ms) == (TS, MONO)


def test_state_table_covers_the_fact_sheet() -> None:
    assert set(STATE_OBSERVATIONS) == {s.split(":")[0] for s, _ in STATES}


def test_unknown_state_is_counted_not_guessed() -> None:
    adapter = GrblAdapter()
    assert translate(adapter, b"<Dancing|MPos:0,0,0>\r\n") == []
    assert adapter.unknown_states == 1


def test_values_have_stable_names() -> None:
    adapter = GrblAdapter()
    first, second = translate(
        adapter,
        b"<Run|MPos:12.500,40.000,-3.000|Bf:14,127|Ln:42|FS:1200,8000|WCO:2.500,10.000,-23.000>\r\n"
        b"<Run|MPos:12.500,40.000,-3.000|FS:1100,8000|Ov:110,50,90|A:S>\r\n",
    )
    assert isinstance(first, Reading)
    assert isinstance(second, Reading)
    assert first.line == 42
    assert first.values == {
        "feed_mm_min": 1200.0,
        "spindle": 8000.0,
        "x": 12.5,
        "y": 40.0,
        "z": -3.0,
        "wx": 10.0,
        "wy": 30.0,
        "wz": 20.0,
        "planner_blocks_free": 14.0,
        "rx_bytes_free": 127.0,
    }
    # WCO from the cache still gives work coordinates; overrides appear once reported
    assert second.values["wx"] == 10.0
    assert second.values["feed_override_pct"] == 110.0
    assert second.values["rapid_override_pct"] == 50.0
    assert second.values["spindle_override_pct"] == 90.0
    assert second.line is None


def test_laser_mode_renames_spindle() -> None:
    (reading,) = translate(GrblAdapter(laser_mode=True), b"<Run|MPos:0,0,0|FS:3000,650>\r\n")
    assert isinstance(reading, Reading)
    assert reading.values["laser_power"] == 650.0
    assert "spindle" not in reading.values


def test_extra_axes() -> None:
    (reading,) = translate(GrblAdapter(), b"<Idle|MPos:1,2,3,4|FS:0,0>\r\n")
    assert isinstance(reading, Reading)
    assert reading.values["a"] == 4.0


def test_events() -> None:
    adapter = GrblAdapter()
    items = [
        adapter.translate(e, ts_ms=TS, mono_ms=MONO)
        for e in (AlarmPush(1), ErrorReply(20), Message("Pgm End"), AlarmPush(99), ErrorReply(250))
    ]
    alarm = Observation.REPORTS_ALARM
    assert items == [
        [
            DeviceEvent(TS, MONO, "alarm_raised", 1, ALARM_TEXTS[1]),
            Reading(TS, MONO, alarm, detail="ALARM:1"),
        ],
        [DeviceEvent(TS, MONO, "error_reply", 20, ERROR_TEXTS[20])],
        [DeviceEvent(TS, MONO, "message", None, "Pgm End")],
        [
            DeviceEvent(TS, MONO, "alarm_raised", 99, "Alarm 99"),
            Reading(TS, MONO, alarm, detail="ALARM:99"),
        ],
        [DeviceEvent(TS, MONO, "error_reply", 250, "Error 250")],
    ]
    assert "Hard limit" in ALARM_TEXTS[1]
    assert set(range(1, 10)) <= set(ALARM_TEXTS)
    assert set(range(1, 18)) | set(range(20, 39)) <= set(ERROR_TEXTS)


def test_nothing_for_acks_and_other_feedback() -> None:
    adapter = GrblAdapter()
    assert adapter.translate(Ok(), ts_ms=TS, mono_ms=MONO) == []
    assert adapter.translate(Feedback("GC", "G0 G54"), ts_ms=TS, mono_ms=MONO) == []


def cached_wco(adapter: GrblAdapter) -> tuple[float, ...] | None:
    return adapter.cache.wco


def test_banner_resets_cache_and_describes_device() -> None:
    adapter = GrblAdapter()
    translate(adapter, b"<Idle|MPos:0,0,0|FS:0,0|WCO:1,1,1|>\r\n")
    assert cached_wco(adapter) == (1.0, 1.0, 1.0)
    items = adapter.translate(Banner("1.1h", "grbl", "Grbl 1.1h"), ts_ms=TS, mono_ms=MONO)
    assert items == [
        DeviceEvent(TS, MONO, "device_reset", None, "Grbl 1.1h"),
        DeviceInfo("grbl", "grbl 1.1h", {"flavor": "grbl"}),
    ]
    assert cached_wco(adapter) is None
    (reading,) = translate(adapter, b"<Idle|MPos:0,0,0|FS:0,0>\r\n")
    assert isinstance(reading, Reading)
    assert "wx" not in reading.values


def test_build_info() -> None:
    info = BuildInfo("1.1h", "20190830", "", "VN", 14, 128)
    assert GrblAdapter().translate(info, ts_ms=TS, mono_ms=MONO) == [
        DeviceInfo(
            "grbl",
            "1.1h.20190830",
            {"option_letters": "VN", "planner_blocks": "14", "rx_buffer_bytes": "128"},
        )
    ]


def test_report_objects_can_be_used_directly() -> None:
    reading = GrblAdapter().reading(StatusReport("Hold", "0"), ts_ms=1, mono_ms=2)
    assert reading == Reading(1, 2, Observation.REPORTS_PAUSED, "Hold:0", {}, None)


def test_silence_after_a_critical_alarm_push_is_alarm_not_offline() -> None:
    """GRBL 1.1h answers nothing after ALARM:1 until reset (serial-protocols.md, observed)."""
    adapter = GrblAdapter()
    tracker = MachineTracker("m1")
    items = translate(adapter, b"<Run|MPos:1.000,2.000,3.000|FS:500,0>\r\nALARM:1\r\n")
    for item in items:
        tracker.update(item)
    assert tracker.state is MachineState.ALARM
    assert tracker.alarm is not None
    tracker.update(Reading(TS + 5000, MONO + 5000, Observation.SILENT))
    assert tracker.state is MachineState.ALARM
