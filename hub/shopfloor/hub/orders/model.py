"""The plain records of orders and webhooks, and the errors the order book raises.

Nothing here does I/O. The store (:mod:`shopfloor.hub.store.sqlite_orders`) reads and
writes these; the API turns them into JSON.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from shopfloor.hub.errors import HubError


class OrderStatus(enum.StrEnum):
    """Derived, never set by hand; docs/api.md "Order status" defines each one."""

    RECEIVED = "received"
    QUEUED = "queued"
    IN_PRODUCTION = "in_production"
    BLOCKED = "blocked"
    COMPLETED = "completed"


class LinkVia(enum.StrEnum):
    """How a job came to belong to an order."""

    API = "api"  # POST /api/v1/orders/{id}/jobs
    REF = "ref"  # the job's order_ref (from its program name or header) is the order's ref


class DeliveryState(enum.StrEnum):
    PENDING = "pending"  # waiting for its first attempt or a retry
    DELIVERED = "delivered"  # the receiver answered 2xx
    DEAD = "dead"  # gave up after the last attempt (or the subscription was deleted)


#: The only event type webhooks carry today.
ORDER_STATUS_CHANGED: Final = "order.status_changed"
WEBHOOK_EVENTS: Final = (ORDER_STATUS_CHANGED,)


@dataclass(frozen=True, slots=True)
class OrderItem:
    """One line of an order: ``quantity`` pieces of ``part``.

    ``program`` names the program that makes it (jobs running that program count for this
    item); ``per_job`` is how many pieces one completed job makes when the job counts
    something other than parts (a laser sheet with 12 parts nested on it: ``per_job = 12``).
    """

    part: str
    quantity: int
    program: str | None = None
    per_job: int = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "part": self.part,
            "quantity": self.quantity,
            "program": self.program,
            "per_job": self.per_job,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> OrderItem:
        return cls(
            part=str(data["part"]),
            quantity=int(data["quantity"]),
            program=data.get("program"),
            per_job=int(data.get("per_job", 1)),
        )


@dataclass(frozen=True, slots=True)
class NewOrder:
    """An order as the order system sends it."""

    ref: str
    items: tuple[OrderItem, ...]
    due_at: int | None = None
    note: str = ""

    def fingerprint(self) -> str:
        """A digest of the whole request: a repeat with the same key must match it."""
        canonical = json.dumps(
            {
                "ref": self.ref,
                "items": [i.to_json() for i in self.items],
                "due_at": self.due_at,
                "note": self.note,
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class OrderRow:
    id: int
    ref: str
    items: tuple[OrderItem, ...]
    due_at: int | None
    note: str
    created_at: int
    status: OrderStatus
    status_since: int
    #: How many status changes were recorded: the seq of the newest change.
    change_seq: int
    idempotency_key: str | None
    fingerprint: str


@dataclass(frozen=True, slots=True)
class OrderLink:
    order_id: int
    job_id: int
    via: LinkVia
    linked_at: int


@dataclass(frozen=True, slots=True)
class OrderChange:
    """One status change of one order, as recorded (and as pushed)."""

    id: int  # grows with every change; the outbox refers to it
    event_id: str  # the idempotency key receivers see; the same on every retry
    order_id: int
    seq: int  # 1, 2, 3 ... per order
    previous: OrderStatus | None
    status: OrderStatus
    at: int  # epoch ms
    body: str  # the JSON every receiver gets, byte for byte the same on every retry


@dataclass(frozen=True, slots=True)
class NewChange:
    """A change the order book wants recorded (see ``Store.record_order_change``)."""

    order_id: int
    expected_seq: int  # the order's change_seq it was derived from (compare and set)
    event_id: str
    previous: OrderStatus
    status: OrderStatus
    at: int
    body: str


@dataclass(frozen=True, slots=True)
class WebhookRow:
    id: int
    url: str
    events: tuple[str, ...]
    secret: str = field(repr=False)
    description: str
    created_at: int


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    id: int
    webhook_id: int
    change_id: int
    event_id: str
    event: str
    order_id: int
    state: DeliveryState
    attempts: int
    next_at: int
    last_error: str | None
    last_status: int | None
    created_at: int
    finished_at: int | None


@dataclass(frozen=True, slots=True)
class DueDelivery:
    """A pending delivery with everything needed to send it."""

    delivery: DeliveryRow
    url: str
    secret: str = field(repr=False)
    body: str = ""


# -- errors -------------------------------------------------------------------------------------


class OrderError(HubError):
    """Base of the order book's errors; each carries a reason for the API to show."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class IdempotencyConflictError(OrderError):
    """A create repeated a key (or an external reference) with a different body."""

    def __init__(self, reason: str, *, existing_id: int) -> None:
        super().__init__(reason)
        self.existing_id = existing_id


class LinkConflictError(OrderError):
    """The job already belongs to another order."""

    def __init__(self, reason: str, *, order_id: int) -> None:
        super().__init__(reason)
        self.order_id = order_id
