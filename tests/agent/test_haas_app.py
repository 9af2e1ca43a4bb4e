"""End to end: the Haas simulator on a real pty, the agent app, the real Mosquitto.

The mill goes IDLE -> RUNNING, its part count climbs, and the job, part and meta records
arrive on the broker under a topic root of this test's own."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from shopfloor.agent.app import AgentApp
from shopfloor.agent.config import MqttSettings, parse_config
from shopfloor.agent.mqtt import MqttConnection
from shopfloor.contract import decode_envelope
from shopfloor.sim.haas import HaasMachine, HaasSimConfig, PtyRunner

pytestmark = pytest.mark.mqtt

CONFIG = """
[agent]
id = "{agent}"
site = "shop"
topic_root = "{root}"
data_dir = "{data}"

[mqtt]
url = "{url}"
reconnect_min_s = 0.1
reconnect_max_s = 0.5

[[machines]]
id = "mill-1"
name = "Haas VF-2"
kind = "cnc_mill"
protocol = "haas"
port = "pty:{port}"
poll_interval_s = 0.1
silence_timeout_s = 2.0
telemetry_interval_s = 0.5

[machines.options]
parts_required_variable = 500
"""


def settings() -> MqttSettings:
    return MqttSettings(
        host="127.0.0.1", port=1883, tls=False, client_id=f"sub-{uuid.uuid4().hex[:8]}"
    )


async def test_haas_mill_through_the_agent_to_mqtt(
    tmp_path: Path, mqtt_url: str, topic_root: str
) -> None:
    agent = f"pi-{uuid.uuid4().hex[:6]}"
    port = tmp_path / "ttyHAAS"
    text = CONFIG.format(
        agent=agent, root=topic_root, data=tmp_path / "data", url=mqtt_url, port=port
    )
    config = parse_config(text, source="test.toml", base=tmp_path)
    base = f"{topic_root}/shop/{agent}/mill-1"
    # The operator starts once the agent sees the machine, so no part goes by unseen.
    machine = HaasMachine(HaasSimConfig(cycle_s=0.8, load_s=0.4, parts_required=2, auto_run=False))
    states: list[str] = []
    events: list[dict[str, object]] = []
    meta: dict[str, object] = {}
    parts_seen: list[float] = []
    async with PtyRunner(machine, port, tick_s=0.005, name="haas"):
        app = AgentApp(config)
        async with MqttConnection(settings()) as sub:
            await sub.subscribe(f"{base}/#")
            await sub.wait_connected()
            runner = asyncio.create_task(app.run(), name="agent")
            try:
                async with asyncio.timeout(20):
                    async for msg in sub.messages():
                        if not msg.payload:
                            continue
                        body = decode_envelope(msg.payload).body
                        if msg.topic.endswith("/state"):
                            states.append(str(body["state"]))
                            machine.auto_run = machine.auto_run or body["state"] == "IDLE"
                        elif msg.topic.endswith("/event"):
                            events.append(dict(body))
                        elif msg.topic.endswith("/meta"):
                            meta = dict(body)
                        elif msg.topic.endswith("/telemetry"):
                            parts_seen += [
                                s["values"]["parts_count"]
                                for s in body["samples"]
                                if "parts_count" in s["values"]
                            ]
                        if any(e["event"] == "job_ended" for e in events) and meta:
                            break
            finally:
                app.stop()
                await asyncio.wait_for(runner, 15)
            async with MqttConnection(settings()) as cleaner:  # leave the broker clean
                for topic in (f"{base}/state", f"{base}/meta"):
                    await cleaner.publish(topic, b"", retain=True)
                await cleaner.drain(5)

    assert "IDLE" in states
    assert "RUNNING" in states
    assert meta["protocol"] == "haas"
    assert meta["firmware"] == "100.21.000.1100"
    names = [e["event"] for e in events]
    assert names.count("job_started") == 1
    assert [e["count"] for e in events if e["event"] == "part_counted"] == [1, 2]
    ended = next(e for e in events if e["event"] == "job_ended")
    assert (ended["outcome"], ended["done"], ended["total"], ended["unit"]) == (
        "completed",
        2,
        2,
        "parts",
    )
    assert parts_seen == sorted(parts_seen)
    assert parts_seen[-1] >= 1
