"""Rejected messages, kept for inspection: what arrived, on which topic, and why not."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from shopfloor.hub.api.deps import HubDep, ReadToken
from shopfloor.hub.api.models import RejectedList, RejectedModel

router = APIRouter(tags=["rejected"])


@router.get("/rejected", response_model=RejectedList)
async def rejected(
    hub: HubDep,
    _: ReadToken,
    limit: Annotated[int, Query(ge=1, le=1000, description="newest first")] = 100,
) -> RejectedList:
    rows = await hub.store.rejected(limit)
    return RejectedList(
        total=await hub.store.rejected_total(),
        rejected=[
            RejectedModel(
                id=r.id,
                received_at=r.received_at,
                topic=r.topic,
                reason=r.reason,
                payload=r.payload.decode("utf-8", errors="replace"),
                payload_bytes=len(r.payload),
            )
            for r in rows
        ],
    )
