"""The order and webhook part of the store, on both backends (the ``store`` fixture): the
same answers from SQLite and PostgreSQL for idempotent creation, filters and pages, job
links, the compare-and-set status change with its outbox rows in one transaction, and the
delivery life cycle (due, attempts, dead, re-queued)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from pg_support import AnyStore, StoreFactory

from shopfloor.hub.errors import StoreError
from shopfloor.hub.orders.model import (
    ORDER_STATUS_CHANGED,
    DeliveryState,
    IdempotencyConflictError,
    LinkConflictError,
    LinkVia,
    NewChange,
    NewOrder,
    OrderItem,
    OrderRow,
    OrderStatus,
)

T0 = 1_764_000_000_000
DAY = 86_400_000
ITEMS = (OrderItem(part="bracket", quantity=10, program="O01234"),)


def new_order(ref: str = "1042", **changes: object) -> NewOrder:
    fields: dict[str, object] = {"ref": ref, "items": ITEMS, "due_at": T0 + DAY, "note": ""}
    fields.update(changes)
    return NewOrder(**fields)  # type: ignore[arg-type]


def change_of(
    order: OrderRow, status: OrderStatus, at: int, event_id: str | None = None
) -> NewChange:
    return NewChange(
        order_id=order.id,
        expected_seq=order.change_seq,
        event_id=event_id or uuid.uuid4().hex,
        previous=order.status,
        status=status,
        at=at,
        body=f'{{"status":"{status}","at":{at},"note":"ünïcode"}}',
    )


async def test_create_is_idempotent_by_key_then_by_ref(store: AnyStore) -> None:
    first, created = await store.create_order(new_order(), key="k1", now=T0)
    assert created
    assert (first.ref, first.status, first.status_since, first.change_seq) == (
        "1042",
        OrderStatus.RECEIVED,
        T0,
        0,
    )
    assert (first.items, first.due_at, first.idempotency_key) == (ITEMS, T0 + DAY, "k1")
    assert await store.order(first.id) == first
    assert await store.order_by_ref("1042") == first

    again, created = await store.create_order(new_order(), key="k1", now=T0 + 5)
    assert (again, created) == (first, False)
    by_ref, created = await store.create_order(new_order(), key=None, now=T0 + 5)
    assert (by_ref, created) == (first, False)
    other_key, created = await store.create_order(new_order(), key="k2", now=T0 + 5)
    assert (other_key.id, created) == (first.id, False)

    with pytest.raises(IdempotencyConflictError, match="Idempotency-Key 'k1'") as by_key:
        await store.create_order(new_order(note="changed"), key="k1", now=T0)
    assert by_key.value.existing_id == first.id
    with pytest.raises(IdempotencyConflictError, match="ref '1042'") as same_ref:
        await store.create_order(new_order(note="changed"), key=None, now=T0)
    assert same_ref.value.existing_id == first.id
    # a used key with another ref is a conflict too, not a second order
    with pytest.raises(IdempotencyConflictError, match="Idempotency-Key 'k1'"):
        await store.create_order(new_order("2000"), key="k1", now=T0)
    assert [o.id for o in await store.orders()] == [first.id]
    assert await store.order(first.id) == first  # nothing accepted was changed


async def test_concurrent_identical_creates_make_one_order(new_store: StoreFactory) -> None:
    """Two stores on one database (two writers): the unique constraints decide; the loser
    answers the winner's order, or a conflict when its body differed."""
    async with new_store() as a, new_store() as b:
        results = await asyncio.gather(
            a.create_order(new_order(), key="same", now=T0),
            b.create_order(new_order(), key="same", now=T0),
        )
        assert sorted(created for _, created in results) == [False, True]
        assert results[0][0].id == results[1][0].id
        outcomes = await asyncio.gather(
            a.create_order(new_order("77"), key=None, now=T0),
            b.create_order(new_order("77", note="other"), key=None, now=T0),
            return_exceptions=True,
        )
        made = [o for o in outcomes if isinstance(o, tuple)]
        refused = [o for o in outcomes if isinstance(o, IdempotencyConflictError)]
        assert (len(made), len(refused)) == (1, 1), outcomes
        assert refused[0].existing_id == made[0][0].id
        assert sorted(o.ref for o in await a.orders()) == ["1042", "77"]


