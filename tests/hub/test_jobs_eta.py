"""The ETA estimators, sans-IO: every input crafted, time passed in."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shopfloor.hub.jobs.eta import (
    PROFILE_STEPS,
    EtaInputs,
    LiveRun,
    PastRun,
    ProfileRecorder,
    blend_weight,
    estimate,
    firmware,
    from_history,
    linear,
    parts,
    plain_linear,
    schedule,
)
from shopfloor.hub.store.base import EtaOrigin

T0 = 1_764_000_000_000
MIN = 60_000


def live(
    done: float | None,
    total: float | None,
    *,
    active_min: float,
    elapsed_min: float | None = None,
    since_progress_min: float = 0.0,
    working_since_progress: bool = False,
) -> LiveRun:
    """A run that started at T0; its last progress ``elapsed_min`` in (wall clock)."""
    elapsed = active_min if elapsed_min is None else elapsed_min
    progress_at = T0 + round(elapsed * MIN)
    as_of = progress_at + round(since_progress_min * MIN)
    return LiveRun(
        started_at=T0,
        as_of=as_of,
        done=done,
        total=total,
        active_ms=round(active_min * MIN),
        progress_at=progress_at,
        active_since_progress_ms=round(since_progress_min * MIN) if working_since_progress else 0,
    )


def minutes_left(est: object) -> float:
    assert est is not None
    return (est.at - est.made_at) / MIN  # type: ignore[attr-defined]


def profile(shape: list[float], duration_min: float) -> tuple[int, ...]:
    """A run's profile from the share of its time used at each 5 % mark."""
    assert len(shape) == PROFILE_STEPS + 1
    return tuple(round(f * duration_min * MIN) for f in shape)


def test_linear_extrapolates_working_time_not_wall_time() -> None:
    # 25 % after 30 min of which 10 were a tool change (PAUSED): 20 min of work per 25 %.
    run = live(250, 1000, active_min=20, elapsed_min=30)
    assert minutes_left(linear(run)) == pytest.approx(60)
    assert minutes_left(plain_linear(run)) == pytest.approx(90)
    est = linear(run)
    assert est is not None
    assert est.origin is EtaOrigin.LINEAR
    assert est.low < est.at < est.high


def test_linear_band_narrows_as_progress_grows() -> None:
    widths = []
    for done in (100, 250, 500, 750, 950):
        est = linear(live(done, 1000, active_min=done / 10))
        assert est is not None
        widths.append((est.high - est.low) / max(1, est.at - est.made_at))
    assert widths == sorted(widths, reverse=True)


def test_no_linear_estimate_without_a_total_or_before_any_progress() -> None:
    assert linear(live(100, None, active_min=5)) is None
    assert linear(live(0, 1000, active_min=5)) is None
    assert linear(live(5, 1000, active_min=5)) is None  # 0.5 %: too early to say
    assert linear(live(100, 1000, active_min=0.05)) is None  # 3 s of work: too early


def test_a_held_machine_slides_its_eta_with_the_clock() -> None:
    moving = linear(live(500, 1000, active_min=30))
    held = linear(live(500, 1000, active_min=30, since_progress_min=10))
    assert moving is not None
    assert held is not None
    assert held.at - moving.at == 10 * MIN
    working = linear(
        live(500, 1000, active_min=30, since_progress_min=10, working_since_progress=True)
    )
    assert working is not None
    assert working.at == moving.at  # it worked on a long move: the end did not move


def test_profile_recorder_marks_every_five_percent_by_interpolation() -> None:
    rec = ProfileRecorder()
    rec.add(0.10, 60_000)
    rec.add(0.10, 90_000)  # no progress: the 10 % mark stays where it was reached
    rec.add(0.30, 160_000)
    rec.add(0.25, 200_000)  # an older figure: ignored
    assert rec.marks == [0, 30_000, 60_000, 85_000, 110_000, 135_000, 160_000]
    rec.add(1.0, 860_000)
    assert rec.complete
    assert rec.marks[-1] == 860_000
    assert ProfileRecorder.from_json(rec.to_json()) == rec


def test_history_at_the_start_is_the_past_duration() -> None:
    runs = [PastRun(active_ms=60 * MIN, total=1000), PastRun(active_ms=66 * MIN, total=1000)]
    est = from_history(live(0, 1000, active_min=0), runs)
    assert est is not None
    assert est.origin is EtaOrigin.HISTORY
    assert minutes_left(est) == pytest.approx(63)
    assert (est.low - est.made_at) / MIN <= 60
    assert (est.high - est.made_at) / MIN >= 66


def test_history_shape_beats_linear_on_a_program_with_a_slow_start() -> None:
    # Roughing first: the first half of the lines takes 75 % of the time.
    shape = [0.75 * (k / 10) if k <= 10 else 0.75 + 0.25 * (k - 10) / 10 for k in range(21)]
    past = PastRun(active_ms=80 * MIN, total=1000, profile=profile(shape, 80))
    # This run is 10 % slower (a lower feed override): 50 % after 66 min of work.
    run = live(500, 1000, active_min=66)
    truth = 88 - 66
    est = from_history(run, [past])
    lin = linear(run)
    assert est is not None
    assert lin is not None
    assert abs(minutes_left(est) - truth) < abs(minutes_left(lin) - truth) / 4
    assert minutes_left(lin) == pytest.approx(66)


