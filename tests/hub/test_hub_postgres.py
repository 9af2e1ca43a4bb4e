"""What only the PostgreSQL store has: monthly partitions, BRIN, idempotency across
partitions, the reader pool, and clear errors for a server that is not there or a user
that may not create tables. The behaviour both stores share is in test_hub_store.py and
test_utilization.py, which run on both."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from pg_support import PgServer, unique_schema

from shopfloor.contract import (
    AgentTopics,
    Channel,
    Envelope,
    MachineState,
    RecordKind,
    decode_ack,
    encode_envelope,
)
from shopfloor.hub.config import parse_config
from shopfloor.hub.database_url import PostgresUrl
from shopfloor.hub.errors import StoreError
from shopfloor.hub.ingest import Ingest
from shopfloor.hub.orders.model import NewOrder, OrderItem
from shopfloor.hub.runtime import open_hub
from shopfloor.hub.store import Incoming, StateRow, WriteBatch, machine_key
from shopfloor.hub.store.factory import make_store
from shopfloor.hub.store.postgres import PostgresStore
from shopfloor.hub.trackers import Trackers

pytestmark = pytest.mark.postgres

EnvFactory = Callable[..., Envelope]
Inc = Callable[..., Incoming]
KEY = machine_key("pi-1", "cnc-1")


def ms(year: int, month: int, day: int = 1, hour: int = 0) -> int:
    return int(datetime(year, month, day, hour, tzinfo=UTC).timestamp() * 1000)


@pytest.fixture
def schema() -> str:
    return unique_schema()


@pytest.fixture
async def pg_store(pg: PgServer, schema: str) -> AsyncIterator[PostgresStore]:
    async with PostgresStore(pg.url(), schema=schema) as s:
        yield s


@pytest.fixture
async def sql(pg: PgServer, schema: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection of the test's own into the store's schema, to look inside."""
    u = pg.url()
    conn = await asyncpg.connect(
        host=u.host,
        port=u.port,
        user=u.user,
        database=u.database,
        server_settings={"search_path": schema},
    )
    try:
        yield conn
    finally:
        await conn.close()


async def partitions(conn: asyncpg.Connection, table: str) -> set[str]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = $1::regclass",
        table,
    )
    return {r[0] for r in rows}


async def test_rows_land_in_their_month_and_a_new_month_gets_a_partition(
    pg_store: PostgresStore, sql: asyncpg.Connection, env: EnvFactory, incoming: Inc
) -> None:
    assert "records_p2031_05" not in await partitions(sql, "records")
    nov, jan, may = ms(2026, 11, 30, 23), ms(2027, 1, 1), ms(2031, 5, 17)
    await pg_store.insert_batch(
        [
            incoming(env(RecordKind.STATE, seq=1, ts=nov, body={"state": "RUNNING"})),
            incoming(env(RecordKind.TELEMETRY, seq=2, ts=jan)),
            incoming(env(RecordKind.STATE, seq=3, ts=may, body={"state": "IDLE"})),
        ]
    )
    await pg_store.add_states([StateRow(KEY, ms(2031, 6, 2), MachineState.OFFLINE, "lost")])
    where = await sql.fetch("SELECT tableoid::regclass::text, seq FROM records ORDER BY seq")
    assert [(r[0], r[1]) for r in where] == [
        ("records_p2026_11", 1),
        ("records_p2027_01", 2),
        ("records_p2031_05", 3),
    ]
    where = await sql.fetch("SELECT tableoid::regclass::text, ts FROM state_changes ORDER BY ts")
    assert [r[0] for r in where] == [
        "state_changes_p2026_11",
        "state_changes_p2031_05",
        "state_changes_p2031_06",
    ]
    assert {"records_p2031_05", "records_p2031_06"} <= await partitions(sql, "records")
    # The partitions answer queries across months as one table.
    got = await pg_store.state_intervals(KEY, ms(2031, 5, 1), ms(2031, 7, 1), now_ms=ms(2032, 1))
    assert [(i.state, i.start, i.end) for i in got][-2:] == [
        (MachineState.IDLE, may, ms(2031, 6, 2)),
        (MachineState.OFFLINE, ms(2031, 6, 2), ms(2031, 7, 1)),
    ]


