"""Webhook subscriptions and their deliveries. Every call needs the ``admin`` scope: a
subscription sends order data to any URL, and its secret signs what the hub says. A hub
without configured tokens refuses every call (403): there, anyone who can reach the API
could point deliveries at addresses only the hub can reach and read the answers.

The delivery format, headers and signature are in docs/api.md "Webhooks";
:func:`document_webhooks` also puts the payload into the OpenAPI document's ``webhooks``.
"""

from __future__ import annotations

from typing import Annotated, Any, Final
from urllib.parse import urlsplit

import httpx
from fastapi import (
    APIRouter,
    Depends,
    FastAPI,
    HTTPException,
    Path,
    Query,
    Request,
    Response,
    status,
)

from shopfloor.hub.api.deps import MAX_ID, AdminToken, HubDep
from shopfloor.hub.api.order_models import (
    DeliveryList,
    DeliveryModel,
    ErrorModel,
    OrderChangeModel,
    WebhookCreated,
    WebhookIn,
    WebhookList,
    WebhookModel,
)
from shopfloor.hub.api.orders import AUTH, INVALID, BookDep, parse_cursor
from shopfloor.hub.orders.model import (
    ORDER_STATUS_CHANGED,
    WEBHOOK_EVENTS,
    DeliveryRow,
    DeliveryState,
    WebhookRow,
)
from shopfloor.hub.orders.signing import new_secret

MAX_LIMIT: Final = 200
NO_TOKENS: Final = (
    "webhook subscriptions need an admin token, and this hub has no API tokens: add an "
    '[[api.tokens]] block with scopes = ["admin"] to hub.toml (docs/configuration.md, '
    "\"API tokens\"), restart the hub, and send the token as 'Authorization: Bearer <token>'"
)


async def tokens_configured(request: Request) -> None:
    """Refuse webhook management on a hub without tokens (where every call would be open)."""
    if not request.app.state.config.api.tokens:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=NO_TOKENS)


router = APIRouter(prefix="/webhooks", tags=["webhooks"], dependencies=[Depends(tokens_configured)])
NOT_FOUND: Final[dict[int | str, dict[str, Any]]] = {
    404: {"model": ErrorModel, "description": "no such subscription"}
}
WebhookId = Annotated[int, Path(ge=1, le=MAX_ID, description="the subscription's id")]


def _unprocessable(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=detail)


def _no_hook(webhook_id: int) -> HTTPException:
    return HTTPException(
        status.HTTP_404_NOT_FOUND,
        detail=f"no webhook {webhook_id} on this hub; GET /api/v1/webhooks lists them",
    )


def _model(row: WebhookRow) -> WebhookModel:
    return WebhookModel(
        id=row.id,
        url=row.url,
        events=list(row.events),
        description=row.description,
        created_at=row.created_at,
    )


def _delivery(row: DeliveryRow) -> DeliveryModel:
    return DeliveryModel(
        id=row.id,
        event_id=row.event_id,
        event=row.event,
        order_id=row.order_id,
        state=row.state,
        attempts=row.attempts,
        next_at=row.next_at if row.state is DeliveryState.PENDING else None,
        last_status=row.last_status,
        last_error=row.last_error,
        created_at=row.created_at,
        finished_at=row.finished_at,
    )


def check_url(url: str) -> str:
    """``url`` if the sender can POST to it, else a 422 that says what is wrong with it.
    It is checked the way the sender reads it (:class:`httpx.URL`), so a URL accepted here
    cannot fail to parse at delivery time."""
    example = "e.g. https://shop.example.com/hooks/shopfloor"
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise _unprocessable(f"url {url!r} contains spaces or control characters; {example}")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a port that is not a number 0-65535
        parsed = httpx.URL(url)
        host, parsed_port = parsed.host, parsed.port
    except Exception as exc:  # noqa: BLE001 - httpx.InvalidURL, idna.IDNAError, ValueError
        reason = str(exc) or type(exc).__name__
        raise _unprocessable(f"url {url!r} is not a valid URL ({reason}); {example}") from None
    if parts.scheme not in ("http", "https") or parsed.scheme not in ("http", "https"):
        raise _unprocessable(
            f"url {url!r} is not an http:// or https:// URL with a host; {example}"
        )
    if not parts.hostname or not host:
        raise _unprocessable(
            f"url {url!r} is not an http:// or https:// URL with a host; {example}"
        )
    if port == 0 or parsed_port == 0:
        raise _unprocessable(f"url {url!r} has port 0; use a port from 1 to 65535")
    if parts.username or parts.password:
        raise _unprocessable(
            "url must not carry a user name or password; the signature authenticates the hub"
        )
    if parts.fragment:
        raise _unprocessable("url must not have a #fragment (it is never sent)")
    return url


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=WebhookCreated,
    summary="Subscribe a URL to order status changes",
    responses={**AUTH, **INVALID},
)
async def create_webhook(
    body: WebhookIn, hub: HubDep, book: BookDep, _: AdminToken
) -> WebhookCreated:
    """The answer carries the signing ``secret``: it is shown this once. Changes recorded
    from now on are delivered; earlier ones are not (read them from
    ``GET /api/v1/orders/{id}/changes``)."""
    unknown = sorted(set(body.events) - set(WEBHOOK_EVENTS))
    if unknown:
        raise _unprocessable(
            f"unknown event(s) {', '.join(unknown)}; known: {', '.join(WEBHOOK_EVENTS)}"
        )
    row = await book.store.add_webhook(
        url=check_url(body.url),
        events=list(dict.fromkeys(body.events)),
        secret=new_secret(),
        description=body.description,
        now=hub.clock(),
    )
    return WebhookCreated(**_model(row).model_dump(), secret=row.secret)


