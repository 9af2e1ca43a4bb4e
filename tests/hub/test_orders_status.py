"""Order status, progress and ETA as pure functions: crafted jobs and machine states."""

from __future__ import annotations

from typing import Any

import pytest

from shopfloor.contract import MachineState
from shopfloor.hub.orders.model import OrderItem, OrderStatus
from shopfloor.hub.orders.status import (
    MachineNow,
    OrderEtaOrigin,
    assign,
    program_matches,
    summarize,
)
from shopfloor.hub.store.base import JobOutcome, JobRow

T0 = 1_764_000_000_000
MIN = 60_000
MILL = "pi-1/mill"
LASER = "pi-1/laser"


def job(
    job_id: int,
    *,
    key: str = MILL,
    program: str = "O01234",
    unit: str = "parts",
    started: int = T0,
    ended: int | None = None,
    outcome: JobOutcome | None = None,
    done: float | None = None,
    total: float | None = None,
    eta: tuple[int, int, int] | None = None,
) -> JobRow:
    return JobRow(
        id=job_id,
        machine_key=key,
        agent_job=f"j{job_id}",
        program=program,
        unit=unit,
        source=None,
        started_at=started,
        ended_at=ended,
        outcome=outcome,
        done=done,
        total=total,
        detail={},
        eta_at=eta[0] if eta else None,
        eta_low_at=eta[1] if eta else None,
        eta_high_at=eta[2] if eta else None,
        eta_origin=None,
        order_ref=None,
        updated_at=started,
    )


def machines(**states: Any) -> dict[str, MachineNow]:
    """mill=RUNNING or mill=(IDLE, "O01234")."""
    out = {}
    for name, value in states.items():
        state, program = value if isinstance(value, tuple) else (value, None)
        out[f"pi-1/{name}"] = MachineNow(id=name, state=MachineState(state), program=program)
    return out


BRACKETS = (OrderItem(part="bracket", quantity=10, program="O01234"),)


def test_no_jobs_and_nothing_loaded_is_received() -> None:
    s = summarize(BRACKETS, "1042", [], machines(mill="IDLE"), now=T0)
    assert s.status is OrderStatus.RECEIVED
    assert (s.made, s.ordered, s.progress) == (0, 10, 0.0)
    assert s.eta_at is None
    assert s.eta_note is not None


@pytest.mark.parametrize("state", ["IDLE", "SETUP", "RUNNING"])
def test_program_loaded_on_a_machine_before_any_job_is_queued(state: str) -> None:
    s = summarize(BRACKETS, "1042", [], machines(mill=(state, "O01234")), now=T0)
    assert s.status is OrderStatus.QUEUED
    assert s.reason is not None
    assert "mill" in s.reason


def test_a_program_carrying_the_ref_is_queued_through_the_pattern() -> None:
    items = (OrderItem(part="sign", quantity=1),)

    def ref_of(program: str) -> str | None:
        return "1042" if "ORDER 1042" in program else None

    loaded = machines(laser=("IDLE", "sign (ORDER 1042).nc"))
    assert summarize(items, "1042", [], loaded, now=T0, ref_of=ref_of).status is (
        OrderStatus.QUEUED
    )
    assert summarize(items, "1043", [], loaded, now=T0, ref_of=ref_of).status is (
        OrderStatus.RECEIVED
    )


def test_a_running_job_is_in_production_with_its_progress_and_eta() -> None:
    running = job(1, done=4, total=10, eta=(T0 + 60 * MIN, T0 + 50 * MIN, T0 + 80 * MIN))
    s = summarize(BRACKETS, "1042", [running], machines(mill="RUNNING"), now=T0 + 10 * MIN)
    assert s.status is OrderStatus.IN_PRODUCTION
    assert (s.made, s.progress) == (4, 0.4)
    assert (s.eta_at, s.eta_low_at, s.eta_high_at) == (T0 + 60 * MIN, T0 + 50 * MIN, T0 + 80 * MIN)
    assert s.eta_origin is OrderEtaOrigin.JOBS


@pytest.mark.parametrize("state", ["ALARM", "OFFLINE"])
def test_a_running_job_on_a_machine_in_alarm_or_offline_is_blocked(state: str) -> None:
    running = job(1, done=4, total=10)
    s = summarize(BRACKETS, "1042", [running], machines(mill=state), now=T0)
    assert s.status is OrderStatus.BLOCKED
    assert s.reason is not None
    assert state in s.reason


def test_paused_is_not_blocked() -> None:
    s = summarize(BRACKETS, "1042", [job(1, done=4, total=10)], machines(mill="PAUSED"), now=T0)
    assert s.status is OrderStatus.IN_PRODUCTION


