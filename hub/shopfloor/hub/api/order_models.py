"""Request and response models of the orders and webhooks endpoints (typed OpenAPI, with
examples). The JSON they describe is built once, in :mod:`shopfloor.hub.orders.view`."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shopfloor.hub.orders.model import WEBHOOK_EVENTS, DeliveryState, OrderStatus

MAX_ITEMS: Final = 100
_T0: Final = 1_764_000_000_000  # 2025-11-24T16:00:00Z, for the examples

ORDER_EXAMPLE: Final[dict[str, Any]] = {
    "id": 7,
    "ref": "1042",
    "status": "in_production",
    "status_since": _T0 + 600_000,
    "reason": None,
    "items": [
        {"part": "bracket", "quantity": 20, "program": "O01234", "per_job": 1, "made": 5},
    ],
    "ordered": 20,
    "made": 5,
    "progress": 0.25,
    "due_at": _T0 + 86_400_000,
    "late": False,
    "note": "customer picks up",
    "created_at": _T0,
    "eta": {
        "at": _T0 + 7_200_000,
        "low": _T0 + 6_600_000,
        "high": _T0 + 8_400_000,
        "origin": "jobs",
        "note": None,
    },
    "jobs": [
        {
            "id": 31,
            "machine": "mill-1",
            "program": "O01234 (ORDER 1042)",
            "unit": "parts",
            "started_at": _T0 + 600_000,
            "ended_at": None,
            "outcome": None,
            "done": 5,
            "total": 20,
            "progress": 0.25,
            "eta_at": _T0 + 7_200_000,
            "eta_low_at": _T0 + 6_600_000,
            "eta_high_at": _T0 + 8_400_000,
            "eta_origin": "history",
            "item": 0,
            "pieces": 5,
            "linked_via": "ref",
        }
    ],
    "change_seq": 2,
}

CHANGE_EXAMPLE: Final[dict[str, Any]] = {
    "id": "4f1c2d9a8b7e4e0f9a3b2c1d0e9f8a7b",
    "type": "order.status_changed",
    "version": 1,
    "created_at": _T0 + 600_000,
    "order_id": 7,
    "ref": "1042",
    "seq": 2,
    "previous_status": "received",
    "status": "in_production",
    "order": ORDER_EXAMPLE,
}


class ErrorModel(BaseModel):
    """Every error answer: what was wrong and what to do."""

    detail: Any = Field(description="the reason, in words (422: a list of field errors)")

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"detail": "no order 99 on this hub"}]}
    )


# -- orders -------------------------------------------------------------------------------------


def storable_text(value: str) -> str:
    """Text every store keeps as sent: no NUL (PostgreSQL refuses it, SQLite keeps it).
    Lone surrogates never get here: pydantic refuses them as not a valid string."""
    if "\x00" in value:
        raise ValueError("must not contain a NUL character (\\u0000)")
    return value


class OrderItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    part: str = Field(min_length=1, max_length=200, description="what is made")
    quantity: int = Field(ge=1, le=1_000_000, description="how many pieces")
    program: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="the program that makes it; jobs of this program count for this item",
    )
    per_job: int = Field(
        1,
        ge=1,
        le=100_000,
        description="pieces one completed job makes, for jobs that do not count parts "
        "(a laser sheet with 12 parts nested: 12)",
    )

    @field_validator("part", "program")
    @classmethod
    def _storable(cls, value: str | None) -> str | None:
        return None if value is None else storable_text(value)


class OrderIn(BaseModel):
    """A new order from the order system."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "ref": "1042",
                    "items": [{"part": "bracket", "quantity": 20, "program": "O01234"}],
                    "due_at": "2025-11-25T16:00:00Z",
                    "note": "customer picks up",
                }
            ]
        },
    )

    ref: str = Field(
        min_length=1,
        max_length=100,
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="the order system's own reference; unique on this hub; a job whose "
        "program carries it (e.g. '(ORDER 1042)') is linked automatically",
    )
    items: list[OrderItemIn] = Field(min_length=1, max_length=MAX_ITEMS)
    due_at: int | datetime | None = Field(
        None, description="epoch ms, or ISO-8601 (UTC when no offset is given)"
    )
    note: str = Field("", max_length=2000)

    @field_validator("ref")
    @classmethod
    def _trimmed(cls, value: str) -> str:
        if value != value.strip():
            raise ValueError("must not start or end with white space")
        return storable_text(value)

    @field_validator("note")
    @classmethod
    def _storable(cls, value: str) -> str:
        return storable_text(value)


class OrderItemModel(BaseModel):
    part: str
    quantity: int
    program: str | None
    per_job: int
    made: int = Field(description="pieces made so far (never above quantity)")


class EtaModel(BaseModel):
    at: int | None = Field(description="epoch ms when the order should be complete")
    low: int | None = Field(description="the earliest it is likely to be")
    high: int | None = Field(description="the latest it is likely to be")
    origin: str | None = Field(
        description="'jobs' (the running jobs' ETAs) or 'extrapolated' (plus the missing "
        "pieces x the time per piece so far)"
    )
    note: str | None = Field(description="why there is no ETA, when there is none")


