"""The whole path on real parts: simulated GRBL on a pseudo-terminal → agent process → the
real Mosquitto → hub → HTTP API.

The simulator runs in this process so the test can press feed hold and cycle start the way
an operator would; the agent is a separate ``shopfloor agent run`` process so it can be
killed with SIGKILL, and the hub runs in this process behind its real FastAPI app.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from e2e_support import SITE, agent_id, wait_until
from playwright.async_api import Browser, expect

from shopfloor.hub.api.app import create_app
from shopfloor.hub.runtime import Hub
from shopfloor.sim.grbl import GrblMachine, GrblSimConfig, PtyRunner

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]

PROGRAM = (
    ["G21 G90", "G0 X0 Y0", "M3 S12000"]
    + [f"G1 X{10 + (i % 2) * 60} Y{i * 2} F1500" for i in range(30)]
    + ["M5", "G0 X0 Y0", "M30"]
)


def start_agent(
    tmp_path: Path, topic_root: str, mqtt_url: str, port: Path
) -> subprocess.Popen[bytes]:
    agent_dir = tmp_path / "agent"
    agent_dir.mkdir(exist_ok=True)
    toml = agent_dir / "agent.toml"
    toml.write_text(
        f'[agent]\nid = "{agent_id(topic_root)}"\nsite = "{SITE}"\n'
        f'topic_root = "{topic_root}"\ndata_dir = "."\n'
        f'[mqtt]\nurl = "{mqtt_url}"\nwill_delay_s = 0\nsession_expiry_s = 0\n'
        f'[[machines]]\nid = "router"\nname = "Router"\nkind = "cnc_router"\nprotocol = "grbl"\n'
        f'port = "pty:{port}"\npoll_interval_s = 0.2\nsilence_timeout_s = 2.0\n'
        "telemetry_interval_s = 1.0\n"
    )
    with (agent_dir / "agent.log").open("wb") as log:
        return subprocess.Popen(  # the agent exactly as a shop runs it
            [sys.executable, "-m", "shopfloor", "agent", "run", "--config", str(toml)],
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )


async def machine_view(api: httpx.AsyncClient) -> dict[str, Any] | None:
    response = await api.get("/api/v1/machines/router")
    return response.json() if response.status_code == 200 else None


async def in_state(api: httpx.AsyncClient, state: str, detail: str | None = None) -> bool:
    view = await machine_view(api)
    if view is None or view["state"] != state:
        return False
    return detail is None or view["detail"] == detail


async def test_idle_running_paused_running_idle_then_offline_when_agent_killed(
    tmp_path: Path, topic_root: str, mqtt_url: str, hub: Hub, api: httpx.AsyncClient
) -> None:
    loop = asyncio.get_running_loop()
    started_ms = time.time_ns() // 1_000_000
    machine = GrblMachine(GrblSimConfig(time_scale=4.0))
    port = tmp_path / "tty-router"
    async with PtyRunner(machine, port):
        agent = start_agent(tmp_path, topic_root, mqtt_url, port)
        try:
            await wait_until(lambda: in_state(api, "IDLE"), "the machine to show IDLE")
            view = await machine_view(api)
            assert view is not None
            assert (view["agent"], view["site"], view["online"]) == (
                agent_id(topic_root),
                SITE,
                True,
            )
            assert view["protocol"] == "grbl"

            machine.start_program("e2e", PROGRAM)
            await wait_until(lambda: in_state(api, "RUNNING"), "RUNNING after the job starts")

            machine.receive(b"!", loop.time())  # the operator presses feed hold
            await wait_until(lambda: in_state(api, "PAUSED", "Hold:0"), "PAUSED, fully held")

            machine.receive(b"~", loop.time())  # ... and cycle start
            await wait_until(lambda: in_state(api, "RUNNING"), "RUNNING after resume")
            await wait_until(
                lambda: in_state(api, "IDLE"), "IDLE when the job is done", timeout_s=60
            )

            response = await api.get("/api/v1/machines/router/states", params={"from": started_ms})
            assert response.status_code == 200
            observed = [i["state"] for i in response.json()["intervals"]]
            seen = [s for i, s in enumerate(observed) if i == 0 or observed[i - 1] != s]
            assert seen[-5:] == ["IDLE", "RUNNING", "PAUSED", "RUNNING", "IDLE"], observed
            truth = [change.state for change in machine.state_log]
            assert "Hold:0" in truth
            assert truth[-1] == "Idle"
        finally:
            os.killpg(agent.pid, signal.SIGKILL)  # no goodbye: only the MQTT will tells
            agent.wait(timeout=10)

        killed_at = loop.time()
        await wait_until(
            lambda: in_state(api, "OFFLINE"), "OFFLINE after the agent was killed", timeout_s=20
        )
        took = loop.time() - killed_at
        view = await machine_view(api)
        assert view is not None
        assert view["online"] is False
        assert took < 20


async def test_device_silence_and_vanishing_port_show_offline_then_recover(
    tmp_path: Path, topic_root: str, mqtt_url: str, hub: Hub, api: httpx.AsyncClient
) -> None:
    machine = GrblMachine(GrblSimConfig(time_scale=4.0))
    port = tmp_path / "tty-router"
    async with PtyRunner(machine, port) as runner:
        agent = start_agent(tmp_path, topic_root, mqtt_url, port)
        try:
            await wait_until(lambda: in_state(api, "IDLE"), "IDLE at start")
            runner.vanish(4.0)  # the USB cable is pulled for four seconds
            await wait_until(lambda: in_state(api, "OFFLINE"), "OFFLINE while unplugged")
            await wait_until(lambda: in_state(api, "IDLE"), "IDLE once it is back", timeout_s=25)
            assert agent.poll() is None, "the agent must survive a vanishing port"
        finally:
            os.killpg(agent.pid, signal.SIGTERM)
            agent.wait(timeout=15)


@contextlib.asynccontextmanager
async def serve_http(hub: Hub, port: int) -> AsyncIterator[str]:
    """The hub's real app on a real port, as the TV's browser reaches it."""
    app = create_app(hub.config, hub=hub)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    )
    task = asyncio.create_task(server.serve(), name="test.http")
    try:
        await wait_until(lambda: server.started, "the HTTP server to start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


@pytest.mark.browser
async def test_wall_page_sees_the_state_change_arrive_live(
    tmp_path: Path,
    topic_root: str,
    mqtt_url: str,
    hub: Hub,
    browser: Browser,
    unused_port: int,
) -> None:
    machine = GrblMachine(GrblSimConfig(time_scale=4.0))
    port = tmp_path / "tty-router"
    async with PtyRunner(machine, port), serve_http(hub, unused_port) as base:
        agent = start_agent(tmp_path, topic_root, mqtt_url, port)
        context = await browser.new_context(viewport={"width": 1920, "height": 1080})
        try:
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"{base}/wall")
            tile = page.locator('.tile[data-machine="router"]')
            await expect(tile).to_have_attribute("data-state", "IDLE", timeout=20_000)
            await expect(tile).to_contain_text("Router")
            await page.evaluate("window.__noReload = 'same page'")

            machine.start_program("e2e", PROGRAM)
            await expect(tile).to_have_attribute("data-state", "RUNNING", timeout=15_000)
            await expect(tile).to_contain_text("RUNNING")
            assert await page.evaluate("window.__noReload") == "same page"
            assert not errors, errors
        finally:
            await context.close()
            os.killpg(agent.pid, signal.SIGTERM)
            agent.wait(timeout=15)
