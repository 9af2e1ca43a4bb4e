from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import tty
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from shopfloor.agent.app import AgentApp, main
from shopfloor.agent.config import MqttSettings, example_config, parse_config
from shopfloor.agent.mqtt import IncomingMessage, MqttConnection
from shopfloor.agent.publisher import RecordQueue
from shopfloor.agent.readings import Record
from shopfloor.contract import decode_envelope, decode_status
from shopfloor.contract.envelope import RecordKind

pytestmark = pytest.mark.mqtt

STATUS_LINE = b"<Idle|MPos:1.000,2.000,0.000|FS:0,0>\r\n"
BUILD_INFO = b"[VER:1.1h.20190830:]\r\n[OPT:V,15,128]\r\nok\r\n"


@contextlib.asynccontextmanager
async def fake_grbl() -> AsyncIterator[str]:
    """A pty whose master answers like GRBL 1.1h: ``?`` gets a status line, ``$I`` its info."""
    master, slave = os.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    os.set_blocking(master, False)
    # Holding the slave open keeps the master from signalling hang-up between link opens.
    loop = asyncio.get_running_loop()
    buffer = bytearray()

    def readable() -> None:
        try:
            data = os.read(master, 1024)
        except OSError:  # BlockingIOError: nothing after all
            return
        buffer.extend(data)
        while buffer:
            if buffer[0:1] == b"?":
                del buffer[0]
                os.write(master, STATUS_LINE)
            elif b"\n" in buffer:
                line, _, rest = bytes(buffer).partition(b"\n")
                buffer[:] = rest
                os.write(master, BUILD_INFO if line.strip() == b"$I" else b"ok\r\n")
            else:
                break

    loop.add_reader(master, readable)
    try:
        yield path
    finally:
        loop.remove_reader(master)
        os.close(master)
        os.close(slave)


def agent_config(tmp_path: Path, url: str, root: str, port: str) -> Any:
    text = example_config(
        agent_id=f"pi-{uuid.uuid4().hex[:6]}",
        site="shop",
        url=url,
        data_dir=str(tmp_path / "data"),
        topic_root=root,
        port=f"pty:{port}",
    )
    text = text.replace("telemetry_interval_s = 5.0", "telemetry_interval_s = 0.5")
    text = text.replace(
        "keepalive_s = 30", "keepalive_s = 30\nreconnect_min_s = 0.1\nreconnect_max_s = 0.5"
    )
    return parse_config(text, source="test.toml", base=tmp_path)


async def test_app_publishes_state_meta_and_status(
    tmp_path: Path, mqtt_url: str, topic_root: str
) -> None:
    async with fake_grbl() as port:
        config = agent_config(tmp_path, mqtt_url, topic_root, port)
        agent = config.agent.id
        base = f"{topic_root}/shop/{agent}"
        sub_settings = MqttSettings(
            host="127.0.0.1", port=1883, tls=False, client_id=f"sub-{uuid.uuid4().hex[:8]}"
        )
        app = AgentApp(config)
        seen: dict[str, list[IncomingMessage]] = {}
        async with MqttConnection(sub_settings) as sub:
            await sub.subscribe(f"{base}/#")
            await sub.wait_connected()
            runner = asyncio.create_task(app.run(), name="agent")

            def idle_state() -> bool:
                for msg in seen.get(f"{base}/router-1/state", []):
                    if decode_envelope(msg.payload).body["state"] == "IDLE":
                        return True
                return False

            def has_firmware() -> bool:
                return any(
                    "1.1h" in decode_envelope(m.payload).body.get("firmware", "")
                    for m in seen.get(f"{base}/router-1/meta", [])
                )

            try:
                async with asyncio.timeout(15):
                    async for msg in sub.messages():
                        seen.setdefault(msg.topic, []).append(msg)
                        if (
                            idle_state()
                            and has_firmware()
                            and f"{base}/router-1/telemetry" in seen
                            and f"{base}/_status" in seen
                        ):
                            break
            finally:
                app.stop()
                await asyncio.wait_for(runner, 15)

            status = decode_status(seen[f"{base}/_status"][0].payload)
            assert status.online
            assert status.epoch == 1
            # Envelopes carry the stream and strictly increasing seqs.
            envelopes = [
                decode_envelope(m.payload)
                for topic, msgs in seen.items()
                if not topic.endswith("_status")
                for m in msgs
            ]
            assert len({e.stream for e in envelopes}) == 1
            seqs = sorted(e.seq for e in envelopes)
            assert len(set(seqs)) == len(seqs)
            assert all(e.agent == agent and e.machine == "router-1" for e in envelopes)
            meta = [decode_envelope(m.payload) for m in seen[f"{base}/router-1/meta"]]
            assert meta[-1].body["name"] == "Big router"
            assert meta[-1].body["kind"] == "cnc_router"

            # the clean stop published offline
            async with asyncio.timeout(10):
                async for msg in sub.messages():
                    if msg.topic == f"{base}/_status" and not decode_status(msg.payload).online:
                        break

        # Late subscriber: the retained messages are there.
        async with MqttConnection(
            MqttSettings(
                host="127.0.0.1", port=1883, tls=False, client_id=f"late-{uuid.uuid4().hex[:8]}"
            )
        ) as late:
            await late.subscribe(f"{base}/+/state")
            await late.subscribe(f"{base}/+/meta")
            await late.subscribe(f"{base}/_status")
            retained: dict[str, bytes] = {}
            async with asyncio.timeout(10):
                async for msg in late.messages():
                    assert msg.retain
                    retained[msg.topic] = msg.payload
                    if len(retained) == 3:
                        break
            assert decode_envelope(retained[f"{base}/router-1/state"]).body["state"] == "IDLE"
            assert not decode_status(retained[f"{base}/_status"]).online
            for topic in retained:  # leave the shared broker clean
                await late.publish(topic, b"", retain=True)
            await late.drain(5)
        assert json.loads(retained[f"{base}/_status"])["agent"] == agent


