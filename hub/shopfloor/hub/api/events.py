"""Server-sent events: every machine-view change, live.

On connect the stream sends one ``machine`` event per known machine (the snapshot), then one
per change; a ``: keepalive`` comment goes out when nothing happened for a while, so proxies
and browsers keep the connection open::

    event: machine
    data: {"id": "cnc-1", "state": "RUNNING", ...}

Every order status change follows as an ``order`` event whose data is the webhook body
(docs/api.md "Webhooks"); there is no order snapshot on connect (GET /api/v1/orders)::

    event: order
    id: 4f1c2d9a8b7e4e0f9a3b2c1d0e9f8a7b
    data: {"id": "4f1c...", "type": "order.status_changed", "status": "completed", ...}

"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Final

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from shopfloor.hub.api.deps import HubDep, ReadStreamToken
from shopfloor.hub.orders.feed import OrderSubscription
from shopfloor.hub.orders.model import OrderChange
from shopfloor.hub.runtime import Hub
from shopfloor.hub.trackers import MachineView, Subscription

router = APIRouter(tags=["events"])

KEEPALIVE_S: Final = 15.0


def sse_machine(view: MachineView) -> bytes:
    data = json.dumps(view.to_json(), separators=(",", ":"), ensure_ascii=False)
    return f"event: machine\ndata: {data}\n\n".encode()


def sse_order(change: OrderChange) -> bytes:
    return f"event: order\nid: {change.event_id}\ndata: {change.body}\n\n".encode()


@contextlib.asynccontextmanager
async def _order_changes(hub: Hub) -> AsyncIterator[OrderSubscription | None]:
    if hub.orders is None:
        yield None
        return
    async with hub.orders.feed.subscribe() as sub:
        yield sub


async def _next(
    machines: Subscription, orders: OrderSubscription | None, wait_s: float
) -> list[MachineView | OrderChange | None] | None:
    """Whatever arrives first on either feed (None for a closed one), or None on timeout."""
    getters: list[asyncio.Task[MachineView | None] | asyncio.Task[OrderChange | None]] = [
        asyncio.create_task(machines.get(), name="sse.machines")
    ]
    if orders is not None:
        getters.append(asyncio.create_task(orders.get(), name="sse.orders"))
    try:
        done, _ = await asyncio.wait(getters, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        pending = [t for t in getters if not t.done()]
        for task in pending:
            task.cancel()  # nothing is lost: a cancelled get() took nothing off its queue
        await asyncio.gather(*pending, return_exceptions=True)
    if not done:
        return None
    return [t.result() for t in getters if t in done]


@router.get(
    "/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "an SSE stream"}},
)
async def events(request: Request, hub: HubDep, _: ReadStreamToken) -> StreamingResponse:
    """Machine changes (``event: machine``) and order status changes (``event: order``) as
    server-sent events. The token may also be passed as ``?access_token=`` because
    browsers' EventSource cannot send headers."""
    keepalive = float(getattr(request.app.state, "keepalive_s", KEEPALIVE_S))

    async def stream() -> AsyncIterator[bytes]:
        async with hub.trackers.feed.subscribe() as sub, _order_changes(hub) as orders:
            yield b"retry: 3000\n\n"
            for view in hub.trackers.views():
                yield sse_machine(view)
            while True:
                changes = await _next(sub, orders, keepalive)
                if changes is None:
                    yield b": keepalive\n\n"
                    continue
                for change in changes:
                    if isinstance(change, MachineView):
                        yield sse_machine(change)
                    elif isinstance(change, OrderChange):
                        yield sse_order(change)
                if any(c is None for c in changes):
                    return  # a feed closed: the hub is shutting down

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