@router.get("", response_model=WebhookList, summary="List the subscriptions", responses={**AUTH})
async def list_webhooks(book: BookDep, _: AdminToken) -> WebhookList:
    """Every live subscription (never with its secret)."""
    return WebhookList(webhooks=[_model(r) for r in await book.store.webhooks()])


@router.get(
    "/{webhook_id}",
    response_model=WebhookModel,
    summary="One subscription",
    responses={**AUTH, **NOT_FOUND, **INVALID},
)
async def get_webhook(webhook_id: WebhookId, book: BookDep, _: AdminToken) -> WebhookModel:
    row = await book.store.webhook(webhook_id)
    if row is None:
        raise _no_hook(webhook_id)
    return _model(row)


@router.delete(
    "/{webhook_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="End a subscription",
    responses={**AUTH, **NOT_FOUND, **INVALID},
)
async def delete_webhook(
    webhook_id: WebhookId, hub: HubDep, book: BookDep, _: AdminToken
) -> Response:
    """Nothing more is sent to it; its pending deliveries are marked dead."""
    if not await book.store.delete_webhook(webhook_id, now=hub.clock()):
        raise _no_hook(webhook_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{webhook_id}/deliveries",
    response_model=DeliveryList,
    summary="The subscription's deliveries: pending, delivered, dead",
    responses={**AUTH, **NOT_FOUND, **INVALID},
)
async def list_deliveries(
    webhook_id: WebhookId,
    book: BookDep,
    _: AdminToken,
    state: Annotated[DeliveryState | None, Query(description="only this state")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="deliveries per page")] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> DeliveryList:
    """Newest first. A ``dead`` delivery gave up after the last retry; re-queue it with
    ``POST .../deliveries/{id}/retry`` once the receiver is fixed."""
    if await book.store.webhook(webhook_id) is None:
        raise _no_hook(webhook_id)
    rows = await book.store.deliveries(
        webhook_id=webhook_id, state=state, after_id=parse_cursor(cursor), limit=limit
    )
    return DeliveryList(
        deliveries=[_delivery(r) for r in rows],
        next_cursor=str(rows[-1].id) if len(rows) == limit else None,
    )


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DeliveryModel,
    summary="Queue a dead delivery again",
    responses={
        409: {"model": ErrorModel, "description": "the delivery is not dead"},
        **AUTH,
        **NOT_FOUND,
        **INVALID,
    },
)
async def retry_delivery(
    webhook_id: WebhookId,
    delivery_id: Annotated[int, Path(ge=1, le=MAX_ID)],
    book: BookDep,
    _: AdminToken,
) -> DeliveryModel:
    """The same delivery (same event id and body) gets a fresh set of attempts."""
    if await book.store.webhook(webhook_id) is None:
        raise _no_hook(webhook_id)
    if not await book.store.redeliver(webhook_id, delivery_id, now=0):
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            detail=f"delivery {delivery_id} of webhook {webhook_id} does not exist or is not "
            "dead; only dead deliveries are queued again",
        )
    book.outbox_changed.set()
    row = await book.store.delivery(delivery_id)
    if row is None:  # pragma: no cover - it was just updated
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no delivery {delivery_id}")
    return _delivery(row)


def document_webhooks(app: FastAPI) -> None:
    """Describe the delivery in the OpenAPI document's ``webhooks`` (OpenAPI 3.1)."""

    @app.webhooks.post(
        ORDER_STATUS_CHANGED,
        summary="An order's status changed",
        responses={200: {"description": "any 2xx marks the delivery done; anything else retries"}},
    )
    def order_status_changed(body: OrderChangeModel) -> None:
        """POSTed to every subscribed URL, signed: ``Shopfloor-Timestamp`` (unix seconds)
        and ``Shopfloor-Signature: v1=<hex HMAC-SHA256(secret, timestamp + "." + body)>``;
        ``Shopfloor-Event-Id`` / ``Idempotency-Key`` repeat on retries (they are not
        signed: de-duplicate on the body's ``id``)."""
