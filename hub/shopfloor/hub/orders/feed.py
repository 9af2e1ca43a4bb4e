"""A bounded broadcast of order changes: the event stream reads it.

Each subscriber has its own bounded queue; a slow one loses its oldest entries (counted),
never the hub's memory. Webhooks do not depend on it: they read the durable outbox.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

from shopfloor.hub.orders.model import OrderChange

DEFAULT_QUEUE: Final = 100


class OrderSubscription:
    def __init__(self, size: int) -> None:
        self._queue: asyncio.Queue[OrderChange | None] = asyncio.Queue(maxsize=size)
        self.dropped = 0

    def put(self, change: OrderChange | None) -> None:
        while True:
            try:
                self._queue.put_nowait(change)
            except asyncio.QueueFull:
                self._queue.get_nowait()
                self.dropped += 1
            else:
                return

    async def get(self) -> OrderChange | None:
        """The next change, or None once the feed is closed."""
        return await self._queue.get()


class OrderFeed:
    def __init__(self, queue_size: int = DEFAULT_QUEUE) -> None:
        self.queue_size = queue_size
        self._subscriptions: set[OrderSubscription] = set()
        self._closed = False
        self.dropped = 0

    @property
    def subscribers(self) -> int:
        return len(self._subscriptions)

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[OrderSubscription]:
        sub = OrderSubscription(self.queue_size)
        if self._closed:
            sub.put(None)
        self._subscriptions.add(sub)
        try:
            yield sub
        finally:
            self._subscriptions.discard(sub)

    def publish(self, change: OrderChange) -> None:
        for sub in self._subscriptions:
            before = sub.dropped
            sub.put(change)
            self.dropped += sub.dropped - before

    def close(self) -> None:
        self._closed = True
        for sub in self._subscriptions:
            sub.put(None)
