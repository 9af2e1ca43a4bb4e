"""Ingest end to end through the real Mosquitto on 127.0.0.1:1883."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from shopfloor.contract import (
    AgentStatus,
    AgentTopics,
    Channel,
    Envelope,
    MachineState,
    RecordKind,
    decode_ack,
    encode_envelope,
    encode_status,
)
from shopfloor.hub.api.app import create_app
from shopfloor.hub.config import HubConfig
from shopfloor.hub.ingest import wall_ms
from shopfloor.hub.jobs import JobBook, JobBookStore
from shopfloor.hub.runtime import Hub, open_hub
from shopfloor.hub.store import Incoming, SqliteStore, WriteBatch, machine_key
from shopfloor.hub.store.base import JobRow
from shopfloor.hub.store.factory import make_store

pytestmark = pytest.mark.mqtt

Wait = Callable[..., Awaitable[None]]


async def started(config: HubConfig, **kw: Any) -> Any:
    """open_hub, entered, and connected to the broker."""
    cm = open_hub(config, **kw)
    hub: Hub = await cm.__aenter__()
    assert hub.ingest is not None
    await asyncio.wait_for(hub.ingest.wait_connected(), 10)
    return cm, hub


async def test_good_messages_are_stored_bad_ones_rejected_and_acked(
    broker: Any,
    hub_config: Callable[..., HubConfig],
    env: Callable[..., Envelope],
    wait_until: Wait,
) -> None:
    config = hub_config(root=broker.root)
    topics = AgentTopics(site="shop1", agent="pi-1", root=broker.root)
    cm, hub = await started(config)
    try:
        ingest = hub.ingest
        assert ingest is not None
        state = env(RecordKind.STATE, seq=1, ts=1_000)
        await broker.pub(
            topics.machine("cnc-1", Channel.STATE), encode_envelope(state), retain=True
        )
        # Malformed payload, and an envelope from another agent than its topic says.
        await broker.pub(topics.machine("cnc-1", Channel.TELEMETRY), b"{not json")
        spoofed = env(RecordKind.EVENT, agent="pi-9", seq=2)
        await broker.pub(topics.machine("cnc-1", Channel.EVENT), encode_envelope(spoofed))
        # JSON that is not text (a lone surrogate) would fail the whole batch in the store.
        lone = encode_envelope(env(RecordKind.EVENT, seq=4)).replace(
            b'"body":{', b'"body":{"note":"\\ud800",', 1
        )
        assert b"\\ud800" in lone
        await broker.pub(topics.machine("cnc-1", Channel.EVENT), lone)
        # Good messages keep flowing after the bad ones; one is delivered twice.
        tele = env(RecordKind.TELEMETRY, seq=2, ts=2_000)
        await broker.pub(topics.machine("cnc-1", Channel.TELEMETRY), encode_envelope(tele))
        await broker.pub(topics.machine("cnc-1", Channel.TELEMETRY), encode_envelope(tele))
        meta = env(RecordKind.META, seq=3, ts=3_000)
        await broker.pub(topics.machine("cnc-1", Channel.META), encode_envelope(meta), retain=True)

        async def all_arrived() -> bool:
            return bool(ingest.counters["received"] >= 7)

        await wait_until(all_arrived)
        await wait_until(lambda: ingest.stats().queue_depth == 0 and ingest.counters["stored"] == 3)
        assert ingest.counters["duplicates"] == 1
        assert ingest.counters["rejected"] == 3
        assert ingest.rejected_by_reason == {"payload": 2, "agent_mismatch": 1}
        assert await hub.store.stream_progress("pi-1", "s1") == (3, 3)
        view = hub.trackers.get("cnc-1")
        assert view is not None
        assert view.state is MachineState.RUNNING
        assert view.protocol == "grbl"

        # The rejected messages are visible over the API, with their reasons.
        app = create_app(config, hub=hub)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://hub"
        ) as client:
            body = (await client.get("/api/v1/rejected")).json()
            health = (await client.get("/api/v1/health")).json()
        assert body["total"] == 3
        reasons = sorted(r["reason"] for r in body["rejected"])
        assert reasons[0] == "agent in payload 'pi-9' does not match topic 'pi-1'"
        assert reasons[1].startswith("envelope payload has a lone UTF-16 surrogate")
        assert reasons[2].startswith("envelope payload is not JSON")
        assert health["mqtt"]["connected"] is True
        assert health["counters"]["rejected"] == 3
        assert health["rejected_by_reason"]["payload"] == 2

        # The retained _ack watermark tells the agent what it may delete.
        async def acked() -> bool:
            raw = await broker.read_retained(topics.ack)
            return bool(raw) and decode_ack(raw.strip()).streams.get("s1") == 3

        await wait_until(acked)
        hub_status = await broker.read_retained(f"{broker.root}/shop1/_hub/status")
        assert json.loads(hub_status)["online"] is True
    finally:
        await cm.__aexit__(None, None, None)
    hub_status = await broker.read_retained(f"{broker.root}/shop1/_hub/status")
    assert json.loads(hub_status)["online"] is False


async def test_a_restarted_hub_deduplicates_the_retained_redelivery(
    broker: Any,
    hub_config: Callable[..., HubConfig],
    env: Callable[..., Envelope],
    wait_until: Wait,
) -> None:
    config = hub_config(root=broker.root)
    topics = AgentTopics(site="shop1", agent="pi-1", root=broker.root)
    cm, hub = await started(config)
    try:
        state = encode_envelope(env(RecordKind.STATE, seq=1))
        await broker.pub(topics.machine("cnc-1", Channel.STATE), state, retain=True)
        await wait_until(lambda: hub.ingest.counters["stored"] == 1)
    finally:
        await cm.__aexit__(None, None, None)
    cm, hub = await started(config)
    try:
        await wait_until(lambda: hub.ingest.counters["duplicates"] >= 1)
        assert hub.ingest.counters["stored"] == 0
        assert hub.trackers.get("cnc-1") is not None, "the view is rebuilt from the store"
    finally:
        await cm.__aexit__(None, None, None)


async def test_agent_will_takes_its_machines_offline(
    broker: Any,
    hub_config: Callable[..., HubConfig],
    env: Callable[..., Envelope],
    wait_until: Wait,
) -> None:
    config = hub_config(root=broker.root)
    topics = AgentTopics(site="shop1", agent="pi-1", root=broker.root)
    cm, hub = await started(config)
    try:
        await broker.pub(
            topics.status, encode_status(AgentStatus("pi-1", True, 7, 1_000)), retain=True
        )
        await broker.pub(
            topics.machine("cnc-1", Channel.STATE), encode_envelope(env(seq=1)), retain=True
        )
        await wait_until(lambda: (v := hub.trackers.get("cnc-1")) is not None and v.online)
        # A stand-in agent connection whose will is the offline status, then it dies.
        will = encode_status(AgentStatus("pi-1", False, 7, 1_000)).decode()
        agent = await asyncio.create_subprocess_exec(
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            "1883",
            "-t",
            f"{broker.root}/none",
            "-q",
            "1",
            "--will-topic",
            topics.status,
            "--will-payload",
            will,
            "--will-retain",
            "--will-qos",
            "1",
            stdout=asyncio.subprocess.DEVNULL,
        )
        await asyncio.sleep(0.5)
        agent.send_signal(signal.SIGKILL)
        await agent.wait()

        def offline() -> bool:
            v = hub.trackers.get("cnc-1")
            return v is not None and v.state is MachineState.OFFLINE and not v.online

        await wait_until(offline)
        view = hub.trackers.get("cnc-1")
        assert view is not None
        assert view.detail == "agent offline"
        await wait_until(lambda: hub.ingest.stats().queue_depth == 0)

        async def stored_offline() -> bool:
            intervals = await hub.store.state_intervals(
                machine_key("pi-1", "cnc-1"), 0, hub.clock() + 1, now_ms=hub.clock() + 1
            )
            return intervals[-1].state is MachineState.OFFLINE

        await wait_until(stored_offline)
        # Data coming back brings the machine back to what it reports.
        tele = env(RecordKind.TELEMETRY, seq=2, ts=5_000)
        await broker.pub(topics.machine("cnc-1", Channel.TELEMETRY), encode_envelope(tele))
        await wait_until(lambda: hub.trackers.get("cnc-1").state is MachineState.RUNNING)
    finally:
        await cm.__aexit__(None, None, None)


async def test_messages_sent_while_the_hub_is_down_arrive_after_restart(
    broker: Any,
    hub_config: Callable[..., HubConfig],
    env: Callable[..., Envelope],
    wait_until: Wait,
) -> None:
    config = hub_config(root=broker.root)
    topics = AgentTopics(site="shop1", agent="pi-1", root=broker.root)
    cm, hub = await started(config)
    await cm.__aexit__(None, None, None)
    # The persistent session keeps these QoS 1 messages for the hub while it is away.
    for seq in (1, 2):
        tele = env(RecordKind.TELEMETRY, seq=seq, ts=seq)
        await broker.pub(topics.machine("cnc-1", Channel.TELEMETRY), encode_envelope(tele))
    cm, hub = await started(config)
    try:
        await wait_until(lambda: hub.ingest.counters["stored"] == 2)
        assert await hub.store.stream_progress("pi-1", "s1") == (2, 2)
    finally:
        await cm.__aexit__(None, None, None)


async def test_store_failure_holds_the_ack_and_retries(
    broker: Any,
    hub_config: Callable[..., HubConfig],
    env: Callable[..., Envelope],
    wait_until: Wait,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from shopfloor.hub.errors import StoreError
    from shopfloor.hub.store import SqliteStore

    real_write = SqliteStore.write
    failures = {"left": 2}

    async def flaky_write(self: SqliteStore, batch: Any) -> Any:
        if batch.records and failures["left"] > 0:
            failures["left"] -= 1
            raise StoreError("disk full (simulated)")
        return await real_write(self, batch)

    monkeypatch.setattr(SqliteStore, "write", flaky_write)
    config = hub_config(root=broker.root)
    topics = AgentTopics(site="shop1", agent="pi-1", root=broker.root)
    cm, hub = await started(config)
    try:
        tele = env(RecordKind.TELEMETRY, seq=1)
        await broker.pub(topics.machine("cnc-1", Channel.TELEMETRY), encode_envelope(tele))
        await wait_until(lambda: hub.ingest.counters["stored"] == 1)
        assert hub.ingest.counters["store_errors"] == 2
    finally:
        await cm.__aexit__(None, None, None)


async def test_wrong_kind_and_foreign_topics_are_rejected(
    broker: Any,
    hub_config: Callable[..., HubConfig],
    env: Callable[..., Envelope],
    wait_until: Wait,
) -> None:
    config = hub_config(root=broker.root)
    topics = AgentTopics(site="shop1", agent="pi-1", root=broker.root)
    cm, hub = await started(config)
    try:
        # A telemetry envelope on the state topic, a status naming another agent, and a
        # site this hub does not serve (not subscribed: never arrives).
        await broker.pub(
            topics.machine("cnc-1", Channel.STATE),
            encode_envelope(env(RecordKind.TELEMETRY, seq=1)),
        )
        await broker.pub(topics.status, encode_status(AgentStatus("pi-2", True, 1, 1)))
        other = AgentTopics(site="elsewhere", agent="pi-1", root=broker.root)
        await broker.pub(other.machine("cnc-1", Channel.STATE), encode_envelope(env(seq=2)))
        await wait_until(lambda: hub.ingest.counters["rejected"] == 2)
        assert hub.ingest.rejected_by_reason == {"kind_mismatch": 1, "agent_mismatch": 1}
        await asyncio.sleep(0.3)
        assert hub.ingest.counters["received"] == 2
    finally:
        await cm.__aexit__(None, None, None)


@pytest.mark.slow
async def test_hub_starts_without_a_broker_and_rides_out_a_broker_restart(
    hub_config: Callable[..., HubConfig],
    env: Callable[..., Envelope],
    wait_until: Wait,
    private_broker: Callable[..., Any],
) -> None:
    own = private_broker()
    own.stop()  # only our own broker, by its PID
    root = "own/v1"
    config = hub_config(root=root, port=own.port)
    async with open_hub(config) as hub:
        ingest = hub.ingest
        assert ingest is not None
        await asyncio.sleep(0.3)
        assert not ingest.connected, "no broker yet; the hub runs anyway"
        own.start()
        await asyncio.wait_for(ingest.wait_connected(), 15)
        own.stop(signal.SIGKILL)
        await wait_until(lambda: not ingest.connected)
        own.start()
        # The fresh broker has no session: the hub must subscribe again by itself.
        await asyncio.wait_for(ingest.wait_connected(), 15)
        topics = AgentTopics(site="shop1", agent="pi-1", root=root)
        pub = await asyncio.create_subprocess_exec(
            "mosquitto_pub",
            "-p",
            str(own.port),
            "-q",
            "1",
            "-t",
            topics.machine("cnc-1", Channel.STATE),
            "-m",
            encode_envelope(env(seq=1)).decode(),
        )
        assert await pub.wait() == 0
        await wait_until(lambda: ingest.counters["stored"] == 1)
        # Down again at shutdown: closing must not wait for, or leak, a reconnect.
        own.stop(signal.SIGKILL)
        await wait_until(lambda: not ingest.connected)


@pytest.mark.slow
async def test_works_on_mqtt_3_1_1_with_amqtt(
    tmp_path: Any,
    hub_config: Callable[..., HubConfig],
    env: Callable[..., Envelope],
    wait_until: Wait,
) -> None:
    import shutil
    import socket
    import sys
    from pathlib import Path

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    conf = tmp_path / "amqtt.yaml"
    conf.write_text(
        "listeners:\n  default:\n    type: tcp\n"
        f"    bind: 127.0.0.1:{port}\n"
        "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
        "    allow_anonymous: true\n"
    )
    exe = shutil.which("amqtt") or str(Path(sys.executable).parent / "amqtt")
    broker_proc = await asyncio.create_subprocess_exec(
        exe, "-c", str(conf), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:

        async def listening() -> bool:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                return False
            writer.close()
            await writer.wait_closed()
            return True

        await wait_until(listening)
        root = "amq/v1"
        topics = AgentTopics(site="shop1", agent="pi-1", root=root)
        config = hub_config('protocol = "3.1.1"', root=root, port=port)
        async with open_hub(config) as hub:
            ingest = hub.ingest
            assert ingest is not None
            await asyncio.wait_for(ingest.wait_connected(), 15)
            pub = await asyncio.create_subprocess_exec(
                "mosquitto_pub",
                "-p",
                str(port),
                "-V",
                "mqttv311",
                "-q",
                "1",
                "-t",
                topics.machine("cnc-1", Channel.STATE),
                "-m",
                encode_envelope(env(seq=1)).decode(),
            )
            assert await pub.wait() == 0
            await wait_until(lambda: ingest.counters["stored"] == 1)
            await wait_until(lambda: ingest.counters["acks_published"] >= 1)
    finally:
        broker_proc.kill()  # our own broker, by its PID
        await broker_proc.wait()


@pytest.mark.slow
async def test_a_burst_is_stored_completely_in_batches(
    hub_config: Callable[..., HubConfig],
    env: Callable[..., Envelope],
    wait_until: Wait,
    private_broker: Callable[..., Any],
) -> None:
    own = private_broker()  # its queue limit is raised; the shared broker's is not ours
    root = "burst/v1"
    count = 3000
    lines = b"".join(
        encode_envelope(env(RecordKind.TELEMETRY, seq=i, ts=i)) + b"\n" for i in range(1, count + 1)
    )
    async with open_hub(hub_config(root=root, port=own.port)) as hub:
        ingest = hub.ingest
        assert ingest is not None
        await asyncio.wait_for(ingest.wait_connected(), 10)
        topic = AgentTopics(site="shop1", agent="pi-1", root=root).machine(
            "cnc-1", Channel.TELEMETRY
        )
        pub = await asyncio.create_subprocess_exec(
            "mosquitto_pub",
            "-p",
            str(own.port),
            "-q",
            "1",
            "-l",
            "-t",
            topic,
            stdin=asyncio.subprocess.PIPE,
        )
        await pub.communicate(lines)
        assert pub.returncode == 0
        await wait_until(lambda: ingest.counters["stored"] == count, 30)
        assert await hub.store.stream_progress("pi-1", "s1") == (count, count)
        assert ingest.counters["duplicates"] == 0
        assert ingest.counters["batches"] < count // 5, "messages are committed in batches"


async def test_a_long_job_catch_up_does_not_hold_back_connecting(
    broker: Any,
    hub_config: Callable[..., HubConfig],
    env: Callable[..., Envelope],
    wait_until: Wait,
    tmp_path: Path,
) -> None:
    """The first start after the upgrade replays 20,000 stored job events: ingest connects
    while the book catches up in the background, batches committed meanwhile follow it,
    and the jobs are exactly what a full replay of the same records gives."""
    config = hub_config(root=broker.root)
    t0 = 1_764_000_000_000
    seq = 0

    def event(machine: str, ts: int, body: dict[str, Any]) -> Incoming:
        nonlocal seq
        seq += 1
        envelope = Envelope(
            kind=RecordKind.EVENT, agent="pi-9", machine=machine, stream="s9", seq=seq, ts=ts,
            body={"code": None, "text": "", **body}, mono=ts,
        )  # fmt: skip
        return Incoming(envelope=envelope, site="shop1", received_at=ts)

    records = []
    for j in range(2000):
        machine, t, name = f"m{j % 10}", t0 + j * 60_000, f"j{j}"
        figures = {"job": name, "total": 100}
        records.append(
            event(machine, t, {"event": "job_started", "program": f"p{j % 3}", "unit": "lines",
                               **figures})
        )  # fmt: skip
        records += [
            event(machine, t + k * 5000, {"event": "job_progress", "done": k * 10, **figures})
            for k in range(1, 9)
        ]
        if j % 100 != 99:  # some are superseded by the next start instead
            records.append(
                event(machine, t + 50_000, {"event": "job_ended", "outcome": "completed",
                                            "done": 100, **figures})
            )  # fmt: skip
    assert len(records) > 19_900
    store = make_store(config.hub)
    assert isinstance(store, SqliteStore)
    async with store:
        for i in range(0, len(records), 2000):
            await store.write(WriteBatch(records=records[i : i + 2000]))
        assert isinstance(store, JobBookStore)
        assert await store.job_cursor() == 0

    loop = asyncio.get_running_loop()
    began = loop.time()
    cm, hub = await started(config)
    try:
        connected_after = loop.time() - began
        jobs = hub.jobs
        assert jobs is not None
        assert jobs.catching_up, "connected only after the whole catch-up"
        assert connected_after < 1.5
        # A live job arrives during the catch-up: its batch waits and is applied after it.
        topics = AgentTopics(site="shop1", agent="pi-1", root=broker.root)
        now = wall_ms()
        live = [
            env(RecordKind.EVENT, seq=1, ts=now, body={"event": "job_started", "job": "live",
                "program": "p0", "unit": "lines", "total": 100}),
            env(RecordKind.EVENT, seq=2, ts=now + 1, body={"event": "job_progress",
                "job": "live", "done": 40, "total": 100}),
        ]  # fmt: skip
        for e in live:
            await broker.pub(topics.machine("cnc-1", Channel.EVENT), encode_envelope(e))
        await wait_until(lambda: hub.ingest.counters["stored"] == 2, 20)
        await asyncio.wait_for(jobs.caught_up(), 60)
        got = await hub.store.jobs(limit=10_000)
    finally:
        await cm.__aexit__(None, None, None)
    assert len(got) == 2001
    [row] = [r for r in got if r.agent_job == "live"]
    assert (row.started_at, row.done, row.ended_at) == (now, 40, None)

    # The same records replayed from nothing, in the foreground, by a fresh book.
    copy = tmp_path / "replay.sqlite3"
    source = Path(store.path)
    with (
        contextlib.closing(sqlite3.connect(source)) as src,
        contextlib.closing(sqlite3.connect(copy)) as dst,
    ):
        src.backup(dst)
        dst.execute("DELETE FROM jobs")
        dst.execute("DELETE FROM counters WHERE name = 'jobs_cursor'")
        dst.commit()
    async with SqliteStore(copy) as replay:
        await JobBook(replay).load()
        want = await replay.jobs(limit=10_000)

    def comparable(rows: list[JobRow]) -> list[Any]:
        return [dataclasses.replace(r, updated_at=0) for r in rows]

    assert comparable(got) == comparable(want)
