"""The event store on SQLite and PostgreSQL alike: idempotency, watermarks, state intervals,
rejected messages. Every test runs once per backend (the ``store`` fixture), with the same
expected answers."""

from __future__ import annotations

from collections.abc import Callable

from pg_support import AnyStore, StoreFactory

from shopfloor.contract import AgentStatus, Envelope, MachineState, RecordKind
from shopfloor.hub.store import (
    Incoming,
    Interval,
    Rejection,
    StateRow,
    StateSource,
    StatusUpdate,
    WriteBatch,
    machine_key,
    postgres,
    sqlite,
)
from shopfloor.hub.store.postgres import PostgresStore

EnvFactory = Callable[..., Envelope]
Inc = Callable[..., Incoming]
KEY = machine_key("pi-1", "cnc-1")


def state(env: EnvFactory, seq: int, ts: int, value: str, detail: str = "") -> Envelope:
    return env(RecordKind.STATE, seq=seq, ts=ts, body={"state": value, "detail": detail})


async def test_same_batch_twice_is_stored_once(
    store: AnyStore, env: EnvFactory, incoming: Inc
) -> None:
    batch = [incoming(env(RecordKind.TELEMETRY, seq=i, ts=1000 + i)) for i in range(1, 6)]
    assert await store.insert_batch(batch) == 5
    assert await store.insert_batch(batch) == 0
    result = await store.write(WriteBatch(records=[*batch[:2], incoming(env(seq=6))]))
    assert [i.envelope.seq for i in result.new] == [6]
    assert result.duplicates == 2


async def test_a_key_repeated_inside_one_batch_counts_once(
    store: AnyStore, env: EnvFactory, incoming: Inc
) -> None:
    one = incoming(env(RecordKind.EVENT, seq=1))
    result = await store.write(WriteBatch(records=[one, one]))
    assert len(result.new) == 1
    assert result.duplicates == 1


async def test_watermark_is_contiguous_and_waits_for_gaps(
    store: AnyStore, env: EnvFactory, incoming: Inc
) -> None:
    def batch(*seqs: int, stream: str = "s1") -> list[Incoming]:
        return [incoming(env(RecordKind.EVENT, seq=s, stream=stream)) for s in seqs]

    result = await store.write(WriteBatch(records=batch(1, 2, 3, 5, 6)))
    assert result.watermarks == {"pi-1": {"s1": 3}}
    assert await store.stream_progress("pi-1", "s1") == (3, 6)
    result = await store.write(WriteBatch(records=batch(8)))
    assert result.watermarks["pi-1"]["s1"] == 3
    result = await store.write(WriteBatch(records=batch(4)))
    assert result.watermarks["pi-1"]["s1"] == 6
    result = await store.write(WriteBatch(records=batch(2, 3, stream="s2")))
    assert result.watermarks == {"pi-1": {"s1": 6, "s2": 0}}, "seq 1 of s2 is missing"
    await store.write(WriteBatch(records=[*batch(7), *batch(1, stream="s2")]))
    assert await store.watermarks("pi-1") == {"s1": 8, "s2": 3}


async def test_intervals_carry_in_clip_and_leave_the_last_open(
    store: AnyStore, env: EnvFactory, incoming: Inc
) -> None:
    await store.insert_batch(
        [
            incoming(state(env, 1, 1_000, "IDLE")),
            incoming(state(env, 2, 5_000, "RUNNING", "O1234")),
            incoming(state(env, 3, 9_000, "PAUSED")),
            incoming(state(env, 4, 20_000, "IDLE")),  # after the window
        ]
    )
    got = await store.state_intervals(KEY, 3_000, 12_000, now_ms=50_000)
    assert got == [
        Interval(MachineState.IDLE, "", 3_000, 5_000),  # carried in from 1_000
        Interval(MachineState.RUNNING, "O1234", 5_000, 9_000),
        Interval(MachineState.PAUSED, "", 9_000, 12_000),
    ]
    # The window reaches past now: the open interval ends at now.
    got = await store.state_intervals(KEY, 10_000, 100_000, now_ms=25_000)
    assert got == [
        Interval(MachineState.PAUSED, "", 10_000, 20_000),
        Interval(MachineState.IDLE, "", 20_000, 25_000),
    ]
    assert sum(i.duration_ms for i in got) == 15_000


async def test_time_before_the_first_record_is_offline(
    store: AnyStore, env: EnvFactory, incoming: Inc
) -> None:
    assert await store.state_intervals(KEY, 0, 1_000, now_ms=5_000) == [
        Interval(MachineState.OFFLINE, "no data", 0, 1_000)
    ]
    await store.insert_batch([incoming(state(env, 1, 4_000, "RUNNING"))])
    assert await store.state_intervals(KEY, 1_000, 6_000, now_ms=5_000) == [
        Interval(MachineState.OFFLINE, "no data", 1_000, 4_000),
        Interval(MachineState.RUNNING, "", 4_000, 5_000),
    ]
    assert await store.state_intervals(KEY, 6_000, 9_000, now_ms=5_000) == []