async def test_filters_and_pages_newest_first(store: AnyStore) -> None:
    ids = []
    for n in range(5):
        row, _ = await store.create_order(
            new_order(f"SO/{n}", due_at=T0 + n * DAY), key=None, now=T0
        )
        ids.append(row.id)
    undated, _ = await store.create_order(new_order("none", due_at=None), key=None, now=T0)
    everything = [undated.id, *ids[::-1]]
    assert [o.id for o in await store.orders()] == everything

    seen: list[int] = []
    after: int | None = None
    while True:
        page = await store.orders(after_id=after, limit=2)
        seen += [o.id for o in page]
        if len(page) < 2:
            break
        after = page[-1].id
    assert seen == everything

    window = await store.orders(due_after=T0 + DAY, due_before=T0 + 3 * DAY)
    assert [o.ref for o in window] == ["SO/2", "SO/1"]  # [after, before); undated left out
    assert [o.ref for o in await store.orders(ref="SO/3")] == ["SO/3"]
    assert await store.orders(ref="nope") == []
    assert len(await store.orders(statuses=[OrderStatus.RECEIVED, OrderStatus.COMPLETED])) == 6
    assert await store.orders(statuses=[OrderStatus.BLOCKED]) == []
    assert await store.orders(statuses=[]) == []
    assert [o.id for o in await store.orders(after_id=ids[2], due_before=T0 + 5 * DAY)] == [
        ids[1],
        ids[0],
    ]


async def test_links_by_api_and_by_ref(store: AnyStore) -> None:
    a, _ = await store.create_order(new_order("A"), key=None, now=T0)
    b, _ = await store.create_order(new_order("B"), key=None, now=T0)
    assert await store.link_job(a.id, 31, via=LinkVia.REF, now=T0 + 1)
    assert not await store.link_job(a.id, 31, via=LinkVia.API, now=T0 + 2)  # already
    assert not await store.link_job(b.id, 31, via=LinkVia.REF, now=T0 + 2)  # left alone
    with pytest.raises(LinkConflictError, match="belongs to order") as conflict:
        await store.link_job(b.id, 31, via=LinkVia.API, now=T0 + 2)
    assert conflict.value.order_id == a.id
    assert await store.link_job(a.id, 7, via=LinkVia.API, now=T0 + 3)
    links = await store.order_links(a.id)
    assert [(x.job_id, x.via, x.linked_at) for x in links] == [
        (7, LinkVia.API, T0 + 3),
        (31, LinkVia.REF, T0 + 1),
    ]
    assert await store.orders_of_jobs([31, 7, 999]) == {31: a.id, 7: a.id}
    assert await store.orders_of_jobs([]) == {}

    assert await store.unlink_job(a.id, 31)
    assert not await store.unlink_job(a.id, 31)
    assert not await store.link_job(a.id, 31, via=LinkVia.REF, now=T0 + 4)  # excluded now
    assert await store.link_job(b.id, 31, via=LinkVia.REF, now=T0 + 4)  # another order may
    assert await store.unlink_job(b.id, 31)
    assert await store.link_job(a.id, 31, via=LinkVia.API, now=T0 + 5)  # by hand: allowed
    assert await store.unlink_job(a.id, 31)
    assert await store.link_job(a.id, 31, via=LinkVia.API, now=T0 + 6)  # and again
    assert await store.orders_of_jobs([31]) == {31: a.id}


