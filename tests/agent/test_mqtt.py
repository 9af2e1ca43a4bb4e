from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from shopfloor.agent.config import MqttProtocol, MqttSettings
from shopfloor.agent.errors import MqttError
from shopfloor.agent.mqtt import IncomingMessage, MqttConnection, Will

pytestmark = pytest.mark.mqtt


def settings(url: str, **overrides: Any) -> MqttSettings:
    host, port = url.removeprefix("mqtt://").split(":")
    values: dict[str, Any] = {
        "host": host,
        "port": int(port),
        "tls": False,
        "client_id": f"test-{uuid.uuid4().hex[:10]}",
        "keepalive_s": 10,
        "reconnect_min_s": 0.1,
        "reconnect_max_s": 0.5,
        "session_expiry_s": 60,
    }
    values.update(overrides)
    return MqttSettings(**values)


async def collect(conn: MqttConnection, n: int, wait_s: float = 10) -> list[IncomingMessage]:
    out: list[IncomingMessage] = []
    async with asyncio.timeout(wait_s):
        async for msg in conn.messages():
            out.append(msg)
            if len(out) == n:
                break
    return out


async def test_publish_many_qos1_without_overflow(mqtt_url: str, topic_root: str) -> None:
    n = 300
    async with (
        MqttConnection(settings(mqtt_url)) as sub,
        MqttConnection(settings(mqtt_url)) as pub,
    ):
        await sub.wait_connected()
        await sub.subscribe(f"{topic_root}/burst/#", qos=1)
        await asyncio.sleep(0.2)  # SUBACK
        await pub.wait_connected()
        receiver = asyncio.create_task(collect(sub, n, wait_s=20))
        for i in range(n):
            await pub.publish(f"{topic_root}/burst/x", str(i).encode(), qos=1)
            assert pub.in_flight <= 18
        assert await pub.drain(10)
        got = await receiver
    assert [int(m.payload) for m in got] == list(range(n))


async def test_retained_message_reaches_late_subscriber(mqtt_url: str, topic_root: str) -> None:
    topic = f"{topic_root}/site/agent/m1/state"
    async with MqttConnection(settings(mqtt_url)) as pub:
        await pub.publish(topic, b'{"state":"IDLE"}', retain=True)
        assert await pub.drain(5)
    async with MqttConnection(settings(mqtt_url)) as sub:
        await sub.subscribe(topic)
        (msg,) = await collect(sub, 1)
        assert msg.retain
        assert msg.payload == b'{"state":"IDLE"}'
        # clean up the retained message
        await sub.publish(topic, b"", retain=True)
        assert await sub.drain(5)


async def test_mqtt311_works(mqtt_url: str, topic_root: str) -> None:
    topic = f"{topic_root}/v311"
    async with (
        MqttConnection(settings(mqtt_url, protocol=MqttProtocol.V311)) as conn,
    ):
        await conn.subscribe(topic)
        await conn.wait_connected()
        await asyncio.sleep(0.2)
        for i in range(50):
            await conn.publish(topic, str(i).encode())
        got = await collect(conn, 50)
    assert len(got) == 50


_KILLED_CLIENT = textwrap.dedent(
    """
    import asyncio, sys
    from shopfloor.agent.config import MqttSettings
    from shopfloor.agent.mqtt import MqttConnection, Will

    async def main():
        port, topic, cid = int(sys.argv[1]), sys.argv[2], sys.argv[3]
        s = MqttSettings(host="127.0.0.1", port=port, tls=False, client_id=cid,
                         keepalive_s=10, session_expiry_s=0)
        will = Will(topic, b"offline", qos=1, retain=True)
        async with MqttConnection(s, will=will) as conn:
            await conn.wait_connected()
            await conn.publish(topic, b"online", retain=True)
            await conn.drain(5)
            print("ready", flush=True)
            await asyncio.sleep(60)

    asyncio.run(main())
    """
)


