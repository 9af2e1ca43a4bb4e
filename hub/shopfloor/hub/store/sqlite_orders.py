"""Orders, their job links and status changes, webhook subscriptions and the webhook outbox,
on the SQLite store (schema: migration 4 in :mod:`shopfloor.hub.store.sqlite`).

A status change, its place in the order's change log and one outbox row per subscribed
webhook are written in one transaction (:meth:`SqliteOrders.record_order_change`), so a
change is pushed exactly when it is recorded, also across a crash or a restart.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import aiosqlite

from shopfloor.hub.errors import StoreError
from shopfloor.hub.orders.model import (
    DeliveryRow,
    DeliveryState,
    DueDelivery,
    IdempotencyConflictError,
    LinkConflictError,
    LinkVia,
    NewChange,
    NewOrder,
    OrderChange,
    OrderLink,
    OrderRow,
    OrderStatus,
    WebhookRow,
)
from shopfloor.hub.store.order_rows import change_row as _change
from shopfloor.hub.store.order_rows import delivery_row as _delivery
from shopfloor.hub.store.order_rows import order_row as _order
from shopfloor.hub.store.order_rows import webhook_row as _hook

T = TypeVar("T")

#: Migration 4 of :data:`shopfloor.hub.store.sqlite.MIGRATIONS`.
ORDERS_MIGRATION: Final = (
    4,
    """