async def test_hub_offline_rows_end_the_agent_state_and_late_data_corrects_it(
    store: AnyStore, env: EnvFactory, incoming: Inc
) -> None:
    await store.insert_batch([incoming(state(env, 1, 1_000, "RUNNING"))])
    await store.add_states([StateRow(KEY, 4_000, MachineState.OFFLINE, "agent lost")])
    got = await store.state_intervals(KEY, 0, 10_000, now_ms=10_000)
    assert [(i.state, i.start, i.end) for i in got] == [
        (MachineState.OFFLINE, 0, 1_000),
        (MachineState.RUNNING, 1_000, 4_000),
        (MachineState.OFFLINE, 4_000, 10_000),
    ]
    # A replayed record from the outage puts the machine back to what it really did.
    await store.insert_batch([incoming(state(env, 2, 6_000, "IDLE"))])
    got = await store.state_intervals(KEY, 0, 10_000, now_ms=10_000)
    assert [(i.state, i.start, i.end) for i in got][-2:] == [
        (MachineState.OFFLINE, 4_000, 6_000),
        (MachineState.IDLE, 6_000, 10_000),
    ]


async def test_machines_keep_the_newest_state_and_meta(
    store: AnyStore, env: EnvFactory, incoming: Inc
) -> None:
    await store.insert_batch(
        [
            incoming(state(env, 2, 5_000, "RUNNING"), received_at=7_000),
            incoming(state(env, 1, 1_000, "IDLE"), received_at=8_000),  # late, older
            incoming(env(RecordKind.META, seq=3, ts=2_000)),
        ]
    )
    [row] = await store.machines()
    assert row.key == KEY
    assert row.state_body is not None
    assert row.state_body["state"] == "RUNNING"
    assert row.protocol == "grbl"
    assert row.kind == "router"
    assert row.last_seen == 8_000
    assert row.latest == StateRow(KEY, 5_000, MachineState.RUNNING, "", StateSource.AGENT)


async def test_status_from_an_older_boot_is_ignored(store: AnyStore) -> None:
    def update(online: bool, epoch: int) -> StatusUpdate:
        return StatusUpdate(AgentStatus("pi-1", online, epoch, 1), "shop1", 5)

    result = await store.write(WriteBatch(statuses=[update(True, 3), update(False, 2)]))
    assert [s.status.epoch for s in result.statuses] == [3]
    [agent] = await store.agents()
    assert agent.online is True
    assert agent.epoch == 3


async def test_rejected_are_bounded_but_all_counted(new_store: StoreFactory) -> None:
    async with new_store(keep_rejected=3) as s:
        for i in range(5):
            await s.write(
                WriteBatch(rejections=[Rejection(i, f"t/{i}", b"x" * 70_000, f"bad {i}")])
            )
        kept = await s.rejected(limit=10)
        assert [r.reason for r in kept] == ["bad 4", "bad 3", "bad 2"]
        assert len(kept[0].payload) == 64 * 1024
        assert await s.rejected_total() == 5


async def test_reopening_keeps_data_and_does_not_migrate_twice(
    new_store: StoreFactory, env: EnvFactory, incoming: Inc
) -> None:
    async with new_store() as s:
        await s.insert_batch([incoming(env())])
    async with new_store() as s:
        migrations = postgres.MIGRATIONS if isinstance(s, PostgresStore) else sqlite.MIGRATIONS
        assert await s.schema_version() == max(version for version, _ in migrations)
        assert await s.insert_batch([incoming(env())]) == 0
        assert await s.ping()


async def test_the_record_feed_follows_insertion_order_and_keeps_cursors(
    store: AnyStore, env: EnvFactory, incoming: Inc
) -> None:
    def event(seq: int, ts: int) -> Incoming:
        return incoming(env(RecordKind.EVENT, seq=seq, ts=ts))

    assert await store.feed_head() == 0
    await store.insert_batch([event(1, 5_000), event(2, 1_000)])
    await store.insert_batch([event(3, 3_000), event(1, 5_000)])  # seq 1 again: not fed twice
    got = await store.records_after(0, 10)
    assert [(r.seq, r.ts, r.kind) for r in got] == [
        (1, 5_000, "event"),
        (2, 1_000, "event"),
        (3, 3_000, "event"),
    ]
    assert got[0].body == {"event": "message", "text": "hi"}
    assert [r.cursor for r in got] == sorted({r.cursor for r in got})
    assert await store.records_after(got[1].cursor, 10) == [got[2]]
    assert await store.feed_head() == got[2].cursor
    await store.set_feed_cursor("mirror", got[1].cursor)
    assert await store.feed_cursor("mirror") == got[1].cursor
    assert await store.feed_cursor("someone-else") == 0
