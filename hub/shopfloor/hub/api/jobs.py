"""Jobs: one run of one program on one machine, with progress and an ETA (docs/api.md "Jobs").

The job book (:mod:`shopfloor.hub.jobs`) writes them as the agents' events arrive; these
endpoints only read the store. Newest first, paged with ``limit`` and an opaque ``cursor``
(``next_cursor`` of the previous page).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Final

from fastapi import APIRouter, HTTPException, Path, Query, status
from pydantic import BaseModel, ConfigDict, Field

from shopfloor.hub.api.deps import MAX_ID, HubDep, ReadToken, cursor_id
from shopfloor.hub.api.machines import parse_time
from shopfloor.hub.runtime import Hub
from shopfloor.hub.store.base import EtaOrigin, JobOutcome, JobRow

router = APIRouter(prefix="/jobs", tags=["jobs"])

DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 200
MAX_SPAN_DAYS: Final = 366
_DAY_MS: Final = 86_400_000

_EXAMPLE: Final[dict[str, Any]] = {
    "id": 412,
    "machine": "router-1",
    "agent_job": "19ab3f2c1d0-3",
    "program": "sign (ORDER 1042).nc",
    "unit": "lines",
    "source": "proxy",
    "started_at": 1764072000000,
    "ended_at": None,
    "running": True,
    "outcome": None,
    "done": 1240,
    "total": 2000,
    "progress": 0.62,
    "detail": {"errors": 0},
    "eta_at": 1764073560000,
    "eta_low_at": 1764073380000,
    "eta_high_at": 1764073800000,
    "eta_origin": "history",
    "order_ref": "1042",
    "updated_at": 1764072961000,
}


class Job(BaseModel):
    """One run of one program on one machine."""

    model_config = ConfigDict(json_schema_extra={"example": _EXAMPLE})

    id: int = Field(description="the hub's id, stable across restarts")
    machine: str = Field(description="the machine's id, as GET /api/v1/machines shows it")
    agent_job: str = Field(description="the agent's id for this run, unique per machine")
    program: str | None = Field(description="the program (file, Haas program, kiln schedule)")
    unit: str = Field(description="the machine's own unit: lines, bytes, parts or seconds")
    source: str | None = Field(description="who counts: proxy, firmware, counter or schedule")
    started_at: int = Field(description="epoch ms")
    ended_at: int | None = Field(description="epoch ms; null while the job runs")
    running: bool = Field(description="true until the job ends")
    outcome: JobOutcome | None = Field(
        description="completed, aborted or failed; null while running. A job that never "
        "ended before the machine started another is aborted, with detail.end = 'superseded'"
    )
    done: float | None = Field(description="units done")
    total: float | None = Field(description="units in the whole job, if known")
    progress: float | None = Field(description="done / total in [0, 1], if the total is known")
    detail: dict[str, Any] = Field(
        description="extra figures in the machine's terms: segment (kiln), slip_s (how far a "
        "kiln's schedule fell behind), errors (GRBL error replies), eta_s (the machine's own "
        "estimate), end ('superseded')"
    )
    eta_at: int | None = Field(description="expected end, epoch ms; null when none can be made")
    eta_low_at: int | None = Field(description="the earliest likely end, epoch ms")
    eta_high_at: int | None = Field(description="the latest likely end, epoch ms")
    eta_origin: EtaOrigin | None = Field(
        description="linear (working time / progress), history (past runs of this program on "
        "this machine, blended with the live pace; Haas: recent cycle times), schedule (a "
        "kiln's firing schedule, slipping when the kiln lags) or firmware (the machine's own)"
    )
    order_ref: str | None = Field(
        description="the order reference the [jobs] order_pattern found in the program name "
        "or header comment"
    )
    updated_at: int = Field(description="epoch ms of the last change (hub clock)")


class JobPage(BaseModel):
    """A page of jobs, newest first."""

    model_config = ConfigDict(
        json_schema_extra={"example": {"jobs": [_EXAMPLE], "next_cursor": "412"}}
    )

    jobs: list[Job]
    next_cursor: str | None = Field(
        description="pass as ?cursor= for the next (older) page; null on the last page"
    )


def job_model(hub: Hub, row: JobRow) -> Job:
    public = hub.trackers.public_id(row.machine_key)
    return Job(
        id=row.id,
        machine=public or row.machine_key.partition("/")[2],
        agent_job=row.agent_job,
        program=row.program,
        unit=row.unit,
        source=row.source,
        started_at=row.started_at,
        ended_at=row.ended_at,
        running=row.ended_at is None,
        outcome=row.outcome,
        done=row.done,
        total=row.total,
        progress=row.progress,
        detail=dict(row.detail) if isinstance(row.detail, Mapping) else {},
        eta_at=row.eta_at,
        eta_low_at=row.eta_low_at,
        eta_high_at=row.eta_high_at,
        eta_origin=row.eta_origin,
        order_ref=row.order_ref,
        updated_at=row.updated_at,
    )


def _unprocessable(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=detail)


@router.get("", response_model=JobPage)
async def list_jobs(  # noqa: PLR0917 - FastAPI passes every query parameter by name
    hub: HubDep,
    _: ReadToken,
    machine: Annotated[
        str | None, Query(description="only this machine (its id as in /machines)")
    ] = None,
    running: Annotated[
        bool | None, Query(description="true: only running jobs; false: only ended ones")
    ] = None,
    order_ref: Annotated[
        str | None, Query(description="only jobs whose program names this order", max_length=64)
    ] = None,
    from_: Annotated[
        str | None,
        Query(
            alias="from",
            description="only jobs still running at or after this time (epoch ms or ISO-8601)",
            examples=["2026-11-24T06:00:00Z"],
        ),
    ] = None,
    to: Annotated[
        str | None,
        Query(description="only jobs started before this time (epoch ms or ISO-8601)"),
    ] = None,
    limit: Annotated[
        int, Query(ge=1, le=MAX_LIMIT, description=f"jobs per page (1..{MAX_LIMIT})")
    ] = DEFAULT_LIMIT,
    cursor: Annotated[
        str | None, Query(description="next_cursor of the previous page", max_length=20)
    ] = None,
) -> JobPage:
    """Jobs, newest first, filtered by machine, running, order reference and time."""
    key = None
    if machine is not None:
        key = hub.trackers.key_of(machine)
        if key is None:
            raise _unprocessable(
                f"no machine {machine!r} on this hub; GET /api/v1/machines lists them"
            )
    since = parse_time(from_, "from") if from_ is not None else None
    until = parse_time(to, "to") if to is not None else None
    if since is not None and until is not None:
        if since > until:
            raise _unprocessable(f"'from' ({since}) is after 'to' ({until}); swap them")
        if until - since > MAX_SPAN_DAYS * _DAY_MS:
            raise _unprocessable(
                f"the window is longer than {MAX_SPAN_DAYS} days; ask for a shorter one"
            )
    after: int | None = None
    if cursor is not None:
        after = cursor_id(cursor)
        if after is None:
            raise _unprocessable(
                f"cursor {cursor!r} is not one this API gave out; pass next_cursor unchanged"
            )
    rows = await hub.store.jobs(
        machine_key=key,
        order_ref=order_ref,
        running=running,
        since_ms=since,
        until_ms=until,
        after_id=after,
        limit=limit + 1,
    )
    page = rows[:limit]
    more = len(rows) > limit
    return JobPage(
        jobs=[job_model(hub, r) for r in page],
        next_cursor=str(page[-1].id) if more and page else None,
    )


@router.get("/{job_id}", response_model=Job, responses={404: {"description": "no such job"}})
async def get_job(
    hub: HubDep,
    _: ReadToken,
    job_id: Annotated[int, Path(ge=1, le=MAX_ID, description="the hub's job id")],
) -> Job:
    """One job, with its progress and ETA."""
    row = await hub.store.job(job_id)
    if row is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail=f"no job {job_id} on this hub; GET /api/v1/jobs lists them",
        )
    return job_model(hub, row)