def test_main_prints_config_error_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "agent.toml"
    bad.write_text('[agent]\nid = "pi-1"\nsite = "shop"\n[mqtt]\nurll = "mqtt://x"\n')
    assert main(["--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert str(bad) in err
    assert "mqtt.urll" in err
    assert "Did you mean 'url'?" in err


def test_cli_dispatches_agent_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from shopfloor.cli import main as cli_main

    assert cli_main(["agent", "run", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_main_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(tmp_path / "nope.toml")]) == 2
    err = capsys.readouterr().err
    assert "nope.toml" in err
    assert "not found" in err


async def test_app_restores_retained_after_broker_restart(
    tmp_path: Path, private_broker: Callable[..., Any], topic_root: str
) -> None:
    broker = private_broker(persistence=False)
    async with fake_grbl() as port:
        config = agent_config(tmp_path, broker.url, topic_root, port)
        base = f"{topic_root}/shop/{config.agent.id}"
        app = AgentApp(config)
        runner = asyncio.create_task(app.run(), name="agent")
        try:
            assert await retained_on(broker.port, base) >= {"state", "meta", "_status"}
            broker.stop(signal.SIGKILL)  # the broker forgets every retained message
            await asyncio.sleep(0.3)
            broker.start()
            assert await retained_on(broker.port, base) >= {"state", "meta", "_status"}
        finally:
            app.stop()
            await asyncio.wait_for(runner, 15)
        assert app.epoch == 1


async def retained_on(port: int, base: str) -> set[str]:
    """Which of state, meta and _status a fresh subscriber finds retained (polls up to 10 s).

    Only a new subscription gets retained messages flagged as such, so each try subscribes anew.
    """
    want = {"state", "meta", "_status"}
    found: set[str] = set()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while loop.time() < deadline and not found >= want:
        found = set()
        settings = MqttSettings(
            host="127.0.0.1", port=port, tls=False, client_id=f"chk-{uuid.uuid4().hex[:8]}"
        )
        async with MqttConnection(settings) as conn:
            await conn.subscribe(f"{base}/#")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1):
                    async for msg in conn.messages():
                        if msg.retain:
                            found.add(msg.topic.rsplit("/", 1)[1])
                        if found >= want:
                            break
    return found


def _record(kind: RecordKind, n: int) -> Record:
    return Record(kind, "m1", n, n, {"n": n})


async def test_record_queue_drops_oldest_telemetry_never_state() -> None:
    queue = RecordQueue(3)
    await queue.put(_record(RecordKind.TELEMETRY, 1))
    await queue.put(_record(RecordKind.STATE, 2))
    await queue.put(_record(RecordKind.TELEMETRY, 3))
    await queue.put(_record(RecordKind.EVENT, 4))  # drops telemetry 1
    await queue.put(_record(RecordKind.TELEMETRY, 5))  # drops telemetry 3
    assert queue.dropped_telemetry == 2
    assert [(await queue.get()).body["n"] for _ in range(3)] == [2, 4, 5]

    for n in range(3):
        await queue.put(_record(RecordKind.STATE, n))
    await queue.put(_record(RecordKind.TELEMETRY, 9))  # nothing to drop but itself
    assert queue.dropped_telemetry == 3
    blocked = asyncio.create_task(queue.put(_record(RecordKind.META, 10)))
    await asyncio.sleep(0.05)
    assert not blocked.done()  # state/meta wait for room instead of being dropped
    assert (await queue.get()).body["n"] == 0
    await asyncio.wait_for(blocked, 1)
    assert [(await queue.get()).body["n"] for _ in range(3)] == [1, 2, 10]
