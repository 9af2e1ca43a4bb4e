"""Utilization per machine and per group, for any window, bucketed by hour, day or shift.

Time in state is summed inside the database (one query for every machine and bucket of a
request); the figures and their definition come from :mod:`shopfloor.hub.domain`. Nothing
is cached, so late (replayed) data changes the next answer.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Final

from fastapi import APIRouter, HTTPException, Query, status

from shopfloor.contract import MachineState
from shopfloor.hub.api.deps import HubDep, ReadToken
from shopfloor.hub.api.machines import parse_time
from shopfloor.hub.api.utilization_models import (
    BucketFiguresModel,
    DefinitionModel,
    FiguresModel,
    GroupUtilizationModel,
    MachineUtilizationModel,
    UtilizationResponse,
)
from shopfloor.hub.domain.shifts import Bucket, start_of_day
from shopfloor.hub.domain.utilization import (
    BucketPlan,
    Definition,
    Figures,
    MachinePlan,
    Planner,
    figures,
    total,
)
from shopfloor.hub.runtime import Hub

router = APIRouter(tags=["utilization"])

MAX_SPAN_DAYS: Final = 366
#: Hour buckets are capped to keep answers small: 31 days = 744 buckets per machine.
MAX_HOUR_SPAN_DAYS: Final = 31
MAX_LIMIT: Final = 200
_DAY_MS: Final = int(timedelta(days=1) / timedelta(milliseconds=1))


def _unprocessable(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=detail)


FromQ = Annotated[
    str | None,
    Query(
        alias="from",
        description="epoch ms or ISO-8601 (UTC without an offset); default: start of today "
        "in the site's time zone",
        examples=["2026-11-23T00:00:00+01:00"],
    ),
]
ToQ = Annotated[
    str | None,
    Query(description="epoch ms or ISO-8601; default now", examples=["2026-11-24T00:00:00+01:00"]),
]
BucketQ = Annotated[
    Bucket,
    Query(description="none (one bucket: the window), hour, day (site time zone) or shift"),
]
OffsetQ = Annotated[int, Query(ge=0, description="skip this many machines (pagination)")]
LimitQ = Annotated[
    int, Query(ge=1, le=MAX_LIMIT, description=f"machines per page (1..{MAX_LIMIT})")
]


def _window(hub: Hub, from_: str | None, to: str | None, bucket: Bucket) -> tuple[int, int, int]:
    now = hub.clock()
    tz = hub.config.utilization.tz
    end = parse_time(to, "to") if to is not None else now
    start = parse_time(from_, "from") if from_ is not None else start_of_day(min(end, now), tz)
    if start > end:
        raise _unprocessable(f"'from' ({start}) is after 'to' ({end}); swap them")
    if end - start > MAX_SPAN_DAYS * _DAY_MS:
        raise _unprocessable(
            f"the window is longer than {MAX_SPAN_DAYS} days; ask for a shorter one"
        )
    if bucket is Bucket.HOUR and end - start > MAX_HOUR_SPAN_DAYS * _DAY_MS:
        raise _unprocessable(
            f"bucket=hour is limited to {MAX_HOUR_SPAN_DAYS} days; "
            "use bucket=day or a shorter window"
        )
    return start, end, now


def _model(f: Figures) -> FiguresModel:
    return FiguresModel(
        states_ms={str(s): f.states_ms[s] for s in MachineState},
        productive_ms=f.productive_ms,
        window_ms=f.window_ms,
        planned_ms=f.planned_ms,
        productive_planned_ms=f.productive_planned_ms,
        utilization=f.utilization,
        utilization_planned=f.utilization_planned,
        coverage=f.coverage,
    )


def _bucket_model(plan_bucket: BucketPlan, f: Figures) -> BucketFiguresModel:
    w = plan_bucket.window
    return BucketFiguresModel(start=w.start, end=w.end, label=w.label, **_model(f).model_dump())


async def _compute(
    hub: Hub,
    machines: list[str],
    *,
    start: int,
    end: int,
    now: int,
    bucket: Bucket,
    group: str | None,
    offset: int,
    limit: int,
) -> UtilizationResponse:
    cfg = hub.config.utilization
    tz = cfg.tz
    if bucket is Bucket.SHIFT:
        missing = [m for m in machines if cfg.calendar_for(m) is None]
        if missing:
            raise _unprocessable(
                f"bucket=shift needs a shift calendar, and {', '.join(missing[:5])} has none; "
                "add it to a [calendars.<name>] section of the hub config, or use bucket=day"
            )
    # A group's total needs every member; otherwise only the page is computed.
    page = machines[offset : offset + limit]
    wanted = machines if group is not None else page
    planner = Planner()
    plans: list[MachinePlan] = []
    for m in wanted:
        # A configured member the hub has never heard from has no rows: all OFFLINE.
        key = hub.trackers.key_of(m) or f"unknown:{m}"
        plans.append(
            planner.plan(
                m,
                key,
                bucket=bucket,
                from_ms=start,
                to_ms=end,
                now_ms=now,
                tz=tz,
                calendar=cfg.calendar_for(m),
            )
        )
    # A hub OFFLINE mark inside an unbroken run of the agent's own rows (none further apart
    # than the staleness limit) was a transport outage the agent's replay has filled.
    gap = int(hub.config.hub.stale_after_s * 1000)
    sums = await hub.store.time_in_state(planner.probes, now_ms=now, heartbeat_gap_ms=gap)
    productive = cfg.productive_states
    per_machine = {p.machine: [(b, figures(b, sums, productive)) for b in p.buckets] for p in plans}
    out_machines = [
        MachineUtilizationModel(
            machine=p.machine,
            calendar=p.calendar.name if p.calendar else None,
            total=_model(total([f for _, f in per_machine[p.machine]])),
            buckets=[_bucket_model(b, f) for b, f in per_machine[p.machine]],
        )
        for p in plans
        if p.machine in page
    ]
    group_model = None
    if group is not None:
        group_buckets: dict[tuple[int, int, str], Figures] = {}
        for rows in per_machine.values():
            for b, f in rows:
                w = b.window
                group_buckets.setdefault((w.start, w.end, w.label), Figures()).add(f)
        ordered = sorted(group_buckets.items())
        group_model = GroupUtilizationModel(
            name=group,
            machines=machines,
            total=_model(total([f for _, f in ordered])),
            buckets=[
                BucketFiguresModel(start=s, end=e, label=lb, **_model(f).model_dump())
                for (s, e, lb), f in ordered
            ],
        )
    nxt = offset + limit
    return UtilizationResponse.model_validate(
        {
            "from": start,
            "to": end,
            "now": now,
            "bucket": bucket,
            "definition": DefinitionModel.model_validate(
                Definition(productive, cfg.timezone).to_json()
            ),
            "machines": out_machines,
            "group": group_model,
            "total_machines": len(machines),
            "offset": offset,
            "limit": limit,
            "next_offset": nxt if nxt < len(machines) else None,
        }
    )


@router.get(
    "/utilization",
    response_model=UtilizationResponse,
    response_model_by_alias=True,
    summary="Utilization of machines or a group",
)
async def utilization(
    *,
    hub: HubDep,
    _: ReadToken,
    machines: Annotated[
        str | None,
        Query(
            description="comma-separated machine ids; default every machine",
            examples=["router-1,laser-1"],
        ),
    ] = None,
    group: Annotated[
        str | None, Query(description="a group from [groups] in the hub config")
    ] = None,
    from_: FromQ = None,
    to: ToQ = None,
    bucket: BucketQ = Bucket.NONE,
    offset: OffsetQ = 0,
    limit: LimitQ = 50,
) -> UtilizationResponse:
    """Per machine (paginated) and per bucket: time in every state, productive time, window
    and planned time, utilization of each, and coverage, with the definition used. With
    ``group`` the group's summed figures come too (over all its members, not just the page)."""
    cfg = hub.config.utilization
    if machines is not None and group is not None:
        raise _unprocessable("give either 'machines' or 'group', not both")
    start, end, now = _window(hub, from_, to, bucket)
    if group is not None:
        if group not in cfg.groups:
            known = ", ".join(sorted(cfg.groups)) or "none are configured"
            raise _unprocessable(f"no group {group!r} in the hub config (known: {known})")
        ids = list(cfg.groups[group])
    elif machines is not None:
        ids = list(dict.fromkeys(m.strip() for m in machines.split(",") if m.strip()))
        if not ids:
            raise _unprocessable("'machines' is empty; list machine ids separated by commas")
        unknown = [m for m in ids if hub.trackers.key_of(m) is None]
        if unknown:
            raise _unprocessable(
                f"unknown machine(s): {', '.join(repr(m) for m in unknown[:10])}; "
                "GET /api/v1/machines lists them"
            )
    else:
        ids = [v.id for v in hub.trackers.views()]
    return await _compute(
        hub,
        ids,
        start=start,
        end=end,
        now=now,
        bucket=bucket,
        group=group,
        offset=offset,
        limit=limit,
    )


@router.get(
    "/machines/{machine_id}/utilization",
    response_model=UtilizationResponse,
    response_model_by_alias=True,
    summary="Utilization of one machine",
)
async def machine_utilization(
    machine_id: str,
    hub: HubDep,
    _: ReadToken,
    from_: FromQ = None,
    to: ToQ = None,
    bucket: BucketQ = Bucket.NONE,
) -> UtilizationResponse:
    """The same figures as ``GET /utilization`` for one machine."""
    if hub.trackers.key_of(machine_id) is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail=f"no machine {machine_id!r} on this hub; GET /api/v1/machines lists them",
        )
    start, end, now = _window(hub, from_, to, bucket)
    return await _compute(
        hub,
        [machine_id],
        start=start,
        end=end,
        now=now,
        bucket=bucket,
        group=None,
        offset=0,
        limit=1,
    )