async def test_will_fires_when_client_is_killed(mqtt_url: str, topic_root: str) -> None:
    topic = f"{topic_root}/site/agent/_status"
    port = mqtt_url.rsplit(":", 1)[1]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _KILLED_CLIENT,
        port,
        topic,
        f"will-{uuid.uuid4().hex[:8]}",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 15)
        assert line == b"ready\n"
        async with MqttConnection(settings(mqtt_url)) as sub:
            await sub.subscribe(topic)
            (first,) = await collect(sub, 1)
            assert first.payload == b"online"
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            (will,) = await collect(sub, 1, wait_s=10)
            assert will.payload == b"offline"
            await sub.publish(topic, b"", retain=True)
            assert await sub.drain(5)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_reconnects_after_private_broker_restart(
    private_broker: Callable[..., Any], topic_root: str
) -> None:
    broker = private_broker(persistence=False)
    topic = f"{topic_root}/restart"
    async with MqttConnection(settings(broker.url)) as conn:
        gen = await conn.wait_connected()
        await conn.subscribe(topic)
        broker.stop(signal.SIGKILL)
        await asyncio.sleep(0.5)
        assert not conn.is_connected
        # publishing while the broker is away waits instead of failing
        pending = asyncio.create_task(conn.publish(topic, b"after"))
        await asyncio.sleep(0.3)
        assert not pending.done()
        broker.start()
        async with asyncio.timeout(15):
            gen2 = await conn.wait_connected(after=gen)
        assert gen2 == gen + 1
        await asyncio.wait_for(pending, 10)
        # the subscription came back with the connection (the broker lost the session)
        (msg,) = await collect(conn, 1)
        assert msg.payload == b"after"


async def test_starts_while_broker_is_down(
    private_broker: Callable[..., Any], topic_root: str
) -> None:
    broker = private_broker()
    broker.stop()
    async with MqttConnection(settings(broker.url)) as conn:
        await asyncio.sleep(0.3)
        assert not conn.is_connected
        broker.start()
        async with asyncio.timeout(15):
            await conn.wait_connected()
        await conn.publish(f"{topic_root}/x", b"1")
        assert await conn.drain(5)


async def test_refused_credentials_raise_mqtt_error(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    conf = tmp_path / "m.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous false\n")
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = await asyncio.create_subprocess_exec(
        exe, "-c", str(conf), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            await asyncio.sleep(0.05)
        conn = MqttConnection(settings(f"mqtt://127.0.0.1:{port}", username="nobody", password="x"))
        async with conn:
            with pytest.raises(MqttError) as info:
                async with asyncio.timeout(10):
                    await conn.wait_connected()
            assert info.value.code in (4, 5, 134, 135)
            assert "refused" in str(info.value)
            with pytest.raises(MqttError):
                await conn.publish("x/y", b"1")
    finally:
        proc.terminate()
        await proc.wait()


@contextlib.asynccontextmanager
async def amqtt_broker(tmp_path: Path) -> AsyncIterator[int]:
    """A private amqtt (MQTT 3.1.1 only, as in the demo) on a free port, stopped by PID."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    conf = tmp_path / "amqtt.yaml"
    conf.write_text(
        "listeners:\n  default:\n    type: tcp\n"
        f"    bind: 127.0.0.1:{port}\n"
        "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
        "    allow_anonymous: true\n"
    )
    exe = Path(sys.executable).parent / "amqtt"
    proc = await asyncio.create_subprocess_exec(
        str(exe), "-c", str(conf), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        for _ in range(200):
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                await writer.wait_closed()
                break
            await asyncio.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        await proc.wait()


async def _round_trip(url: str, protocol: MqttProtocol, topic: str) -> None:
    will = Will(f"{topic}/_status", b"offline", delay_s=5)
    async with (
        MqttConnection(settings(url, protocol=protocol), will=will) as pub,
        MqttConnection(settings(url, protocol=protocol)) as sub,
    ):
        async with asyncio.timeout(20):
            await sub.wait_connected()
            await pub.wait_connected()
        await sub.subscribe(f"{topic}/#")
        await asyncio.sleep(0.3)
        for i in range(60):
            await pub.publish(f"{topic}/x", str(i).encode())
        got = await collect(sub, 60)
        assert [int(m.payload) for m in got] == list(range(60))
        assert await pub.drain(5)


async def test_amqtt_with_mqtt311(tmp_path: Path) -> None:
    async with amqtt_broker(tmp_path) as port:
        await _round_trip(f"mqtt://127.0.0.1:{port}", MqttProtocol.V311, "a")


@pytest.mark.slow
async def test_amqtt_falls_back_from_mqtt5(tmp_path: Path) -> None:
    """amqtt neither answers nor refuses an MQTT 5 CONNECT; the next attempt speaks 3.1.1."""
    async with amqtt_broker(tmp_path) as port:
        await _round_trip(f"mqtt://127.0.0.1:{port}", MqttProtocol.V5, "b")
