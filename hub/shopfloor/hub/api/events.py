"""Server-sent events: every machine-view change, live.

On connect the stream sends one ``machine`` event per known machine (the snapshot), then one
per change; a ``: keepalive`` comment goes out when nothing happened for a while, so proxies
and browsers keep the connection open::

    event: machine
    data: {"id": "cnc-1", "state": "RUNNING", ...}

"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Final

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from shopfloor.hub.api.deps import HubDep, ReadStreamToken
from shopfloor.hub.trackers import MachineView

router = APIRouter(tags=["events"])

KEEPALIVE_S: Final = 15.0


def sse_machine(view: MachineView) -> bytes:
    data = json.dumps(view.to_json(), separators=(",", ":"), ensure_ascii=False)
    return f"event: machine\ndata: {data}\n\n".encode()


@router.get(
    "/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "an SSE stream"}},
)
async def events(request: Request, hub: HubDep, _: ReadStreamToken) -> StreamingResponse:
    """Machine changes as server-sent events. The token may also be passed as
    ``?access_token=`` because browsers' EventSource cannot send headers."""
    keepalive = float(getattr(request.app.state, "keepalive_s", KEEPALIVE_S))

    async def stream() -> AsyncIterator[bytes]:
        async with hub.trackers.feed.subscribe() as sub:
            yield b"retry: 3000\n\n"
            for view in hub.trackers.views():
                yield sse_machine(view)
            while True:
                try:
                    change = await asyncio.wait_for(sub.get(), keepalive)
                except TimeoutError:
                    yield b": keepalive\n\n"
                    continue
                if change is None:
                    return
                yield sse_machine(change)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
