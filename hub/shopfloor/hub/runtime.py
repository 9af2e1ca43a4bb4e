"""The running hub: store, trackers, ingest and the staleness check, owned in one place.

:func:`open_hub` builds everything from a :class:`~shopfloor.hub.config.HubConfig`, runs the
background tasks in one TaskGroup and takes them down in order on exit. The HTTP app's
lifespan calls it; tests and tools can too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from shopfloor.hub.config import HubConfig
from shopfloor.hub.errors import StoreError
from shopfloor.hub.ingest import Ingest, wall_ms
from shopfloor.hub.store import SqliteStore, Store
from shopfloor.hub.trackers import Trackers

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Hub:
    config: HubConfig
    store: Store
    trackers: Trackers
    ingest: Ingest | None
    clock: Callable[[], int]


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
    store = SqliteStore(config.hub.database)
    await store.open()
    try:
        trackers = Trackers(stale_after_ms=int(config.hub.stale_after_s * 1000))
        trackers.load(await store.machines(), await store.agents())
        ingest = Ingest(config, store, trackers, clock=clock) if mqtt else None
        hub = Hub(config=config, store=store, trackers=trackers, ingest=ingest, clock=clock)
        stop = asyncio.Event()
        period = stale_check_s or min(5.0, config.hub.stale_after_s / 4)
        async with asyncio.TaskGroup() as tg:
            if ingest is not None:
                tg.create_task(ingest.run(stop), name="hub.ingest")
            tg.create_task(_staleness(hub, stop, period), name="hub.staleness")
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
