"""Every machine kind end to end: simulator on a pseudo-terminal → agent process → the real
Mosquitto → hub → API, with each machine's own unit of progress.

A Haas mill's part count climbs against its batch quantity, a kiln fires through its
phases with segment and schedule progress, a printer's SD byte count climbs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_support import SITE, agent_id, wait_until

from shopfloor.hub.runtime import Hub
from shopfloor.sim.haas.config import HaasSimConfig
from shopfloor.sim.haas.runner import run_haas_sim
from shopfloor.sim.kiln.config import KilnSimConfig
from shopfloor.sim.kiln.runner import run_kiln_sim
from shopfloor.sim.marlin.config import MarlinSimConfig
from shopfloor.sim.marlin.runner import run_marlin_sim

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]


@contextlib.asynccontextmanager
async def simulators(sims: list[Coroutine[Any, Any, None]]) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(sim, name=f"test.sim:{i}") for i, sim in enumerate(sims)]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def start_agent(tmp_path: Path, topic_root: str, mqtt_url: str, ports: dict[str, Path]) -> Any:
    agent_dir = tmp_path / "agent"
    agent_dir.mkdir()
    toml = agent_dir / "agent.toml"
    toml.write_text(
        f'[agent]\nid = "{agent_id(topic_root)}"\nsite = "{SITE}"\ntopic_root = "{topic_root}"\n'
        f'data_dir = "."\n[mqtt]\nurl = "{mqtt_url}"\nwill_delay_s = 0\n'
        f'[[machines]]\nid = "mill"\nkind = "cnc_mill"\nprotocol = "haas"\n'
        f'port = "pty:{ports["mill"]}"\npoll_interval_s = 0.1\ntelemetry_interval_s = 1\n'
        "[machines.options]\nparts_required_variable = 500\n"
        f'[[machines]]\nid = "kiln"\nkind = "kiln"\nprotocol = "modbus_kiln"\n'
        f'port = "pty:{ports["kiln"]}"\npoll_interval_s = 0.1\ntelemetry_interval_s = 1\n'
        '[machines.options]\nprofile = "cn7500"\nschedule = "bisque"\ntrend_window_s = 1\n'
        "progress_interval_s = 0.5\n"
        f'[[machines]]\nid = "printer"\nkind = "printer_3d"\nprotocol = "marlin"\n'
        f'port = "pty:{ports["printer"]}"\ntelemetry_interval_s = 1\n'
        "[machines.options]\nauto_report_s = 1\n"
    )
    with (agent_dir / "agent.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "shopfloor", "agent", "run", "--config", str(toml)],
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )


async def test_mill_kiln_and_printer_show_their_progress_on_the_hub(
    tmp_path: Path, topic_root: str, mqtt_url: str, hub: Hub, api: httpx.AsyncClient
) -> None:
    ports = {name: tmp_path / f"tty-{name}" for name in ("mill", "kiln", "printer")}
    sims = [
        run_haas_sim(HaasSimConfig(cycle_s=1.5, load_s=0.3, parts_required=50), ports["mill"]),
        run_kiln_sim(KilnSimConfig(schedule="bisque", time_scale=600.0), ports["kiln"]),
        run_marlin_sim(
            MarlinSimConfig(
                file_name="bracket.gcode", print_s=600.0, auto_start=True, time_scale=20.0
            ),
            ports["printer"],
        ),
    ]
    seen: dict[str, list[dict[str, Any]]] = {name: [] for name in ports}

    async def poll() -> bool:
        for name in ports:
            response = await api.get(f"/api/v1/machines/{name}")
            if response.status_code == 200:
                seen[name].append(response.json())
        return done()

    def done() -> bool:
        mill = [v["job"]["done"] for v in seen["mill"] if v["job"] and v["job"].get("done")]
        kiln_phases = {v["phase"] for v in seen["kiln"] if v["state"] == "RUNNING"}
        kiln_segments = {v["job"].get("segment") for v in seen["kiln"] if v["job"]}
        printer = [v["job"]["done"] for v in seen["printer"] if v["job"] and v["job"].get("done")]
        return (
            len(set(mill)) >= 3
            and {"heating"} <= kiln_phases
            and len(kiln_segments - {None}) >= 1
            and len(set(printer)) >= 3
        )

    async with simulators(sims):
        agent = start_agent(tmp_path, topic_root, mqtt_url, ports)
        try:
            await wait_until(poll, "progress from every machine", timeout_s=60, step_s=0.3)
        finally:
            os.killpg(agent.pid, signal.SIGTERM)
            agent.wait(timeout=15)

    mill_jobs = [v["job"] for v in seen["mill"] if v["job"]]
    assert all(job["unit"] == "parts" for job in mill_jobs), mill_jobs
    # The batch quantity is read from macro #500 a moment after the job starts.
    assert mill_jobs[-1]["total"] == 50, mill_jobs
    counts = [job["done"] for job in mill_jobs if job.get("done")]
    assert counts == sorted(counts), "the part count only ever climbs"
    assert any(v["program"] == "O01234" for v in seen["mill"])

    kiln_jobs = [v["job"] for v in seen["kiln"] if v["job"]]
    assert all(job["unit"] == "seconds" for job in kiln_jobs)
    assert all(job["total"] > 0 for job in kiln_jobs if job.get("total") is not None)
    assert any(v["program"] == "bisque" for v in seen["kiln"])

    printer_jobs = [v["job"] for v in seen["printer"] if v["job"]]
    assert all(job["unit"] == "bytes" for job in printer_jobs)
    done_bytes = [job["done"] for job in printer_jobs if job.get("done")]
    assert done_bytes == sorted(done_bytes)
    assert any(v["state"] == "RUNNING" for v in seen["printer"])
