"""The durable outbox and the publisher loops over it, without a broker (a fake connection)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from shopfloor.agent.mqtt import IncomingMessage
from shopfloor.agent.outbox import Outbox, seq_ranges
from shopfloor.agent.publisher import Publisher, RecordQueue, TokenBucket
from shopfloor.agent.readings import Record
from shopfloor.agent.seqstore import DB_NAME
from shopfloor.contract import (
    AckWatermark,
    AgentStatus,
    AgentTopics,
    ReplayRequest,
    decode_envelope,
    decode_status,
    encode_ack,
    encode_replay,
    encode_status,
    parse_data_loss,
)
from shopfloor.contract.envelope import RecordKind
from shopfloor.contract.topics import hub_status_topic

TOPICS = AgentTopics(site="shop", agent="pi-1", root="t/v1")


def rec(kind: RecordKind, n: int, machine: str = "m1") -> Record:
    bodies: dict[RecordKind, dict[str, Any]] = {
        RecordKind.TELEMETRY: {"samples": [{"ts": n, "values": {"n": n}}]},
        RecordKind.STATE: {"state": "IDLE", "n": n},
        RecordKind.EVENT: {"event": "part", "n": n},
        RecordKind.META: {"protocol": "grbl", "n": n},
    }
    return Record(kind, machine, 1_700_000_000_000 + n, n, bodies[kind])


class FakeConn:
    """Enough of MqttConnection for the publisher: records publishes, can drop the line."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bool]] = []
        self.generation = 1
        self.connected = True
        self._changed = asyncio.Event()
        self.incoming: asyncio.Queue[IncomingMessage] = asyncio.Queue()
        self.on_publish: Any = None

    async def wait_connected(self, *, after: int = 0) -> int:
        while not (self.connected and self.generation > after):
            self._changed.clear()
            await self._changed.wait()
        return self.generation

    def reconnect(self) -> None:
        self.generation += 1
        self._changed.set()

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        await self.wait_connected()
        if self.on_publish is not None:
            await self.on_publish(topic, payload)
        self.sent.append((topic, payload, retain))

    async def messages(self) -> AsyncIterator[IncomingMessage]:
        while True:
            yield await self.incoming.get()

    def envelopes(self) -> list[Any]:
        return [decode_envelope(p) for t, p, _ in self.sent if not t.endswith("_status")]


@contextlib.asynccontextmanager
async def running(publisher: Publisher) -> AsyncIterator[None]:
    tasks = [
        asyncio.create_task(publisher.send_loop(), name="test-send"),
        asyncio.create_task(publisher.control_loop(), name="test-control"),
    ]
    await asyncio.sleep(0.05)  # connected and idle: what is written from now on is live
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def until(predicate: Any, limit_s: float = 5.0) -> None:
    async with asyncio.timeout(limit_s):
        while not predicate():  # noqa: ASYNC110 - polls plain state of the code under test
            await asyncio.sleep(0.01)


def ack(conn: FakeConn, stream: str, seq: int) -> None:
    payload = encode_ack(AckWatermark(streams={stream: seq}, ts=1))
    conn.incoming.put_nowait(IncomingMessage(TOPICS.ack, payload, 1, True))


# -- the outbox itself ------------------------------------------------------------------------


async def test_append_numbers_rows_and_only_an_ack_deletes_them(tmp_path: Path) -> None:
    async with await Outbox.open(tmp_path) as outbox:
        conn = FakeConn()
        pub = Publisher(conn, outbox, TOPICS, default_machine="m1")  # type: ignore[arg-type]
        await pub.write([rec(RecordKind.STATE, 1), rec(RecordKind.TELEMETRY, 2)])
        rows = await outbox.read_from(1)
        assert [r.seq for r in rows] == [1, 2]
        assert rows[0].retain
        assert not rows[1].retain
        assert decode_envelope(rows[0].payload).epoch == outbox.epoch
        assert outbox.stats.depth == 2
        assert await outbox.ack(1) == 1
        assert [r.seq for r in await outbox.read_from(0)] == [2]
        assert outbox.stats.as_dict()["acked"] == 1