def test_history_weight_moves_to_the_live_pace() -> None:
    past = PastRun(active_ms=100 * MIN, total=1000)  # even pace
    # This run goes twice as fast: the live side says 1/2 of history's remaining time.
    early = from_history(live(100, 1000, active_min=5), [past])
    late = from_history(live(900, 1000, active_min=45), [past])
    assert early is not None
    assert late is not None
    w = blend_weight(0.1)
    assert 0 < w < blend_weight(0.9) < 1
    assert minutes_left(early) == pytest.approx((1 - w) * 90 + w * 45, abs=1 / 60)
    w = blend_weight(0.9)
    assert minutes_left(late) == pytest.approx((1 - w) * 10 + w * 5, abs=1 / 60)
    assert blend_weight(0.0) == 0.0
    assert blend_weight(1.0) == 1.0


def test_history_scales_a_longer_file_by_rate_per_unit() -> None:
    past = PastRun(active_ms=50 * MIN, total=500)
    est = from_history(live(0, 1000, active_min=0), [past])
    assert minutes_left(est) == pytest.approx(100)


def test_history_without_a_total_counts_down_the_past_duration() -> None:
    runs = [PastRun(active_ms=40 * MIN, total=None), PastRun(active_ms=44 * MIN, total=None)]
    est = from_history(live(120, None, active_min=30), runs)
    assert minutes_left(est) == pytest.approx(12)


def test_firmware_estimate_counts_from_its_report() -> None:
    run = live(300, 1000, active_min=20, since_progress_min=1)
    est = firmware(run, 1800)
    assert est.origin is EtaOrigin.FIRMWARE
    assert minutes_left(est) == pytest.approx(29)
    assert est.low < est.at < est.high


def test_schedule_is_the_time_left_plus_the_slip() -> None:
    run = live(3600, 36_000, active_min=60)  # 1 h of a 10 h firing
    on_time = schedule(run)
    slipped = schedule(run, slip_ms=20 * MIN)
    assert on_time is not None
    assert slipped is not None
    assert on_time.origin is EtaOrigin.SCHEDULE
    assert minutes_left(on_time) == pytest.approx(540)
    assert minutes_left(slipped) == pytest.approx(560)
    assert on_time.low == on_time.at  # a controller's schedule is never early
    assert slipped.high - slipped.at >= 20 * MIN  # it may slip as much again
    overrun = schedule(live(40_000, 36_000, active_min=667))
    assert overrun is not None
    assert overrun.at == overrun.made_at // 1000 * 1000 or minutes_left(overrun) < 1


def test_parts_are_cycles_times_parts_left_less_the_cycle_in_progress() -> None:
    run = live(10, 50, active_min=25)
    cycles = [150_000] * 9 + [160_000]
    est = parts(run, cycles, last_part_at=run.as_of - 60_000, origin=EtaOrigin.HISTORY)
    assert est is not None
    assert minutes_left(est) == pytest.approx((150_000 - 60_000 + 39 * 150_000) / MIN)
    assert est.low < est.at < est.high
    one_part = parts(
        live(0, None, active_min=1), [100_000, 120_000], last_part_at=T0, origin=EtaOrigin.LINEAR
    )
    assert minutes_left(one_part) == pytest.approx((110_000 - MIN) / MIN)
    assert (
        parts(live(50, 50, active_min=1), cycles, last_part_at=T0, origin=EtaOrigin.HISTORY) is None
    )


def test_estimate_picks_by_what_the_job_has() -> None:
    run = live(500, 1000, active_min=30)
    assert estimate(EtaInputs(live=run, unit="lines")).origin is EtaOrigin.LINEAR  # type: ignore[union-attr]
    past = [PastRun(active_ms=50 * MIN, total=1000)]
    chosen = estimate(EtaInputs(live=run, unit="lines", history=past))
    assert chosen is not None
    assert chosen.origin is EtaOrigin.HISTORY
    chosen = estimate(EtaInputs(live=run, unit="bytes", firmware_eta_s=600, history=past))
    assert chosen is not None
    assert chosen.origin is EtaOrigin.FIRMWARE
    chosen = estimate(EtaInputs(live=run, unit="seconds", firmware_eta_s=600))
    assert chosen is not None
    assert chosen.origin is EtaOrigin.SCHEDULE
    chosen = estimate(
        EtaInputs(live=run, unit="parts", cycles_ms=[MIN] * 3, cycles_from_history=True)
    )
    assert chosen is not None
    assert chosen.origin is EtaOrigin.HISTORY
    assert estimate(EtaInputs(live=live(None, None, active_min=3), unit="lines")) is None


@given(
    done=st.floats(0, 2000),
    total=st.floats(1, 2000),
    active=st.floats(0, 600),
    idle=st.floats(0, 60),
    since=st.floats(0, 30),
    durations=st.lists(st.floats(1, 900), max_size=5),
    unit=st.sampled_from(["lines", "bytes", "parts", "seconds"]),
    eta_s=st.none() | st.floats(0, 50_000),
)
def test_every_estimate_is_ordered_and_in_the_future(
    done: float,
    total: float,
    active: float,
    idle: float,
    since: float,
    durations: list[float],
    unit: str,
    eta_s: float | None,
) -> None:
    run = live(done, total, active_min=active, elapsed_min=active + idle, since_progress_min=since)
    inputs = EtaInputs(
        live=run,
        unit=unit,
        firmware_eta_s=eta_s,
        history=[PastRun(active_ms=round(d * MIN), total=total) for d in durations],
        cycles_ms=[round(d * 1000) for d in durations],
        last_part_at=T0,
    )
    est = estimate(inputs)
    if est is None:
        return
    assert est.low <= est.at <= est.high
    assert est.at >= run.as_of // 1000 * 1000