async def test_a_change_writes_status_log_and_outbox_together(store: AnyStore) -> None:
    order, _ = await store.create_order(new_order(), key=None, now=T0)
    hook = await store.add_webhook(
        url="http://a.example/h", events=[ORDER_STATUS_CHANGED], secret="s1", description="a",
        now=T0,
    )  # fmt: skip
    other = await store.add_webhook(
        url="http://b.example/h", events=["order.deleted"], secret="s2", description="", now=T0
    )
    gone = await store.add_webhook(
        url="http://c.example/h", events=[ORDER_STATUS_CHANGED], secret="s3", description="",
        now=T0,
    )  # fmt: skip
    assert await store.delete_webhook(gone.id, now=T0)
    assert [h.id for h in await store.webhooks()] == [hook.id, other.id]
    assert await store.webhook(gone.id) is None
    assert await store.webhook(hook.id) == hook

    queued = change_of(order, OrderStatus.QUEUED, T0 + 10)
    change = await store.record_order_change(queued)
    assert change is not None
    assert (change.seq, change.previous, change.status, change.at, change.body) == (
        1,
        OrderStatus.RECEIVED,
        OrderStatus.QUEUED,
        T0 + 10,
        queued.body,
    )
    now = await store.order(order.id)
    assert now is not None
    assert (now.status, now.status_since, now.change_seq) == (OrderStatus.QUEUED, T0 + 10, 1)
    assert await store.order_changes(order_id=order.id) == [change]
    [delivery] = await store.deliveries()
    assert (delivery.webhook_id, delivery.change_id, delivery.event_id, delivery.order_id) == (
        hook.id,
        change.id,
        change.event_id,
        order.id,
    )
    assert (delivery.state, delivery.attempts, delivery.next_at, delivery.created_at) == (
        DeliveryState.PENDING,
        0,
        0,
        T0 + 10,
    )

    # compare and set: a change derived from the old seq is refused and writes nothing
    assert await store.record_order_change(change_of(order, OrderStatus.BLOCKED, T0 + 20)) is None
    assert len(await store.order_changes()) == 1
    assert len(await store.deliveries()) == 1

    # a change that fails half-way (its event id was used) leaves no trace at all
    with pytest.raises(StoreError):
        await store.record_order_change(
            change_of(now, OrderStatus.IN_PRODUCTION, T0 + 30, event_id=change.event_id)
        )
    assert await store.order(order.id) == now
    assert len(await store.order_changes()) == 1
    assert len(await store.deliveries()) == 1

    second = await store.record_order_change(change_of(now, OrderStatus.IN_PRODUCTION, T0 + 40))
    assert second is not None
    assert (second.seq, second.id > change.id) == (2, True)
    assert await store.order_changes(after_id=change.id) == [second]
    assert await store.order_changes(order_id=order.id, limit=1) == [change]
    assert await store.order_changes(order_id=order.id + 1000) == []


async def test_deliveries_come_due_retry_die_and_are_queued_again(store: AnyStore) -> None:
    order, _ = await store.create_order(new_order(), key=None, now=T0)
    hook = await store.add_webhook(
        url="http://a.example/h", events=[ORDER_STATUS_CHANGED], secret="s1", description="",
        now=T0,
    )  # fmt: skip
    assert await store.next_delivery_at() is None
    assert await store.due_deliveries(T0, 10) == []
    change = await store.record_order_change(change_of(order, OrderStatus.QUEUED, T0 + 10))
    assert change is not None
    [due] = await store.due_deliveries(T0 + 10, 10)
    assert (due.url, due.secret, due.body) == ("http://a.example/h", "s1", change.body)
    d = due.delivery
    assert await store.next_delivery_at() == 0

    await store.finish_attempt(
        d.id, state=DeliveryState.PENDING, next_at=T0 + 500, status=503,
        error="the receiver answered 503", now=T0 + 20,
    )  # fmt: skip
    assert await store.due_deliveries(T0 + 499, 10) == []
    assert await store.next_delivery_at() == T0 + 500
    [again] = await store.due_deliveries(T0 + 500, 10)
    assert (again.delivery.attempts, again.delivery.last_status) == (1, 503)
    assert again.delivery.finished_at is None

    await store.finish_attempt(
        d.id, state=DeliveryState.DEAD, next_at=T0 + 600, status=None,
        error="ConnectError: refused", now=T0 + 600,
    )  # fmt: skip
    dead = await store.delivery(d.id)
    assert dead is not None
    assert await store.delivery_counts() == {"pending": 0, "delivered": 0, "dead": 1}
    assert (dead.state, dead.attempts, dead.last_status, dead.last_error, dead.finished_at) == (
        DeliveryState.DEAD,
        2,
        None,
        "ConnectError: refused",
        T0 + 600,
    )
    assert await store.due_deliveries(T0 + 10_000, 10) == []
    assert await store.next_delivery_at() is None
    # an attempt finishing after the delivery left "pending" changes nothing
    await store.finish_attempt(
        d.id, state=DeliveryState.DELIVERED, next_at=T0, status=200, error=None, now=T0 + 700
    )
    assert await store.delivery(d.id) == dead

    assert not await store.redeliver(hook.id + 1, d.id, now=T0 + 800)  # not its webhook
    assert await store.redeliver(hook.id, d.id, now=T0 + 800)
    assert not await store.redeliver(hook.id, d.id, now=T0 + 800)  # no longer dead
    requeued = await store.delivery(d.id)
    assert requeued is not None
    assert (requeued.state, requeued.attempts, requeued.next_at, requeued.finished_at) == (
        DeliveryState.PENDING,
        0,
        T0 + 800,
        None,
    )
    await store.finish_attempt(
        d.id, state=DeliveryState.DELIVERED, next_at=T0 + 900, status=204, error=None,
        now=T0 + 900,
    )  # fmt: skip
    delivered = await store.delivery(d.id)
    assert delivered is not None
    assert (delivered.state, delivered.attempts, delivered.finished_at) == (
        DeliveryState.DELIVERED,
        1,
        T0 + 900,
    )
    assert await store.delivery(d.id + 1000) is None


