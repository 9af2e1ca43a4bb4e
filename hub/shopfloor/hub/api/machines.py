"""Machines: the live view and the state timeline."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Final

from fastapi import APIRouter, HTTPException, Query, status

from shopfloor.contract import MachineState
from shopfloor.hub.api.deps import HubDep, ReadToken
from shopfloor.hub.api.models import MachineList, MachineViewModel, StatesResponse
from shopfloor.hub.trackers import MachineView

router = APIRouter(prefix="/machines", tags=["machines"])

DEFAULT_SPAN_MS: Final = 24 * 3600 * 1000
MAX_SPAN_DAYS: Final = 366
_EPOCH_MS: Final = re.compile(r"-?\d+")


def view_model(view: MachineView) -> MachineViewModel:
    return MachineViewModel.model_validate(view.to_json())


def _unknown(machine_id: str) -> HTTPException:
    return HTTPException(
        status.HTTP_404_NOT_FOUND,
        detail=f"no machine {machine_id!r} on this hub; GET /api/v1/machines lists them",
    )


@router.get("", response_model=MachineList)
async def list_machines(hub: HubDep, _: ReadToken) -> MachineList:
    """Every machine the hub has heard of, sorted by name."""
    return MachineList(machines=[view_model(v) for v in hub.trackers.views()])


@router.get("/{machine_id}", response_model=MachineViewModel)
async def get_machine(machine_id: str, hub: HubDep, _: ReadToken) -> MachineViewModel:
    view = hub.trackers.get(machine_id)
    if view is None:
        raise _unknown(machine_id)
    return view_model(view)


def parse_time(value: str, name: str) -> int:
    """Epoch milliseconds, or ISO-8601 (UTC if no offset is given)."""
    text = value.strip()
    if _EPOCH_MS.fullmatch(text):
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=f"'{name}' = {value!r} is neither epoch milliseconds nor ISO-8601 "
            "(e.g. 2026-11-24T06:00:00Z)",
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


@router.get("/{machine_id}/states", response_model=StatesResponse, response_model_by_alias=True)
async def machine_states(
    machine_id: str,
    hub: HubDep,
    _: ReadToken,
    from_: Annotated[
        str | None, Query(alias="from", description="epoch ms or ISO-8601; default to - 24 h")
    ] = None,
    to: Annotated[str | None, Query(description="epoch ms or ISO-8601; default now")] = None,
) -> StatesResponse:
    """The machine's states over a window: contiguous intervals, OFFLINE where no data."""
    key = hub.trackers.key_of(machine_id)
    if key is None:
        raise _unknown(machine_id)
    now = hub.clock()
    end = parse_time(to, "to") if to is not None else now
    start = parse_time(from_, "from") if from_ is not None else end - DEFAULT_SPAN_MS
    if start > end:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=f"'from' ({start}) is after 'to' ({end}); swap them",
        )
    if end - start > timedelta(days=MAX_SPAN_DAYS) / timedelta(milliseconds=1):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=f"the window is longer than {MAX_SPAN_DAYS} days; ask for a shorter one",
        )
    # The same rule as utilization: a hub OFFLINE mark that the agent's own (replayed) rows
    # show it never had is not an outage.
    gap = int(hub.config.hub.stale_after_s * 1000)
    intervals = await hub.store.state_intervals(key, start, end, now_ms=now, heartbeat_gap_ms=gap)
    elapsed = min(end, now) - start
    observed = sum(i.duration_ms for i in intervals if i.state is not MachineState.OFFLINE)
    return StatesResponse.model_validate(
        {
            "machine": machine_id,
            "from": start,
            "to": end,
            "intervals": [
                {
                    "state": i.state,
                    "detail": i.detail,
                    "from": i.start,
                    "to": i.end,
                    "duration_ms": i.duration_ms,
                }
                for i in intervals
            ],
            "coverage": round(observed / elapsed, 4) if elapsed > 0 else 0.0,
        }
    )
