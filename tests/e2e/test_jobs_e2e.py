"""Jobs end to end: a sender streams G-code through the agent's GRBL proxy to the simulator,
the agent process publishes over the real Mosquitto, the hub's job book turns it into a job
with progress and an ETA, then a completed job; the second run of the same program gets its
ETA from the first.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_support import SITE, agent_id, wait_until

from shopfloor.agent.links.serial import SerialLink
from shopfloor.hub.runtime import Hub
from shopfloor.sim.grbl import GrblMachine, GrblSimConfig, PtyRunner

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]

MOVES = 24


def program() -> list[str]:
    """About 12 s of cutting at time scale 4: 60 mm moves at 1500 mm/min, 0.6 s each."""
    body = [f"G1 X{10 + (i % 2) * 60} Y{i} F1500" for i in range(MOVES)]
    lines = [
        "(Program: e2e-sign)",
        "(Customer: Meyer, ORDER 1042)",
        "G21 G90",
        "G0 X0 Y0",
        "M3 S12000",
        *body,
        "M5",
        "G0 X0 Y0",
    ]
    return [f"(Lines: {len(lines) + 1})", *lines]


async def stream(path: Path, lines: list[str]) -> None:
    """Send-response streaming, as many senders do: one line, then wait for its answer."""
    link = SerialLink(str(path))
    await link.open()
    try:
        buf = bytearray()
        for line in lines:
            await link.write(line.encode("ascii") + b"\n")
            while True:
                while b"\n" not in buf:
                    buf += await link.read(4096)
                raw, _, rest = bytes(buf).partition(b"\n")
                buf[:] = rest
                text = raw.decode("ascii", "replace").strip()
                if text == "ok" or text.startswith("error:"):
                    break
    finally:
        await link.close()


def start_agent(tmp_path: Path, topic_root: str, mqtt_url: str, port: Path, proxy: Path) -> Any:
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
        f'[machines.options]\nproxy_pty = "{proxy}"\njob_end_idle_s = 0.3\njob_end_quiet_s = 1.0\n'
    )
    with (agent_dir / "agent.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "shopfloor", "agent", "run", "--config", str(toml)],
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )


async def jobs(api: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    response = await api.get("/api/v1/jobs", params={"machine": "router", **params})
    if response.status_code != 200:
        return []  # the machine is not known yet
    found: list[dict[str, Any]] = response.json()["jobs"]
    return found


async def test_a_streamed_job_shows_progress_and_an_eta_then_completes(
    tmp_path: Path, topic_root: str, mqtt_url: str, hub: Hub, api: httpx.AsyncClient
) -> None:
    machine = GrblMachine(GrblSimConfig(time_scale=4.0))
    port = tmp_path / "tty-router"
    proxy = tmp_path / "run" / "router"
    lines = program()
    async with PtyRunner(machine, port):
        agent = start_agent(tmp_path, topic_root, mqtt_url, port, proxy)
        try:
            await wait_until(proxy.exists, "the proxy's pty", timeout_s=20)

            async def known() -> bool:
                return (await api.get("/api/v1/machines/router")).status_code == 200

            await wait_until(known, "the router on the hub", timeout_s=20)
            sender = asyncio.create_task(stream(proxy, lines), name="test.sender")

            async def running_with_eta() -> dict[str, Any] | None:
                for job in await jobs(api, running="true"):
                    if job["done"] and job["eta_at"] is not None:
                        return job
                return None

            job = await wait_until(running_with_eta, "a running job with an ETA", timeout_s=30)
            assert job["program"] == "e2e-sign"
            assert job["order_ref"] == "1042"  # from the header comment
            assert (job["unit"], job["source"], job["total"]) == ("lines", "proxy", len(lines))
            assert 0 < job["progress"] < 1
            assert job["eta_origin"] == "linear"  # the first run of this program
            assert job["eta_low_at"] <= job["eta_at"] <= job["eta_high_at"]
            assert job["eta_at"] > job["started_at"]
            view = (await api.get("/api/v1/machines/router")).json()
            assert view["job"]["id"] == job["id"]
            assert view["job"]["eta_origin"] == "linear"

            await asyncio.wait_for(sender, 60)

            async def completed() -> dict[str, Any] | None:
                found = (await api.get(f"/api/v1/jobs/{job['id']}")).json()
                return found if found["outcome"] is not None else None

            done = await wait_until(completed, "the job to end", timeout_s=30)
            assert done["outcome"] == "completed"
            assert done["done"] == done["total"] == len(lines)
            assert done["running"] is False
            assert done["ended_at"] > done["started_at"]
            assert done["eta_at"] is None
            took_s = (done["ended_at"] - done["started_at"]) / 1000

            # The same program again: its ETA comes from the first run from the start.
            second = asyncio.create_task(stream(proxy, lines), name="test.sender2")

            async def next_run() -> dict[str, Any] | None:
                for found in await jobs(api, running="true"):
                    if found["id"] != job["id"] and found["eta_at"] is not None:
                        return found
                return None

            again = await wait_until(next_run, "the second run with an ETA", timeout_s=30)
            assert again["eta_origin"] == "history"
            predicted_s = (again["eta_at"] - again["started_at"]) / 1000
            assert abs(predicted_s - took_s) < max(3.0, 0.3 * took_s), (predicted_s, took_s)
            await asyncio.wait_for(second, 60)
            await wait_until(
                lambda: completed_job(api, again["id"]), "the second run to end", timeout_s=30
            )
        finally:
            os.killpg(agent.pid, signal.SIGTERM)
            agent.wait(timeout=15)


async def completed_job(api: httpx.AsyncClient, job_id: int) -> bool:
    found = (await api.get(f"/api/v1/jobs/{job_id}")).json()
    return bool(found["outcome"] == "completed")