def _month_after(year: int, month: int) -> tuple[int, int]:
    return (year + month // 12, month % 12 + 1)


async def test_this_month_and_the_next_two_exist_from_the_start(
    pg_store: PostgresStore, sql: asyncpg.Connection
) -> None:
    now = datetime.now(UTC)
    nxt = _month_after(now.year, now.month)
    after = _month_after(*nxt)
    for table in ("records", "state_changes"):
        names = await partitions(sql, table)
        for year, month in ((now.year, now.month), nxt, after):
            assert f"{table}_p{year:04d}_{month:02d}" in names


class Clock:
    """The store's injectable clock (epoch ms), moved by the test."""

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


async def both_have(conn: asyncpg.Connection, *suffixes: str) -> bool:
    names = await partitions(conn, "records") | await partitions(conn, "state_changes")
    return all(f"{t}_{s}" in names for t in ("records", "state_changes") for s in suffixes)


async def lock_waiters(conn: asyncpg.Connection) -> int:
    """The hub's connections of this database that wait for a lock now."""
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND application_name = 'shopfloor-hub' AND datname = current_database()"
        )
    )


async def test_the_store_keeps_the_next_two_months_created_as_the_clock_moves(
    pg: PgServer,
    schema: str,
    sql: asyncpg.Connection,
    wait_until: Callable[..., Awaitable[None]],
) -> None:
    clock = Clock(ms(2031, 5, 10))
    store = PostgresStore(pg.url(), schema=schema, clock=clock, maintenance_interval_s=0.05)
    async with store:
        assert await both_have(sql, "p2031_05", "p2031_06", "p2031_07")
        assert "records_p2031_08" not in await partitions(sql, "records")
        # Near the end of July the task has September ready, with no write asking for it.
        clock.now_ms = ms(2031, 7, 31, 23)

        async def september() -> bool:
            return await both_have(sql, "p2031_08", "p2031_09")

        await wait_until(september)
        assert "records_p2031_10" not in await partitions(sql, "records")
        assert await store.maintain_partitions()  # nothing left to do
        task = store._maintenance
        assert task is not None
        assert not task.done()
    assert task.done()  # close() cancelled the store's task
    assert store._maintenance is None


async def test_a_partition_ddl_blocked_by_a_long_query_gives_up_and_succeeds_later(
    pg: PgServer,
    schema: str,
    sql: asyncpg.Connection,
    env: EnvFactory,
    incoming: Inc,
) -> None:
    clock = Clock(ms(2031, 5, 10))
    store = PostgresStore(
        pg.url(),
        schema=schema,
        clock=clock,
        partition_lock_timeout_s=0.3,
        maintenance_interval_s=3600,  # this test runs the maintenance itself
    )
    async with store:
        clock.now_ms = ms(2031, 7, 15)  # August and September are due
        tx = sql.transaction()
        await tx.start()
        # What a long Grafana query holds on the parent until it ends.
        await sql.execute("LOCK TABLE records IN ACCESS SHARE MODE")
        try:
            started = time.monotonic()
            maintenance = asyncio.create_task(store.maintain_partitions(), name="test.maint")
            waiting = 0
            for _ in range(100):
                waiting = await lock_waiters(sql)
                if waiting:
                    break
                await asyncio.sleep(0.01)
            assert waiting == 1  # the DDL waits for the lock (on a reader connection)
            # While the DDL waits, a write into an existing month goes on: the writer is
            # not held up behind the maintenance, only (briefly) behind the DDL's lock wait.
            june = incoming(env(RecordKind.TELEMETRY, seq=1, ts=ms(2031, 6, 3)))
            assert await asyncio.wait_for(store.insert_batch([june]), 5) == 1
            assert await asyncio.wait_for(maintenance, 5) is False
            assert time.monotonic() - started < 3  # gave up after 0.3 s, did not hang
            assert "records_p2031_08" not in await partitions(sql, "records")
            # Writes into existing months still work while the query goes on.
            july = incoming(env(RecordKind.TELEMETRY, seq=2, ts=ms(2031, 7, 20)))
            assert await asyncio.wait_for(store.insert_batch([july]), 5) == 1
            await store.add_states([StateRow(KEY, ms(2031, 7, 21), MachineState.IDLE, "")])
            # A record for a month nobody created: the write path's last resort gives up
            # too, as a StoreError (ingest keeps the batch and retries it).
            december = incoming(env(RecordKind.TELEMETRY, seq=3, ts=ms(2031, 12, 1)))
            started = time.monotonic()
            with pytest.raises(StoreError, match=r"records_p2031_12 waited over 0\.3 s"):
                await asyncio.wait_for(store.insert_batch([december]), 5)
            assert time.monotonic() - started < 3
            assert await lock_waiters(sql) == 0  # nothing left waiting on the server
        finally:
            await tx.rollback()
        # The query has ended: the next run creates the months, and the batch goes in.
        assert await store.maintain_partitions() is True
        assert await both_have(sql, "p2031_08", "p2031_09")
        assert await store.insert_batch([december]) == 1
        assert await store.stream_progress("pi-1", "s1") == (3, 3)
    assert await sql.fetchval("SELECT count(*) FROM records") == 3


