"""``shopfloor hub run --config FILE``: the hub as a process, served by uvicorn."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

import uvicorn
from fastapi import FastAPI

from shopfloor.hub.api.app import create_app
from shopfloor.hub.config import HubConfig, load_config
from shopfloor.hub.env import config_path, log_format
from shopfloor.hub.errors import ConfigError, HubError
from shopfloor.logs import setup_logging

log = logging.getLogger(__name__)

EXIT_CONFIG: Final = 2
_SECRET_QUERY: Final = re.compile(r"((?:access_)?token=)[^&\s\"]+")


class RedactTokens(logging.Filter):
    """Keeps tokens passed as ``?access_token=`` (the wall's event stream) out of access logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _SECRET_QUERY.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args
            )
        return True


class HubServer(uvicorn.Server):
    """uvicorn's server, ending the event streams first when it shuts down: otherwise every
    open wall page would hold the shutdown until the graceful timeout."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        hub = getattr(self._app.state, "hub", None)
        if hub is not None:
            hub.trackers.feed.close()
        await super().shutdown(sockets=sockets)


def build_server(config: HubConfig) -> HubServer:
    """The app and its HTTP server for ``config``; ``await server.serve()`` runs the hub."""
    app = create_app(config)
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactTokens) for f in access.filters):
        access.addFilter(RedactTokens())
    return HubServer(
        uvicorn.Config(
            app,
            host=config.api.host,
            port=config.api.port,
            lifespan="on",
            log_level="info",
            # uvicorn's records go to the root logger, formatted by shopfloor.logs (JSON
            # lines in a container) instead of uvicorn's own handlers.
            log_config=None,
            timeout_graceful_shutdown=5,
        ),
        app,
    )


async def run_hub(config_path: str | Path, environ: Mapping[str, str] | None = None) -> None:
    """Load the configuration (with ``environ``'s overrides, see :mod:`shopfloor.hub.env`)
    and serve the hub until interrupted (SIGINT/SIGTERM)."""
    config = load_config(config_path, environ=environ)
    server = build_server(config)
    log.info(
        "hub for site %s listening on %s:%d", config.hub.site, config.api.host, config.api.port
    )
    await server.serve()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``shopfloor hub ...`` (``argv`` without the program name)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["hub"]:
        args = args[1:]
    parser = argparse.ArgumentParser(prog="shopfloor hub", description="Run the Shopfloor hub.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="ingest MQTT, store history, serve the API and wall page")
    run.add_argument(
        "--config", type=Path, help="the hub's TOML file (default: $SHOPFLOOR_HUB_CONFIG)"
    )
    ns = parser.parse_args(args)
    environ = dict(os.environ)
    try:
        setup_logging(log_format(environ), level=logging.INFO)
        asyncio.run(run_hub(config_path(ns.config, environ), environ))
    except ConfigError as exc:
        print(f"shopfloor hub: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except HubError as exc:
        print(f"shopfloor hub: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0
