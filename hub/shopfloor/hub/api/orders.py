"""Orders: create (idempotent), read with derived status, list, link jobs.

Every write needs a token with the ``write`` scope (or ``admin``); reads need ``read``.
The status, progress and ETA are derived (docs/api.md "Order status"); the order book
records and pushes a status change before any client can see it here.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Response, status

from shopfloor.hub.api.deps import MAX_ID, HubDep, ReadToken, WriteToken, cursor_id
from shopfloor.hub.api.machines import parse_time
from shopfloor.hub.api.order_models import (
    ErrorModel,
    JobLinkIn,
    OrderChangeList,
    OrderChangeModel,
    OrderIn,
    OrderList,
    OrderModel,
)
from shopfloor.hub.orders.book import OrderBook
from shopfloor.hub.orders.model import (
    IdempotencyConflictError,
    LinkConflictError,
    NewOrder,
    OrderItem,
    OrderStatus,
)

router = APIRouter(prefix="/orders", tags=["orders"])

MAX_LIMIT: Final = 200
#: A due date outside 2000..2100 is a unit mistake (seconds for milliseconds), not a plan.
_EARLIEST: Final = 946_684_800_000
_LATEST: Final = 4_102_444_800_000

AUTH: Final[dict[int | str, dict[str, Any]]] = {
    401: {"model": ErrorModel, "description": "no bearer token, or one this hub does not know"},
    403: {"model": ErrorModel, "description": "the token lacks the scope this call needs"},
}
NOT_FOUND: Final[dict[int | str, dict[str, Any]]] = {
    404: {"model": ErrorModel, "description": "no such order (or job)"}
}
INVALID: Final[dict[int | str, dict[str, Any]]] = {
    422: {"model": ErrorModel, "description": "the request is invalid; the detail says why"}
}


def get_book(hub: HubDep) -> OrderBook:
    if hub.orders is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, detail="this hub runs without the order book"
        )
    return hub.orders


BookDep = Annotated[OrderBook, Depends(get_book)]
OrderId = Annotated[int, Path(ge=1, le=MAX_ID, description="the hub's order id")]


def _unprocessable(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=detail)


def _no_order(order_id: int | str) -> HTTPException:
    return HTTPException(
        status.HTTP_404_NOT_FOUND,
        detail=f"no order {order_id} on this hub; GET /api/v1/orders lists them",
    )


def due_ms(value: int | datetime | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        ms = int(moment.timestamp() * 1000)
    else:
        ms = value
    if not _EARLIEST <= ms <= _LATEST:
        raise _unprocessable(
            f"due_at = {value} is not between the years 2000 and 2100; send epoch "
            "milliseconds (not seconds) or ISO-8601 such as 2026-11-24T16:00:00Z"
        )
    return ms


def parse_cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    value = cursor_id(cursor)
    if value is None or value < 1:
        raise _unprocessable(
            f"cursor {cursor!r} is not one this API gave out; pass next_cursor from the "
            "previous page, or leave it out for the first page"
        )
    return value


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=OrderModel,
    summary="Create an order (idempotent)",
    responses={
        200: {"model": OrderModel, "description": "an identical earlier request created it"},
        409: {
            "model": ErrorModel,
            "description": "the key (or the ref) was used before with a different body",
        },
        **AUTH,
        **INVALID,
    },
)
async def create_order(
    body: OrderIn,
    response: Response,
    book: BookDep,
    _: WriteToken,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=200,
            description="repeat a request safely: the same key and body answer the same "
            "order (200); without it, the external reference is the key",
        ),
    ] = None,
) -> OrderModel:
    """201 with the new order; 200 with the existing one when the same request (same
    ``Idempotency-Key``, or same ``ref`` without a key) came before; 409 when the key or the
    ``ref`` was used with a different body. Jobs that already carry the ref are linked."""
    new = NewOrder(
        ref=body.ref,
        items=tuple(
            OrderItem(part=i.part, quantity=i.quantity, program=i.program, per_job=i.per_job)
            for i in body.items
        ),
        due_at=due_ms(body.due_at),
        note=body.note,
    )
    try:
        view, created = await book.create(new, key=idempotency_key)
    except IdempotencyConflictError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=exc.reason) from None
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    response.headers["Location"] = f"/api/v1/orders/{view['id']}"
    return OrderModel.model_validate(view)


@router.get(
    "",
    response_model=OrderList,
    summary="List orders",
    responses={**AUTH, **INVALID},
)
async def list_orders(  # noqa: PLR0917 - FastAPI passes every query parameter by name
    hub: HubDep,
    book: BookDep,
    _: ReadToken,
    status_: Annotated[
        list[OrderStatus] | None,
        Query(alias="status", description="only these statuses (repeat for several)"),
    ] = None,
    ref: Annotated[str | None, Query(max_length=100, description="the external reference")] = None,
    due_before: Annotated[
        str | None, Query(description="due before this (epoch ms or ISO-8601)")
    ] = None,
    due_after: Annotated[
        str | None, Query(description="due at or after this (epoch ms or ISO-8601)")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="orders per page")] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> OrderList:
    """Newest first, filtered, a page at a time. A due-date filter leaves out orders
    without a due date."""
    before = parse_time(due_before, "due_before") if due_before is not None else None
    after = parse_time(due_after, "due_after") if due_after is not None else None
    if before is not None and after is not None and after > before:
        raise _unprocessable(
            f"'due_after' ({after}) is after 'due_before' ({before}); no order can match"
        )
    rows = await book.store.orders(
        statuses=status_,
        ref=ref,
        due_before=before,
        due_after=after,
        after_id=parse_cursor(cursor),
        limit=limit,
    )
    views = [v for r in rows if (v := await book.current(r.id)) is not None]
    return OrderList(
        orders=[OrderModel.model_validate(v) for v in views],
        next_cursor=str(rows[-1].id) if len(rows) == limit else None,
    )


@router.get(
    "/by-ref/{ref:path}",
    response_model=OrderModel,
    summary="One order, by its external reference",
    responses={**AUTH, **NOT_FOUND},
)
async def get_order_by_ref(ref: str, hub: HubDep, book: BookDep, _: ReadToken) -> OrderModel:
    """The order the order system knows as ``ref`` (URL-encode it; slashes are allowed)."""
    row = await book.store.order_by_ref(ref)
    view = await book.current(row.id) if row is not None else None
    if view is None:
        raise _no_order(f"with ref {ref!r}")
    return OrderModel.model_validate(view)


@router.get(
    "/{order_id}",
    response_model=OrderModel,
    summary="One order: derived status, progress, ETA and its jobs",
    responses={**AUTH, **NOT_FOUND, **INVALID},
)
async def get_order(order_id: OrderId, book: BookDep, _: ReadToken) -> OrderModel:
    view = await book.current(order_id)
    if view is None:
        raise _no_order(order_id)
    return OrderModel.model_validate(view)


@router.get(
    "/{order_id}/changes",
    response_model=OrderChangeList,
    summary="The order's status changes, as pushed",
    responses={**AUTH, **NOT_FOUND, **INVALID},
)
async def order_changes(
    order_id: OrderId,
    book: BookDep,
    _: ReadToken,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="changes per page")] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> OrderChangeList:
    """Oldest first: the persistent log every webhook delivery and SSE ``order`` event
    comes from, each with the same body."""
    if await book.store.order(order_id) is None:
        raise _no_order(order_id)
    rows = await book.store.order_changes(
        order_id=order_id, after_id=parse_cursor(cursor) or 0, limit=limit
    )
    return OrderChangeList(
        changes=[OrderChangeModel.model_validate(json.loads(c.body)) for c in rows],
        next_cursor=str(rows[-1].id) if len(rows) == limit else None,
    )


@router.post(
    "/{order_id}/jobs",
    status_code=status.HTTP_201_CREATED,
    response_model=OrderModel,
    summary="Link a job to the order",
    responses={
        200: {"model": OrderModel, "description": "the job was linked already"},
        409: {"model": ErrorModel, "description": "the job belongs to another order"},
        **AUTH,
        **NOT_FOUND,
        **INVALID,
    },
)
async def link_job(
    order_id: OrderId,
    body: JobLinkIn,
    response: Response,
    hub: HubDep,
    book: BookDep,
    _: WriteToken,
) -> OrderModel:
    """Count a job for this order (a job whose program does not carry the order's
    reference). A job belongs to at most one order."""
    if await book.store.order(order_id) is None:
        raise _no_order(order_id)
    if await book.store.job(body.job_id) is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail=f"no job {body.job_id} on this hub; GET /api/v1/jobs lists them",
        )
    try:
        linked = await book.link(order_id, body.job_id)
    except LinkConflictError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=exc.reason) from None
    if linked is None:
        raise _no_order(order_id)
    response.status_code = status.HTTP_201_CREATED if linked.created else status.HTTP_200_OK
    return OrderModel.model_validate(linked.order)


@router.delete(
    "/{order_id}/jobs/{job_id}",
    response_model=OrderModel,
    summary="Unlink a job from the order",
    responses={**AUTH, **NOT_FOUND, **INVALID},
)
async def unlink_job(
    order_id: OrderId,
    job_id: Annotated[int, Path(ge=1, le=MAX_ID)],
    hub: HubDep,
    book: BookDep,
    _: WriteToken,
) -> OrderModel:
    """The job no longer counts for the order, and is not linked back by its program's
    reference. Answers the order as it is now."""
    if await book.store.order(order_id) is None:
        raise _no_order(order_id)
    view = await book.unlink(order_id, job_id)
    if view is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, detail=f"job {job_id} is not linked to order {order_id}"
        )
    return OrderModel.model_validate(view)
