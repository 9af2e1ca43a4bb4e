"""The app factory. Nothing is built at import time: :func:`create_app` makes the app, and
its lifespan opens the hub (store, ingest, trackers) and closes it on shutdown."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError

from shopfloor.hub.api import events, examples, health, machines, metrics, rejected, utilization
from shopfloor.hub.api import jobs as jobs_api
from shopfloor.hub.api import orders as orders_api
from shopfloor.hub.api import webhooks as webhooks_api
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
    app.add_exception_handler(RequestValidationError, _unprocessable)
    if hub is not None:
        app.state.hub = hub
    for module in (machines, events, health, rejected):
        app.include_router(module.router, prefix=API_PREFIX)
    app.include_router(utilization.router, prefix=API_PREFIX)
    app.include_router(jobs_api.router, prefix=API_PREFIX)
    app.include_router(orders_api.router, prefix=API_PREFIX)
    app.include_router(webhooks_api.router, prefix=API_PREFIX)
    webhooks_api.document_webhooks(app)
    examples.install(app)
    app.include_router(metrics.router)  # /metrics, where Prometheus looks
    if importlib.util.find_spec("shopfloor.hub.api.wall") is not None:
        from shopfloor.hub.api.wall import router as wall_router  # noqa: PLC0415

        app.include_router(wall_router)
    return app


async def _unprocessable(request: Request, exc: Exception) -> Response:
    """FastAPI's 422, but written with ASCII escapes: a request carrying a lone surrogate
    (``"\\ud800"`` is valid JSON) is echoed in the error, and the stock handler then fails to
    encode its own answer as UTF-8 and answers 500 instead."""
    del request
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    return Response(
        json.dumps({"detail": jsonable_encoder(errors)}, ensure_ascii=True),
        status_code=422,  # Unprocessable Content
        media_type="application/json",
    )