async def test_deleting_a_subscription_kills_its_pending_and_pages_stay_stable(
    store: AnyStore,
) -> None:
    hook = await store.add_webhook(
        url="http://a.example/h", events=[ORDER_STATUS_CHANGED], secret="s1", description="",
        now=T0,
    )  # fmt: skip
    spare = await store.add_webhook(
        url="http://b.example/h", events=[ORDER_STATUS_CHANGED], secret="s2", description="",
        now=T0,
    )  # fmt: skip
    for n in range(3):
        order, _ = await store.create_order(new_order(f"R{n}"), key=None, now=T0)
        assert await store.record_order_change(change_of(order, OrderStatus.QUEUED, T0 + n))
    mine = await store.deliveries(webhook_id=hook.id)
    assert len(mine) == 3
    assert [d.id for d in mine] == sorted((d.id for d in mine), reverse=True)
    await store.finish_attempt(
        mine[-1].id, state=DeliveryState.DELIVERED, next_at=T0, status=200, error=None, now=T0
    )
    page1 = await store.deliveries(webhook_id=hook.id, limit=2)
    page2 = await store.deliveries(webhook_id=hook.id, after_id=page1[-1].id, limit=2)
    assert [d.id for d in page1 + page2] == [d.id for d in mine]

    assert await store.delete_webhook(hook.id, now=T0 + 50)
    assert not await store.delete_webhook(hook.id, now=T0 + 60)
    dead = await store.deliveries(webhook_id=hook.id, state=DeliveryState.DEAD)
    assert [(d.last_error, d.finished_at) for d in dead] == [("subscription deleted", T0 + 50)] * 2
    [kept] = await store.deliveries(webhook_id=hook.id, state=DeliveryState.DELIVERED)
    assert kept.id == mine[-1].id
    assert not await store.redeliver(hook.id, dead[0].id, now=T0 + 70)  # deleted: stays dead
    assert {d.delivery.webhook_id for d in await store.due_deliveries(T0 + 100, 10)} == {spare.id}
    assert len(await store.deliveries(state=DeliveryState.PENDING)) == 3


async def test_orders_and_outbox_survive_reopening(new_store: StoreFactory) -> None:
    async with new_store() as s:
        order, _ = await s.create_order(new_order(), key="k", now=T0)
        await s.add_webhook(
            url="http://a.example/h", events=[ORDER_STATUS_CHANGED], secret="s", description="",
            now=T0,
        )  # fmt: skip
        change = await s.record_order_change(change_of(order, OrderStatus.QUEUED, T0 + 1))
        version = await s.schema_version()
    async with new_store() as s:
        assert await s.schema_version() == version
        assert (await s.create_order(new_order(), key="k", now=T0 + 9))[1] is False
        assert await s.order_changes() == [change]
        [due] = await s.due_deliveries(T0 + 2, 10)
        assert change is not None
        assert due.body == change.body


async def test_text_the_database_cannot_hold(store: AnyStore, backend: str) -> None:
    """SQLite keeps a NUL as sent; PostgreSQL text cannot hold one and stores U+FFFD (as
    for every text in that store). A repeat of the same request is still recognized."""
    sent = new_order("N1", note="pick\x00up", items=(OrderItem(part="a\x00b", quantity=1),))
    order, created = await store.create_order(sent, key="k\x00", now=T0)
    assert created
    expected = "pick\x00up" if backend == "sqlite" else "pick\ufffdup"
    assert order.note == expected
    assert order.items[0].part == ("a\x00b" if backend == "sqlite" else "a\ufffdb")
    again, created = await store.create_order(sent, key="k\x00", now=T0)
    assert (again.id, created) == (order.id, False)
