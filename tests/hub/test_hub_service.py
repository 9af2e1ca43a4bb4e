"""The hub as a process: config file in, HTTP + MQTT running, clean and quick shutdown."""

from __future__ import annotations

import asyncio
import importlib.util
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from shopfloor.hub.config import load_config
from shopfloor.hub.service import build_server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.mqtt
async def test_server_runs_the_whole_hub_and_stops_with_streams_open(
    tmp_path: Path, broker: Any, wait_until: Callable[..., Awaitable[None]]
) -> None:
    port = free_port()
    file = tmp_path / "hub.toml"
    file.write_text(
        f'[hub]\nsite = "shop1"\ntopic_root = "{broker.root}"\ndata_dir = "data"\n'
        f'[mqtt]\nurl = "mqtt://127.0.0.1:1883"\nclient_id = "hub-{broker.root[:9]}"\n'
        f"session_expiry_s = 60\n[api]\nport = {port}\n"
    )
    server = build_server(load_config(file))
    serving = asyncio.create_task(server.serve(), name="test.hub-server")
    try:
        await wait_until(lambda: server.started)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:

            async def healthy() -> bool:
                body = (await client.get("/api/v1/health")).json()
                return bool(body["status"] == "ok" and body["mqtt"]["connected"])

            await wait_until(healthy)
            assert (tmp_path / "data" / "hub.sqlite3").exists()
            assert (await client.get("/api/v1/machines")).json() == {"machines": []}
            wall = await client.get("/wall")
            has_wall = importlib.util.find_spec("shopfloor.hub.api.wall") is not None
            assert wall.status_code == (200 if has_wall else 404)
            async with client.stream("GET", "/api/v1/events") as stream:
                assert stream.status_code == 200
                loop = asyncio.get_running_loop()
                started = loop.time()
                server.should_exit = True
                await asyncio.wait_for(serving, 4)
                assert loop.time() - started < 4
    finally:
        server.should_exit = True
        await serving
    assert b'"online":false' in await broker.read_retained(f"{broker.root}/shop1/_hub/status")


async def test_a_hub_stopped_right_after_it_started_stops_at_once(
    hub_config: Callable[..., Any],
) -> None:
    # The order book's loop could clear the stop wake-up while handling its first batch
    # and then sleep a whole sweep (30 s) before noticing: Ctrl-C hung that long.
    from shopfloor.hub.runtime import open_hub

    async with asyncio.timeout(10):
        for _ in range(3):
            async with open_hub(hub_config(), mqtt=False) as hub:
                assert hub.orders is not None
                await asyncio.sleep(0)
