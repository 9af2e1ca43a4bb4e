"""The webhook sender: it empties the durable outbox.

Every pending delivery whose time has come is POSTed to its subscription's URL, signed
(:mod:`.signing`). A 2xx answer marks it delivered; anything else (another status, a
refused or dropped connection, a timeout) schedules a retry with exponential backoff and
jitter (:mod:`.backoff`) until the last attempt, which marks it dead (visible in
``GET /api/v1/webhooks/{id}/deliveries``). State lives only in the store, so a hub that
stops mid-delivery sends the same delivery (same event id) again after it restarts.

``timeout_s`` bounds a whole attempt (connect, send, the answer's status and the first
:data:`MAX_BODY` bytes of its body), and any error of one attempt is recorded on that
delivery: one slow, broken or malicious receiver cannot hold up or stop the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from typing import Final
from urllib.parse import urlsplit

import httpx

from shopfloor.hub.errors import StoreError
from shopfloor.hub.orders.model import DeliveryState, DueDelivery
from shopfloor.hub.orders.settings import WebhooksSection
from shopfloor.hub.orders.signing import (
    DELIVERY_HEADER,
    EVENT_ID_HEADER,
    EVENT_TYPE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    signature_header,
)
from shopfloor.hub.store.base import OrderStore

log = logging.getLogger(__name__)

USER_AGENT: Final = "shopfloor-hub-webhooks/1"
#: Longest sleep with nothing due: a new change wakes the sender at once anyway.
IDLE_S: Final = 30.0
#: An error text is kept this short in the store.
MAX_ERROR: Final = 300
#: At most this much of an answer's body is read (a piece of it goes into the error text).
MAX_BODY: Final = 4096


def _host(url: str) -> str:
    try:
        return urlsplit(url).netloc or url[:40]
    except ValueError:
        return url[:40]


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:MAX_ERROR] or type(exc).__name__


def _snippet(body: bytes) -> str:
    text = body.decode("utf-8", "replace")
    return " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())


class WebhookSender:
    """Sends due deliveries, at most ``settings.concurrency`` at once."""

    def __init__(
        self,
        store: OrderStore,
        settings: WebhooksSection,
        *,
        wake: asyncio.Event,
        clock: Callable[[], int],
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.wake = wake
        self.clock = clock
        self.rng = rng or random.Random()
        self._failing: set[int] = set()  # webhook ids whose last attempt failed (log once)

    async def run(self, stop: asyncio.Event) -> None:
        limits = httpx.Limits(max_connections=self.settings.concurrency)
        # No proxies or certificates from the environment, no redirects: a delivery goes to
        # the subscribed URL and nowhere else.
        async with httpx.AsyncClient(
            timeout=self.settings.timeout_s,
            follow_redirects=False,
            trust_env=False,
            limits=limits,
        ) as client:
            stopped = asyncio.create_task(stop.wait(), name="hub.webhooks.stop")
            try:
                while not stop.is_set():
                    batch = asyncio.create_task(self.send_due(client), name="hub.webhooks.batch")
                    await asyncio.wait({batch, stopped}, return_when=asyncio.FIRST_COMPLETED)
                    if not batch.done():
                        # Shutting down: what was in flight stays pending and is sent again
                        # (same event id) after the restart.
                        batch.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await batch
                        return
                    if batch.result():
                        continue
                    await self._sleep(stopped)
            finally:
                stopped.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await stopped

    async def _sleep(self, stopped: asyncio.Task[object]) -> None:
        try:
            nxt = await self.store.next_delivery_at()
        except StoreError:
            log.exception("cannot read the webhook outbox; trying again in %.0f s", IDLE_S)
            nxt = None
        delay = IDLE_S if nxt is None else min(IDLE_S, max(0.0, (nxt - self.clock()) / 1000))
        if delay <= 0:
            return
        woken = asyncio.create_task(self.wake.wait(), name="hub.webhooks.wake")
        try:
            await asyncio.wait({woken, stopped}, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await woken
        self.wake.clear()

    async def send_due(self, client: httpx.AsyncClient) -> int:
        """Attempt every delivery that is due now; return how many were attempted."""
        self.wake.clear()
        try:
            due = await self.store.due_deliveries(self.clock(), self.settings.concurrency * 4)
        except StoreError:
            log.exception("cannot read the webhook outbox")
            return 0
        if not due:
            return 0
        gate = asyncio.Semaphore(self.settings.concurrency)
        async with asyncio.TaskGroup() as tg:
            for item in due:
                tg.create_task(self._attempt(client, item, gate), name="hub.webhooks.attempt")
        return len(due)

    async def _attempt(
        self, client: httpx.AsyncClient, item: DueDelivery, gate: asyncio.Semaphore
    ) -> None:
        """One attempt; whatever goes wrong is recorded on this delivery, never raised."""
        answered: list[int] = []  # the status, once it is in
        error: str | None
        async with gate:
            try:
                async with asyncio.timeout(self.settings.timeout_s):
                    error = await self._post(client, item, answered)
            except TimeoutError:
                error = f"no complete answer within {self.settings.timeout_s:g} s"
            except Exception as exc:  # a bad URL or answer fails this delivery only
                error = _error_text(exc)
                if not isinstance(exc, httpx.HTTPError):
                    log.debug("webhook delivery %d failed", item.delivery.id, exc_info=True)
        await self._finish(item, status=answered[0] if answered else None, error=error)

    async def _post(
        self, client: httpx.AsyncClient, item: DueDelivery, answered: list[int]
    ) -> str | None:
        """POST the delivery (its status goes into ``answered``); None if it was accepted,
        else why not. Reads at most :data:`MAX_BODY` bytes of the answer."""
        d = item.delivery
        body = item.body.encode()
        timestamp = self.clock() // 1000
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "Accept-Encoding": "identity",  # the little of the answer read is read as sent
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: signature_header(item.secret, timestamp, body),
            EVENT_ID_HEADER: d.event_id,
            EVENT_TYPE_HEADER: d.event,
            DELIVERY_HEADER: str(d.id),
            "Idempotency-Key": d.event_id,
        }
        async with client.stream("POST", item.url, content=body, headers=headers) as response:
            status = response.status_code
            answered.append(status)
            answer = b""
            async for chunk in response.aiter_raw():
                answer += chunk
                if len(answer) >= MAX_BODY:
                    break
        if 200 <= status < 300:
            return None
        error = f"the receiver answered {status}"
        text = _snippet(answer[:MAX_BODY])
        if text:
            error += f": {text}"
        return error[:MAX_ERROR]

    async def _finish(self, item: DueDelivery, *, status: int | None, error: str | None) -> None:
        d = item.delivery
        attempts = d.attempts + 1
        now = self.clock()
        policy = self.settings.retry
        if error is None:
            state, next_at = DeliveryState.DELIVERED, now
            if d.webhook_id in self._failing:
                self._failing.discard(d.webhook_id)
                log.info("webhook %d (%s) accepts deliveries again", d.webhook_id, _host(item.url))
        elif policy.gives_up(attempts):
            state, next_at = DeliveryState.DEAD, now
            log.warning(
                "webhook %d (%s): delivery %d of event %s is dead after %d attempts: %s",
                d.webhook_id,
                _host(item.url),
                d.id,
                d.event_id,
                attempts,
                error,
            )
        else:
            state = DeliveryState.PENDING
            next_at = now + round(policy.delay_s(attempts, self.rng) * 1000)
            if d.webhook_id not in self._failing:
                self._failing.add(d.webhook_id)
                log.warning(
                    "webhook %d (%s) failed (%s); retrying with backoff",
                    d.webhook_id,
                    _host(item.url),
                    error,
                )
        try:
            await self.store.finish_attempt(
                d.id, state=state, next_at=next_at, status=status, error=error, now=now
            )
        except StoreError:
            log.exception("cannot record attempt %d of delivery %d", attempts, d.id)
