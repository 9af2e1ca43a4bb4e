"""An order end to end on real parts: a simulated Haas mill on a pseudo-terminal runs a
program named ``O01234 (ORDER 1042)`` → agent process → the real Mosquitto → hub, whose job
book links the job to order 1042 by its reference; the order moves from received through
in_production to completed as the part counter reaches the order's quantity."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_support import SITE, agent_id, wait_until
from test_machine_kinds import simulators

from shopfloor.hub.runtime import Hub
from shopfloor.sim.haas.config import HaasSimConfig
from shopfloor.sim.haas.runner import run_haas_sim

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]

QUANTITY = 3


def start_agent(tmp_path: Path, topic_root: str, mqtt_url: str, port: Path) -> Any:
    agent_dir = tmp_path / "agent"
    agent_dir.mkdir()
    toml = agent_dir / "agent.toml"
    toml.write_text(
        f'[agent]\nid = "{agent_id(topic_root)}"\nsite = "{SITE}"\ntopic_root = "{topic_root}"\n'
        f'data_dir = "."\n[mqtt]\nurl = "{mqtt_url}"\nwill_delay_s = 0\n'
        f'[[machines]]\nid = "mill"\nkind = "cnc_mill"\nprotocol = "haas"\n'
        f'port = "pty:{port}"\npoll_interval_s = 0.1\ntelemetry_interval_s = 1\n'
        "[machines.options]\nparts_required_variable = 500\n"
    )
    with (agent_dir / "agent.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "shopfloor", "agent", "run", "--config", str(toml)],
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )


async def test_a_job_named_for_an_order_moves_it_from_received_to_completed(
    tmp_path: Path, topic_root: str, mqtt_url: str, hub: Hub, api: httpx.AsyncClient
) -> None:
    created = await api.post(
        "/api/v1/orders",
        json={"ref": "1042", "items": [{"part": "flange", "quantity": QUANTITY}]},
        headers={"Idempotency-Key": "shop-order-1042"},
    )
    assert created.status_code == 201, created.text
    order = created.json()
    assert order["status"] == "received"
    url = f"/api/v1/orders/{order['id']}"
    seen: list[dict[str, Any]] = []

    async def status_is(want: str) -> bool:
        view = (await api.get(url)).json()
        seen.append(view)
        return bool(view["status"] == want)

    port = tmp_path / "tty-mill"
    # The operator takes 4 s to load each blank, so the agent sees the program loaded on the
    # idle mill (the order is "queued") before the first cycle starts.
    sim = HaasSimConfig(
        program="O01234 (ORDER 1042)",
        cycle_s=1.0,
        load_s=4.0,
        parts_required=QUANTITY,
        next_batch_s=None,
    )
    async with simulators([run_haas_sim(sim, port)]):
        agent = start_agent(tmp_path, topic_root, mqtt_url, port)
        try:
            await wait_until(lambda: status_is("in_production"), "in production", timeout_s=45)
            await wait_until(lambda: status_is("completed"), "completed", timeout_s=60)
        finally:
            os.killpg(agent.pid, signal.SIGTERM)
            agent.wait(timeout=15)

    final = (await api.get(url)).json()
    assert (final["made"], final["ordered"], final["progress"]) == (QUANTITY, QUANTITY, 1.0)
    [job] = final["jobs"]
    assert (job["machine"], job["linked_via"], job["unit"]) == ("mill", "ref", "parts")
    assert job["program"] == "O01234 (ORDER 1042)"
    assert any(0 < v["made"] < QUANTITY for v in seen), "progress was never seen in between"

    changes = (await api.get(f"{url}/changes")).json()["changes"]
    statuses = [c["status"] for c in changes]
    assert changes[0]["previous_status"] == "received"
    assert statuses[-1] == "completed"
    assert "in_production" in statuses
    # every change follows from the one before, in order, and none repeats a status
    assert [c["seq"] for c in changes] == list(range(1, len(changes) + 1))
    for before, after in itertools.pairwise(changes):
        assert after["previous_status"] == before["status"] != after["status"]
    # the order system repeating its request gets the same order back
    again = await api.post(
        "/api/v1/orders",
        json={"ref": "1042", "items": [{"part": "flange", "quantity": QUANTITY}]},
        headers={"Idempotency-Key": "shop-order-1042"},
    )
    assert (again.status_code, again.json()["id"], again.json()["status"]) == (
        200,
        order["id"],
        "completed",
    )
