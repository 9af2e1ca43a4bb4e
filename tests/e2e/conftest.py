"""Fixtures of the end-to-end tests: a hub on the real Mosquitto, and its API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from e2e_support import SITE

from shopfloor.hub.api.app import create_app
from shopfloor.hub.config import parse_config
from shopfloor.hub.runtime import Hub, open_hub


@pytest.fixture
async def hub(tmp_path: Path, topic_root: str, mqtt_url: str) -> AsyncIterator[Hub]:
    config = parse_config(
        f'[hub]\nsite = "{SITE}"\ntopic_root = "{topic_root}"\ndata_dir = "{tmp_path / "hub"}"\n'
        "stale_after_s = 60\n"
        f'[mqtt]\nurl = "{mqtt_url}"\nclient_id = "hub-{topic_root.split("/", maxsplit=1)[0]}"\n'
        "session_expiry_s = 60\n",
        source="hub.toml",
    )
    async with open_hub(config, stale_check_s=0.5) as running:
        assert running.ingest is not None
        await asyncio.wait_for(running.ingest.wait_connected(), 10)
        yield running


@pytest.fixture
async def api(hub: Hub) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(hub.config, hub=hub)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
        yield client
