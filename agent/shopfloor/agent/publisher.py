"""Between the trackers and MQTT: a bounded record queue, the outbox writer and the sender.

:class:`RecordQueue` holds :class:`~shopfloor.agent.readings.Record` objects from every
machine's tracker. When it is full, the oldest *telemetry* record is dropped and counted;
state, event and meta records are never dropped: their producer waits for room instead
(back-pressure up to the device session, which drops its own telemetry first).

:class:`Publisher` runs three loops over the durable
:class:`~shopfloor.agent.outbox.Outbox` (DESIGN.md section 3):

- ``write_loop`` takes what is queued (up to ``batch_size`` records at a time), gives each
  record the next ``seq`` of the stream and writes it to the outbox in one transaction,
  *before* anything is published. Rows dropped by the outbox cap are declared in a
  ``data_loss`` event written in the same transaction (never dropped; one per stream,
  merged with the pending one).
- ``send_loop`` publishes rows in seq order, QoS 1 (retained for state and meta). After
  every (re)connect it starts again from the oldest row still in the outbox: those rows
  were written before this connection, so they go out with ``replay: true``, not retained,
  and through a token bucket (``replay_rate`` per second). Rows written while that backlog
  is replayed go out at once, ahead of it (at most ``MAX_SENT_AHEAD``), so the live view
  is current during a long replay; the hub orders everything by ``ts``. A PUBACK only
  moves the cursor.
- ``control_loop`` reads the hub's retained ``_ack`` watermark (rows with ``seq`` at or
  below it are deleted, nothing else deletes a row) and the hub's ``_cmd/replay``
  requests (the cursor moves back to ``from_seq``, but not below the watermark; seqs the
  outbox no longer has are declared in a ``data_loss`` event: reason ``acked_earlier`` for
  those at or below the watermark, which the hub asks for again only after losing them
  (restored from a backup), ``not_in_outbox`` for the rest; seqs a ``data_loss`` event
  still in the outbox declares are not declared twice). If the watermark does
  not move for ``resend_after_s`` while rows are outstanding and the hub says it is
  online, the un-acked rows are replayed too (backing off up to 10 minutes).

The last state and meta of every machine are kept in memory and published again (retained,
``replay: true``, same stream+seq) after every reconnect, because a broker without
persistence forgets retained messages; the hub sees a duplicate, not a new record. A
backlog row goes out retained only if it is still the newest for its topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from shopfloor.agent.mqtt import IncomingMessage, MqttConnection
from shopfloor.agent.outbox import (
    OUTBOX_FULL,
    LossMaker,
    Outbox,
    OutboxRow,
    subtract_ranges,
)
from shopfloor.agent.readings import Record
from shopfloor.contract.envelope import (
    MAX_LOSS_RANGES,
    DataLoss,
    Envelope,
    RecordKind,
    decode_ack,
    decode_replay,
    encode_envelope,
)
from shopfloor.contract.errors import ContractError
from shopfloor.contract.topics import AgentTopics, Channel, hub_status_topic

log = logging.getLogger(__name__)

RETAINED_KINDS: Final = frozenset({RecordKind.STATE, RecordKind.META})
#: ``data_loss`` reasons of seqs declared on a replay request.
NOT_IN_OUTBOX: Final = "not_in_outbox"
ACKED_EARLIER: Final = "acked_earlier"


class RecordQueue:
    """A bounded FIFO of records that drops the oldest telemetry, never anything else."""

    def __init__(self, maxsize: int = 1000) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self._items: deque[Record] = deque()
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        #: Telemetry records dropped because the publisher fell behind.
        self.dropped_telemetry = 0

    def __len__(self) -> int:
        return len(self._items)

    async def put(self, record: Record) -> None:
        while len(self._items) >= self.maxsize:
            if self._drop_oldest_telemetry():
                break
            if record.kind is RecordKind.TELEMETRY:
                self._count_drop()
                return
            self._writable.clear()
            await self._writable.wait()
        self._items.append(record)
        self._readable.set()

    def _drop_oldest_telemetry(self) -> bool:
        for i, queued in enumerate(self._items):
            if queued.kind is RecordKind.TELEMETRY:
                del self._items[i]
                self._count_drop()
                return True
        return False

    def _count_drop(self) -> None:
        self.dropped_telemetry += 1
        if self.dropped_telemetry == 1 or self.dropped_telemetry % 1000 == 0:
            log.warning(
                "record queue full: %d telemetry records dropped so far", self.dropped_telemetry
            )

    async def get(self) -> Record:
        while not self._items:
            self._readable.clear()
            await self._readable.wait()
        record = self._items.popleft()
        self._writable.set()
        return record

    def get_nowait(self) -> Record | None:
        if not self._items:
            return None
        record = self._items.popleft()
        self._writable.set()
        return record


class TokenBucket:
    """``await bucket.take()`` at most ``rate`` times a second on average, ``burst`` at once."""

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now

    async def take(self) -> None:
        self._refill()
        while self._tokens < 1:
            await asyncio.sleep((1 - self._tokens) / self.rate)
            self._refill()
        self._tokens -= 1


_REPLAY_FALSE: Final = b'"replay":false'
_REPLAY_TRUE: Final = b'"replay":true'
_MAX_RESEND_BACKOFF_S: Final = 600.0
#: Live rows sent ahead of a replaying backlog, at most (then they wait their turn).
MAX_SENT_AHEAD: Final = 10_000


def as_replay(payload: bytes) -> bytes:
    """The same envelope with ``replay: true`` (the field comes before ``body``)."""
    return payload.replace(_REPLAY_FALSE, _REPLAY_TRUE, 1)


@dataclass(slots=True)
class _Lane:
    """What the sender knows about the current connection's backlog and live rows."""

    generation: int = 0
    replay_until: int = 0  # rows up to this seq were written before the connection: backlog
    ahead: int = 1  # the next live row to send ahead of the backlog
    sent_ahead: set[int] = field(default_factory=set)  # not yet passed by the cursor

    def restart(self, generation: int, replay_until: int) -> None:
        self.generation = generation
        self.replay_until = replay_until
        self.ahead = replay_until + 1
        self.sent_ahead.clear()