async def test_restart_continues_the_sequence_and_a_new_dir_is_a_new_stream(
    tmp_path: Path,
) -> None:
    conn = FakeConn()
    async with await Outbox.open(tmp_path / "a", block_size=10) as outbox:
        pub = Publisher(conn, outbox, TOPICS, default_machine="m1")  # type: ignore[arg-type]
        await pub.write([rec(RecordKind.TELEMETRY, n) for n in range(3)])
        stream = outbox.stream
    async with await Outbox.open(tmp_path / "a", block_size=10) as outbox:
        assert outbox.stream == stream
        assert outbox.epoch == 2
        assert outbox.stats.depth == 3  # nothing acked: still there
        assert outbox.next_seq == 4  # a clean close gives the rest of the block back
    async with await Outbox.open(tmp_path / "b") as other:
        assert other.stream != stream


async def test_cap_drops_oldest_telemetry_first_and_declares_it(tmp_path: Path) -> None:
    async with await Outbox.open(tmp_path, max_rows=10) as outbox:
        conn = FakeConn()
        pub = Publisher(conn, outbox, TOPICS, default_machine="m1")  # type: ignore[arg-type]
        await pub.write([rec(RecordKind.STATE, 0)])
        await pub.write([rec(RecordKind.TELEMETRY, n) for n in range(1, 9)])  # seqs 2..9
        await pub.write([rec(RecordKind.EVENT, 9), rec(RecordKind.TELEMETRY, 10)])  # 10, 11
        rows = await outbox.read_from(0, 100)
        kinds = {r.seq: r.kind for r in rows}
        assert len(rows) <= 10
        assert kinds[1] is RecordKind.STATE
        assert kinds[10] is RecordKind.EVENT
        assert 2 not in kinds  # the oldest telemetry went first
        assert outbox.stats.dropped_other == 0
        dropped = outbox.stats.dropped_telemetry
        assert dropped >= 1
        losses = [
            parse_data_loss(decode_envelope(r.payload).body)
            for r in rows
            if r.kind is RecordKind.EVENT
        ]
        declared = [loss for loss in losses if loss is not None]
        assert declared
        assert declared[0].reason == "outbox_full"
        assert declared[0].stream == outbox.stream
        assert sum(d.count for d in declared) == dropped
        assert declared[0].ranges[0][0] == 2
        assert pub.data_loss_events == len(declared)


async def test_cap_drops_state_only_when_no_telemetry_is_left_never_data_loss(
    tmp_path: Path,
) -> None:
    async with await Outbox.open(tmp_path, max_rows=4) as outbox:
        conn = FakeConn()
        pub = Publisher(conn, outbox, TOPICS, default_machine="m1")  # type: ignore[arg-type]
        await pub.write([rec(RecordKind.STATE, n) for n in range(8)])
        rows = await outbox.read_from(0, 100)
        assert len(rows) <= 4
        assert outbox.stats.dropped_other >= 4
        kept = [decode_envelope(r.payload).body for r in rows]
        assert any(parse_data_loss(b) for b in kept)  # the declaration itself is kept


def test_seq_ranges() -> None:
    assert seq_ranges([1, 2, 3, 7, 9, 10]) == [[1, 3], [7, 7], [9, 10]]
    assert seq_ranges([]) == []


