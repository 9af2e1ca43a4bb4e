"""The app factory. Nothing is built at import time: :func:`create_app` makes the app, and
its lifespan opens the hub (store, ingest, trackers) and closes it on shutdown."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from shopfloor.hub.api import events, health, machines, rejected, utilization
from shopfloor.hub.config import HubConfig
from shopfloor.hub.runtime import Hub, open_hub

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"


def create_app(
    config: HubConfig, *, hub: Hub | None = None, keepalive_s: float = events.KEEPALIVE_S
) -> FastAPI:
    """Build the HTTP app. With ``hub`` the app serves a hub its caller runs (tests, tools);
    otherwise the lifespan opens one from ``config``."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if hub is not None:
            app.state.hub = hub
            yield
            return
        async with open_hub(config) as running:
            app.state.hub = running
            yield

    app = FastAPI(
        title="Shopfloor hub",
        version="1",
        summary="Machine states, timelines and live changes of a shop floor.",
        lifespan=lifespan,
    )
    app.state.config = config
    app.state.keepalive_s = keepalive_s
    if hub is not None:
        app.state.hub = hub
    for module in (machines, events, health, rejected):
        app.include_router(module.router, prefix=API_PREFIX)
    app.include_router(utilization.router, prefix=API_PREFIX)
    if importlib.util.find_spec("shopfloor.hub.api.wall") is not None:
        from shopfloor.hub.api.wall import router as wall_router  # noqa: PLC0415

        app.include_router(wall_router)
    return app