class Publisher:
    """Outbox writer, sender and ack/replay handler of one agent; see the module docstring."""

    def __init__(
        self,
        conn: MqttConnection,
        outbox: Outbox,
        topics: AgentTopics,
        *,
        default_machine: str,
        replay_rate: float = 200.0,
        replay_burst: int = 50,
        batch_size: int = 200,
        read_size: int = 100,
        resend_after_s: float = 30.0,
        clock_wall_ms: Callable[[], int] | None = None,
        clock_mono_ms: Callable[[], int] | None = None,
    ) -> None:
        if batch_size < 1 or read_size < 1:
            raise ValueError("batch_size and read_size must be at least 1")
        self._conn = conn
        self.outbox = outbox
        self._topics = topics
        self._default_machine = default_machine
        self._bucket = TokenBucket(replay_rate, replay_burst)
        self.batch_size = batch_size
        self.read_size = read_size
        self.resend_after_s = resend_after_s
        self._wall = clock_wall_ms or (lambda: time.time_ns() // 1_000_000)
        self._mono = clock_mono_ms or (lambda: time.monotonic_ns() // 1_000_000)
        self._retained: dict[str, tuple[int, bytes]] = {}  # topic -> newest (seq, payload)
        self._wake = asyncio.Event()
        self._rewind: int | None = None
        self._cursor = 0  # next seq to send on this connection
        self.acked = 0  # the best watermark the hub has sent for our stream
        self._hub_watermark = 0  # the latest one, even if lower (a hub restored from a backup)
        self._ack_progress_at = time.monotonic()
        self._resend_backoff = resend_after_s
        self.hub_online: bool | None = None
        #: Counters, also sent in ``_status`` (see :meth:`counters`).
        self.published = 0
        self.replayed = 0
        self.replay_requests = 0
        self.resends = 0
        self.data_loss_events = 0

    @property
    def replay_rate(self) -> float:
        return self._bucket.rate

    def counters(self) -> dict[str, int]:
        return {
            **self.outbox.stats.as_dict(),
            "acked_seq": self.acked,
            "published": self.published,
            "replayed": self.replayed,
            "replay_requests": self.replay_requests,
            "resends": self.resends,
            "data_loss_events": self.data_loss_events,
        }

    def subscriptions(self) -> list[str]:
        """What :meth:`control_loop` needs subscribed."""
        return [
            self._topics.ack,
            self._topics.cmd("replay"),
            hub_status_topic(self._topics.site, self._topics.root),
        ]

    # -- writing to the outbox ---------------------------------------------------------------

    def envelope(self, record: Record, seq: int) -> Envelope:
        return Envelope(
            kind=record.kind,
            agent=self._topics.agent,
            machine=record.machine,
            stream=self.outbox.stream,
            seq=seq,
            ts=record.ts_ms,
            mono=record.mono_ms,
            body=record.body,
            epoch=self.outbox.epoch,
        )

    def make_row(self, record: Record, seq: int) -> OutboxRow:
        """Runs in the outbox thread: pure, touches nothing shared."""
        return OutboxRow(
            seq=seq,
            kind=record.kind,
            machine=record.machine,
            topic=self._topics.machine(record.machine, Channel(str(record.kind))),
            retain=record.kind in RETAINED_KINDS,
            payload=encode_envelope(self.envelope(record, seq)),
        )

    async def write(self, records: list[Record]) -> None:
        """Write ``records`` to the outbox; whatever the cap drops is declared with them."""
        result = await self.outbox.append(records, self.make_row, self._declarer())
        for row in result.rows:
            if row.retain:
                self._retained[row.topic] = (row.seq, row.payload)
        if result.declared:
            self.data_loss_events += len(result.declared)
            log.warning(
                "outbox full (%d rows, %d bytes): dropped %d record(s); %d telemetry and %d other "
                "dropped so far",
                self.outbox.stats.depth,
                self.outbox.stats.bytes,
                sum(len(s) for s in result.dropped.values()),
                self.outbox.stats.dropped_telemetry,
                self.outbox.stats.dropped_other,
            )
        self._wake.set()

    def _declarer(self) -> LossMaker:
        """What the outbox thread calls to declare what the cap dropped (pure, clocks read now)."""
        wall, mono = self._wall(), self._mono()

        def declare(machine: str, ranges: list[tuple[int, int]]) -> list[Record]:
            return self._loss_records(machine, ranges, OUTBOX_FULL, wall, mono)

        return declare

    def _loss_records(
        self, machine: str, ranges: list[tuple[int, int]], reason: str, wall: int, mono: int
    ) -> list[Record]:
        out = []
        for i in range(0, len(ranges), MAX_LOSS_RANGES):
            part = ranges[i : i + MAX_LOSS_RANGES]
            loss = DataLoss(
                stream=self.outbox.stream,
                ranges=tuple(part),
                reason=reason,
                count=sum(b - a + 1 for a, b in part),
            )
            out.append(Record(RecordKind.EVENT, machine, wall, mono, loss.to_body()))
        return out

    async def write_loop(self, queue: RecordQueue) -> None:
        """Move records from ``queue`` to the outbox forever, a batch per transaction."""
        while True:
            batch = [await queue.get()]
            while len(batch) < self.batch_size and (record := queue.get_nowait()) is not None:
                batch.append(record)
            await self.write(batch)

    async def flush(self, queue: RecordQueue) -> None:
        """Write whatever is still queued (on shutdown)."""
        batch: list[Record] = []
        while (record := queue.get_nowait()) is not None:
            batch.append(record)
            if len(batch) >= self.batch_size:
                await self.write(batch)
                batch = []
        if batch:
            await self.write(batch)

    # -- sending -----------------------------------------------------------------------------

    async def send_loop(self) -> None:
        """Publish outbox rows forever; see the module docstring.

        Live rows (written after this connection started) go out as soon as they are
        written, ahead of a backlog that is still being replayed at ``replay_rate``: the
        hub orders by ``ts``, so the wall shows what a machine does now instead of minutes
        of history first. The backlog cursor skips the rows already sent live.
        """
        lane = _Lane()
        while True:
            current = await self._conn.wait_connected()
            if current != lane.generation:
                first = await self.outbox.first_seq()
                self._cursor = first if first is not None else self.outbox.next_seq
                lane.restart(current, self.outbox.last_seq)
                await self.republish_retained(before=self._cursor)
                self._ack_progress_at = time.monotonic()
            self._check_resend()
            if self._rewind is not None:
                self._cursor = min(self._cursor, self._rewind)
                # The hub may lack what went ahead too: everything up to now is backlog.
                lane.restart(lane.generation, max(lane.replay_until, self.outbox.last_seq))
                self._rewind = None
            self._wake.clear()
            if self._cursor <= lane.replay_until and len(lane.sent_ahead) < MAX_SENT_AHEAD:
                await self._send_ahead(lane)
            rows = await self.outbox.read_from(self._cursor, self.read_size)
            if not rows:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._wake.wait()
                continue
            await self._send_in_order(lane, rows)

    def _interrupted(self, lane: _Lane) -> bool:
        return self._conn.generation != lane.generation or self._rewind is not None

    async def _send_ahead(self, lane: _Lane) -> None:
        """Publish the live rows written since the backlog replay began."""
        for row in await self.outbox.read_from(max(lane.ahead, self._cursor), self.read_size):
            if self._interrupted(lane):
                return
            await self._conn.publish(row.topic, row.payload, qos=1, retain=row.retain)
            self.published += 1
            lane.sent_ahead.add(row.seq)
            lane.ahead = row.seq + 1

    async def _send_in_order(self, lane: _Lane, rows: list[OutboxRow]) -> None:
        """Publish ``rows`` from the cursor on: the backlog throttled, as replays."""
        for row in rows:
            if self._interrupted(lane):
                return
            if row.seq in lane.sent_ahead:
                lane.sent_ahead.discard(row.seq)
            elif row.seq <= lane.replay_until:
                # Retained only if it is still the newest for its topic: an old state
                # from the backlog must not replace the current one in the broker.
                newest = self._retained.get(row.topic, (0, b""))[0] == row.seq
                await self._bucket.take()
                await self._conn.publish(
                    row.topic, as_replay(row.payload), qos=1, retain=row.retain and newest
                )
                self.replayed += 1
                self.published += 1
            else:
                await self._conn.publish(row.topic, row.payload, qos=1, retain=row.retain)
                self.published += 1
            self._cursor = row.seq + 1
            if self._cursor <= lane.replay_until and self._wake.is_set():
                return  # new live rows were written: send them before more backlog

    def _check_resend(self) -> None:
        """Replay un-acked rows if the watermark is stuck while the hub says it is online."""
        outstanding = self._cursor - 1 > self.acked and self.outbox.stats.depth > 0
        if not outstanding or self.hub_online is False:
            return
        if time.monotonic() - self._ack_progress_at < self._resend_backoff:
            return
        log.warning(
            "the hub's watermark is stuck at %d (sent up to %d) for %.1f s; replaying",
            self.acked,
            self._cursor - 1,
            self._resend_backoff,
        )
        self.resends += 1
        self._rewind = self.acked + 1
        self._ack_progress_at = time.monotonic()
        self._resend_backoff = min(self._resend_backoff * 2, _MAX_RESEND_BACKOFF_S)

    async def republish_retained(self, *, before: int | None = None) -> None:
        """Publish the last state and meta of every machine again (after a reconnect).

        Those with a seq at or after ``before`` are skipped: they are in the backlog that
        follows, and go out retained from there.
        """
        for topic, (seq, payload) in list(self._retained.items()):
            if before is None or seq < before:
                await self._conn.publish(topic, as_replay(payload), qos=1, retain=True)

    # -- acks and commands from the hub ------------------------------------------------------

    async def control_loop(self) -> None:
        """Handle ``_ack``, ``_cmd/replay`` and the hub's status, forever."""
        async for message in self._conn.messages():
            await self.handle(message)

    async def handle(self, message: IncomingMessage) -> None:
        try:
            if message.topic == self._topics.ack:
                if message.payload:
                    await self._on_ack(message.payload)
            elif message.topic == self._topics.cmd("replay"):
                await self._on_replay(message.payload)
            elif message.topic == hub_status_topic(self._topics.site, self._topics.root):
                self._on_hub_status(message.payload, retained=message.retain)
        except ContractError as exc:
            log.warning("ignoring a bad message on %s: %s", message.topic, exc)

    async def _on_ack(self, payload: bytes) -> None:
        # A hub that does not name our stream has nothing of it (restored from a backup).
        watermark = decode_ack(payload).streams.get(self.outbox.stream, 0)
        self._hub_watermark = watermark
        if watermark <= self.acked:
            return  # older news than what we know (or the hub went back: see _on_replay)
        if watermark >= self.outbox.next_seq:
            log.warning(
                "the hub acknowledges seq %d of stream %s, beyond the last one written (%d);"
                " ignoring it",
                watermark,
                self.outbox.stream,
                self.outbox.next_seq - 1,
            )
            return
        self.acked = watermark
        self._ack_progress_at = time.monotonic()
        self._resend_backoff = self.resend_after_s
        await self.outbox.ack(watermark)

    async def _on_replay(self, payload: bytes) -> None:
        request = decode_replay(payload)
        if request.stream != self.outbox.stream:
            log.info("ignoring a replay request for stream %s (not ours)", request.stream)
            return
        self.replay_requests += 1
        acked = self.acked
        # What is resent starts after the watermark: rows at or below it are deleted.
        start = max(request.from_seq, acked + 1)
        log.info(
            "the hub asks for stream %s from seq %d; replaying from %d",
            request.stream,
            request.from_seq,
            start,
        )
        # Seqs from ``from_seq`` on that the outbox does not have will never come: say so.
        # Those at or below our watermark were acknowledged, and deleted; a hub asks for them
        # again after losing them (restored from a backup), and then its latest ack is below
        # ``from_seq`` too. (A request that crossed a newer ack is stale: nothing to declare.)
        # The rest are gone for other reasons. Seqs that a data_loss event in the outbox
        # declares already are not declared twice: that event goes out again with the replay.
        hub_went_back = self._hub_watermark < request.from_seq <= acked
        declared = await self.outbox.declared_lost()
        earlier = subtract_ranges([(request.from_seq, acked)] if hub_went_back else [], declared)
        missing = subtract_ranges(
            await self.outbox.holes(start, self.outbox.next_seq - 1), declared
        )
        wall, mono = self._wall(), self._mono()
        records: list[Record] = []
        for reason, ranges in ((ACKED_EARLIER, earlier), (NOT_IN_OUTBOX, missing)):
            if not ranges:
                continue
            log.warning(
                "%d seq(s) of stream %s from %d on are not in the outbox (%s); declaring them"
                " lost: %s",
                sum(b - a + 1 for a, b in ranges),
                self.outbox.stream,
                request.from_seq,
                reason,
                ranges[:5],
            )
            records.extend(self._loss_records(self._default_machine, ranges, reason, wall, mono))
        if records:
            self.data_loss_events += len(records)
            await self.write(records)
        self._rewind = start
        self._wake.set()

    def _on_hub_status(self, payload: bytes, *, retained: bool = False) -> None:
        try:
            body: Any = json.loads(payload) if payload else {}
        except ValueError:
            return
        online = body.get("online") if isinstance(body, dict) else None
        if not isinstance(online, bool):
            return
        self.hub_online = online
        if (
            online
            and not retained
            and self.outbox.stats.depth > 0
            and self._cursor - 1 > self.acked
        ):
            # The hub has just (re)connected. What it has not acknowledged may have gone to a
            # broker that held no session for it (restarted without persistence): send it
            # again now rather than after the hub's reorder timeout and replay request.
            log.info(
                "the hub is back online; sending the %d row(s) it has not acknowledged again",
                self._cursor - 1 - self.acked,
            )
            self.resends += 1
            self._rewind = self.acked + 1
            self._wake.set()
