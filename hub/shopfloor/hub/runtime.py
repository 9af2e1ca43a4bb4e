"""The running hub: store, trackers, ingest and the staleness check, owned in one place.

:func:`open_hub` builds everything from a :class:`~shopfloor.hub.config.HubConfig`, runs the
background tasks in one TaskGroup and takes them down in order on exit. The HTTP app's
lifespan calls it; tests and tools can too.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from shopfloor.hub.config import HubConfig
from shopfloor.hub.errors import StoreError
from shopfloor.hub.ingest import Ingest, wall_ms
from shopfloor.hub.jobs import JobBook, JobBookStore, find_order_ref
from shopfloor.hub.mirror.worker import Mirror
from shopfloor.hub.orders.book import OrderBook
from shopfloor.hub.orders.delivery import WebhookSender
from shopfloor.hub.store import Store
from shopfloor.hub.store.base import OrderStore
from shopfloor.hub.store.factory import make_store
from shopfloor.hub.trackers import Trackers

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Hub:
    config: HubConfig
    store: Store
    trackers: Trackers
    ingest: Ingest | None
    clock: Callable[[], int]
    #: Jobs with progress and ETA (fed by ingest); listeners: ``jobs.add_listener``.
    jobs: JobBook | None = None
    #: The metrics mirror, when the config has a ``[mirror]`` section.
    mirror: Mirror | None = None
    #: Orders: status roll-up, change log, the webhook outbox (docs/api.md "Orders").
    orders: OrderBook | None = None


@contextlib.asynccontextmanager
async def open_hub(
    config: HubConfig,
    *,
    mqtt: bool = True,
    clock: Callable[[], int] = wall_ms,
    stale_check_s: float | None = None,
) -> AsyncIterator[Hub]:
    """Open the store, load the trackers, start ingest (unless ``mqtt`` is False) and the
    staleness check; on exit stop ingest cleanly, end the change feed, close the store."""
    store = make_store(config.hub)
    await store.open()
    try:
        trackers = Trackers(stale_after_ms=int(config.hub.stale_after_s * 1000))
        trackers.load(await store.machines(), await store.agents())
        jobs = (
            JobBook(store, settings=config.jobs, trackers=trackers, clock=clock)
            if isinstance(store, JobBookStore)
            else None
        )
        ingest = Ingest(config, store, trackers, clock=clock, jobs=jobs) if mqtt else None
        mirror = Mirror(config.mirror, store, clock=clock) if config.mirror else None
        orders = (
            OrderBook(
                store,
                trackers,
                clock=clock,
                settings=config.orders,
                ref_of=functools.partial(find_order_ref, config.jobs.order_pattern),
            )
            if isinstance(store, OrderStore)
            else None
        )
        if orders is not None and jobs is not None:
            jobs.add_listener(orders.on_job)
        hub = Hub(
            config=config,
            store=store,
            trackers=trackers,
            ingest=ingest,
            clock=clock,
            jobs=jobs,
            mirror=mirror,
            orders=orders,
        )
        stop = asyncio.Event()
        period = stale_check_s or min(5.0, config.hub.stale_after_s / 4)
        async with asyncio.TaskGroup() as tg:
            if ingest is not None:
                tg.create_task(ingest.run(stop), name="hub.ingest")
            tg.create_task(_staleness(hub, stop, period), name="hub.staleness")
            if mirror is not None:
                tg.create_task(mirror.run(stop), name="hub.mirror")
            if orders is not None:
                sender = WebhookSender(
                    orders.store, config.orders.webhooks, wake=orders.outbox_changed, clock=wall_ms
                )
                tg.create_task(orders.run(stop), name="hub.orders")
                tg.create_task(sender.run(stop), name="hub.webhooks")
            try:
                yield hub
            finally:
                stop.set()
                trackers.feed.close()
    finally:
        await store.close()


async def _staleness(hub: Hub, stop: asyncio.Event, period_s: float) -> None:
    """Every ``period_s``: machines with no data for ``stale_after_s`` go OFFLINE."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), period_s)
        rows = hub.trackers.check_stale(hub.clock())
        if rows:
            try:
                await hub.store.add_states(rows)
            except StoreError:
                log.exception("could not store %d staleness change(s)", len(rows))
        hub.trackers.publish_pending()
