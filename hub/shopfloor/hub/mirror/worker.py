"""The metrics mirror: follows the store's record feed and copies it to InfluxDB or
VictoriaMetrics as line protocol.

The store is the outbox. The mirror reads ``records_after(cursor, batch_size)``, turns them
into points, writes them in one request, and only when the server answered 204 commits the
cursor of the batch's last record (``set_feed_cursor``). A crash or a server outage at any
point leaves the cursor before the undelivered records, so they go out again: nothing is
lost. A crash between the server's answer and the cursor commit sends that one batch twice
(at most ``batch_size`` records; VictoriaMetrics keeps both copies unless run with
``-dedup.minScrapeInterval``, InfluxDB overwrites the same point).

Failures are retried from the same cursor with exponential backoff and jitter. A batch the
server refuses for good (HTTP 400/413/422) is split in halves until the refused records are
single; those are counted, logged and skipped, so one bad record cannot stall the mirror.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Sequence
from typing import Final

from shopfloor.contract import RecordKind
from shopfloor.hub.errors import MirrorError, StoreError
from shopfloor.hub.ingest import wall_ms
from shopfloor.hub.mirror.backoff import Backoff
from shopfloor.hub.mirror.health import MirrorHealth
from shopfloor.hub.mirror.line_protocol import LineProtocolError, encode_point
from shopfloor.hub.mirror.record_points import MachineLabels, PointMaker
from shopfloor.hub.mirror.settings import MirrorSection
from shopfloor.hub.mirror.writer import LineWriter
from shopfloor.hub.store.base import Store, StoredRecord, machine_key

log = logging.getLogger(__name__)

#: The mirror's name for its cursor in the store (``feed_cursors``).
CURSOR_NAME: Final = "metrics-mirror"

_Encoded = tuple[StoredRecord, list[str]]


class Mirror:
    """One mirror to one server. ``await mirror.run(stop)`` until ``stop`` is set."""

    def __init__(
        self,
        settings: MirrorSection,
        store: Store,
        *,
        clock: Callable[[], int] = wall_ms,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.store = store
        self._clock = clock
        self._rand = rand
        self._backoff = Backoff(settings.retry_initial_s, settings.retry_max_s)
        self._maker = PointMaker(
            prefix=settings.measurement_prefix, state_name_field=settings.state_name_field
        )
        self._labels: dict[str, MachineLabels] = {}
        self._cursor: int | None = None
        self._running = False
        self._failures = 0
        self._last_success_at: int | None = None
        self._last_error: str | None = None
        self._last_error_at: int | None = None
        self.records_mirrored = 0
        self.points_written = 0
        self.records_refused = 0

    # -- figures ---------------------------------------------------------------------------

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    async def health(self) -> MirrorHealth:
        cursor = self._cursor
        if cursor is None:
            cursor = await self.store.feed_cursor(CURSOR_NAME)
        head = await self.store.feed_head()
        return MirrorHealth(
            target=self.settings.target,
            running=self._running,
            cursor=cursor,
            head=head,
            lag=max(0, head - cursor),
            last_success_at=self._last_success_at,
            last_error=self._last_error,
            last_error_at=self._last_error_at,
            consecutive_failures=self._failures,
            records_mirrored=self.records_mirrored,
            points_written=self.points_written,
            records_refused=self.records_refused,
            skipped=dict(self._maker.skipped),
        )

    # -- the loop --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Mirror until ``stop`` is set. Never raises for a server, store or data problem."""
        self._running = True
        log.info("metrics mirror to %s started", self.settings.target)
        try:
            async with LineWriter(self.settings) as writer:
                while not stop.is_set():
                    full = await self._step(writer)
                    if self._failures:
                        await _pause(stop, self._backoff.delay(self._failures, self._rand))
                    elif not full:
                        await _pause(stop, self.settings.poll_s)
        finally:
            self._running = False
            log.info("metrics mirror to %s stopped", self.settings.target)

    async def _step(self, writer: LineWriter) -> bool:
        """Mirror one batch; True if it was full (more may be waiting right away)."""
        try:
            if self._cursor is None:
                self._cursor = await self.store.feed_cursor(CURSOR_NAME)
            records = await self.store.records_after(self._cursor, self.settings.batch_size)
            if records:
                await self._deliver(writer, await self._encode(records))
        except (MirrorError, StoreError) as exc:
            self._failed(str(exc))
            return False
        except Exception as exc:  # an optional copy must never stop the hub
            log.exception("metrics mirror: unexpected error")
            self._failed(f"{type(exc).__name__}: {exc}")
            return False
        if self._failures:
            log.warning(
                "metrics mirror to %s recovered after %d failed attempt(s)",
                self.settings.target,
                self._failures,
            )
        self._failures = 0
        self._last_success_at = self._clock()
        return len(records) >= self.settings.batch_size

    def _failed(self, message: str) -> None:
        self._failures += 1
        self._last_error = message
        self._last_error_at = self._clock()
        if self._failures == 1:  # once when it starts failing, once when it recovers
            log.warning("metrics mirror: %s; retrying with backoff", message)

    async def _encode(self, records: Sequence[StoredRecord]) -> list[_Encoded]:
        out = []
        for record in records:
            labels = await self._labels_for(record)
            if record.kind == RecordKind.META:
                kind = record.body.get("kind")
                self._labels[machine_key(record.agent, record.machine)] = MachineLabels(
                    labels.site, kind if isinstance(kind, str) and kind else labels.kind
                )
            lines = []
            for point in self._maker.points(record, labels):
                try:
                    lines.append(encode_point(point))
                except LineProtocolError:
                    self._maker.skipped["unencodable"] += 1
            out.append((record, lines))
        return out

    async def _labels_for(self, record: StoredRecord) -> MachineLabels:
        key = machine_key(record.agent, record.machine)
        labels = self._labels.get(key)
        if labels is None:  # a machine not seen since the last load: reload them all
            self._labels = {
                m.key: MachineLabels(m.site, m.kind) for m in await self.store.machines()
            }
            labels = self._labels.setdefault(key, MachineLabels(site=""))
        return labels

    async def _deliver(self, writer: LineWriter, batch: Sequence[_Encoded]) -> None:
        """Write ``batch`` and commit its cursor; halve a batch the server refuses for good."""
        lines = [line for _, record_lines in batch for line in record_lines]
        try:
            await writer.write("".join(line + "\n" for line in lines).encode("utf-8"))
        except MirrorError as exc:
            if not exc.permanent:
                raise
            if len(batch) > 1:
                half = len(batch) // 2
                await self._deliver(writer, batch[:half])
                await self._deliver(writer, batch[half:])
                return
            record = batch[0][0]
            self.records_refused += 1
            log.warning(
                "metrics mirror: %s refused record %s/%s seq %d for good (%s); skipped",
                self.settings.target,
                record.agent,
                record.stream,
                record.seq,
                exc,
            )
            await self._commit(record.cursor)
            return
        await self._commit(batch[-1][0].cursor)
        self.records_mirrored += len(batch)
        self.points_written += len(lines)

    async def _commit(self, cursor: int) -> None:
        await self.store.set_feed_cursor(CURSOR_NAME, cursor)
        self._cursor = cursor


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
