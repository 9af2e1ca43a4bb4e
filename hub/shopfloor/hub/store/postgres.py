"""The production event store: PostgreSQL through asyncpg, the same behaviour as SQLite.

Two asyncpg pools, each owned by the store: a **writer** pool of one connection (one writer,
one transaction per batch, guarded by a lock, as in SQLite, so ``records.id`` grows in commit
order and ``records_after`` never skips a row) and a **reader** pool of ``pool_size``
connections for the API, the wall and the dashboards' siblings. Readers never starve the
writer. A reader that waits longer than ``acquire_timeout_s`` for a free connection gets a
:class:`~shopfloor.hub.errors.StoreError` that says to raise ``[hub] database_pool``.

Schema, partitions and why ``record_keys`` exists: :mod:`.postgres_schema`. The monthly
partitions are created ahead by a maintenance task the store owns (started by ``open``,
cancelled by ``close``), on a reader connection and never under the write lock; every
partition DDL waits at most ``partition_lock_timeout_s`` for its table's lock, so a long
dashboard query delays a month's creation to the next run instead of stalling ingest. The
time-in-state SQL: :mod:`.postgres_queries`. Every asyncpg or socket error is translated into a
``StoreError`` where it enters, with the URL (never the password) and the fix.

Features beyond the event store live in mixins, as in SQLite: jobs (:mod:`.postgres_jobs`,
migration 3), orders/webhooks (:mod:`.postgres_orders`, migration 4) and the record feed
(:mod:`.postgres_feed`, migration 5). A mixin reads through ``self._read()`` and writes
through ``self._writing()``; its migration is listed in ``MIGRATIONS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import asyncpg

from shopfloor.contract import MachineState, RecordKind, parse_data_loss
from shopfloor.hub.database_url import PostgresUrl
from shopfloor.hub.errors import StoreError
from shopfloor.hub.store.base import (
    AgentRow,
    BatchResult,
    DataLossRow,
    Incoming,
    Interval,
    MachineRow,
    RejectedRow,
    Rejection,
    StateRow,
    StatusUpdate,
    StreamLag,
    TimeWindow,
    WriteBatch,
    agent_state_rows,
    machine_key,
)
from shopfloor.hub.store.postgres_feed import FEED_MIGRATION, PostgresFeed
from shopfloor.hub.store.postgres_jobs import JOBS_MIGRATION, PostgresJobs
from shopfloor.hub.store.postgres_orders import ORDERS_MIGRATION, PostgresOrders
from shopfloor.hub.store.postgres_queries import (
    CONTIGUOUS_RUN_SQL,
    INSERT_RECORD_KEYS_SQL,
    INSERT_RECORDS_SQL,
    INTERVALS_SQL,
    MACHINES_SQL,
    TIME_IN_STATE_SQL,
)
from shopfloor.hub.store.postgres_schema import (
    CORE_MIGRATIONS,
    MIGRATION_LOCK,
    PARTITIONED,
    Partition,
    months_ahead,
    partition_for,
)
from shopfloor.hub.store.postgres_text import pg_json as _json
from shopfloor.hub.store.postgres_text import pg_text as _text
from shopfloor.hub.store.row_decoding import machine_row

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    #: A connection lent by one of the store's pools.
    Conn = PoolConnectionProxy[asyncpg.Record]

log = logging.getLogger(__name__)

#: Every migration this store applies, by number (the same numbers as SQLite's).
MIGRATIONS: Final = tuple(
    sorted(
        (
            *CORE_MIGRATIONS,  # 1, 2: events, states, machines, agents, rejected, data loss
            JOBS_MIGRATION,  # 3: jobs (store/postgres_jobs.py)
            ORDERS_MIGRATION,  # 4: orders, webhooks, outbox (store/postgres_orders.py)
            FEED_MIGRATION,  # 5: feed_cursors (store/postgres_feed.py)
        )
    )
)
#: Rejected payloads are kept for inspection up to this size (as in SQLite).
MAX_REJECTED_PAYLOAD: Final = 64 * 1024
DEFAULT_KEEP_REJECTED: Final = 10_000
DEFAULT_POOL_SIZE: Final = 5
DEFAULT_ACQUIRE_TIMEOUT_S: Final = 10.0
CONNECT_TIMEOUT_S: Final = 10.0
#: Months kept created (this one and the next two), so no write ever needs to create one.
MONTHS_AHEAD: Final = 3
#: The longest a partition DDL waits for the lock on its parent table before giving up.
#: Creating a partition takes an ACCESS EXCLUSIVE lock on the parent, which waits for every
#: running query on it (a long dashboard query) and makes every later one queue behind it.
PARTITION_LOCK_TIMEOUT_S: Final = 2.0
#: How often the maintenance task checks the months ahead, and how soon it tries again
#: after a month could not be created (its table stayed locked, or the database was down).
MAINTENANCE_INTERVAL_S: Final = 3600.0
MAINTENANCE_RETRY_S: Final = 60.0
_SCHEMA_RE: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")
#: What every asyncpg call can raise that is not our bug: server errors, a closed or broken
#: connection, the socket.
_DB_ERRORS: Final = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class PartitionLockedError(StoreError):
    """A partition DDL gave up: its parent table stayed locked past the lock timeout."""


def _opt_str(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    return _text(value) if isinstance(value, str) and value else None


class PostgresStore(PostgresFeed, PostgresOrders, PostgresJobs):
    """:class:`~shopfloor.hub.store.base.Store` on a PostgreSQL database.

    ``schema`` puts the tables in that schema (created if missing) instead of ``public``:
    for a database shared with other applications, and for tests. ``clock`` (epoch ms) decides
    which months the partition maintenance keeps created; tests move it.
    """

    def __init__(
        self,
        url: PostgresUrl,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        keep_rejected: int = DEFAULT_KEEP_REJECTED,
        acquire_timeout_s: float = DEFAULT_ACQUIRE_TIMEOUT_S,
        schema: str | None = None,
        clock: Callable[[], int] = _now_ms,
        partition_lock_timeout_s: float = PARTITION_LOCK_TIMEOUT_S,
        maintenance_interval_s: float = MAINTENANCE_INTERVAL_S,
        maintenance_retry_s: float = MAINTENANCE_RETRY_S,
    ) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        if partition_lock_timeout_s < 0.001:
            raise ValueError("partition_lock_timeout_s must be at least 1 ms")
        if schema is not None and not _SCHEMA_RE.fullmatch(schema):
            raise ValueError(f"schema {schema!r} must be a plain lower-case identifier")
        self.url = url
        self.pool_size = pool_size
        self.keep_rejected = keep_rejected
        self.acquire_timeout_s = acquire_timeout_s
        self.schema = schema
        self.partition_lock_timeout_s = partition_lock_timeout_s
        self.maintenance_interval_s = maintenance_interval_s
        self.maintenance_retry_s = maintenance_retry_s
        self._clock = clock
        self._writer: asyncpg.Pool | None = None
        self._readers: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()
        #: Partition suffixes known to exist (for every table in PARTITIONED).
        self._partitions: set[str] = set()
        #: One partition DDL at a time from this store (maintenance and the writer's last
        #: resort), held for one statement only, so neither waits on the other for long.
        self._ddl_lock = asyncio.Lock()
        self._maintenance: asyncio.Task[None] | None = None

    async def __aenter__(self) -> PostgresStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            if self.schema is not None:
                await self._create_schema()
            self._writer = await self._pool(1)
            async with self._writer.acquire() as conn:
                await self._migrate(conn)
                await self._load_partitions(conn)
            self._readers = await self._pool(self.pool_size)
            # A month whose table stays locked now is left to the task's next run.
            created = await self.maintain_partitions()
            self._maintenance = asyncio.create_task(
                self._maintain_forever(created), name="store.partition-maintenance"
            )
        except StoreError:
            await self.close()
            raise
        except (*_DB_ERRORS, TimeoutError) as exc:
            await self.close()
            raise self._open_error(exc) from exc
        except BaseException:
            await self.close()
            raise

    def _connect_args(self) -> dict[str, Any]:
        u = self.url
        # JIT compiles the time-in-state query (its cost estimate passes jit_above_cost)
        # and spends more time compiling than the query runs: 356 ms against 136 ms with it
        # off for 200 windows (bench/store_insert.py). The hub's queries are all short.
        settings = {"application_name": "shopfloor-hub", "jit": "off"}
        if self.schema is not None:
            settings["search_path"] = self.schema
        return {
            "host": u.host,
            "port": u.port,
            "user": u.user,
            "password": u.password,
            "database": u.database,
            "ssl": u.sslmode,
            "timeout": CONNECT_TIMEOUT_S,
            "server_settings": settings,
        }

    async def _pool(self, size: int) -> asyncpg.Pool:
        pool: asyncpg.Pool = await asyncpg.create_pool(
            **self._connect_args(), min_size=1, max_size=size
        )
        return pool

    async def _create_schema(self) -> None:
        args = self._connect_args()
        args["server_settings"] = {"application_name": "shopfloor-hub"}
        conn = await asyncpg.connect(**args)
        try:
            # The name matched _SCHEMA_RE: a plain identifier, safe to join. Two stores
            # creating it at once: one of them sees a unique violation, harmlessly.
            with contextlib.suppress(asyncpg.UniqueViolationError, asyncpg.DuplicateSchemaError):
                await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
        finally:
            await conn.close()

    def _open_error(self, exc: BaseException) -> StoreError:
        u = self.url
        where = f"{u.display} ([hub] database)"
        fix: str
        if isinstance(exc, TimeoutError):
            problem = f"PostgreSQL at {u.host}:{u.port} did not answer in {CONNECT_TIMEOUT_S:g} s"
            fix = "check the host and port, and that a firewall lets the hub through"
        elif isinstance(exc, OSError):
            problem = f"cannot reach PostgreSQL at {u.host}:{u.port}: {exc.strerror or exc}"
            fix = "start the server, or correct the host and port in the URL"
        elif isinstance(exc, asyncpg.InvalidCatalogNameError):
            problem = f"the database {u.database!r} does not exist"
            fix = f"create it: createdb -h {u.host} -p {u.port} -U {u.user} {u.database}"
        elif isinstance(
            exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError
        ):
            problem = f"the server refused user {u.user!r}: {exc}"
            fix = "check the user, the password ([hub] database_password_file) and pg_hba.conf"
        elif isinstance(exc, asyncpg.InsufficientPrivilegeError):
            schema = self.schema or "public"
            problem = f"user {u.user!r} may not create the hub's tables: {exc}"
            fix = (
                f"GRANT CREATE ON SCHEMA {schema} TO {u.user} (or make {u.user} own the "
                "database); the hub creates and migrates its own tables"
            )
        else:
            problem = f"cannot open the event store: {exc}"
            fix = "see the PostgreSQL server log"
        return StoreError(f"{where}: {problem} (fix: {fix})")

    async def close(self) -> None:
        task, self._maintenance = self._maintenance, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])  # a cancel of close itself still propagates
        for pool in (self._readers, self._writer):
            if pool is not None:
                try:
                    await asyncio.wait_for(pool.close(), 10)
                except (TimeoutError, *_DB_ERRORS):
                    pool.terminate()
        self._readers = self._writer = None

    async def _migrate(self, conn: Conn) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations"
                " (version integer PRIMARY KEY, applied_at bigint NOT NULL)"
            )
            applied = {r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            known = {version for version, _ in MIGRATIONS}
            if applied - known:
                raise StoreError(
                    f"the database {self.url.display} has schema versions "
                    f"{sorted(applied - known)} that this hub does not know; it was written by "
                    "a newer hub - upgrade this one"
                )
            for version, sql in MIGRATIONS:
                if version in applied:
                    continue
                log.info("migrating %s to schema version %d", self.url.display, version)
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations VALUES ($1, $2)", version, _now_ms()
                )

    # -- partitions --------------------------------------------------------------------------

    async def _load_partitions(self, conn: Conn) -> None:
        rows = await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'records'::regclass"
        )
        self._partitions = {str(r[0]).removeprefix("records_") for r in rows}

    async def maintain_partitions(self) -> bool:
        """Create this month and the next two (by the store's clock) where missing.

        Runs on a reader connection, not under the write lock, so ingest goes on meanwhile
        (a write into an existing month waits at most ``partition_lock_timeout_s`` behind a
        DDL that waits for its lock). A month whose table stays locked longer (a long
        dashboard query) is left for the next run: False. True when all exist."""
        missing = [
            p for p in months_ahead(self._clock(), MONTHS_AHEAD) if p.suffix not in self._partitions
        ]
        if not missing:
            return True
        async with self._read() as conn:
            for part in missing:
                try:
                    await self._create_partition(conn, part)
                except PartitionLockedError as exc:
                    log.warning("%s; trying again in %g s", exc, self.maintenance_retry_s)
                    return False  # the same lock would stop the later months too
        return True

    async def _maintain_forever(self, ok: bool) -> None:
        """The store's maintenance task: ``maintain_partitions`` every interval, and sooner
        again after a run that could not finish. Never ends by itself; ``close`` cancels it."""
        while True:
            await asyncio.sleep(self.maintenance_interval_s if ok else self.maintenance_retry_s)
            try:
                ok = await self.maintain_partitions()
            except StoreError as exc:
                log.warning("partition maintenance failed (%s); trying again later", exc)
                ok = False
            except Exception:
                log.exception("partition maintenance failed; trying again later")
                ok = False

    async def _ensure(self, conn: Conn, parts: Iterable[Partition]) -> None:
        """The write path's last resort: create the months a batch needs that maintenance
        does not keep (a record dated months ahead or in the past), before the batch's
        transaction. A table that stays locked raises :class:`PartitionLockedError`, a
        ``StoreError``: ingest keeps the batch and retries it."""
        for part in parts:
            if part.suffix not in self._partitions:
                await self._create_partition(conn, part)

    async def _create_partition(self, conn: Conn, part: Partition) -> None:
        """Create ``part`` of every partitioned table, each in its own short transaction that
        waits at most ``partition_lock_timeout_s`` for the parent's lock."""
        timeout = f"{max(1, round(self.partition_lock_timeout_s * 1000))}ms"
        for table in PARTITIONED:
            async with self._ddl_lock:
                try:
                    # Another hub may have created it a moment ago. (An existing one costs no
                    # lock: IF NOT EXISTS answers before the parent is locked.)
                    with contextlib.suppress(
                        asyncpg.DuplicateTableError, asyncpg.UniqueViolationError
                    ):
                        async with conn.transaction():
                            await conn.execute(
                                "SELECT set_config('lock_timeout', $1, true)", timeout
                            )
                            await conn.execute(part.ddl(table))
                except asyncpg.LockNotAvailableError as exc:
                    raise PartitionLockedError(
                        f"{self.url.display}: creating the partition {part.name(table)} waited "
                        f"over {self.partition_lock_timeout_s:g} s for the lock on {table} "
                        "and gave up (a long query holds it: see pg_stat_activity)"
                    ) from exc
        log.info("created the partitions %s of %s", part.suffix, ", ".join(PARTITIONED))
        self._partitions.add(part.suffix)

    def _partitions_for(self, batch: WriteBatch) -> dict[str, Partition]:
        out: dict[str, Partition] = {}
        for ts in {
            *(i.envelope.ts for i in batch.records),
            *(s.ts for s in batch.states),
        }:
            part = partition_for(ts)
            out.setdefault(part.suffix, part)
        return out

    # -- connections ---------------------------------------------------------------------------

    @property
    def _writer_pool(self) -> asyncpg.Pool:
        if self._writer is None:
            raise StoreError("the store is not open")
        return self._writer

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[Conn]:
        """A reader connection for one query or a few; errors become StoreError."""
        if self._readers is None:
            raise StoreError("the store is not open")
        pool = self._readers
        try:
            conn = await pool.acquire(timeout=self.acquire_timeout_s)
        except TimeoutError:
            raise StoreError(
                f"all {self.pool_size} reader connections to {self.url.display} stayed busy for "
                f"{self.acquire_timeout_s:g} s (fix: raise [hub] database_pool, or find the "
                "slow queries in pg_stat_activity)"
            ) from None
        except _DB_ERRORS as exc:
            raise StoreError(f"cannot connect to {self.url.display}: {exc}") from exc
        try:
            yield conn
        except _DB_ERRORS as exc:
            raise StoreError(f"reading from {self.url.display} failed: {exc}") from exc
        finally:
            with contextlib.suppress(*_DB_ERRORS):
                await pool.release(conn)

    async def schema_version(self) -> int:
        async with self._read() as conn:
            value = await conn.fetchval("SELECT max(version) FROM schema_migrations")
        return int(value) if value is not None else 0

    async def ping(self) -> bool:
        try:
            async with self._read() as conn:
                return bool(await conn.fetchval("SELECT 1") == 1)
        except StoreError:
            return False

    # -- writing -----------------------------------------------------------------------------

    async def insert_batch(self, records: Sequence[Incoming]) -> int:
        return len((await self.write(WriteBatch(records=records))).new)

    async def add_states(self, rows: Sequence[StateRow]) -> None:
        if rows:
            await self.write(WriteBatch(states=rows))

    @contextlib.asynccontextmanager
    async def _writing(self) -> AsyncIterator[Conn]:
        """The writer connection, held under the write lock; errors become StoreError."""
        async with self._lock:
            try:
                async with self._writer_pool.acquire() as conn:
                    yield conn
            except _DB_ERRORS as exc:
                raise StoreError(f"writing to {self.url.display} failed: {exc}") from exc

    async def write(self, batch: WriteBatch) -> BatchResult:
        async with self._writing() as conn:
            return await self._write_in_partitions(conn, batch)

    async def _write_in_partitions(self, conn: Conn, batch: WriteBatch) -> BatchResult:
        """Create the months the batch needs, then write it in one transaction."""
        await self._ensure(conn, self._partitions_for(batch).values())
        try:
            async with conn.transaction():
                return await self._write(conn, batch)
        except asyncpg.CheckViolationError as exc:
            if "no partition" not in str(exc):
                raise
        # A partition this hub had created was dropped behind its back: look again, once.
        await self._load_partitions(conn)
        await self._ensure(conn, self._partitions_for(batch).values())
        async with conn.transaction():
            return await self._write(conn, batch)

    async def _write(self, conn: Conn, batch: WriteBatch) -> BatchResult:
        new = await self._insert_records(conn, batch.records)
        await self._update_machines(conn, new)
        await self._insert_states(conn, [*agent_state_rows(new), *batch.states])
        await self._insert_data_losses(conn, new)
        watermarks = await self._advance_streams(conn, batch.records)
        applied = [s for s in batch.statuses if await self._apply_status(conn, s)]
        await self._insert_rejections(conn, batch.rejections)
        return BatchResult(
            new=new,
            duplicates=len(batch.records) - len(new),
            watermarks=watermarks,
            statuses=applied,
        )

    async def _insert_records(self, conn: Conn, records: Sequence[Incoming]) -> list[Incoming]:
        if not records:
            return []
        keys = [(i.envelope.agent, _text(i.envelope.stream), i.envelope.seq) for i in records]
        rows = await conn.fetch(
            INSERT_RECORD_KEYS_SQL,
            [k[0] for k in keys],
            [k[1] for k in keys],
            [k[2] for k in keys],
        )
        inserted = {(r[0], r[1], r[2]) for r in rows}
        new: list[Incoming] = []
        for inc, key in zip(records, keys, strict=True):
            if key in inserted:
                inserted.discard(key)  # a key repeated inside one batch is new only once
                new.append(inc)
        if new:
            envs = [i.envelope for i in new]
            await conn.execute(
                INSERT_RECORDS_SQL,
                [e.agent for e in envs],
                [_text(e.stream) for e in envs],
                [e.seq for e in envs],
                [e.machine for e in envs],
                [str(e.kind) for e in envs],
                [e.ts for e in envs],
                [e.mono for e in envs],
                [i.received_at for i in new],
                [e.replay for e in envs],
                [_json(e.body) for e in envs],
                [i.clock for i in new],
                [i.agent_ts for i in new],
            )
        return new

    async def _update_machines(self, conn: Conn, new: Sequence[Incoming]) -> None:
        if not new:
            return
        # One row per machine: the last record's site, the newest arrival (what SQLite's
        # row-by-row upsert ends with).
        seen: dict[str, tuple[str, str, str, int]] = {}
        for i in new:
            key = machine_key(i.envelope.agent, i.envelope.machine)
            last = max(i.received_at, seen[key][3]) if key in seen else i.received_at
            seen[key] = (i.envelope.agent, i.envelope.machine, i.site, last)
        await conn.execute(
            "INSERT INTO machines (key, agent, machine, site, name, last_seen)"
            " SELECT k, a, m, s, m, l"
            " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[])"
            " AS u(k, a, m, s, l)"
            " ON CONFLICT (key) DO UPDATE SET site = excluded.site,"
            " last_seen = greatest(coalesce(machines.last_seen, 0), excluded.last_seen)",
            list(seen),
            [v[0] for v in seen.values()],
            [v[1] for v in seen.values()],
            [v[2] for v in seen.values()],
            [v[3] for v in seen.values()],
        )
        metas = _newest_per_machine(i for i in new if i.envelope.kind is RecordKind.META)
        if metas:
            await conn.executemany(
                "UPDATE machines SET kind = $1, protocol = $2, firmware = $3, name = $4,"
                " meta = $5::jsonb, meta_ts = $6 WHERE key = $7 AND coalesce(meta_ts, -1) <= $6",
                [
                    (
                        _opt_str(i.envelope.body, "kind"),
                        _opt_str(i.envelope.body, "protocol"),
                        _opt_str(i.envelope.body, "firmware"),
                        _opt_str(i.envelope.body, "name") or i.envelope.machine,
                        _json(i.envelope.body),
                        i.envelope.ts,
                        machine_key(i.envelope.agent, i.envelope.machine),
                    )
                    for i in metas
                ],
            )
        states = _newest_per_machine(i for i in new if i.envelope.kind is RecordKind.STATE)
        if states:
            await conn.executemany(
                "UPDATE machines SET state_body = $1::jsonb, state_ts = $2"
                " WHERE key = $3 AND coalesce(state_ts, -1) <= $2",
                [
                    (
                        _json(i.envelope.body),
                        i.envelope.ts,
                        machine_key(i.envelope.agent, i.envelope.machine),
                    )
                    for i in states
                ],
            )

    async def _insert_states(self, conn: Conn, rows: Sequence[StateRow]) -> None:
        if not rows:
            return
        await conn.execute(
            "INSERT INTO state_changes (machine_key, ts, state, detail, source)"
            " SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[])",
            [r.machine_key for r in rows],
            [r.ts for r in rows],
            [str(r.state) for r in rows],
            [_text(r.detail) for r in rows],
            [str(r.source) for r in rows],
        )

    async def _insert_data_losses(self, conn: Conn, new: Sequence[Incoming]) -> None:
        """Record every newly stored ``data_loss`` event's ranges (its own stream only)."""
        for inc in new:
            e = inc.envelope
            if e.kind is not RecordKind.EVENT:
                continue
            loss = parse_data_loss(e.body)
            if loss is None or loss.stream != e.stream:
                continue
            stream = _text(e.stream)
            for first, last in loss.ranges:
                if first >= e.seq:
                    continue  # an agent cannot declare seqs after its own declaration
                last = min(last, e.seq - 1)  # noqa: PLW2901 - clipped in place
                stored = await conn.fetchval(
                    "SELECT count(*) FROM record_keys WHERE agent = $1 AND stream = $2"
                    " AND seq BETWEEN $3 AND $4",
                    e.agent,
                    stream,
                    first,
                    last,
                )
                await conn.execute(
                    "INSERT INTO data_loss (agent, stream, from_seq, to_seq, reason, missing,"
                    " declared_seq, received_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    e.agent,
                    stream,
                    first,
                    last,
                    _text(loss.reason),
                    last - first + 1 - int(stored or 0),
                    e.seq,
                    inc.received_at,
                )

    async def _advance_streams(
        self, conn: Conn, records: Sequence[Incoming]
    ) -> dict[str, dict[str, int]]:
        top: dict[tuple[str, str], int] = {}
        for inc in records:
            key = (inc.envelope.agent, _text(inc.envelope.stream))
            top[key] = max(top.get(key, 0), inc.envelope.seq)
        for (agent, stream), max_seq in top.items():
            contiguous = int(
                await conn.fetchval(
                    "INSERT INTO stream_progress AS p (agent, stream, contiguous_seq, max_seq)"
                    " VALUES ($1, $2, 0, $3) ON CONFLICT (agent, stream) DO UPDATE SET"
                    " max_seq = greatest(p.max_seq, excluded.max_seq)"
                    " RETURNING contiguous_seq",
                    agent,
                    stream,
                    max_seq,
                )
            )
            moved = await self._contiguous_from(conn, agent, stream, contiguous)
            if moved != contiguous:
                await conn.execute(
                    "UPDATE stream_progress SET contiguous_seq = $1 WHERE agent = $2"
                    " AND stream = $3",
                    moved,
                    agent,
                    stream,
                )
        out: dict[str, dict[str, int]] = {}
        for agent in {a for a, _ in top}:
            rows = await conn.fetch(
                "SELECT stream, contiguous_seq FROM stream_progress WHERE agent = $1", agent
            )
            out[agent] = {r[0]: int(r[1]) for r in rows}
        return out

    async def _contiguous_from(self, conn: Conn, agent: str, stream: str, contiguous: int) -> int:
        """Advance ``contiguous`` over stored seqs and over ranges declared lost."""
        while True:
            end = await conn.fetchval(CONTIGUOUS_RUN_SQL, agent, stream, contiguous)
            if end is not None:
                contiguous = int(end)
                continue
            lost = await conn.fetchval(
                "SELECT max(to_seq) FROM data_loss WHERE agent = $1 AND stream = $2"
                " AND from_seq <= $3 + 1 AND to_seq >= $3 + 1",
                agent,
                stream,
                contiguous,
            )
            if lost is not None:
                contiguous = int(lost)
                continue
            return contiguous

    async def _apply_status(self, conn: Conn, update: StatusUpdate) -> bool:
        """Record an agent status unless it is from an older boot than the one we know."""
        status = update.status
        known = await conn.fetchval("SELECT epoch FROM agents WHERE id = $1", status.agent)
        if known is not None and status.epoch < int(known):
            return False
        await conn.execute(
            "INSERT INTO agents (id, site, online, epoch, version, last_status_ts, changed_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO UPDATE SET"
            " site = excluded.site, online = excluded.online, epoch = excluded.epoch,"
            " version = excluded.version, last_status_ts = excluded.last_status_ts,"
            " changed_at = excluded.changed_at",
            status.agent,
            update.site,
            status.online,
            status.epoch,
            _text(status.version),
            status.ts,
            update.received_at,
        )
        return True

    async def _insert_rejections(self, conn: Conn, rejections: Sequence[Rejection]) -> None:
        if not rejections:
            return
        await conn.execute(
            "INSERT INTO rejected (received_at, topic, payload, reason)"
            " SELECT * FROM unnest($1::bigint[], $2::text[], $3::bytea[], $4::text[])",
            [r.received_at for r in rejections],
            [_text(r.topic) for r in rejections],
            [r.payload[:MAX_REJECTED_PAYLOAD] for r in rejections],
            [_text(r.reason) for r in rejections],
        )
        await conn.execute(
            "INSERT INTO counters AS c (name, value) VALUES ('rejected_total', $1)"
            " ON CONFLICT (name) DO UPDATE SET value = c.value + excluded.value",
            len(rejections),
        )
        await conn.execute(
            "DELETE FROM rejected WHERE id <= (SELECT max(id) FROM rejected) - $1",
            self.keep_rejected,
        )

    # -- reading -----------------------------------------------------------------------------

    async def watermarks(self, agent: str) -> dict[str, int]:
        async with self._read() as conn:
            rows = await conn.fetch(
                "SELECT stream, contiguous_seq FROM stream_progress WHERE agent = $1", agent
            )
        return {r[0]: int(r[1]) for r in rows}

    async def stream_progress(self, agent: str, stream: str) -> tuple[int, int] | None:
        async with self._read() as conn:
            row = await conn.fetchrow(
                "SELECT contiguous_seq, max_seq FROM stream_progress"
                " WHERE agent = $1 AND stream = $2",
                agent,
                _text(stream),
            )
        return (int(row[0]), int(row[1])) if row else None

    async def lagging_streams(self) -> list[StreamLag]:
        async with self._read() as conn:
            rows = await conn.fetch(
                "SELECT agent, stream, contiguous_seq, max_seq FROM stream_progress"
                ' WHERE contiguous_seq < max_seq ORDER BY agent COLLATE "C", stream COLLATE "C"'
            )
        return [StreamLag(r[0], r[1], int(r[2]), int(r[3])) for r in rows]

    async def data_losses(self, agent: str | None = None) -> list[DataLossRow]:
        async with self._read() as conn:
            rows = await conn.fetch(
                "SELECT agent, stream, from_seq, to_seq, reason, missing, received_at"
                " FROM data_loss WHERE $1::text IS NULL OR agent = $1 ORDER BY id",
                agent,
            )
        return [
            DataLossRow(r[0], r[1], int(r[2]), int(r[3]), str(r[4]), int(r[5]), int(r[6]))
            for r in rows
        ]

    async def agent_sites(self) -> dict[str, str]:
        async with self._read() as conn:
            rows = await conn.fetch(
                "SELECT agent, site FROM machines UNION SELECT id, site FROM agents"
            )
        return {str(r[0]): str(r[1]) for r in rows}

    async def state_intervals(
        self,
        key: str,
        from_ms: int,
        to_ms: int,
        *,
        now_ms: int,
        heartbeat_gap_ms: int | None = None,
    ) -> list[Interval]:
        end = min(to_ms, now_ms)
        if end <= from_ms:
            return []
        gap = -1 if heartbeat_gap_ms is None else heartbeat_gap_ms
        async with self._read() as conn:
            rows = await conn.fetch(INTERVALS_SQL, key, from_ms, end, gap)
        return [Interval(MachineState(r[0]), str(r[1]), int(r[2]), int(r[3])) for r in rows]

    async def time_in_state(
        self, windows: Sequence[TimeWindow], *, now_ms: int, heartbeat_gap_ms: int | None = None
    ) -> dict[int, dict[MachineState, int]]:
        """Milliseconds in each state per window, summed in SQL (``TIME_IN_STATE_SQL``).

        Each window is clipped to ``now_ms``; its states sum to exactly its clipped length
        (time without data is OFFLINE). Windows that are empty after clipping are absent.
        With ``heartbeat_gap_ms``, a hub-sourced OFFLINE row is ignored when the agent's own
        rows around it are at most that far apart (it kept observing; a replay proved it)."""
        spans = [
            (w.id, w.key, w.start, min(w.end, now_ms))
            for w in windows
            if min(w.end, now_ms) > w.start
        ]
        if not spans:
            return {}
        async with self._read() as conn:
            rows = await conn.fetch(
                TIME_IN_STATE_SQL,
                [s[0] for s in spans],
                [s[1] for s in spans],
                [s[2] for s in spans],
                [s[3] for s in spans],
                -1 if heartbeat_gap_ms is None else heartbeat_gap_ms,
            )
        sums: dict[int, dict[MachineState, int]] = {}
        for wid, state, ms in rows:
            if ms:
                sums.setdefault(int(wid), {})[MachineState(state)] = int(ms)
        out: dict[int, dict[MachineState, int]] = {}
        for wid, _, start, end in spans:
            per = sums.get(wid, {})
            unknown = end - start - sum(per.values())  # before the first data: OFFLINE
            if unknown:
                per[MachineState.OFFLINE] = per.get(MachineState.OFFLINE, 0) + unknown
            out[wid] = per
        return out

    async def machines(self) -> list[MachineRow]:
        async with self._read() as conn:
            rows = await conn.fetch(MACHINES_SQL)
        return [machine_row(r) for r in rows]

    async def agents(self) -> list[AgentRow]:
        async with self._read() as conn:
            rows = await conn.fetch(
                "SELECT id, site, online, epoch, version, last_status_ts FROM agents"
                ' ORDER BY id COLLATE "C"'
            )
        return [AgentRow(r[0], r[1], bool(r[2]), int(r[3]), r[4], int(r[5])) for r in rows]

    async def rejected(self, limit: int) -> list[RejectedRow]:
        async with self._read() as conn:
            rows = await conn.fetch(
                "SELECT id, received_at, topic, payload, reason FROM rejected"
                " ORDER BY id DESC LIMIT $1",
                limit,
            )
        return [RejectedRow(int(r[0]), int(r[1]), r[2], bytes(r[3]), r[4]) for r in rows]

    async def rejected_total(self) -> int:
        async with self._read() as conn:
            value = await conn.fetchval("SELECT value FROM counters WHERE name = 'rejected_total'")
        return int(value) if value is not None else 0


def _newest_per_machine(items: Iterable[Incoming]) -> list[Incoming]:
    """Per machine, the record with the greatest ts (the later one on a tie): what a
    row-by-row ``UPDATE ... WHERE coalesce(ts, -1) <= new ts`` in batch order ends with."""
    newest: dict[str, Incoming] = {}
    for i in items:
        key = machine_key(i.envelope.agent, i.envelope.machine)
        if key not in newest or i.envelope.ts >= newest[key].envelope.ts:
            newest[key] = i
    return list(newest.values())