def test_a_failed_newest_job_blocks_until_a_new_job_starts() -> None:
    failed = job(1, ended=T0 + MIN, outcome=JobOutcome.FAILED, done=3, total=10)
    s = summarize(BRACKETS, "1042", [failed], machines(mill="IDLE"), now=T0 + 2 * MIN)
    assert s.status is OrderStatus.BLOCKED
    assert s.reason is not None
    assert "failed" in s.reason
    rerun = job(2, started=T0 + 3 * MIN, done=1, total=7)
    s = summarize(BRACKETS, "1042", [failed, rerun], machines(mill="RUNNING"), now=T0 + 4 * MIN)
    assert s.status is OrderStatus.IN_PRODUCTION
    assert s.made == 4  # 3 from the failed run + 1 so far


def test_all_pieces_made_is_completed_even_while_the_job_still_runs() -> None:
    running = job(1, done=10, total=50)
    s = summarize(BRACKETS, "1042", [running], machines(mill="RUNNING"), now=T0)
    assert s.status is OrderStatus.COMPLETED
    assert (s.made, s.progress, s.eta_at) == (10, 1.0, None)


def test_jobs_that_count_no_parts_make_per_job_pieces_when_completed() -> None:
    items = (OrderItem(part="panel", quantity=24, program="panel.nc", per_job=12),)
    first = job(
        1, key=LASER, program="panel.nc", unit="lines", ended=T0 + 10 * MIN,
        outcome=JobOutcome.COMPLETED, done=500, total=500,
    )  # fmt: skip
    second = job(
        2, key=LASER, program="panel.nc", unit="lines", started=T0 + 11 * MIN, done=250,
        total=500, eta=(T0 + 21 * MIN, T0 + 20 * MIN, T0 + 23 * MIN),
    )  # fmt: skip
    s = summarize(items, "7", [second, first], machines(laser="RUNNING"), now=T0 + 16 * MIN)
    assert s.status is OrderStatus.IN_PRODUCTION
    assert s.made == 12
    assert s.progress == 0.75  # 12 made + half of the running sheet's 12
    assert s.eta_at == T0 + 21 * MIN
    assert [sh.pieces for sh in s.shares] == [12, 0]


def test_missing_pieces_beyond_the_running_jobs_are_extrapolated_from_finished_runs() -> None:
    items = (OrderItem(part="panel", quantity=36, program="panel.nc", per_job=12),)
    first = job(
        1, key=LASER, program="panel.nc", unit="lines", ended=T0 + 12 * MIN,
        outcome=JobOutcome.COMPLETED,
    )  # fmt: skip
    second = job(
        2, key=LASER, program="panel.nc", unit="lines", started=T0 + 13 * MIN, done=1,
        total=2, eta=(T0 + 19 * MIN, T0 + 18 * MIN, T0 + 20 * MIN),
    )  # fmt: skip
    s = summarize(items, "7", [first, second], machines(laser="RUNNING"), now=T0 + 16 * MIN)
    # 12 pieces are still missing after the running sheet: one more 12-minute sheet.
    assert s.eta_origin is OrderEtaOrigin.EXTRAPOLATED
    assert (s.eta_at, s.eta_low_at, s.eta_high_at) == (
        T0 + 31 * MIN,
        T0 + 30 * MIN,
        T0 + 32 * MIN,
    )


def test_no_eta_when_pieces_are_missing_and_no_run_has_finished() -> None:
    running = job(1, done=2, total=5, eta=(T0 + MIN, T0 + MIN, T0 + MIN))
    s = summarize(BRACKETS, "1042", [running], machines(mill="RUNNING"), now=T0)
    assert s.eta_at is None
    assert s.eta_note is not None
    assert "5 piece(s)" in s.eta_note  # 10 ordered - 2 made - 3 the running job will make


def test_jobs_are_assigned_by_program_then_to_items_without_one() -> None:
    items = (
        OrderItem(part="top", quantity=2, program="top.nc", per_job=1),
        OrderItem(part="leg", quantity=4, per_job=4),
        OrderItem(part="misc", quantity=1),
    )
    runs = [
        job(1, program="TOP.nc", unit="lines"),
        job(2, program="legs.nc", unit="lines", outcome=JobOutcome.COMPLETED, ended=T0),
        job(3, program="other.nc", unit="lines"),
    ]
    # legs.nc fills the leg item (4 pieces), so other.nc goes to the next item with a need.
    assert assign(items, runs) == [0, 1, 2]


@pytest.mark.parametrize(
    ("item", "job_program", "expected"),
    [
        ("O01234", "O01234", True),
        ("o01234", "O01234", True),
        ("bracket", "bracket (ORDER 1042).nc", True),
        ("bracket", "bracket.nc", True),
        ("O1234", "O12345", False),
        ("bracket", None, False),
    ],
)
def test_program_matching(item: str, job_program: str | None, expected: bool) -> None:
    assert program_matches(item, job_program) is expected