async def test_a_hub_starting_during_a_long_query_starts_and_its_task_retries(
    pg: PgServer,
    schema: str,
    sql: asyncpg.Connection,
    env: EnvFactory,
    incoming: Inc,
    wait_until: Callable[..., Awaitable[None]],
) -> None:
    async with PostgresStore(pg.url(), schema=schema, clock=Clock(ms(2031, 5, 10))):
        pass  # the schema, and May to July
    clock = Clock(ms(2031, 9, 2))
    store = PostgresStore(
        pg.url(),
        schema=schema,
        clock=clock,
        partition_lock_timeout_s=0.2,
        maintenance_interval_s=3600,
        maintenance_retry_s=0.1,
    )
    tx = sql.transaction()
    await tx.start()
    await sql.execute("LOCK TABLE records IN ACCESS SHARE MODE")
    try:
        await asyncio.wait_for(store.open(), 10)  # opens; September and on are left for later
        try:
            assert "records_p2031_09" not in await partitions(sql, "records")
            july = incoming(env(RecordKind.TELEMETRY, seq=1, ts=ms(2031, 7, 4)))
            assert await asyncio.wait_for(store.insert_batch([july]), 5) == 1
            await asyncio.sleep(0.5)  # the task tries a few times, and gives up each time
            assert "records_p2031_09" not in await partitions(sql, "records")
        finally:
            await tx.rollback()

            async def created() -> bool:
                return await both_have(sql, "p2031_09", "p2031_10", "p2031_11")

            # Once the query has ended the task's next try creates them.
            await wait_until(created)
    finally:
        await store.close()


async def test_time_tables_have_brin_on_ts_and_btree_for_lookups(
    pg_store: PostgresStore, sql: asyncpg.Connection, env: EnvFactory, incoming: Inc
) -> None:
    await pg_store.insert_batch([incoming(env(seq=1, ts=ms(2026, 11, 23)))])
    rows = await sql.fetch(
        "SELECT tablename, indexdef FROM pg_indexes WHERE schemaname = current_schema()"
        " AND tablename IN ('records_p2026_11', 'state_changes_p2026_11')"
    )
    defs = {(r[0], r[1].split(" USING ")[1]) for r in rows}
    assert ("records_p2026_11", "brin (ts)") in defs
    assert ("state_changes_p2026_11", "brin (ts)") in defs
    assert ("state_changes_p2026_11", "btree (machine_key, ts, id)") in defs
    assert ("records_p2026_11", "btree (agent, machine, kind, ts)") in defs


