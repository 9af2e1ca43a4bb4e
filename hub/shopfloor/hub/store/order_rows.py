"""Order, change, webhook and delivery rows as both stores read them back (the same columns
in the same order, JSON as text), decoded once."""

from __future__ import annotations

import json

from shopfloor.hub.orders.model import (
    DeliveryRow,
    DeliveryState,
    OrderChange,
    OrderItem,
    OrderRow,
    OrderStatus,
    WebhookRow,
)
from shopfloor.hub.store.row_decoding import Columns


def order_row(row: Columns) -> OrderRow:
    return OrderRow(
        id=int(row[0]),
        ref=str(row[1]),
        items=tuple(OrderItem.from_json(i) for i in json.loads(row[2])),
        due_at=None if row[3] is None else int(row[3]),
        note=str(row[4]),
        created_at=int(row[5]),
        status=OrderStatus(row[6]),
        status_since=int(row[7]),
        change_seq=int(row[8]),
        idempotency_key=row[9],
        fingerprint=str(row[10]),
    )


def change_row(row: Columns) -> OrderChange:
    return OrderChange(
        id=int(row[0]),
        event_id=str(row[1]),
        order_id=int(row[2]),
        seq=int(row[3]),
        previous=OrderStatus(row[4]) if row[4] is not None else None,
        status=OrderStatus(row[5]),
        at=int(row[6]),
        body=str(row[7]),
    )


def webhook_row(row: Columns) -> WebhookRow:
    return WebhookRow(
        id=int(row[0]),
        url=str(row[1]),
        events=tuple(json.loads(row[2])),
        secret=str(row[3]),
        description=str(row[4]),
        created_at=int(row[5]),
    )


def delivery_row(row: Columns) -> DeliveryRow:
    return DeliveryRow(
        id=int(row[0]),
        webhook_id=int(row[1]),
        change_id=int(row[2]),
        event_id=str(row[3]),
        event=str(row[4]),
        order_id=int(row[5]),
        state=DeliveryState(row[6]),
        attempts=int(row[7]),
        next_at=int(row[8]),
        last_error=row[9],
        last_status=None if row[10] is None else int(row[10]),
        created_at=int(row[11]),
        finished_at=None if row[12] is None else int(row[12]),
    )
