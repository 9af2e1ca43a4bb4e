"""An order's status, progress and ETA, derived from its jobs and their machines.

Pure functions: no I/O, no clock (``now`` is passed in). docs/api.md "Order status" states
the same rules in words; keep the two in step.

1. Each linked job is assigned to an item: the item whose ``program`` matches the job's
   program (equal, ignoring case, or the job's program name starts with it followed by a
   non-alphanumeric character: ``bracket`` matches ``bracket (ORDER 1042).nc``); else the
   first item without a program that still needs pieces; else the first item without a
   program; else none (the job still shows, but counts for no item).
2. Pieces a job made: its ``done`` when it counts parts (a Haas part counter), else the
   item's ``per_job`` once the job ended ``completed``.
3. ``completed``: every item has its quantity. ``blocked``: a running linked job's machine
   is in ALARM or OFFLINE, or no linked job runs and the newest one ended failed or aborted.
   ``in_production``: a linked job is running or has completed. ``queued``: a machine has
   the order's program loaded (an item's program, or a program whose order reference is
   the order's) but no linked job has started. Otherwise ``received``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from shopfloor.contract import MachineState
from shopfloor.hub.orders.model import OrderItem, OrderStatus
from shopfloor.hub.store.base import JobOutcome, JobRow

#: A machine in one of these states cannot advance a job that runs on it.
BLOCKING_STATES = frozenset({MachineState.ALARM, MachineState.OFFLINE})
PARTS_UNIT = "parts"


class OrderEtaOrigin(enum.StrEnum):
    JOBS = "jobs"  # the latest ETA of the running jobs, which make every piece still missing
    EXTRAPOLATED = "extrapolated"  # plus the missing pieces x the time per piece so far


@dataclass(frozen=True, slots=True)
class MachineNow:
    """What the order roll-up needs to know about one machine right now."""

    id: str  # the public id the API shows
    state: MachineState
    program: str | None = None


@dataclass(frozen=True, slots=True)
class JobShare:
    """What one linked job contributes."""

    job_id: int
    item: int | None  # index into the order's items, or None
    pieces: int  # pieces made (counted for its item, up to the item's quantity)


@dataclass(frozen=True, slots=True)
class OrderSummary:
    status: OrderStatus
    #: Why the order is blocked or queued, in words (None otherwise).
    reason: str | None
    ordered: int
    made: int
    made_per_item: tuple[int, ...]
    progress: float  # in [0, 1]; includes the running jobs' share of their pieces
    eta_at: int | None
    eta_low_at: int | None
    eta_high_at: int | None
    eta_origin: OrderEtaOrigin | None
    #: Why there is no ETA, when there is none and the order is not completed.
    eta_note: str | None
    shares: tuple[JobShare, ...]


def program_matches(item_program: str, job_program: str | None) -> bool:
    if not job_program:
        return False
    want = item_program.strip().casefold()
    have = job_program.strip().casefold()
    if not want:
        return False
    if have == want:
        return True
    return have.startswith(want) and not have[len(want)].isalnum()


def _job_pieces(job: JobRow, item: OrderItem) -> tuple[int, float]:
    """(pieces made, pieces in progress as a fraction) of one job for its item."""
    if job.unit == PARTS_UNIT:
        done = max(0.0, job.done or 0.0)
        if job.total:
            done = min(done, job.total)
        return math.floor(done), 0.0
    if job.outcome is JobOutcome.COMPLETED:
        return item.per_job, 0.0
    if job.outcome is None and job.progress is not None:
        return 0, job.progress * item.per_job
    return 0, 0.0


def _expected_more(job: JobRow, item: OrderItem) -> float | None:
    """Pieces a running job will still make, or None when it cannot say."""
    if job.unit == PARTS_UNIT:
        if not job.total:
            return None
        return max(0.0, job.total - max(0.0, job.done or 0.0))
    return float(item.per_job)


def assign(items: Sequence[OrderItem], jobs: Sequence[JobRow]) -> list[int | None]:
    """The item index of each job (in the order given), by the rules in the module doc."""
    need = [item.quantity for item in items]
    out: list[int | None] = []
    for job in jobs:
        choice: int | None = None
        matching = [
            i
            for i, it in enumerate(items)
            if it.program and program_matches(it.program, job.program)
        ]
        if matching:
            choice = next((i for i in matching if need[i] > 0), matching[0])
        else:
            free = [i for i, it in enumerate(items) if not it.program]
            if free:
                choice = next((i for i in free if need[i] > 0), free[0])
        if choice is not None:
            need[choice] -= _job_pieces(job, items[choice])[0]
        out.append(choice)
    return out


def summarize(
    items: Sequence[OrderItem],
    ref: str,
    jobs: Sequence[JobRow],
    machines: Mapping[str, MachineNow],
    *,
    now: int,
    ref_of: Callable[[str], str | None] | None = None,
) -> OrderSummary:
    """The status, progress and ETA of one order.

    ``jobs`` are the order's linked jobs (any order); ``machines`` maps a job's
    ``machine_key`` to that machine's state now; ``ref_of`` finds the order reference in a
    program name (the configured pattern), for ``queued``.
    """
    ordered_jobs = sorted(jobs, key=lambda j: (j.started_at, j.id))
    where = assign(items, ordered_jobs)
    counted = [0] * len(items)
    partial = [0.0] * len(items)
    shares = []
    for job, idx in zip(ordered_jobs, where, strict=True):
        pieces = 0
        if idx is not None:
            pieces, fraction = _job_pieces(job, items[idx])
            counted[idx] += pieces
            partial[idx] += fraction
        shares.append(JobShare(job_id=job.id, item=idx, pieces=pieces))
    made_per_item = tuple(min(c, it.quantity) for c, it in zip(counted, items, strict=True))
    ordered = sum(it.quantity for it in items)
    made = sum(made_per_item)
    with_partial = sum(
        min(float(it.quantity), c + p) for c, p, it in zip(counted, partial, items, strict=True)
    )
    progress = round(with_partial / ordered, 4) if ordered else 1.0

    status, reason = _status(
        items, ref, ordered_jobs, machines, made_per_item=made_per_item, ref_of=ref_of
    )
    eta = _eta(items, ordered_jobs, where, made_per_item, now=now)
    if status is OrderStatus.COMPLETED:
        eta = _Eta(None, None, None, None, None)
        progress = 1.0
    return OrderSummary(
        status=status,
        reason=reason,
        ordered=ordered,
        made=made,
        made_per_item=made_per_item,
        progress=progress,
        eta_at=eta.at,
        eta_low_at=eta.low,
        eta_high_at=eta.high,
        eta_origin=eta.origin,
        eta_note=eta.note,
        shares=tuple(shares),
    )


def _status(
    items: Sequence[OrderItem],
    ref: str,
    jobs: Sequence[JobRow],
    machines: Mapping[str, MachineNow],
    *,
    made_per_item: Sequence[int],
    ref_of: Callable[[str], str | None] | None,
) -> tuple[OrderStatus, str | None]:
    if items and all(m >= it.quantity for m, it in zip(made_per_item, items, strict=True)):
        return OrderStatus.COMPLETED, None
    running = [j for j in jobs if j.ended_at is None]
    for job in running:
        machine = machines.get(job.machine_key)
        if machine is not None and machine.state in BLOCKING_STATES:
            return (
                OrderStatus.BLOCKED,
                f"machine {machine.id} is {machine.state} while running job {job.id}",
            )
    if not running and jobs:
        newest = jobs[-1]
        if newest.outcome in (JobOutcome.FAILED, JobOutcome.ABORTED):
            machine = machines.get(newest.machine_key)
            name = machine.id if machine else newest.machine_key
            return (
                OrderStatus.BLOCKED,
                f"job {newest.id} on {name} ended {newest.outcome} and no job has started since",
            )
    if running or any(j.outcome is JobOutcome.COMPLETED for j in jobs):
        return OrderStatus.IN_PRODUCTION, None
    for machine in sorted(machines.values(), key=lambda m: m.id):
        if not machine.program:
            continue
        loaded = machine.program
        if any(it.program and program_matches(it.program, loaded) for it in items) or (
            ref_of is not None and ref_of(loaded) == ref
        ):
            return OrderStatus.QUEUED, f"program {loaded!r} is loaded on {machine.id}"
    return OrderStatus.RECEIVED, None


@dataclass(frozen=True, slots=True)
class _Eta:
    at: int | None
    low: int | None
    high: int | None
    origin: OrderEtaOrigin | None
    note: str | None


def _eta(
    items: Sequence[OrderItem],
    jobs: Sequence[JobRow],
    where: Sequence[int | None],
    made_per_item: Sequence[int],
    *,
    now: int,
) -> _Eta:
    missing = [it.quantity - m for it, m in zip(items, made_per_item, strict=True)]
    running = [(j, i) for j, i in zip(jobs, where, strict=True) if j.ended_at is None]
    base_at = base_low = base_high = now
    for job, idx in running:
        if job.eta_at is None:
            return _Eta(None, None, None, None, f"job {job.id} has no ETA yet")
        base_at = max(base_at, job.eta_at)
        base_low = max(base_low, job.eta_low_at if job.eta_low_at is not None else job.eta_at)
        base_high = max(base_high, job.eta_high_at if job.eta_high_at is not None else job.eta_at)
        if idx is not None:
            more = _expected_more(job, items[idx])
            if more is None:
                return _Eta(None, None, None, None, f"job {job.id} does not know its total")
            missing[idx] -= math.ceil(more)
    remaining = sum(max(0, m) for m in missing)
    if remaining == 0:
        if not running:
            return _Eta(None, None, None, None, "no job is running for it")
        return _Eta(base_at, base_low, base_high, OrderEtaOrigin.JOBS, None)
    per_piece = [
        (j.ended_at - j.started_at) / pieces
        for j, i in zip(jobs, where, strict=True)
        if j.outcome is JobOutcome.COMPLETED
        and j.ended_at is not None
        and i is not None
        and (pieces := _job_pieces(j, items[i])[0]) > 0
    ]
    if not per_piece:
        return _Eta(
            None, None, None, None, f"{remaining} piece(s) still need a job; none has finished yet"
        )
    mean = sum(per_piece) / len(per_piece)
    return _Eta(
        at=base_at + round(remaining * mean),
        low=base_low + round(remaining * min(per_piece)),
        high=base_high + round(remaining * max(per_piece)),
        origin=OrderEtaOrigin.EXTRAPOLATED,
        note=None,
    )
