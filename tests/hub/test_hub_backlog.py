"""A backlog on the broker is taken in with a bounded number of un-acknowledged messages.

Mosquitto 2.0.11 honours the hub's Receive Maximum for live traffic, but for a session's
queued backlog each PUBACK lets a whole window more through; the hub therefore pauses
reading its socket when ``max_pending`` messages are pending (see ``ingest.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import gmqtt
import pytest

from shopfloor.contract import AgentTopics, Channel, Envelope, RecordKind, encode_envelope
from shopfloor.hub.config import HubConfig
from shopfloor.hub.ingest import READ_AHEAD_BYTES, socket_transport
from shopfloor.hub.runtime import open_hub

pytestmark = pytest.mark.mqtt

Wait = Callable[..., Awaitable[None]]

COUNT = 20_000


async def _publish_while_witnessed(port: int, topic: str, lines: list[bytes]) -> None:
    """``mosquitto_pub -l -q 1`` every line; return once the broker routed all of them.

    ``mosquitto_pub`` 2.0.11 drops its unacknowledged QoS 1 messages at EOF, so its stdin
    stays open until a witness (a persistent ``mosquitto_sub`` session, subscribed first)
    has received every message.
    """
    sub = ("mosquitto_sub", "-p", str(port), "-q", "1", "-t", topic, "-c", "-i", "witness")
    subscribed = await asyncio.create_subprocess_exec(*sub, "-E")
    assert await subscribed.wait() == 0
    pub = await asyncio.create_subprocess_exec(
        *("mosquitto_pub", "-p", str(port), "-q", "1", "-l", "-t", topic),
        stdin=asyncio.subprocess.PIPE,
    )
    witness = await asyncio.create_subprocess_exec(
        *sub, "-C", str(len(lines)), "-W", "30", stdout=asyncio.subprocess.DEVNULL
    )
    try:
        assert pub.stdin is not None
        pub.stdin.write(b"".join(lines))
        await pub.stdin.drain()
        assert await witness.wait() == 0, "the witness did not get every message in 30 s"
        pub.stdin.close()
        assert await pub.wait() == 0
    finally:
        for proc in (witness, pub):  # our own children, by PID
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


@pytest.mark.slow
async def test_a_backlog_is_committed_once_with_bounded_pending(
    hub_config: Callable[..., HubConfig],
    env: Callable[..., Envelope],
    wait_until: Wait,
    private_broker: Callable[..., Any],
) -> None:
    own = private_broker()  # max_queued_messages 100000: the broker keeps the backlog
    root = "backlog/v1"
    config = hub_config(root=root, port=own.port)
    topic = AgentTopics(site="shop1", agent="pi-1", root=root).machine("cnc-1", Channel.TELEMETRY)
    samples = [{"ts": i, "values": {"load": 1.5, "rpm": 12000, "x": 1.25}} for i in range(8)]
    lines = [
        encode_envelope(env(RecordKind.TELEMETRY, seq=i, ts=i, body={"samples": samples})) + b"\n"
        for i in range(1, COUNT + 1)
    ]
    # The hub's persistent session subscribes, then the hub goes away.
    async with open_hub(config) as hub:
        assert hub.ingest is not None
        await asyncio.wait_for(hub.ingest.wait_connected(), 10)
    await _publish_while_witnessed(own.port, topic, lines)

    async with open_hub(config) as hub:
        ingest = hub.ingest
        assert ingest is not None
        await wait_until(lambda: ingest.counters["stored"] == COUNT, 25)
        await wait_until(lambda: ingest.pending == 0)
        counters = ingest.stats().counters  # what /api/v1/health shows
        assert await hub.store.stream_progress("pi-1", "s1") == (COUNT, COUNT)
        assert counters["duplicates"] == 0
        assert counters["received"] == COUNT
        assert counters["pending"] == 0
        bound = ingest.max_pending + READ_AHEAD_BYTES // min(len(line) for line in lines)
        assert counters["pending_limit"] == ingest.max_pending
        assert 0 < counters["pending_peak"] <= bound, counters
        assert counters["reads_paused"] > 0, "the backlog was bigger than the limit"


async def test_gmqtt_still_exposes_its_socket_transport(private_broker: Callable[..., Any]) -> None:
    """``socket_transport`` is the hub's one reach into gmqtt; fail loudly if gmqtt moves it."""
    own = private_broker()
    client = gmqtt.Client("transport-probe")
    assert socket_transport(client) is None, "not connected: no transport"
    await client.connect("127.0.0.1", own.port)
    try:
        transport = socket_transport(client)
        assert isinstance(transport, asyncio.ReadTransport), "gmqtt moved its transport"
        assert transport.is_reading()
        transport.pause_reading()
        assert not transport.is_reading()
        transport.resume_reading()
        assert transport.is_reading()
    finally:
        await client.disconnect()