async def test_sigkill_mid_write_loses_nothing_that_was_committed(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, json, sys
        from pathlib import Path
        from shopfloor.agent.outbox import Outbox
        from shopfloor.agent.publisher import Publisher
        from shopfloor.agent.readings import Record
        from shopfloor.contract import AgentTopics
        from shopfloor.contract.envelope import RecordKind

        async def main():
            outbox = await Outbox.open(Path({str(tmp_path)!r}), block_size=7)
            pub = Publisher(None, outbox, AgentTopics(site="shop", agent="pi-1", root="t/v1"),
                            default_machine="m1")
            n = 0
            while True:
                kind = RecordKind.TELEMETRY if n % 3 else RecordKind.STATE
                body = ({{"samples": [{{"ts": n, "values": {{}}}}]}} if n % 3
                        else {{"state": "IDLE"}})
                await pub.write([Record(kind, "m1", n, n, body)])
                print(json.dumps([outbox.stream, outbox.last_seq]), flush=True)
                n += 1

        asyncio.run(main())
        """
    )
    proc = subprocess.Popen(  # noqa: ASYNC220 - a child we read line by line and SIGKILL
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while len(lines) < 200 and time.monotonic() < deadline:
            line = await asyncio.to_thread(proc.stdout.readline)
            if not line:
                break
            lines.append(line.decode())
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=10)
        proc.stdout.close()
        assert proc.stderr is not None
        err = proc.stderr.read()
        proc.stderr.close()
    assert len(lines) == 200, err
    stream, last = json.loads(lines[-1])
    async with await Outbox.open(tmp_path, block_size=7) as outbox:
        assert outbox.stream == stream
        seqs = [r.seq for r in await outbox.read_from(0, 10_000)]
        assert seqs[: len(lines)] == list(range(1, len(lines) + 1))
        assert last in seqs
        assert outbox.next_seq > max(seqs)  # never reused


async def test_foreign_schema_version_one_is_upgraded(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / DB_NAME)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value ANY) STRICT")
    conn.executemany(
        "INSERT INTO meta VALUES (?, ?)", [("stream", "abc"), ("next_block", 50), ("epoch", 3)]
    )
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    async with await Outbox.open(tmp_path) as outbox:
        assert (outbox.stream, outbox.epoch, outbox.next_seq) == ("abc", 4, 50)


# -- the publisher over it --------------------------------------------------------------------


async def test_written_before_published_and_deleted_only_on_the_hub_watermark(
    tmp_path: Path,
) -> None:
    async with await Outbox.open(tmp_path) as outbox:
        conn = FakeConn()
        pub = Publisher(conn, outbox, TOPICS, default_machine="m1")  # type: ignore[arg-type]

        async def on_disk(topic: str, payload: bytes) -> None:
            seq = decode_envelope(payload).seq
            assert [r.seq for r in await outbox.read_from(seq, 1)] == [seq]

        conn.on_publish = on_disk
        async with running(pub):
            await pub.write([rec(RecordKind.TELEMETRY, n) for n in range(5)])
            await until(lambda: len(conn.sent) == 5)
            assert outbox.stats.depth == 5  # PUBACKs (published) delete nothing
            ack(conn, "someone-else", 5)
            ack(conn, outbox.stream, 3)
            await until(lambda: outbox.stats.depth == 2)
            ack(conn, outbox.stream, 2)  # older news: ignored
            ack(conn, outbox.stream, 99)  # beyond what was written: ignored
            await asyncio.sleep(0.05)
            assert pub.acked == 3
        assert [e.seq for e in conn.envelopes()] == [1, 2, 3, 4, 5]
        assert not any(e.replay for e in conn.envelopes())


async def test_reconnect_replays_unacked_rows_in_order_rate_limited(tmp_path: Path) -> None:
    async with await Outbox.open(tmp_path) as outbox:
        conn = FakeConn()
        pub = Publisher(
            conn,  # type: ignore[arg-type]
            outbox,
            TOPICS,
            default_machine="m1",
            replay_rate=100.0,
            replay_burst=1,
        )
        async with running(pub):
            await pub.write([rec(RecordKind.STATE, 0)])
            await pub.write([rec(RecordKind.TELEMETRY, n) for n in range(1, 30)])
            await until(lambda: len(conn.sent) == 30)
            ack(conn, outbox.stream, 10)
            await until(lambda: outbox.stats.depth == 20)
            conn.connected = False  # the line drops; the agent keeps appending
            await pub.write([rec(RecordKind.TELEMETRY, n) for n in range(30, 40)])
            conn.sent.clear()
            conn.connected = True
            conn.reconnect()
            started = time.monotonic()
            await until(lambda: len([e for e in conn.envelopes() if e.seq > 1]) == 30)
            elapsed = time.monotonic() - started
        envs = [e for e in conn.envelopes() if e.seq > 1]
        assert [e.seq for e in envs] == list(range(11, 41))
        assert all(e.replay for e in envs)
        assert elapsed >= 0.25  # 30 rows at 100/s with a burst of 1
        # The last retained state went out again, retained and marked as a replay.
        retained = [(t, p) for t, p, r in conn.sent if r]
        assert len(retained) == 1
        assert decode_envelope(retained[0][1]).seq == 1
        assert pub.replayed == 30


async def test_live_rows_go_ahead_of_a_long_replay_and_nothing_is_sent_twice(
    tmp_path: Path,
) -> None:
    async with await Outbox.open(tmp_path) as outbox:
        conn = FakeConn()
        pub = Publisher(
            conn,  # type: ignore[arg-type]
            outbox,
            TOPICS,
            default_machine="m1",
            replay_rate=50.0,
            replay_burst=1,
            read_size=20,
        )
        conn.connected = False  # a long outage: 150 rows pile up (3 s of replay at 50/s)
        async with running(pub):
            await pub.write([rec(RecordKind.TELEMETRY, n) for n in range(150)])
            conn.connected = True
            conn.reconnect()
            await until(lambda: len(conn.sent) >= 10)
            await pub.write([rec(RecordKind.STATE, 1000)])  # the machine changes state now
            live_seq = outbox.last_seq
            await until(lambda: live_seq in [e.seq for e in conn.envelopes()], limit_s=1.0)
            backlog_sent = len([e for e in conn.envelopes() if e.replay])
            assert backlog_sent < 120, "the live row waited for most of the backlog"
            await until(lambda: len(conn.envelopes()) == 151, limit_s=10.0)
            await asyncio.sleep(0.2)
        envs = conn.envelopes()
        assert sorted(e.seq for e in envs) == list(range(1, 152))  # each exactly once
        live = next(e for e in envs if e.seq == live_seq)
        assert not live.replay
        assert all(e.replay for e in envs if e.seq != live_seq)
        # The live state went out retained; no backlog row did (none is the newest state).
        retained = [decode_envelope(p).seq for _, p, r in conn.sent if r]
        assert retained == [live_seq]


async def test_replay_request_rewinds_and_declares_what_is_gone(tmp_path: Path) -> None:
    async with await Outbox.open(tmp_path) as outbox:
        conn = FakeConn()
        pub = Publisher(conn, outbox, TOPICS, default_machine="m1")  # type: ignore[arg-type]
        async with running(pub):
            await pub.write([rec(RecordKind.TELEMETRY, n) for n in range(10)])
            await until(lambda: len(conn.sent) == 10)
            await outbox.ack(4)  # as if rows 1-4 were acked ...
            conn.sent.clear()
            # ... but the hub lost 3-4 (a restored backup) and asks from 3.
            request = encode_replay(ReplayRequest(stream=outbox.stream, from_seq=3))
            conn.incoming.put_nowait(IncomingMessage(TOPICS.cmd("replay"), request, 1, False))
            await until(lambda: len(conn.sent) == 7)
        envs = conn.envelopes()
        assert [e.seq for e in envs] == [5, 6, 7, 8, 9, 10, 11]
        assert all(e.replay for e in envs[:6])
        loss = parse_data_loss(envs[-1].body)
        assert loss is not None
        assert loss.ranges == ((3, 4),)
        assert loss.reason == "not_in_outbox"
        assert pub.replay_requests == 1


async def test_replay_request_declares_holes_inside_the_outbox_too(tmp_path: Path) -> None:
    async with await Outbox.open(tmp_path) as outbox:
        conn = FakeConn()
        pub = Publisher(conn, outbox, TOPICS, default_machine="m1")  # type: ignore[arg-type]
        async with running(pub):
            await pub.write([rec(RecordKind.TELEMETRY, n) for n in range(10)])
            await until(lambda: len(conn.sent) == 10)
            # Rows 6-7 vanished (a telemetry batch lost with the power, say).
            await outbox._in_thread(
                lambda: outbox._db.conn.execute("DELETE FROM outbox WHERE seq IN (6, 7)")
            )
            assert await outbox.holes(1, 12) == [(6, 7), (11, 12)]
            conn.sent.clear()
            request = encode_replay(ReplayRequest(stream=outbox.stream, from_seq=5))
            conn.incoming.put_nowait(IncomingMessage(TOPICS.cmd("replay"), request, 1, False))
            await until(lambda: len(conn.sent) == 5)
            # Asked again: the holes were declared already, only the rows go out again.
            conn.incoming.put_nowait(IncomingMessage(TOPICS.cmd("replay"), request, 1, False))
            await until(lambda: len(conn.sent) == 10)
        envs = conn.envelopes()
        assert [e.seq for e in envs[:5]] == [5, 8, 9, 10, 11]
        loss = parse_data_loss(envs[4].body)
        assert loss is not None
        assert loss.ranges == ((6, 7),)
        assert [e.seq for e in envs[5:]] == [5, 8, 9, 10, 11]
        assert pub.data_loss_events == 1


async def test_a_stuck_watermark_triggers_a_resend(tmp_path: Path) -> None:
    async with await Outbox.open(tmp_path) as outbox:
        conn = FakeConn()
        pub = Publisher(
            conn,  # type: ignore[arg-type]
            outbox,
            TOPICS,
            default_machine="m1",
            resend_after_s=0.2,
        )
        async with running(pub):
            await pub.write([rec(RecordKind.TELEMETRY, n) for n in range(3)])
            await until(lambda: len(conn.sent) == 3)
            await until(lambda: len(conn.sent) == 6, limit_s=5)
        assert [e.replay for e in conn.envelopes()] == [False] * 3 + [True] * 3
        assert pub.resends == 1


async def test_a_hub_coming_back_online_gets_what_it_has_not_acknowledged_again(
    tmp_path: Path,
) -> None:
    status_topic = hub_status_topic(TOPICS.site, TOPICS.root)

    def hub_status(online: bool, *, retained: bool) -> None:
        payload = json.dumps({"online": online}).encode()
        conn.incoming.put_nowait(IncomingMessage(status_topic, payload, 1, retained))

    async with await Outbox.open(tmp_path) as outbox:
        conn = FakeConn()
        pub = Publisher(conn, outbox, TOPICS, default_machine="m1")  # type: ignore[arg-type]
        async with running(pub):
            await pub.write([rec(RecordKind.TELEMETRY, n) for n in range(4)])
            await until(lambda: len(conn.sent) == 4)
            ack(conn, outbox.stream, 1)
            await until(lambda: pub.acked == 1)
            # Old news from the broker's retained store (on subscribe): nothing is resent.
            hub_status(True, retained=True)
            await asyncio.sleep(0.2)
            assert len(conn.sent) == 4
            # The hub (re)connects and says so live: seqs 2-4 may have gone to a broker that
            # had no session for it; they go again, as replays, at once.
            hub_status(True, retained=False)
            await until(lambda: len(conn.sent) == 7)
            # Going offline resends nothing.
            hub_status(False, retained=False)
            await asyncio.sleep(0.2)
            assert len(conn.sent) == 7
        again = conn.envelopes()[4:]
        assert [e.seq for e in again] == [2, 3, 4]
        assert all(e.replay for e in again)
        assert pub.resends == 1


async def test_token_bucket_limits_rate() -> None:
    bucket = TokenBucket(rate=200.0, burst=1)
    started = time.monotonic()
    for _ in range(21):
        await bucket.take()
    assert time.monotonic() - started >= 0.09
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(rate=0, burst=1)


async def test_counters_for_the_status_message(tmp_path: Path) -> None:
    async with await Outbox.open(tmp_path, max_rows=100) as outbox:
        pub = Publisher(FakeConn(), outbox, TOPICS, default_machine="m1")  # type: ignore[arg-type]
        await pub.write([rec(RecordKind.TELEMETRY, n) for n in range(3)])
        counters = pub.counters()
        assert counters["depth"] == 3
        assert counters["appended"] == 3
        assert counters["dropped_telemetry"] == 0
        status = AgentStatus(agent="pi-1", online=True, epoch=1, ts=1, outbox=counters)
        assert decode_status(encode_status(status)).outbox == counters


# -- the reviewer's defects -------------------------------------------------------------------


def replay_request(conn: FakeConn, stream: str, from_seq: int) -> None:
    request = encode_replay(ReplayRequest(stream=stream, from_seq=from_seq))
    conn.incoming.put_nowait(IncomingMessage(TOPICS.cmd("replay"), request, 1, False))


def losses_in(envs: list[Any]) -> list[Any]:
    return [loss for e in envs if (loss := parse_data_loss(e.body)) is not None]


async def test_replay_request_below_the_watermark_declares_what_was_acked(
    tmp_path: Path,
) -> None:
    # The hub was restored from a backup: it asks from 4 although it had acked up to 8, and
    # rows 4-8 are gone from the outbox. Those must be declared, or its watermark is stuck.
    async with await Outbox.open(tmp_path) as outbox:
        conn = FakeConn()
        pub = Publisher(conn, outbox, TOPICS, default_machine="m1")  # type: ignore[arg-type]
        async with running(pub):
            await pub.write([rec(RecordKind.TELEMETRY, n) for n in range(10)])  # seqs 1..10
            await until(lambda: len(conn.sent) == 10)
            ack(conn, outbox.stream, 8)
            await until(lambda: outbox.stats.depth == 2)
            conn.sent.clear()
            # A request that crossed the ack of 8 is stale: only 9 and 10 go out again.
            replay_request(conn, outbox.stream, 4)
            await until(lambda: len(conn.sent) == 2)
            await asyncio.sleep(0.05)
            assert pub.data_loss_events == 0
            conn.sent.clear()
            # The restored hub has 1-3; its ack says so, then it asks from 4.
            ack(conn, outbox.stream, 3)
            replay_request(conn, outbox.stream, 4)
            await until(lambda: len(conn.sent) == 3)
            envs = conn.envelopes()
            ack(conn, outbox.stream, 11)  # the declaration filled the hub's gap
            await until(lambda: outbox.stats.depth == 0)
        assert sorted(e.seq for e in envs) == [9, 10, 11]
        assert all(e.replay for e in envs if e.seq in (9, 10))
        [loss] = losses_in(envs)
        assert loss.ranges == ((4, 8),)
        assert loss.reason == "acked_earlier"
        assert loss.count == 5
        assert pub.data_loss_events == 1
        assert pub.acked == 11


async def test_a_cancelled_append_finishes_before_anything_else_touches_the_file(
    tmp_path: Path,
) -> None:
    conn = FakeConn()
    async with await Outbox.open(tmp_path) as outbox:
        pub = Publisher(conn, outbox, TOPICS, default_machine="m1")  # type: ignore[arg-type]
        started, gate = threading.Event(), threading.Event()

        def slow_make(record: Record, seq: int) -> Any:
            started.set()
            gate.wait(5)  # the sqlite thread is busy (a big batch, a slow SD card)
            return pub.make_row(record, seq)

        first = asyncio.create_task(
            outbox.append([rec(RecordKind.TELEMETRY, n) for n in range(5)], slow_make)
        )
        assert await asyncio.to_thread(started.wait, 5)
        first.cancel()  # the task group stopping the writer mid-append
        await asyncio.sleep(0.05)
        second = asyncio.create_task(pub.write([rec(RecordKind.STATE, n) for n in range(5, 8)]))
        await asyncio.sleep(0.1)
        gate.set()
        results = await asyncio.gather(first, second, return_exceptions=True)
        assert isinstance(results[0], asyncio.CancelledError)
        assert results[1] is None
        rows = await outbox.read_from(0, 100)
        assert [r.seq for r in rows] == list(range(1, 9))
        ns = sorted(
            decode_envelope(r.payload).body.get("n", -1) for r in rows if r.kind is RecordKind.STATE
        )
        assert ns == [5, 6, 7]
        assert outbox.next_seq == 9


async def test_close_waits_for_a_cancelled_append(tmp_path: Path) -> None:
    started, gate = threading.Event(), threading.Event()
    outbox = await Outbox.open(tmp_path)
    pub = Publisher(FakeConn(), outbox, TOPICS, default_machine="m1")  # type: ignore[arg-type]

    def slow_make(record: Record, seq: int) -> Any:
        started.set()
        gate.wait(5)
        return pub.make_row(record, seq)

    task = asyncio.create_task(
        outbox.append([rec(RecordKind.STATE, n) for n in range(3)], slow_make)
    )
    assert await asyncio.to_thread(started.wait, 5)
    task.cancel()
    await asyncio.sleep(0.05)
    closing = asyncio.create_task(outbox.close())
    await asyncio.sleep(0.1)
    gate.set()
    await closing
    with contextlib.suppress(asyncio.CancelledError):
        await task
    async with await Outbox.open(tmp_path) as again:
        assert [r.seq for r in await again.read_from(0, 100)] == [1, 2, 3]


async def test_the_cap_holds_when_only_state_is_written_one_by_one(tmp_path: Path) -> None:
    async with await Outbox.open(tmp_path, max_rows=10) as outbox:
        pub = Publisher(FakeConn(), outbox, TOPICS, default_machine="m1")  # type: ignore[arg-type]
        for n in range(60):
            await pub.write([rec(RecordKind.STATE, n, machine=f"m{n % 2}")])
            assert outbox.stats.depth <= 11, n
        rows = await outbox.read_from(0, 1000)
        assert len(rows) == outbox.stats.depth
        envs = [decode_envelope(r.payload) for r in rows]
        # The newest state of each machine is there ...
        newest = {e.machine: e.body["n"] for e in envs if e.kind is RecordKind.STATE}
        assert newest == {"m0": 58, "m1": 59}
        # ... and one data_loss row declares everything else, with no seq left unaccounted.
        [loss] = losses_in(envs)
        assert loss.reason == "outbox_full"
        declared = {s for a, b in loss.ranges for s in range(a, b + 1)}
        assert declared | {r.seq for r in rows} == set(range(1, outbox.next_seq))
        assert not declared & {r.seq for r in rows}


async def test_the_cap_with_room_for_one_keeps_the_newest_state(tmp_path: Path) -> None:
    async with await Outbox.open(tmp_path, max_rows=1) as outbox:
        pub = Publisher(FakeConn(), outbox, TOPICS, default_machine="m1")  # type: ignore[arg-type]
        for n in range(20):
            await pub.write([rec(RecordKind.STATE, n)])
            assert outbox.stats.depth <= 2
        rows = await outbox.read_from(0, 100)
        states = [decode_envelope(r.payload).body for r in rows if r.kind is RecordKind.STATE]
        assert [b["n"] for b in states] == [19]


async def test_seqs_dropped_by_the_cap_are_not_declared_again_on_a_replay_request(
    tmp_path: Path,
) -> None:
    async with await Outbox.open(tmp_path, max_rows=10) as outbox:
        conn = FakeConn()
        pub = Publisher(conn, outbox, TOPICS, default_machine="m1")  # type: ignore[arg-type]
        conn.connected = False  # the hub is away: the outbox fills up
        await pub.write([rec(RecordKind.TELEMETRY, n) for n in range(15)])
        declared = losses_in([decode_envelope(r.payload) for r in await outbox.read_from(0)])
        assert [d.reason for d in declared] == ["outbox_full"]
        conn.connected = True
        async with running(pub):
            await until(lambda: len(conn.sent) == outbox.stats.depth)
            sent = len(conn.sent)
            replay_request(conn, outbox.stream, 1)
            await until(lambda: len(conn.sent) == 2 * sent)
            await asyncio.sleep(0.1)
        assert [d.reason for d in losses_in(conn.envelopes())] == ["outbox_full"] * 2
        assert pub.data_loss_events == 1


async def test_stopping_the_writer_mid_append_then_flushing_loses_nothing(
    tmp_path: Path,
) -> None:
    # What AgentApp does on every stop: the task group cancels the writer, then flush().
    async with await Outbox.open(tmp_path) as outbox:
        pub = Publisher(FakeConn(), outbox, TOPICS, default_machine="m1")  # type: ignore[arg-type]
        queue = RecordQueue(100)
        started, gate = threading.Event(), threading.Event()
        make_row = pub.make_row

        def slow_make(record: Record, seq: int) -> Any:
            started.set()
            gate.wait(5)
            return make_row(record, seq)

        pub.make_row = slow_make  # type: ignore[method-assign]
        for n in range(10):
            await queue.put(rec(RecordKind.TELEMETRY, n))
        writer = asyncio.create_task(pub.write_loop(queue))
        assert await asyncio.to_thread(started.wait, 5)
        writer.cancel()
        await asyncio.sleep(0.05)
        for n in range(10, 15):
            await queue.put(rec(RecordKind.STATE, n))
        flushing = asyncio.create_task(pub.flush(queue))
        await asyncio.sleep(0.1)
        gate.set()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
        await flushing
        rows = await outbox.read_from(0, 100)
        assert [r.seq for r in rows] == list(range(1, 16))
        ns = [decode_envelope(r.payload).body.get("n") for r in rows if r.kind is RecordKind.STATE]
        assert ns == list(range(10, 15))


async def test_the_merged_declaration_forgets_what_the_hub_has_acknowledged(
    tmp_path: Path,
) -> None:
    async with await Outbox.open(tmp_path, max_rows=10) as outbox:
        pub = Publisher(FakeConn(), outbox, TOPICS, default_machine="m1")  # type: ignore[arg-type]
        await pub.write([rec(RecordKind.TELEMETRY, n) for n in range(15)])  # 1..15, 16 declares
        [first] = losses_in([decode_envelope(r.payload) for r in await outbox.read_from(0)])
        assert first.ranges == ((1, 6),)
        await outbox.ack(10)
        await pub.write([rec(RecordKind.TELEMETRY, n) for n in range(15, 25)])  # 17..26
        rows = await outbox.read_from(0)
        [loss] = losses_in([decode_envelope(r.payload) for r in rows])
        # 1-6 were acked (the hub had the first declaration); 16 was that declaration.
        assert loss.ranges == ((11, 17),)
        assert len(rows) <= 10