CREATE TABLE orders (
    id INTEGER PRIMARY KEY,
    ref TEXT NOT NULL UNIQUE,
    idempotency_key TEXT UNIQUE,
    fingerprint TEXT NOT NULL,
    items TEXT NOT NULL,
    due_at INTEGER,
    note TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL,
    status TEXT NOT NULL,
    status_since INTEGER NOT NULL,
    change_seq INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX orders_status ON orders (status, id);
CREATE INDEX orders_due ON orders (due_at);

CREATE TABLE order_jobs (
    job_id INTEGER PRIMARY KEY,
    order_id INTEGER NOT NULL REFERENCES orders (id),
    via TEXT NOT NULL CHECK (via IN ('api', 'ref')),
    linked_at INTEGER NOT NULL
) STRICT;
CREATE INDEX order_jobs_order ON order_jobs (order_id);

-- A job unlinked by hand is never linked to that order again by its order reference.
CREATE TABLE order_job_exclusions (
    order_id INTEGER NOT NULL REFERENCES orders (id),
    job_id INTEGER NOT NULL,
    PRIMARY KEY (order_id, job_id)
) STRICT;

CREATE TABLE order_changes (
    id INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    order_id INTEGER NOT NULL REFERENCES orders (id),
    seq INTEGER NOT NULL,
    previous TEXT,
    status TEXT NOT NULL,
    at INTEGER NOT NULL,
    body TEXT NOT NULL,
    UNIQUE (order_id, seq)
) STRICT;

CREATE TABLE webhooks (
    id INTEGER PRIMARY KEY,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    secret TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL,
    deleted_at INTEGER
) STRICT;

CREATE TABLE webhook_deliveries (
    id INTEGER PRIMARY KEY,
    webhook_id INTEGER NOT NULL REFERENCES webhooks (id),
    change_id INTEGER NOT NULL REFERENCES order_changes (id),
    event TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at INTEGER NOT NULL,
    last_error TEXT,
    last_status INTEGER,
    created_at INTEGER NOT NULL,
    finished_at INTEGER,
    UNIQUE (webhook_id, change_id)
) STRICT;
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_at);
CREATE INDEX webhook_deliveries_hook ON webhook_deliveries (webhook_id, id);
""",
)

_SELECT_ORDERS: Final = (
    "SELECT id, ref, items, due_at, note, created_at, status, status_since, change_seq,"
    " idempotency_key, fingerprint FROM orders"
)
_SELECT_CHANGES: Final = (
    "SELECT id, event_id, order_id, seq, previous, status, at, body FROM order_changes"
)
_SELECT_HOOKS: Final = "SELECT id, url, events, secret, description, created_at FROM webhooks"
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


class SqliteOrders:
    """The order and webhook part of :class:`~shopfloor.hub.store.sqlite.SqliteStore`
    (a mixin: it uses the store's writer and reader connections and its writer lock)."""

    path: Path
    _lock: asyncio.Lock

    @property
    def _w(self) -> aiosqlite.Connection:
        raise NotImplementedError  # SqliteStore provides it

    @property
    def _r(self) -> aiosqlite.Connection:
        raise NotImplementedError  # SqliteStore provides it

    async def _tx(self, work: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        """Run ``work`` in one write transaction (under the store's writer lock)."""
        async with self._lock:
            conn = self._w
            try:
                await conn.execute("BEGIN IMMEDIATE")
                try:
                    result = await work(conn)
                except BaseException:
                    await conn.execute("ROLLBACK")
                    raise
                await conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError(f"writing orders to {self.path} failed: {exc}") from exc
            return result

    async def _fetchall(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Any]:
        try:
            async with self._r.execute(sql, params) as cur:
                return list(await cur.fetchall())
        except sqlite3.Error as exc:
            raise StoreError(f"reading orders from {self.path} failed: {exc}") from exc

    # -- orders ------------------------------------------------------------------------------

    async def create_order(
        self, order: NewOrder, *, key: str | None, now: int
    ) -> tuple[OrderRow, bool]:
        """Store ``order`` unless the same key (the idempotency key, else the external
        reference) was used before: then answer that order if the request was the same,
        or raise :class:`IdempotencyConflictError` with what differs. True when created."""
        fingerprint = order.fingerprint()

        async def work(conn: aiosqlite.Connection) -> tuple[OrderRow, bool]:
            existing = None
            if key is not None:
                existing = await _one(conn, _SELECT_ORDERS + " WHERE idempotency_key = ?", (key,))
                if existing is not None and existing.fingerprint != fingerprint:
                    raise IdempotencyConflictError(
                        f"Idempotency-Key {key!r} was used for order {existing.id} "
                        f"(ref {existing.ref!r}) with a different body; "
                        "send the same body to repeat it, or a new key for a new order",
                        existing_id=existing.id,
                    )
            if existing is None:
                existing = await _one(conn, _SELECT_ORDERS + " WHERE ref = ?", (order.ref,))
                if existing is not None and existing.fingerprint != fingerprint:
                    raise IdempotencyConflictError(
                        f"an order with ref {order.ref!r} exists (id {existing.id}) with "
                        "different items, due date or note; an external reference names "
                        "one order",
                        existing_id=existing.id,
                    )
            if existing is not None:
                return existing, False
            cur = await conn.execute(
                "INSERT INTO orders (ref, idempotency_key, fingerprint, items, due_at, note,"
                " created_at, status, status_since) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    order.ref,
                    key,
                    fingerprint,
                    json.dumps([i.to_json() for i in order.items], separators=(",", ":")),
                    order.due_at,
                    order.note,
                    now,
                    str(OrderStatus.RECEIVED),
                    now,
                ),
            )
            created = await _one(conn, _SELECT_ORDERS + " WHERE id = ?", (cur.lastrowid,))
            assert created is not None
            return created, True

        return await self._tx(work)

    async def order(self, order_id: int) -> OrderRow | None:
        rows = await self._fetchall(_SELECT_ORDERS + " WHERE id = ?", (order_id,))
        return _order(rows[0]) if rows else None

    async def order_by_ref(self, ref: str) -> OrderRow | None:
        rows = await self._fetchall(_SELECT_ORDERS + " WHERE ref = ?", (ref,))
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
        rows = await self._fetchall(
            "SELECT id, ref, items, due_at, note, created_at, status, status_since, change_seq,"
            " idempotency_key, fingerprint FROM orders"
            " WHERE (:statuses IS NULL OR status IN (SELECT value FROM json_each(:statuses)))"
            " AND (:ref IS NULL OR ref = :ref)"
            " AND (:before IS NULL OR due_at < :before)"
            " AND (:after IS NULL OR due_at >= :after)"
            " AND (:after_id IS NULL OR id < :after_id)"
            " ORDER BY id DESC LIMIT :limit",
            {
                "statuses": None if statuses is None else json.dumps([str(s) for s in statuses]),
                "ref": ref,
                "before": due_before,
                "after": due_after,
                "after_id": after_id,
                "limit": limit,
            },
        )
        return [_order(r) for r in rows]

    # -- links -------------------------------------------------------------------------------

    async def link_job(self, order_id: int, job_id: int, *, via: LinkVia, now: int) -> bool:
        """Link a job to an order; True if the link is new. By reference (``via=REF``) a
        job unlinked from this order by hand, or linked to another order, is left alone;
        by API a job of another order raises :class:`LinkConflictError`."""

        async def work(conn: aiosqlite.Connection) -> bool:
            async with conn.execute(
                "SELECT order_id FROM order_jobs WHERE job_id = ?", (job_id,)
            ) as cur:
                row = await cur.fetchone()
            if row is not None:
                current = int(row[0])
                if current == order_id:
                    return False
                if via is LinkVia.REF:
                    return False
                raise LinkConflictError(
                    f"job {job_id} belongs to order {current}; unlink it there first "
                    f"(DELETE /api/v1/orders/{current}/jobs/{job_id})",
                    order_id=current,
                )
            if via is LinkVia.REF:
                async with conn.execute(
                    "SELECT 1 FROM order_job_exclusions WHERE order_id = ? AND job_id = ?",
                    (order_id, job_id),
                ) as cur:
                    if await cur.fetchone() is not None:
                        return False
            else:
                await conn.execute(
                    "DELETE FROM order_job_exclusions WHERE order_id = ? AND job_id = ?",
                    (order_id, job_id),
                )
            await conn.execute(
                "INSERT INTO order_jobs (job_id, order_id, via, linked_at) VALUES (?, ?, ?, ?)",
                (job_id, order_id, str(via), now),
            )
            return True

        return await self._tx(work)

    async def unlink_job(self, order_id: int, job_id: int) -> bool:
        """Remove the link (and keep the job from being linked back by its reference)."""

        async def work(conn: aiosqlite.Connection) -> bool:
            cur = await conn.execute(
                "DELETE FROM order_jobs WHERE order_id = ? AND job_id = ?", (order_id, job_id)
            )
            if cur.rowcount == 0:
                return False
            await conn.execute(
                "INSERT OR IGNORE INTO order_job_exclusions (order_id, job_id) VALUES (?, ?)",
                (order_id, job_id),
            )
            return True

        return await self._tx(work)

    async def order_links(self, order_id: int) -> list[OrderLink]:
        rows = await self._fetchall(
            "SELECT order_id, job_id, via, linked_at FROM order_jobs WHERE order_id = ?"
            " ORDER BY job_id",
            (order_id,),
        )
        return [OrderLink(int(o), int(j), LinkVia(v), int(at)) for o, j, v, at in rows]

    async def orders_of_jobs(self, job_ids: Sequence[int]) -> dict[int, int]:
        """job id -> order id, for the given jobs that are linked."""
        if not job_ids:
            return {}
        rows = await self._fetchall(
            "SELECT job_id, order_id FROM order_jobs"
            " WHERE job_id IN (SELECT value FROM json_each(?))",
            (json.dumps(list(job_ids)),),
        )
        return {int(j): int(o) for j, o in rows}

    # -- status changes and the outbox -------------------------------------------------------

    async def record_order_change(self, change: NewChange) -> OrderChange | None:
        """In one transaction: set the order's status (only if its change_seq is still
        ``change.expected_seq``), append the change to its log, and queue one delivery for
        every webhook subscribed to the event. None when the order moved on meanwhile."""

        async def work(conn: aiosqlite.Connection) -> OrderChange | None:
            seq = change.expected_seq + 1
            cur = await conn.execute(
                "UPDATE orders SET status = ?, status_since = ?, change_seq = ?"
                " WHERE id = ? AND change_seq = ?",
                (str(change.status), change.at, seq, change.order_id, change.expected_seq),
            )
            if cur.rowcount == 0:
                return None
            cur = await conn.execute(
                "INSERT INTO order_changes (event_id, order_id, seq, previous, status, at, body)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    change.event_id,
                    change.order_id,
                    seq,
                    str(change.previous),
                    str(change.status),
                    change.at,
                    change.body,
                ),
            )
            change_id = cur.lastrowid
            await conn.execute(
                "INSERT INTO webhook_deliveries (webhook_id, change_id, event, state, next_at,"
                " created_at) SELECT id, ?, 'order.status_changed', 'pending', 0, ? FROM webhooks"
                " WHERE deleted_at IS NULL AND EXISTS (SELECT 1 FROM json_each(webhooks.events)"
                " WHERE value = 'order.status_changed')",
                (change_id, change.at),
            )
            assert change_id is not None
            return OrderChange(
                id=change_id,
                event_id=change.event_id,
                order_id=change.order_id,
                seq=seq,
                previous=change.previous,
                status=change.status,
                at=change.at,
                body=change.body,
            )

        return await self._tx(work)

    async def order_changes(
        self, *, order_id: int | None = None, after_id: int = 0, limit: int = 100
    ) -> list[OrderChange]:
        """Recorded changes (of one order, or all) with an id above ``after_id``, oldest
        first."""
        rows = await self._fetchall(
            _SELECT_CHANGES
            + " WHERE (:o IS NULL OR order_id = :o) AND id > :after ORDER BY id LIMIT :limit",
            {"o": order_id, "after": after_id, "limit": limit},
        )
        return [_change(r) for r in rows]

    # -- webhooks ----------------------------------------------------------------------------

    async def add_webhook(
        self, *, url: str, events: Sequence[str], secret: str, description: str, now: int
    ) -> WebhookRow:
        async def work(conn: aiosqlite.Connection) -> WebhookRow:
            cur = await conn.execute(
                "INSERT INTO webhooks (url, events, secret, description, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (url, json.dumps(list(events)), secret, description, now),
            )
            assert cur.lastrowid is not None
            return WebhookRow(cur.lastrowid, url, tuple(events), secret, description, now)

        return await self._tx(work)

    async def webhooks(self) -> list[WebhookRow]:
        rows = await self._fetchall(_SELECT_HOOKS + " WHERE deleted_at IS NULL ORDER BY id")
        return [_hook(r) for r in rows]

    async def webhook(self, webhook_id: int) -> WebhookRow | None:
        rows = await self._fetchall(
            _SELECT_HOOKS + " WHERE id = ? AND deleted_at IS NULL",
            (webhook_id,),
        )
        return _hook(rows[0]) if rows else None

    async def delete_webhook(self, webhook_id: int, *, now: int) -> bool:
        """End a subscription: nothing new is queued for it and its pending deliveries are
        marked dead ("subscription deleted"); its history stays readable."""

        async def work(conn: aiosqlite.Connection) -> bool:
            cur = await conn.execute(
                "UPDATE webhooks SET deleted_at = ? WHERE id = ? AND deleted_at IS NULL",
                (now, webhook_id),
            )
            if cur.rowcount == 0:
                return False
            await conn.execute(
                "UPDATE webhook_deliveries SET state = 'dead', finished_at = ?,"
                " last_error = 'subscription deleted' WHERE webhook_id = ? AND state = 'pending'",
                (now, webhook_id),
            )
            return True

        return await self._tx(work)

    async def due_deliveries(self, now: int, limit: int) -> list[DueDelivery]:
        """Pending deliveries whose time has come, oldest change first."""
        rows = await self._fetchall(
            _SELECT_DUE
            + " WHERE d.state = 'pending' AND d.next_at <= ? ORDER BY d.next_at, d.id LIMIT ?",
            (now, limit),
        )
        return [
            DueDelivery(delivery=_delivery(r[:13]), url=r[13], secret=r[14], body=r[15])
            for r in rows
        ]

    async def next_delivery_at(self) -> int | None:
        rows = await self._fetchall(
            "SELECT min(next_at) FROM webhook_deliveries WHERE state = 'pending'"
        )
        return int(rows[0][0]) if rows and rows[0][0] is not None else None

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

        async def work(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                "UPDATE webhook_deliveries SET state = ?, attempts = attempts + 1, next_at = ?,"
                " last_status = ?, last_error = ?, finished_at = ?"
                " WHERE id = ? AND state = 'pending'",
                (
                    str(state),
                    next_at,
                    status,
                    error,
                    None if state is DeliveryState.PENDING else now,
                    delivery_id,
                ),
            )

        await self._tx(work)

    async def deliveries(
        self,
        *,
        webhook_id: int | None = None,
        state: DeliveryState | None = None,
        after_id: int | None = None,
        limit: int = 100,
    ) -> list[DeliveryRow]:
        """Deliveries matching the filters, newest first; ``after_id`` pages on."""
        rows = await self._fetchall(
            _SELECT_DELIVERIES
            + " WHERE (:w IS NULL OR d.webhook_id = :w) AND (:s IS NULL OR d.state = :s)"
            " AND (:after IS NULL OR d.id < :after) ORDER BY d.id DESC LIMIT :limit",
            {
                "w": webhook_id,
                "s": None if state is None else str(state),
                "after": after_id,
                "limit": limit,
            },
        )
        return [_delivery(r) for r in rows]

    async def delivery_counts(self) -> dict[str, int]:
        rows = await self._fetchall("SELECT state, count(*) FROM webhook_deliveries GROUP BY state")
        return {"pending": 0, "delivered": 0, "dead": 0} | {str(s): int(n) for s, n in rows}

    async def delivery(self, delivery_id: int) -> DeliveryRow | None:
        rows = await self._fetchall(
            _SELECT_DELIVERIES + " WHERE d.id = ?",
            (delivery_id,),
        )
        return _delivery(rows[0]) if rows else None

    async def redeliver(self, webhook_id: int, delivery_id: int, *, now: int) -> bool:
        """Queue a dead delivery of a live subscription again (attempts start over)."""

        async def work(conn: aiosqlite.Connection) -> bool:
            cur = await conn.execute(
                "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, next_at = ?,"
                " finished_at = NULL WHERE id = ? AND webhook_id = ? AND state = 'dead'"
                " AND EXISTS (SELECT 1 FROM webhooks w WHERE w.id = webhook_id"
                " AND w.deleted_at IS NULL)",
                (now, delivery_id, webhook_id),
            )
            return cur.rowcount > 0

        return await self._tx(work)


async def _one(conn: aiosqlite.Connection, sql: str, params: Sequence[Any]) -> OrderRow | None:
    async with conn.execute(sql, params) as cur:
        row = await cur.fetchone()
    return _order(row) if row is not None else None
