"""Between the trackers and MQTT: a bounded record queue, and the publisher that numbers records.

:class:`RecordQueue` holds :class:`~shopfloor.agent.readings.Record` objects from every
machine's tracker. When it is full, the oldest *telemetry* record is dropped and counted;
state, event and meta records are never dropped: their producer waits for room instead
(back-pressure up to the device session, which drops its own telemetry first).

:class:`Publisher` gives each record the agent's ``stream`` and the next ``seq`` from the
:class:`~shopfloor.agent.seqstore.SeqStore`, wraps it in an
:class:`~shopfloor.contract.envelope.Envelope` and publishes it with QoS 1, retained for
state and meta. It remembers the last retained payload per topic so that they can be
published again after a reconnect (a broker without persistence forgets them); the same
envelope, same ``stream``+``seq``, so the hub sees a duplicate, not a new record.

When the durable outbox lands (DESIGN.md section 3), it sits between this queue and
:meth:`Publisher.publish_record`: records get their seq when written to disk, and the
publisher reads from the outbox instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Final

from shopfloor.agent.mqtt import MqttConnection
from shopfloor.agent.readings import Record
from shopfloor.agent.seqstore import SeqStore
from shopfloor.contract.envelope import Envelope, RecordKind, encode_envelope
from shopfloor.contract.topics import AgentTopics, Channel

log = logging.getLogger(__name__)

RETAINED_KINDS: Final = frozenset({RecordKind.STATE, RecordKind.META})


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


class Publisher:
    """Numbers records and publishes them on the contract topics."""

    def __init__(self, conn: MqttConnection, store: SeqStore, topics: AgentTopics) -> None:
        self._conn = conn
        self._store = store
        self._topics = topics
        self._retained: dict[str, bytes] = {}
        self.published = 0

    def envelope(self, record: Record, seq: int) -> Envelope:
        return Envelope(
            kind=record.kind,
            agent=self._topics.agent,
            machine=record.machine,
            stream=self._store.stream,
            seq=seq,
            ts=record.ts_ms,
            mono=record.mono_ms,
            body=record.body,
        )

    async def publish_record(self, record: Record) -> None:
        seq = await self._store.next_seq()
        payload = encode_envelope(self.envelope(record, seq))
        topic = self._topics.machine(record.machine, Channel(str(record.kind)))
        retain = record.kind in RETAINED_KINDS
        if retain:
            self._retained[topic] = payload
        await self._conn.publish(topic, payload, qos=1, retain=retain)
        self.published += 1

    async def run(self, queue: RecordQueue) -> None:
        """Publish records from ``queue`` forever (until cancelled)."""
        while True:
            await self.publish_record(await queue.get())

    async def republish_retained(self) -> None:
        """Publish the last state and meta of every machine again (after a reconnect)."""
        for topic, payload in list(self._retained.items()):
            await self._conn.publish(topic, payload, qos=1, retain=True)
