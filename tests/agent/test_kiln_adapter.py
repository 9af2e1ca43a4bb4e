"""The kiln state table over every relevant input, the set point trend, and firing jobs."""

from __future__ import annotations

import itertools

import pytest

from shopfloor.agent.adapters.kiln import (
    FiringJobs,
    FiringSchedule,
    FiringSegment,
    KilnAdapter,
    KilnSample,
    Phase,
    SetpointTrend,
    Trend,
    classify,
    decode_sample,
)
from shopfloor.agent.adapters.kiln_profile import load_profile
from shopfloor.agent.readings import DeviceEvent, Reading
from shopfloor.contract.states import Observation

PV_SP = [(None, None), (20.0, 600.0), (595.0, 600.0), (700.0, 600.0)]


@pytest.mark.parametrize(
    ("sensor_break", "over", "alarm", "running", "pv_sp", "trend"),
    list(
        itertools.product(
            [False, True], [False, True], [False, True], [None, False, True], PV_SP, list(Trend)
        )
    ),
)
def test_state_table(
    sensor_break: bool,
    over: bool,
    alarm: bool,
    running: bool | None,
    pv_sp: tuple[float | None, float | None],
    trend: Trend,
) -> None:
    pv, sp = pv_sp
    sample = KilnSample(pv_c=pv, sp_c=sp, running=running, alarm=alarm, sensor_break=sensor_break)
    limit = 10.0 if over else None
    observation, detail, phase = classify(sample, trend, over_temperature_c=limit)
    over_hit = over and pv is not None
    if sensor_break or over_hit or alarm:
        assert observation is Observation.REPORTS_ALARM
        assert phase is None
        expected = "sensor_break" if sensor_break else "over_temperature" if over_hit else None
        assert expected is None or detail == expected
        return
    fires = running if running is not None else (sp is not None and sp > 40.0)
    if not fires:
        assert (observation, detail, phase) == (Observation.REPORTS_IDLE, "stopped", None)
        return
    assert observation is Observation.REPORTS_RUNNING
    if trend is Trend.RISING:
        assert phase is Phase.HEATING
    elif trend is Trend.FALLING:
        assert phase is Phase.COOLING
    elif pv is None or sp is None:
        assert phase is None
    elif pv < sp - 10:
        assert phase is Phase.HEATING
    elif pv > sp + 10:
        assert phase is Phase.COOLING
    else:
        assert phase is (Phase.SOAKING if trend is Trend.FLAT else None)


def test_trend() -> None:
    trend = SetpointTrend(flat_after_ms=1000)
    assert trend.update(100.0, 0) is Trend.UNKNOWN
    assert trend.update(100.1, 100) is Trend.RISING
    assert trend.update(100.1, 900) is Trend.RISING
    assert trend.update(100.1, 1200) is Trend.FLAT
    assert trend.update(90.0, 1300) is Trend.FALLING
    assert trend.update(None, 1400) is Trend.UNKNOWN


def test_decode_cn7500_words() -> None:
    profile = load_profile("cn7500")
    words = {
        "pv": (12220,),
        "sp": (12225,),
        "output_pct": (455,),
        "alarm": (0x08,),
        "segment": (2,),
        "run": (1,),
        "firmware": (0x0100,),
    }
    sample = decode_sample(profile, words)
    assert sample == KilnSample(
        pv_c=1222.0, sp_c=1222.5, output_pct=45.5, segment=3, running=True, firmware=0x100
    )
    broken = decode_sample(profile, {**words, "pv": (0x8003,), "alarm": (0x18,)})
    assert broken.sensor_break
    assert broken.alarm
    assert broken.pv_c is None
    fahrenheit = decode_sample(profile, {"pv": (21200,)}, unit="F")
    assert fahrenheit.pv_c == pytest.approx(1160.0)


SCHEDULE = FiringSchedule("test", (FiringSegment(100.0, 120.0, 6.0),))  # 1 h + 6 min from 20


def _events(items: list[DeviceEvent]) -> list[tuple[str, dict[str, object]]]:
    return [(e.event, dict(e.data)) for e in items]


def test_firing_job_completed() -> None:
    jobs = FiringJobs(SCHEDULE, progress_every_ms=1000)
    sample = KilnSample(pv_c=20.0, sp_c=20.0, segment=1)
    assert jobs.update(False, False, sample, 0, 0) == []
    [started] = jobs.update(True, False, sample, 1000, 1000)
    assert started.event == "job_started"
    assert started.data["total"] == 3960
    assert started.data["unit"] == "seconds"
    assert started.data["program"] == "test"
    [progress] = jobs.update(True, False, sample, 3000, 3000)
    assert progress.data["done"] == 2
    assert progress.data["segment"] == 1
    assert jobs.update(None, False, sample, 5000, 5000) == []  # unknown run state: no change
    [ended] = jobs.update(False, False, sample, 3_700_000, 3_700_000)
    assert ended.data["outcome"] == "completed"
    assert jobs.job is None


def test_firing_job_aborted_and_failed() -> None:
    jobs = FiringJobs(SCHEDULE)
    sample = KilnSample(pv_c=20.0)
    jobs.update(True, False, sample, 0, 0)
    [ended] = jobs.update(False, False, sample, 60_000, 60_000)
    assert ended.data["outcome"] == "aborted"
    jobs.update(True, False, sample, 70_000, 70_000)
    jobs.update(True, True, sample, 80_000, 80_000)
    [failed] = jobs.update(False, True, sample, 90_000, 90_000)
    assert failed.data["outcome"] == "failed"


def test_adapter_raises_the_alarm_once_and_reports_values() -> None:
    adapter = KilnAdapter(load_profile("cn7500"), flat_after_ms=1000)
    words = {"pv": (0x8003,), "sp": (6000,), "alarm": (0x18,), "run": (1,)}
    first = adapter.translate(words, ts_ms=0, mono_ms=0)
    second = adapter.translate(words, ts_ms=100, mono_ms=100)
    raised = [i for i in first + second if isinstance(i, DeviceEvent) and i.event == "alarm_raised"]
    assert len(raised) == 1
    reading = next(i for i in second if isinstance(i, Reading))
    assert reading.observation is Observation.REPORTS_ALARM
    assert reading.values == {"setpoint_c": 600.0}


def test_outcome_from_the_controllers_last_segment() -> None:
    jobs = FiringJobs(None)
    jobs.update(True, False, KilnSample(segment=1, last_segment=4), 0, 0)
    [aborted] = jobs.update(False, False, KilnSample(segment=2, last_segment=4), 9000, 9000)
    assert aborted.data["outcome"] == "aborted"
    jobs.update(True, False, KilnSample(segment=1, last_segment=4), 10_000, 10_000)
    jobs.update(True, False, KilnSample(segment=4, last_segment=4), 20_000, 20_000)
    [done] = jobs.update(False, False, KilnSample(segment=4, last_segment=4), 30_000, 30_000)
    assert done.data["outcome"] == "completed"
