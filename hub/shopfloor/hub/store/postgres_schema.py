"""The PostgreSQL schema: numbered migrations, and the monthly partitions of the time tables.

Tables, columns and migration numbers match the SQLite store (:mod:`.sqlite`), so one
``schema_migrations`` version means the same tables on both and dashboards can query either.
Times stay ``bigint`` epoch milliseconds (UTC) as in SQLite: Grafana's ``$__from`` and
``$__to`` are epoch milliseconds too, and ``to_timestamp(ts / 1000.0)`` gives a timestamptz.

What differs, and why:

- ``records`` and ``state_changes`` are partitioned by range on ``ts``, one partition per
  calendar month (UTC), kept created ahead by the store's partition maintenance (this month
  and the next two, :func:`months_ahead`; any other month just before a write needs it, see
  :func:`partition_for`). Each has a BRIN index on ``ts`` (tiny; time-range scans) and the
  B-tree indexes the store's lookups need.
- A unique constraint on a partitioned table must contain the partition key, but a record is
  the same record whatever ``ts`` it carries (a replay after a clock correction can bring a
  different one). So idempotency lives in ``record_keys`` (agent, stream, seq), a small
  table that is not partitioned: a record is inserted into ``records`` only if its key was
  new. The watermark and data-loss queries read ``record_keys`` as well.
- ``records.id`` is an identity column: the cursor of ``records_after`` (SQLite's rowid).
- JSON is ``jsonb``; flags are ``boolean``; payloads are ``bytea``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

#: The tables partitioned by month on ``ts``.
PARTITIONED: Final = ("records", "state_changes")

#: Numbered migrations of the event store itself. Append only; never edit one that has
#: shipped. The numbers follow the SQLite store's; mixins bring theirs (postgres.py lists all).
CORE_MIGRATIONS: Final[tuple[tuple[int, str], ...]] = (
    (
        1,
        """
        CREATE TABLE record_keys (
            agent text NOT NULL,
            stream text NOT NULL,
            seq bigint NOT NULL,
            PRIMARY KEY (agent, stream, seq)
        );

        CREATE TABLE records (
            id bigint GENERATED ALWAYS AS IDENTITY,
            agent text NOT NULL,
            stream text NOT NULL,
            seq bigint NOT NULL,
            machine text NOT NULL,
            kind text NOT NULL,
            ts bigint NOT NULL,
            mono bigint,
            received_at bigint NOT NULL,
            replay boolean NOT NULL,
            body jsonb NOT NULL
        ) PARTITION BY RANGE (ts);
        CREATE INDEX records_machine_kind_ts ON records (agent, machine, kind, ts);
        CREATE INDEX records_id ON records (id);
        CREATE INDEX records_ts_brin ON records USING brin (ts);

        CREATE TABLE state_changes (
            id bigint GENERATED ALWAYS AS IDENTITY,
            machine_key text NOT NULL,
            ts bigint NOT NULL,
            state text NOT NULL,
            detail text NOT NULL DEFAULT '',
            source text NOT NULL CHECK (source IN ('agent', 'hub'))
        ) PARTITION BY RANGE (ts);
        CREATE INDEX state_changes_machine_ts ON state_changes (machine_key, ts, id);
        CREATE INDEX state_changes_ts_brin ON state_changes USING brin (ts);

        CREATE TABLE machines (
            key text PRIMARY KEY,
            agent text NOT NULL,
            machine text NOT NULL,
            site text NOT NULL,
            name text NOT NULL,
            kind text,
            protocol text,
            firmware text,
            last_seen bigint,
            meta jsonb NOT NULL DEFAULT '{}',
            meta_ts bigint,
            state_body jsonb,
            state_ts bigint
        );

        CREATE TABLE agents (
            id text PRIMARY KEY,
            site text NOT NULL,
            online boolean NOT NULL,
            epoch bigint NOT NULL,
            version text NOT NULL,
            last_status_ts bigint NOT NULL,
            changed_at bigint NOT NULL
        );

        CREATE TABLE rejected (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            received_at bigint NOT NULL,
            topic text NOT NULL,
            payload bytea NOT NULL,
            reason text NOT NULL
        );

        CREATE TABLE counters (name text PRIMARY KEY, value bigint NOT NULL);

        CREATE TABLE stream_progress (
            agent text NOT NULL,
            stream text NOT NULL,
            contiguous_seq bigint NOT NULL,
            max_seq bigint NOT NULL,
            PRIMARY KEY (agent, stream)
        );
        """,
    ),
    (
        2,
        """
        ALTER TABLE records ADD COLUMN clock text
            CHECK (clock IS NULL OR clock IN ('corrected', 'flagged'));
        ALTER TABLE records ADD COLUMN agent_ts bigint;

        CREATE TABLE data_loss (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            agent text NOT NULL,
            stream text NOT NULL,
            from_seq bigint NOT NULL,
            to_seq bigint NOT NULL,
            reason text NOT NULL,
            missing bigint NOT NULL,
            declared_seq bigint NOT NULL,
            received_at bigint NOT NULL
        );
        CREATE INDEX data_loss_stream ON data_loss (agent, stream, from_seq);
        """,
    ),
)

#: Every migration runs under this advisory lock, so two hubs starting at once on one
#: database migrate it once (the second waits, then finds the work done).
MIGRATION_LOCK: Final = 0x5F10_0001

#: ts below this (before 1970) goes to one ``_before_1970`` partition, ts from this on (year
#: 9999 and later, far past any real clock) to one ``_far_future`` partition; every month in
#: between gets its own. So every bigint has a partition and no DEFAULT partition is needed
#: (a DEFAULT partition holding rows of a month would block creating that month later).
_FIRST_MS: Final = 0
_FAR_FUTURE_MS: Final = int(datetime(9999, 1, 1, tzinfo=UTC).timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class Partition:
    """One range of ``ts``: the same bounds for every table in :data:`PARTITIONED`."""

    suffix: str  # p2026_11, p_before_1970, p_far_future
    low: int | None  # inclusive epoch ms; None = MINVALUE
    high: int | None  # exclusive epoch ms; None = MAXVALUE

    def name(self, table: str) -> str:
        return f"{table}_{self.suffix}"

    def ddl(self, table: str) -> str:
        """``CREATE TABLE IF NOT EXISTS ... PARTITION OF``; only our own integers are joined."""
        low = "MINVALUE" if self.low is None else str(int(self.low))
        high = "MAXVALUE" if self.high is None else str(int(self.high))
        return (
            f"CREATE TABLE IF NOT EXISTS {self.name(table)} PARTITION OF {table}"
            f" FOR VALUES FROM ({low}) TO ({high})"
        )


def _month_start_ms(year: int, month: int) -> int:
    return int(datetime(year, month, 1, tzinfo=UTC).timestamp() * 1000)


def partition_for(ts: int) -> Partition:
    """The monthly (UTC) partition that holds ``ts`` (epoch ms)."""
    if ts < _FIRST_MS:
        return Partition("p_before_1970", None, _FIRST_MS)
    if ts >= _FAR_FUTURE_MS:
        return Partition("p_far_future", _FAR_FUTURE_MS, None)
    at = datetime.fromtimestamp(ts / 1000, tz=UTC)
    year, month = at.year, at.month
    # fromtimestamp rounds to microseconds; trust the integer bounds, not the float.
    low = _month_start_ms(year, month)
    if ts < low:
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
        low = _month_start_ms(year, month)
    next_year, next_month = (year, month + 1) if month < 12 else (year + 1, 1)
    high = _month_start_ms(next_year, next_month)
    if ts >= high:
        return partition_for(high)
    return Partition(f"p{year:04d}_{month:02d}", low, high)


def months_ahead(now_ms: int, count: int) -> list[Partition]:
    """The partition of ``now_ms`` and the ``count - 1`` months after it."""
    out = [partition_for(now_ms)]
    while len(out) < count and out[-1].high is not None:
        out.append(partition_for(out[-1].high))
    return out
