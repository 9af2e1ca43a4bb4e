"""Orders, their job links and status changes, webhook subscriptions and the webhook outbox,
on the PostgreSQL store: the same contract as :mod:`.sqlite_orders`, migration 4 on both.

A status change, its place in the order's change log and one outbox row per subscribed
webhook are written in one transaction on the store's single writer connection
(:meth:`PostgresOrders.record_order_change`), so a change is pushed exactly when it is
recorded, also across a crash or a restart. The idempotency of order creation rests on the
unique constraints on ``orders.ref`` and ``orders.idempotency_key``: a create that loses a
race to another writer finds the winner's row and answers it (or a conflict), as SQLite does.

What differs from SQLite, and why:

- ``orders.items`` and ``webhooks.events`` are ``jsonb``. ``order_changes.body`` stays
  ``text``: it is the exact bytes every receiver gets and verifies its signature over,
  which ``jsonb`` would re-format.
- ``order_jobs.job_id`` has no foreign key, as in SQLite: migration 4 does not depend on
  the jobs table of migration 3, and a link outlives nothing it would guard.
- Text that PostgreSQL cannot hold (NUL, unpaired surrogates) is stored with U+FFFD in
  their place (:mod:`.postgres_text`), as everywhere in this store; the fingerprint is
  of the request as sent, so a repeat of it is still recognized.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Final

from shopfloor.hub.orders.model import (
    ORDER_STATUS_CHANGED,
    DeliveryRow,
    DeliveryState,
    DueDelivery,
    IdempotencyConflictError,
    LinkConflictError,
    LinkVia,
    NewChange,
    NewOrder,
    OrderChange,
    OrderItem,
    OrderLink,
    OrderRow,
    OrderStatus,
    WebhookRow,
)
from shopfloor.hub.store.order_rows import change_row as _change
from shopfloor.hub.store.order_rows import delivery_row as _delivery
from shopfloor.hub.store.order_rows import order_row as _order
from shopfloor.hub.store.order_rows import webhook_row as _hook
from shopfloor.hub.store.postgres_text import pg_opt_text as _opt_text
from shopfloor.hub.store.postgres_text import pg_text as _text

if TYPE_CHECKING:
    from asyncpg import Record
    from asyncpg.pool import PoolConnectionProxy

    Conn = PoolConnectionProxy[Record]

#: Migration 4 (the number the SQLite store uses for the same tables).
ORDERS_MIGRATION: Final = (
    4,
    """
    CREATE TABLE orders (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        ref text NOT NULL UNIQUE,
        idempotency_key text UNIQUE,
        fingerprint text NOT NULL,
        items jsonb NOT NULL,
        due_at bigint,
        note text NOT NULL DEFAULT '',
        created_at bigint NOT NULL,
        status text NOT NULL,
        status_since bigint NOT NULL,
        change_seq bigint NOT NULL DEFAULT 0
    );
    CREATE INDEX orders_status ON orders (status, id);
    CREATE INDEX orders_due ON orders (due_at);

    CREATE TABLE order_jobs (
        job_id bigint PRIMARY KEY,
        order_id bigint NOT NULL REFERENCES orders (id),
        via text NOT NULL CHECK (via IN ('api', 'ref')),
        linked_at bigint NOT NULL
    );
    CREATE INDEX order_jobs_order ON order_jobs (order_id);

    -- A job unlinked by hand is never linked to that order again by its order reference.
    CREATE TABLE order_job_exclusions (
        order_id bigint NOT NULL REFERENCES orders (id),
        job_id bigint NOT NULL,
        PRIMARY KEY (order_id, job_id)
    );

    CREATE TABLE order_changes (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        event_id text NOT NULL UNIQUE,
        order_id bigint NOT NULL REFERENCES orders (id),
        seq bigint NOT NULL,
        previous text,
        status text NOT NULL,
        at bigint NOT NULL,
        body text NOT NULL,
        UNIQUE (order_id, seq)
    );

    CREATE TABLE webhooks (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        url text NOT NULL,
        events jsonb NOT NULL,
        secret text NOT NULL,
        description text NOT NULL DEFAULT '',
        created_at bigint NOT NULL,
        deleted_at bigint
    );

    CREATE TABLE webhook_deliveries (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        webhook_id bigint NOT NULL REFERENCES webhooks (id),
        change_id bigint NOT NULL REFERENCES order_changes (id),
        event text NOT NULL,
        state text NOT NULL CHECK (state IN ('pending', 'delivered', 'dead')),
        attempts integer NOT NULL DEFAULT 0,
        next_at bigint NOT NULL,
        last_error text,
        last_status integer,
        created_at bigint NOT NULL,
        finished_at bigint,
        UNIQUE (webhook_id, change_id)
    );
    CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_at);
    CREATE INDEX webhook_deliveries_hook ON webhook_deliveries (webhook_id, id);
    """,
)

_SELECT_ORDERS: Final = (
    "SELECT id, ref, items::text, due_at, note, created_at, status, status_since, change_seq,"
    " idempotency_key, fingerprint FROM orders"
)
_SELECT_CHANGES: Final = (
    "SELECT id, event_id, order_id, seq, previous, status, at, body FROM order_changes"
)
_SELECT_HOOKS: Final = "SELECT id, url, events::text, secret, description, created_at FROM webhooks"
_SELECT_DELIVERIES: Final = (
    "SELECT d.id, d.webhook_id, d.change_id, c.event_id, d.event, c.order_id, d.state,"
    " d.attempts, d.next_at, d.last_error, d.last_status, d.created_at, d.finished_at"
    " FROM webhook_deliveries d JOIN order_changes c ON c.id = d.change_id"
)
_SELECT_DUE: Final = (
    "SELECT d.id, d.webhook_id, d.change_id, c.event_id, d.event, c.order_id, d.state,"
    " d.attempts, d.next_at, d.last_error, d.last_status, d.created_at, d.finished_at,"
    " w.url, w.secret, c.body"
    " FROM webhook_deliveries d JOIN order_changes c ON c.id = d.change_id"
    " JOIN webhooks w ON w.id = d.webhook_id"
)


def _items_json(items: Sequence[OrderItem]) -> str:
    """``jsonb`` text of the items (``jsonb`` refuses ``\\u0000`` and lone surrogates, so
    their strings are cleaned first)."""
    return json.dumps(
        [{k: _text(v) if isinstance(v, str) else v for k, v in i.to_json().items()} for i in items],
        separators=(",", ":"),
        ensure_ascii=False,
    )


def _changed(status: str) -> int:
    """The row count of an ``UPDATE`` / ``DELETE`` / ``INSERT`` status tag."""
    return int(status.rsplit(" ", 1)[-1])


class PostgresOrders:
    """Mixin for :class:`~shopfloor.hub.store.postgres.PostgresStore`: orders and webhooks.
    Reads go through a reader connection; every write is one transaction on the writer."""

    def _read(self) -> AbstractAsyncContextManager[Conn]:
        raise NotImplementedError  # provided by PostgresStore

    def _writing(self) -> AbstractAsyncContextManager[Conn]:
        raise NotImplementedError  # provided by PostgresStore

    async def _fetch(self, sql: str, *args: Any) -> list[Record]:
        async with self._read() as conn:
            return list(await conn.fetch(sql, *args))

    # -- orders ------------------------------------------------------------------------------

    async def create_order(
        self, order: NewOrder, *, key: str | None, now: int
    ) -> tuple[OrderRow, bool]:
        """Store ``order`` unless the same key (the idempotency key, else the external
        reference) was used before: then answer that order if the request was the same,
        or raise :class:`IdempotencyConflictError` with what differs. True when created."""
        fingerprint = order.fingerprint()
        ref = _text(order.ref)
        clean_key = _opt_text(key)
        async with self._writing() as conn, conn.transaction():
            existing = await _existing(conn, order, ref, clean_key, fingerprint)
            if existing is not None:
                return existing, False
            order_id = await conn.fetchval(
                "INSERT INTO orders (ref, idempotency_key, fingerprint, items, due_at, note,"
                " created_at, status, status_since)"
                " VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $8, $7)"
                " ON CONFLICT DO NOTHING RETURNING id",
                ref,
                clean_key,
                fingerprint,
                _items_json(order.items),
                order.due_at,
                _text(order.note),
                now,
                str(OrderStatus.RECEIVED),
            )
            if order_id is not None:
                row = await conn.fetchrow(_SELECT_ORDERS + " WHERE id = $1", order_id)
                assert row is not None
                return _order(row), True
            # Another writer committed the same key or ref after our look: its row is
            # visible to a new statement now; answer it as if it had been there before.
            existing = await _existing(conn, order, ref, clean_key, fingerprint)
            if existing is None:  # pragma: no cover - the unique constraint named a row
                raise AssertionError("an order insert conflicted with no visible order")
            return existing, False

    async def order(self, order_id: int) -> OrderRow | None:
        rows = await self._fetch(_SELECT_ORDERS + " WHERE id = $1", order_id)
        return _order(rows[0]) if rows else None

    async def order_by_ref(self, ref: str) -> OrderRow | None:
        rows = await self._fetch(_SELECT_ORDERS + " WHERE ref = $1", _text(ref))
        return _order(rows[0]) if rows else None

    async def orders(
        self,
        *,
        statuses: Sequence[OrderStatus] | None = None,
        ref: str | None = None,
        due_before: int | None = None,
        due_after: int | None = None,
        after_id: int | None = None,
        limit: int = 100,
    ) -> list[OrderRow]:
        """Orders matching every given filter, newest first; ``after_id`` pages on (only
        ids below it). A due filter leaves out orders without a due date."""
        rows = await self._fetch(
            _SELECT_ORDERS + " WHERE ($1::text[] IS NULL OR status = ANY($1::text[]))"
            " AND ($2::text IS NULL OR ref = $2)"
            " AND ($3::bigint IS NULL OR due_at < $3)"
            " AND ($4::bigint IS NULL OR due_at >= $4)"
            " AND ($5::bigint IS NULL OR id < $5)"
            " ORDER BY id DESC LIMIT $6",
            None if statuses is None else [str(s) for s in statuses],
            _opt_text(ref),
            due_before,
            due_after,
            after_id,
            limit,
        )
        return [_order(r) for r in rows]

    # -- links -------------------------------------------------------------------------------

    async def link_job(self, order_id: int, job_id: int, *, via: LinkVia, now: int) -> bool:
        """Link a job to an order; True if the link is new. By reference (``via=REF``) a
        job unlinked from this order by hand, or linked to another order, is left alone;
        by API a job of another order raises :class:`LinkConflictError`."""
        async with self._writing() as conn, conn.transaction():
            current = await conn.fetchval(
                "SELECT order_id FROM order_jobs WHERE job_id = $1", job_id
            )
            if current is not None:
                if int(current) == order_id or via is LinkVia.REF:
                    return False
                raise LinkConflictError(
                    f"job {job_id} belongs to order {current}; unlink it there first "
                    f"(DELETE /api/v1/orders/{current}/jobs/{job_id})",
                    order_id=int(current),
                )
            if via is LinkVia.REF:
                excluded = await conn.fetchval(
                    "SELECT 1 FROM order_job_exclusions WHERE order_id = $1 AND job_id = $2",
                    order_id,
                    job_id,
                )
                if excluded is not None:
                    return False
            else:
                await conn.execute(
                    "DELETE FROM order_job_exclusions WHERE order_id = $1 AND job_id = $2",
                    order_id,
                    job_id,
                )
            await conn.execute(
                "INSERT INTO order_jobs (job_id, order_id, via, linked_at) VALUES ($1, $2, $3, $4)",
                job_id,
                order_id,
                str(via),
                now,
            )
            return True

    async def unlink_job(self, order_id: int, job_id: int) -> bool:
        """Remove the link (and keep the job from being linked back by its reference)."""
        async with self._writing() as conn, conn.transaction():
            done = await conn.execute(
                "DELETE FROM order_jobs WHERE order_id = $1 AND job_id = $2", order_id, job_id
            )
            if _changed(done) == 0:
                return False
            await conn.execute(
                "INSERT INTO order_job_exclusions (order_id, job_id) VALUES ($1, $2)"
                " ON CONFLICT DO NOTHING",
                order_id,
                job_id,
            )
            return True

    async def order_links(self, order_id: int) -> list[OrderLink]:
        rows = await self._fetch(
            "SELECT order_id, job_id, via, linked_at FROM order_jobs WHERE order_id = $1"
            " ORDER BY job_id",
            order_id,
        )
        return [OrderLink(int(r[0]), int(r[1]), LinkVia(r[2]), int(r[3])) for r in rows]

    async def orders_of_jobs(self, job_ids: Sequence[int]) -> dict[int, int]:
        """job id -> order id, for the given jobs that are linked."""
        if not job_ids:
            return {}
        rows = await self._fetch(
            "SELECT job_id, order_id FROM order_jobs WHERE job_id = ANY($1::bigint[])",
            list(job_ids),
        )
        return {int(r[0]): int(r[1]) for r in rows}

    # -- status changes and the outbox -------------------------------------------------------

    async def record_order_change(self, change: NewChange) -> OrderChange | None:
        """In one transaction: set the order's status (only if its change_seq is still
        ``change.expected_seq``), append the change to its log, and queue one delivery for
        every webhook subscribed to the event. None when the order moved on meanwhile."""
        seq = change.expected_seq + 1
        body = _text(change.body)
        async with self._writing() as conn, conn.transaction():
            done = await conn.execute(
                "UPDATE orders SET status = $1, status_since = $2, change_seq = $3"
                " WHERE id = $4 AND change_seq = $5",
                str(change.status),
                change.at,
                seq,
                change.order_id,
                change.expected_seq,
            )
            if _changed(done) == 0:
                return None
            change_id = await conn.fetchval(
                "INSERT INTO order_changes (event_id, order_id, seq, previous, status, at, body)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                _text(change.event_id),
                change.order_id,
                seq,
                str(change.previous),
                str(change.status),
                change.at,
                body,
            )
            await conn.execute(
                "INSERT INTO webhook_deliveries (webhook_id, change_id, event, state, next_at,"
                " created_at) SELECT id, $1, $2::text, 'pending', 0, $3 FROM webhooks"
                " WHERE deleted_at IS NULL AND events ? $2::text ORDER BY id",
                change_id,
                ORDER_STATUS_CHANGED,
                change.at,
            )
        return OrderChange(
            id=int(change_id),
            event_id=_text(change.event_id),
            order_id=change.order_id,
            seq=seq,
            previous=change.previous,
            status=change.status,
            at=change.at,
            body=body,
        )

    async def order_changes(
        self, *, order_id: int | None = None, after_id: int = 0, limit: int = 100
    ) -> list[OrderChange]:
        """Recorded changes (of one order, or all) with an id above ``after_id``, oldest
        first."""
        rows = await self._fetch(
            _SELECT_CHANGES + " WHERE ($1::bigint IS NULL OR order_id = $1) AND id > $2"
            " ORDER BY id LIMIT $3",
            order_id,
            after_id,
            limit,
        )
        return [_change(r) for r in rows]

    # -- webhooks ----------------------------------------------------------------------------

    async def add_webhook(
        self, *, url: str, events: Sequence[str], secret: str, description: str, now: int
    ) -> WebhookRow:
        url, description = _text(url), _text(description)
        names = tuple(_text(e) for e in events)
        async with self._writing() as conn, conn.transaction():
            webhook_id = await conn.fetchval(
                "INSERT INTO webhooks (url, events, secret, description, created_at)"
                " VALUES ($1, $2::jsonb, $3, $4, $5) RETURNING id",
                url,
                json.dumps(list(names), ensure_ascii=False),
                secret,
                description,
                now,
            )
        return WebhookRow(int(webhook_id), url, names, secret, description, now)

    async def webhooks(self) -> list[WebhookRow]:
        rows = await self._fetch(_SELECT_HOOKS + " WHERE deleted_at IS NULL ORDER BY id")
        return [_hook(r) for r in rows]

    async def webhook(self, webhook_id: int) -> WebhookRow | None:
        rows = await self._fetch(
            _SELECT_HOOKS + " WHERE id = $1 AND deleted_at IS NULL", webhook_id
        )
        return _hook(rows[0]) if rows else None

    async def delete_webhook(self, webhook_id: int, *, now: int) -> bool:
        """End a subscription: nothing new is queued for it and its pending deliveries are
        marked dead ("subscription deleted"); its history stays readable."""
        async with self._writing() as conn, conn.transaction():
            done = await conn.execute(
                "UPDATE webhooks SET deleted_at = $1 WHERE id = $2 AND deleted_at IS NULL",
                now,
                webhook_id,
            )
            if _changed(done) == 0:
                return False
            await conn.execute(
                "UPDATE webhook_deliveries SET state = 'dead', finished_at = $1,"
                " last_error = 'subscription deleted' WHERE webhook_id = $2 AND state = 'pending'",
                now,
                webhook_id,
            )
            return True

    async def due_deliveries(self, now: int, limit: int) -> list[DueDelivery]:
        """Pending deliveries whose time has come, earliest due first (then oldest)."""
        rows = await self._fetch(
            _SELECT_DUE
            + " WHERE d.state = 'pending' AND d.next_at <= $1 ORDER BY d.next_at, d.id LIMIT $2",
            now,
            limit,
        )
        return [
            DueDelivery(delivery=_delivery(r), url=str(r[13]), secret=str(r[14]), body=str(r[15]))
            for r in rows
        ]

    async def next_delivery_at(self) -> int | None:
        async with self._read() as conn:
            value = await conn.fetchval(
                "SELECT min(next_at) FROM webhook_deliveries WHERE state = 'pending'"
            )
        return None if value is None else int(value)

    async def finish_attempt(
        self,
        delivery_id: int,
        *,
        state: DeliveryState,
        next_at: int,
        status: int | None,
        error: str | None,
        now: int,
    ) -> None:
        """Record one attempt: delivered, dead, or pending again at ``next_at``."""
        async with self._writing() as conn, conn.transaction():
            await conn.execute(
                "UPDATE webhook_deliveries SET state = $1, attempts = attempts + 1, next_at = $2,"
                " last_status = $3, last_error = $4, finished_at = $5"
                " WHERE id = $6 AND state = 'pending'",
                str(state),
                next_at,
                status,
                _opt_text(error),
                None if state is DeliveryState.PENDING else now,
                delivery_id,
            )

    async def deliveries(
        self,
        *,
        webhook_id: int | None = None,
        state: DeliveryState | None = None,
        after_id: int | None = None,
        limit: int = 100,
    ) -> list[DeliveryRow]:
        """Deliveries matching the filters, newest first; ``after_id`` pages on."""
        rows = await self._fetch(
            _SELECT_DELIVERIES + " WHERE ($1::bigint IS NULL OR d.webhook_id = $1)"
            " AND ($2::text IS NULL OR d.state = $2)"
            " AND ($3::bigint IS NULL OR d.id < $3) ORDER BY d.id DESC LIMIT $4",
            webhook_id,
            None if state is None else str(state),
            after_id,
            limit,
        )
        return [_delivery(r) for r in rows]

    async def delivery_counts(self) -> dict[str, int]:
        rows = await self._fetch("SELECT state, count(*) FROM webhook_deliveries GROUP BY state")
        return {"pending": 0, "delivered": 0, "dead": 0} | {str(r[0]): int(r[1]) for r in rows}

    async def delivery(self, delivery_id: int) -> DeliveryRow | None:
        rows = await self._fetch(_SELECT_DELIVERIES + " WHERE d.id = $1", delivery_id)
        return _delivery(rows[0]) if rows else None

    async def redeliver(self, webhook_id: int, delivery_id: int, *, now: int) -> bool:
        """Queue a dead delivery of a live subscription again (attempts start over)."""
        async with self._writing() as conn, conn.transaction():
            done = await conn.execute(
                "UPDATE webhook_deliveries d SET state = 'pending', attempts = 0, next_at = $1,"
                " finished_at = NULL WHERE d.id = $2 AND d.webhook_id = $3 AND d.state = 'dead'"
                " AND EXISTS (SELECT 1 FROM webhooks w WHERE w.id = d.webhook_id"
                " AND w.deleted_at IS NULL)",
                now,
                delivery_id,
                webhook_id,
            )
        return _changed(done) > 0


async def _existing(
    conn: Conn, order: NewOrder, ref: str, key: str | None, fingerprint: str
) -> OrderRow | None:
    """The order an earlier request with this key (else this ref) created, if the request
    was the same; :class:`IdempotencyConflictError` if it was not."""
    if key is not None:
        row = await conn.fetchrow(_SELECT_ORDERS + " WHERE idempotency_key = $1", key)
        if row is not None:
            existing = _order(row)
            if existing.fingerprint != fingerprint:
                raise IdempotencyConflictError(
                    f"Idempotency-Key {key!r} was used for order {existing.id} "
                    f"(ref {existing.ref!r}) with a different body; "
                    "send the same body to repeat it, or a new key for a new order",
                    existing_id=existing.id,
                )
            return existing
    row = await conn.fetchrow(_SELECT_ORDERS + " WHERE ref = $1", ref)
    if row is None:
        return None
    existing = _order(row)
    if existing.fingerprint != fingerprint:
        raise IdempotencyConflictError(
            f"an order with ref {order.ref!r} exists (id {existing.id}) with "
            "different items, due date or note; an external reference names "
            "one order",
            existing_id=existing.id,
        )
    return existing
