"""The order book: the one owner of order state in a running hub.

It links jobs to orders (by API call, or by the job's order reference), re-derives an
order's status whenever one of its jobs or machines changes (and on a periodic sweep, so a
dropped notification only delays a change), and records each status change together with
its webhook outbox rows in one transaction. Recorded changes are then published on
:attr:`OrderBook.feed` (the SSE stream) and wake the webhook sender.

One lock serializes every re-derivation, so two changes of one order can never race; the
store's compare-and-set on ``change_seq`` guards the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from shopfloor.hub.errors import StoreError
from shopfloor.hub.orders.feed import OrderFeed
from shopfloor.hub.orders.model import (
    LinkVia,
    NewChange,
    NewOrder,
    OrderRow,
    OrderStatus,
)
from shopfloor.hub.orders.settings import OrdersSection
from shopfloor.hub.orders.status import MachineNow, summarize
from shopfloor.hub.orders.view import change_json, order_json
from shopfloor.hub.store.base import JobRow, OrderStore
from shopfloor.hub.trackers import MachineView, Subscription, Trackers

log = logging.getLogger(__name__)

_PAGE: Final = 200
#: Jobs carrying an order's reference that are linked when the order arrives (newest first).
MAX_REF_JOBS: Final = 1000
_OPEN: Final = tuple(s for s in OrderStatus if s is not OrderStatus.COMPLETED)


@dataclass(frozen=True, slots=True)
class Linked:
    """The answer of :meth:`OrderBook.link`."""

    created: bool
    order: dict[str, Any]


class OrderBook:
    def __init__(
        self,
        store: OrderStore,
        trackers: Trackers,
        *,
        clock: Callable[[], int],
        settings: OrdersSection | None = None,
        ref_of: Callable[[str], str | None] | None = None,
    ) -> None:
        self.store = store
        self.trackers = trackers
        self.clock = clock
        self.settings = settings or OrdersSection()
        self.ref_of = ref_of
        self.feed = OrderFeed()
        #: Set when a change was recorded (its outbox rows wait); the webhook sender clears it.
        self.outbox_changed = asyncio.Event()
        self._lock = asyncio.Lock()
        self._dirty_jobs: dict[int, JobRow] = {}
        self._dirty_machines: set[str] = set()
        self._wake = asyncio.Event()
        #: (order, job) pairs that linking by reference refused although the job was not
        #: linked: the job was unlinked from that order by hand. Not asked again (each ask is
        #: a write transaction) until that job is linked or unlinked through the book.
        self._declined: set[tuple[int, int]] = set()

    # -- what the API calls --------------------------------------------------------------------

    async def create(self, new: NewOrder, *, key: str | None) -> tuple[dict[str, Any], bool]:
        """Create the order (or find the one an identical earlier request created), link the
        jobs that already carry its reference, and answer its current view."""
        order, created = await self.store.create_order(new, key=key, now=self.clock())
        async with self._lock:
            if created:
                await self._link_by_ref(order)
            view = await self._refresh(order.id)
        assert view is not None
        return view, created

    async def current(self, order_id: int) -> dict[str, Any] | None:
        """The order as it is now; a status that moved since the last change is recorded
        (and pushed) first, so no client sees a status the webhooks have not."""
        async with self._lock:
            return await self._refresh(order_id)

    async def link(self, order_id: int, job_id: int) -> Linked | None:
        """Link a job by API call (None if the order does not exist)."""
        async with self._lock:
            self._forget_declined(job_id)
            created = await self.store.link_job(order_id, job_id, via=LinkVia.API, now=self.clock())
            view = await self._refresh(order_id)
        return None if view is None else Linked(created, view)

    async def unlink(self, order_id: int, job_id: int) -> dict[str, Any] | None:
        """Unlink a job; None if it was not linked to this order."""
        async with self._lock:
            self._forget_declined(job_id)
            if not await self.store.unlink_job(order_id, job_id):
                return None
            return await self._refresh(order_id)

    # -- what the hub calls --------------------------------------------------------------------

    async def on_job(self, job: JobRow) -> None:
        """The job book's listener: note the change; :meth:`run` handles it. Never blocks
        ingest (one entry per job, the newest row wins)."""
        self._dirty_jobs[job.id] = job
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Handle job and machine changes as they come, and sweep every open order each
        ``sweep_s``; return when ``stop`` is set."""
        async with self.trackers.feed.subscribe() as machines, asyncio.TaskGroup() as tg:
            watch = tg.create_task(self._watch_machines(machines), name="hub.orders.machines")
            relay = tg.create_task(self._relay(stop), name="hub.orders.stop")
            loop = asyncio.get_running_loop()
            next_sweep = loop.time()
            while not stop.is_set():
                if loop.time() >= next_sweep:
                    await self._guarded(self.sweep())
                    next_sweep = loop.time() + self.settings.sweep_s
                await self._guarded(self._handle_dirty())
                if stop.is_set():
                    break  # the relay's wake-up may have been cleared by _handle_dirty
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(0.0, next_sweep - loop.time()))
            relay.cancel()
            watch.cancel()
            self.feed.close()

    async def sweep(self) -> int:
        """Link by reference and re-derive every order that is not completed; return how many
        orders were looked at."""
        seen = 0
        after: int | None = None
        while True:
            page = await self.store.orders(statuses=_OPEN, after_id=after, limit=_PAGE)
            for order in page:
                async with self._lock:
                    await self._link_by_ref(order)
                    await self._refresh(order.id)
            seen += len(page)
            if len(page) < _PAGE:
                return seen
            after = page[-1].id

    # -- inside --------------------------------------------------------------------------------

    async def _relay(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wake.set()

    async def _watch_machines(self, sub: Subscription) -> None:
        while (view := await sub.get()) is not None:
            self._note_machine(view)

    def _note_machine(self, view: MachineView) -> None:
        key = self.trackers.key_of(view.id)
        if key is not None:
            self._dirty_machines.add(key)
            self._wake.set()

    async def _guarded(self, work: Any) -> None:
        """Run one sweep or batch of changes; a failure is logged (with its traceback) and
        the next change or sweep tries again, so nothing stops :meth:`run`."""
        try:
            await work
        except StoreError:
            log.exception("order roll-up failed; the next change or sweep tries again")
        except Exception:
            log.exception("order roll-up failed unexpectedly; the next change or sweep tries again")

    async def _handle_dirty(self) -> None:
        self._wake.clear()
        jobs, self._dirty_jobs = list(self._dirty_jobs.values()), {}
        machines, self._dirty_machines = sorted(self._dirty_machines), set()
        touched: set[int] = set()
        linked = await self.store.orders_of_jobs([j.id for j in jobs])
        added = False
        for job in jobs:
            if job.order_ref and job.id not in linked:
                order = await self.store.order_by_ref(job.order_ref)
                if order is not None:
                    added = await self._link_new(order.id, job.id) or added
        if added:
            linked = await self.store.orders_of_jobs([j.id for j in jobs])
        touched.update(linked.values())
        if machines and not await self.store.orders(statuses=_OPEN, limit=1):
            machines = []  # no open order: a machine change cannot move any status
        for key in machines:
            running = await self.store.jobs(machine_key=key, running=True, limit=_PAGE)
            touched.update((await self.store.orders_of_jobs([j.id for j in running])).values())
        if machines:
            # "queued" depends on the programs loaded on machines that do not run.
            waiting = await self.store.orders(
                statuses=[OrderStatus.RECEIVED, OrderStatus.QUEUED], limit=_PAGE
            )
            touched.update(o.id for o in waiting)
        for order_id in sorted(touched):
            async with self._lock:
                await self._refresh(order_id)

    async def _link_by_ref(self, order: OrderRow) -> None:
        """Link the jobs carrying the order's reference that no order has yet. Reads first:
        with nothing new to link (every sweep, mostly) nothing is written."""
        jobs = await self.store.jobs(order_ref=order.ref, limit=MAX_REF_JOBS)
        linked = await self.store.orders_of_jobs([job.id for job in jobs])
        for job in jobs:
            if job.id not in linked:
                await self._link_new(order.id, job.id)

    async def _link_new(self, order_id: int, job_id: int) -> bool:
        """Link by reference a job no order has (as last read); True if it was linked."""
        if (order_id, job_id) in self._declined:
            return False
        if await self.store.link_job(order_id, job_id, via=LinkVia.REF, now=self.clock()):
            return True
        self._declined.add((order_id, job_id))
        return False

    def _forget_declined(self, job_id: int) -> None:
        self._declined = {pair for pair in self._declined if pair[1] != job_id}

    def _machines(self) -> dict[str, MachineNow]:
        out = {}
        for view in self.trackers.views():
            key = self.trackers.key_of(view.id)
            if key is not None:
                out[key] = MachineNow(id=view.id, state=view.state, program=view.program)
        return out

    async def _jobs(self, ids: Sequence[int]) -> list[JobRow]:
        if not ids:
            return []
        return await self.store.jobs(ids=ids, limit=len(ids))

    async def _refresh(self, order_id: int) -> dict[str, Any] | None:
        """Derive the order's status now; record a change if it moved. Hold ``_lock``."""
        order = await self.store.order(order_id)
        if order is None:
            return None
        links = await self.store.order_links(order_id)
        jobs = await self._jobs([link.job_id for link in links])
        machines = self._machines()
        summary = summarize(
            order.items, order.ref, jobs, machines, now=self.clock(), ref_of=self.ref_of
        )
        via = {link.job_id: link.via for link in links}
        ids = {key: m.id for key, m in machines.items()}
        if summary.status is order.status:
            return order_json(
                order,
                summary,
                jobs,
                via,
                ids,
                status_since=order.status_since,
                change_seq=order.change_seq,
            )
        at = self.clock()
        seq = order.change_seq + 1
        view = order_json(order, summary, jobs, via, ids, status_since=at, change_seq=seq)
        event_id = uuid.uuid4().hex
        change = await self.store.record_order_change(
            NewChange(
                order_id=order.id,
                expected_seq=order.change_seq,
                event_id=event_id,
                previous=order.status,
                status=summary.status,
                at=at,
                body=change_json(
                    event_id=event_id,
                    seq=seq,
                    at=at,
                    previous=order.status,
                    status=summary.status,
                    order=view,
                ),
            )
        )
        if change is None:  # cannot happen under the lock; re-read rather than guess
            log.warning("order %d changed underneath its roll-up; deriving again", order.id)
            return await self._refresh(order_id)
        log.info(
            "order %d (ref %r): %s -> %s%s",
            order.id,
            order.ref,
            order.status,
            summary.status,
            f" ({summary.reason})" if summary.reason else "",
        )
        self.feed.publish(change)
        self.outbox_changed.set()
        return view