async def test_a_replay_with_a_corrected_ts_in_another_month_is_still_a_duplicate(
    pg_store: PostgresStore, sql: asyncpg.Connection, env: EnvFactory, incoming: Inc
) -> None:
    # First sent with the Pi's unset clock (1970), replayed after NTP sync (2026), and once
    # more a month later: one record, in its first partition, one state row.
    first = incoming(env(RecordKind.STATE, seq=1, ts=5_000, body={"state": "RUNNING"}))
    assert await pg_store.insert_batch([first]) == 1
    for ts in (ms(2026, 11, 23), ms(2026, 12, 24)):
        again = incoming(env(RecordKind.STATE, seq=1, ts=ts, body={"state": "RUNNING"}))
        result = await pg_store.write(WriteBatch(records=[again]))
        assert (len(result.new), result.duplicates) == (0, 1)
        assert result.watermarks == {"pi-1": {"s1": 1}}
    assert await sql.fetchval("SELECT count(*) FROM records") == 1
    assert await sql.fetchval("SELECT tableoid::regclass::text FROM records") == "records_p1970_01"
    assert await sql.fetchval("SELECT count(*) FROM state_changes") == 1


async def test_the_record_feed_follows_inserts_across_partitions(
    pg_store: PostgresStore, env: EnvFactory, incoming: Inc
) -> None:
    # Inserted in this order, into three partitions: the cursor follows insertion, not ts.
    tss = [ms(2027, 3, 1), ms(2026, 11, 2), ms(2027, 1, 5)]
    await pg_store.insert_batch(
        [incoming(env(RecordKind.EVENT, seq=i + 1, ts=ts)) for i, ts in enumerate(tss)]
    )
    got = await pg_store.records_after(0, 10)
    assert [r.ts for r in got] == tss
    assert [r.cursor for r in got] == sorted(r.cursor for r in got)
    assert await pg_store.records_after(got[0].cursor, 1) == [got[1]]
    assert await pg_store.feed_head() == got[-1].cursor


async def test_nul_and_lone_surrogates_are_stored_not_refused(
    pg_store: PostgresStore, env: EnvFactory, incoming: Inc
) -> None:
    # JSON escapes can carry both; PostgreSQL text and jsonb refuse them. A batch holding one
    # must not fail forever: the characters become U+FFFD.
    body = {"event": "message", "text": "a\x00b\ud800c", "k\x00": ["\x00"]}
    state = {"state": "ALARM", "detail": "door\x00open"}
    assert (
        await pg_store.insert_batch(
            [
                incoming(env(RecordKind.EVENT, seq=1, body=body)),
                incoming(env(RecordKind.STATE, seq=2, ts=2_000, body=state)),
            ]
        )
        == 2
    )
    [event, _] = await pg_store.records_after(0, 10)
    assert event.body == {"event": "message", "text": "a\ufffdb\ufffdc", "k\ufffd": ["\ufffd"]}
    [row] = await pg_store.machines()
    assert row.latest is not None
    assert row.latest.detail == "door\ufffdopen"


async def test_busy_readers_fail_clearly_and_never_block_the_writer(
    pg: PgServer, schema: str, sql: asyncpg.Connection, env: EnvFactory, incoming: Inc
) -> None:
    async with PostgresStore(pg.url(), schema=schema, pool_size=1, acquire_timeout_s=0.5) as s:
        tx = sql.transaction()
        await tx.start()
        await sql.execute("LOCK TABLE agents IN ACCESS EXCLUSIVE MODE")
        try:
            # The one reader connection waits on the lock ...
            slow = asyncio.create_task(s.agents(), name="test.slow-reader")
            for _ in range(100):
                waiting = await sql.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND application_name = 'shopfloor-hub' AND datname = current_database()"
                )
                if waiting:
                    break
                await asyncio.sleep(0.02)
            assert waiting == 1
            # ... so the next reader gives up after acquire_timeout_s, saying what to do ...
            with pytest.raises(StoreError, match=r"all 1 reader connections .* database_pool"):
                await s.watermarks("pi-1")
            # ... while the writer has its own connection and goes on storing.
            assert await s.insert_batch([incoming(env(RecordKind.TELEMETRY, seq=1))]) == 1
        finally:
            await tx.rollback()
        assert await asyncio.wait_for(slow, 5) == []
        assert await s.watermarks("pi-1") == {"s1": 1}


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens once the socket is closed


