"""Health: is the store answering, is MQTT connected, what did ingest count."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from shopfloor.hub.api.deps import HubDep
from shopfloor.hub.api.models import HealthResponse, MirrorHealthModel, MqttHealth
from shopfloor.hub.runtime import Hub

router = APIRouter(tags=["health"])


@router.get(
    "/health",
    response_model=HealthResponse,
    responses={
        503: {
            "model": HealthResponse,
            "description": "Degraded: the database does not answer or MQTT is not connected "
            "(the same body, with `status` = `degraded`).",
        }
    },
)
async def health(hub: HubDep, response: Response) -> HealthResponse:
    """Open without a token, for container health checks; it shows counts, not data.
    200 when ``status`` is ``ok``, 503 when it is ``degraded``, so ``curl -f`` and load
    balancers can tell without reading the body."""
    store_ok = await hub.store.ping()
    ingest = hub.ingest
    stats = ingest.stats() if ingest is not None else None
    connected = stats.connected if stats is not None else False
    ok = store_ok and (ingest is None or connected)
    if not ok:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
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
        mirror=await _mirror(hub) if store_ok else None,
    )


async def _mirror(hub: Hub) -> MirrorHealthModel | None:
    """The mirror's figures; it does not change ``status``: the mirror is an optional copy."""
    if hub.mirror is None:
        return None
    h = await hub.mirror.health()
    return MirrorHealthModel(
        target=h.target,
        ok=h.ok,
        running=h.running,
        cursor=h.cursor,
        head=h.head,
        lag=h.lag,
        last_success_at=h.last_success_at,
        last_error=h.last_error,
        last_error_at=h.last_error_at,
        consecutive_failures=h.consecutive_failures,
        records_mirrored=h.records_mirrored,
        points_written=h.points_written,
        records_refused=h.records_refused,
        skipped=dict(h.skipped),
    )