class OrderJobModel(BaseModel):
    id: int = Field(description="the hub's job id (GET /api/v1/jobs/{id})")
    machine: str
    program: str | None
    unit: str
    started_at: int
    ended_at: int | None
    outcome: str | None = Field(description="completed, aborted or failed; null while running")
    done: float | None
    total: float | None
    progress: float | None
    eta_at: int | None
    eta_low_at: int | None
    eta_high_at: int | None
    eta_origin: str | None
    item: int | None = Field(description="index of the item this job counts for, if any")
    pieces: int = Field(description="pieces this job made for its item")
    linked_via: str = Field(description="'api' (linked by a call) or 'ref' (by its program)")


class OrderModel(BaseModel):
    """An order with its derived status, progress, ETA and jobs."""

    model_config = ConfigDict(json_schema_extra={"examples": [ORDER_EXAMPLE]})

    id: int
    ref: str
    status: OrderStatus
    status_since: int = Field(description="epoch ms of the last status change")
    reason: str | None = Field(description="why it is blocked or queued")
    items: list[OrderItemModel]
    ordered: int
    made: int
    progress: float = Field(description="made / ordered in [0, 1], counting running jobs' share")
    due_at: int | None
    late: bool | None = Field(description="the ETA is after the due date (null: unknown)")
    note: str
    created_at: int
    eta: EtaModel
    jobs: list[OrderJobModel]
    change_seq: int = Field(description="how many status changes were recorded")


class OrderList(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"orders": [ORDER_EXAMPLE], "next_cursor": "7"}]}
    )

    orders: list[OrderModel] = Field(description="newest first")
    next_cursor: str | None = Field(
        description="pass as ?cursor= for the next page; null on the last page"
    )


class JobLinkIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"job_id": 31}]})

    job_id: int = Field(ge=1, le=2**63 - 1, description="the hub's job id")


class OrderChangeModel(BaseModel):
    """One status change: the body of a webhook delivery and of an SSE ``order`` event."""

    model_config = ConfigDict(json_schema_extra={"examples": [CHANGE_EXAMPLE]})

    id: str = Field(description="the event id: the idempotency key, the same on every retry")
    type: str = Field(description="order.status_changed")
    version: int
    created_at: int
    order_id: int
    ref: str
    seq: int = Field(description="1, 2, 3 ... per order: ignore a seq you have already seen")
    previous_status: OrderStatus
    status: OrderStatus
    order: OrderModel = Field(description="the order as it was at this change")


class OrderChangeList(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"changes": [CHANGE_EXAMPLE], "next_cursor": None}]}
    )

    changes: list[OrderChangeModel] = Field(description="oldest first")
    next_cursor: str | None


# -- webhooks -----------------------------------------------------------------------------------


class WebhookIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "url": "https://shop.example.com/hooks/shopfloor",
                    "events": ["order.status_changed"],
                    "description": "web shop",
                }
            ]
        },
    )

    url: str = Field(min_length=8, max_length=2000, description="http:// or https:// URL")
    events: list[str] = Field(
        default_factory=lambda: list(WEBHOOK_EVENTS),
        min_length=1,
        description=f"what to send; known: {', '.join(WEBHOOK_EVENTS)}",
    )
    description: str = Field("", max_length=200)


class WebhookModel(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 3,
                    "url": "https://shop.example.com/hooks/shopfloor",
                    "events": ["order.status_changed"],
                    "description": "web shop",
                    "created_at": _T0,
                }
            ]
        }
    )

    id: int
    url: str
    events: list[str]
    description: str
    created_at: int


class WebhookCreated(WebhookModel):
    """The new subscription, with its signing secret: shown this once, never again."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 3,
                    "url": "https://shop.example.com/hooks/shopfloor",
                    "events": ["order.status_changed"],
                    "description": "web shop",
                    "created_at": _T0,
                    "secret": "whsec_3q2-7wE0c1bQ...",
                }
            ]
        }
    )

    secret: str = Field(description="verify each delivery's signature with it; store it safely")


class WebhookList(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "webhooks": [
                        {
                            "id": 3,
                            "url": "https://shop.example.com/hooks/shopfloor",
                            "events": ["order.status_changed"],
                            "description": "web shop",
                            "created_at": _T0,
                        }
                    ]
                }
            ]
        }
    )

    webhooks: list[WebhookModel]


_DELIVERY_EXAMPLE: Final[dict[str, Any]] = {
    "id": 12,
    "event_id": "4f1c2d9a8b7e4e0f9a3b2c1d0e9f8a7b",
    "event": "order.status_changed",
    "order_id": 7,
    "state": "dead",
    "attempts": 12,
    "next_at": None,
    "last_status": 500,
    "last_error": "the receiver answered 500",
    "created_at": _T0,
    "finished_at": _T0 + 86_400_000,
}


class DeliveryModel(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_DELIVERY_EXAMPLE]})

    id: int = Field(description="sent as the Shopfloor-Delivery header")
    event_id: str = Field(description="sent as Shopfloor-Event-Id and Idempotency-Key")
    event: str
    order_id: int
    state: DeliveryState
    attempts: int
    next_at: int | None = Field(description="epoch ms of the next attempt, while pending")
    last_status: int | None = Field(description="the receiver's last HTTP status")
    last_error: str | None
    created_at: int
    finished_at: int | None


class DeliveryList(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"deliveries": [_DELIVERY_EXAMPLE], "next_cursor": None}]}
    )

    deliveries: list[DeliveryModel] = Field(description="newest first")
    next_cursor: str | None