async def test_an_unreachable_server_is_a_clear_error() -> None:
    port = _closed_port()
    url = PostgresUrl(host="127.0.0.1", port=port, user="hub", database="shop", password="s3cr3t")
    with pytest.raises(StoreError) as caught:
        await PostgresStore(url).open()
    message = str(caught.value)
    assert f"cannot reach PostgreSQL at 127.0.0.1:{port}" in message
    assert "[hub] database" in message
    assert "fix: start the server, or correct the host and port" in message
    assert "s3cr3t" not in message


async def test_a_missing_database_is_a_clear_error(pg: PgServer) -> None:
    url = pg.url().with_database(f"shopfloor_test_missing_{uuid.uuid4().hex[:8]}")
    with pytest.raises(StoreError, match=r"does not exist \(fix: create it: createdb -h"):
        await PostgresStore(url).open()


async def test_a_user_without_create_permission_is_told_the_grant(pg: PgServer) -> None:
    # PostgreSQL 15: nobody but the owner may create tables in public unless granted.
    url = pg.new_database()
    role = f"shopfloor_test_ro_{uuid.uuid4().hex[:8]}"
    pg.psql(f"CREATE ROLE {role} LOGIN")
    try:
        store = PostgresStore(PostgresUrl(url.host, url.port, role, url.database))
        with pytest.raises(StoreError) as caught:
            await store.open()
        message = str(caught.value)
        assert f"user {role!r} may not create the hub's tables" in message
        assert f"GRANT CREATE ON SCHEMA public TO {role}" in message
        # With the grant the same user can run the hub.
        pg.psql(f"GRANT CREATE ON SCHEMA public TO {role}", database=url.database)
        async with store:
            assert await store.ping()
    finally:
        pg.psql(f"DROP OWNED BY {role}", database=url.database)
        pg.psql(f"DROP ROLE {role}")


async def test_two_stores_opening_at_once_migrate_once(pg: PgServer, schema: str) -> None:
    a = PostgresStore(pg.url(), schema=schema)
    b = PostgresStore(pg.url(), schema=schema)
    await asyncio.gather(a.open(), b.open())
    try:
        assert await a.schema_version() == await b.schema_version() == 5
    finally:
        await a.close()
        await b.close()


