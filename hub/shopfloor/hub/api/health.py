"""Health: is the store answering, is MQTT connected, what did ingest count."""

from __future__ import annotations

from fastapi import APIRouter

from shopfloor.hub.api.deps import HubDep
from shopfloor.hub.api.models import HealthResponse, MqttHealth

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthResponse)
async def health(hub: HubDep) -> HealthResponse:
    """Open without a token, for container health checks; it shows counts, not data."""
    store_ok = await hub.store.ping()
    ingest = hub.ingest
    stats = ingest.stats() if ingest is not None else None
    connected = stats.connected if stats is not None else False
    ok = store_ok and (ingest is None or connected)
    return HealthResponse(
        status="ok" if ok else "degraded",
        store=store_ok,
        mqtt=MqttHealth(enabled=ingest is not None, connected=connected),
        queue_depth=stats.queue_depth if stats else 0,
        counters={**(stats.counters if stats else {}), **hub.trackers.counters},
        rejected_by_reason=stats.rejected_by_reason if stats else {},
        rejected_total=await hub.store.rejected_total() if store_ok else 0,
        machines=len(hub.trackers.views()),
        stream_subscribers=hub.trackers.feed.subscribers,
        stream_dropped=hub.trackers.feed.dropped,
    )