@pytest.mark.mqtt
async def test_ingest_from_mosquitto_into_postgres_configured_by_url(
    pg: PgServer,
    broker: Any,
    tmp_path: Path,
    env: EnvFactory,
    wait_until: Callable[..., Awaitable[None]],
) -> None:
    """The hub's configuration names PostgreSQL by URL; the factory builds the store; ingest
    takes messages from the real Mosquitto, commits them there and acknowledges to the agent.

    (This drives ingest alone, the part that writes the event store; the next test runs the
    whole hub, job book and order book included, through ``open_hub``.)
    """
    url = pg.new_database()
    (tmp_path / "pg-password").write_text("unused-with-trust-auth\n")
    config = parse_config(
        f"""
[hub]
site = "shop1"
topic_root = "{broker.root}"
database = "postgresql://{url.user}@{url.host}:{url.port}/{url.database}"
database_pool = 2
database_password_file = "pg-password"

[mqtt]
url = "mqtt://127.0.0.1:1883"
client_id = "hub-pg-{uuid.uuid4().hex[:8]}"
session_expiry_s = 60
""",
        source="test.toml",
        base_dir=tmp_path,
    )
    store = make_store(config.hub)
    assert isinstance(store, PostgresStore)
    assert (store.pool_size, store.url.database) == (2, url.database)
    assert store.url.password == "unused-with-trust-auth"  # from database_password_file
    topics = AgentTopics(site="shop1", agent="pi-1", root=broker.root)
    async with store:
        trackers = Trackers(stale_after_ms=30_000)
        ingest = Ingest(config, store, trackers)
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(ingest.run(stop), name="test.ingest")
            try:
                await asyncio.wait_for(ingest.wait_connected(), 10)
                state = env(RecordKind.STATE, seq=1, ts=ms(2026, 11, 23, 7))
                tele = env(RecordKind.TELEMETRY, seq=2, ts=ms(2026, 11, 23, 8))
                meta = env(RecordKind.META, seq=3, ts=ms(2026, 12, 1))  # the next partition
                await broker.pub(topics.machine("cnc-1", Channel.STATE), encode_envelope(state))
                for _ in range(2):  # delivered twice: stored once
                    await broker.pub(
                        topics.machine("cnc-1", Channel.TELEMETRY), encode_envelope(tele)
                    )
                await broker.pub(topics.machine("cnc-1", Channel.META), encode_envelope(meta))
                await wait_until(lambda: ingest.counters["stored"] == 3)
                await wait_until(lambda: ingest.counters["duplicates"] == 1)
                assert await store.stream_progress("pi-1", "s1") == (3, 3)
                [row] = await store.machines()
                assert (row.key, row.protocol, row.site) == (KEY, "grbl", "shop1")
                assert row.latest is not None
                assert row.latest.state is MachineState.RUNNING
                assert [r.seq for r in await store.records_after(0, 10)] == [1, 2, 3]

                async def acked() -> bool:
                    raw = await broker.read_retained(topics.ack)
                    return bool(raw) and decode_ack(raw.strip()).streams.get("s1") == 3

                await wait_until(acked)
            finally:
                stop.set()


@pytest.mark.mqtt
async def test_open_hub_on_postgres_runs_jobs_and_orders(
    pg: PgServer,
    broker: Any,
    tmp_path: Path,
    env: EnvFactory,
    wait_until: Callable[..., Awaitable[None]],
) -> None:
    """A hub configured with a postgresql:// URL starts with its job book and order book; a
    job_started that arrives through Mosquitto and ingest becomes a row of ``jobs``, and the
    order its program names links it."""
    url = pg.new_database()
    config = parse_config(
        f"""
[hub]
site = "shop1"
topic_root = "{broker.root}"
database = "postgresql://{url.user}@{url.host}:{url.port}/{url.database}"

[mqtt]
url = "mqtt://127.0.0.1:1883"
client_id = "hub-pg-{uuid.uuid4().hex[:8]}"
session_expiry_s = 60
""",
        source="test.toml",
        base_dir=tmp_path,
    )
    topics = AgentTopics(site="shop1", agent="pi-1", root=broker.root)
    async with open_hub(config) as hub:
        assert isinstance(hub.store, PostgresStore)
        assert hub.jobs is not None
        assert hub.orders is not None
        assert hub.ingest is not None
        await asyncio.wait_for(hub.ingest.wait_connected(), 10)
        order, created = await hub.orders.create(
            NewOrder("1042", (OrderItem("sign", 1, program="sign (ORDER 1042).nc"),)), key=None
        )
        assert created
        now = time.time_ns() // 1_000_000
        body = {"event": "job_started", "code": None, "text": "", "job": "j1",
                "program": "sign (ORDER 1042).nc", "unit": "lines", "total": 1000,
                "source": "proxy"}  # fmt: skip
        started = env(RecordKind.EVENT, seq=1, ts=now, body=body)
        await broker.pub(topics.machine("cnc-1", Channel.EVENT), encode_envelope(started))

        async def stored() -> bool:
            return bool(await hub.store.jobs())

        await wait_until(stored)
        [row] = await hub.store.jobs()
        assert (row.id, row.machine_key, row.agent_job, row.started_at) == (1, KEY, "j1", now)
        assert (row.unit, row.total, row.order_ref, row.ended_at) == ("lines", 1000, "1042", None)
        assert await hub.store.job(row.id) == row

        async def linked() -> bool:
            links = await hub.store.order_links(order["id"])
            return [link.job_id for link in links] == [row.id]

        await wait_until(linked)
