"""MQTT ingest: the one owner of the hub's gmqtt client.

Every message is parsed and checked against its topic, queued for the batch writer, and
acknowledged (PUBACK) only after its batch is committed: gmqtt with
``optimistic_acknowledgement=False`` sends the PUBACK when the async ``on_message``
returns, with the reason code it returns. Bad messages are stored in ``rejected``,
counted and acknowledged too, so they are not redelivered forever. After each commit the
retained ``_ack`` watermark of every touched agent is published, at most once a second
per agent, and every known agent's watermark is published again after each (re)connect (a
broker restarted without persistence has forgotten them).

Gaps: a stream whose contiguous seq stays below the highest seq seen for longer than
``reorder_timeout_s`` gets a ``_cmd/replay`` request from contiguous + 1 (MQTT 5 message
expiry ``REPLAY_EXPIRY_S``), at most one per agent every ``replay_interval_s``. An agent's
``data_loss`` event marks seqs it can never send; the store counts them as filled.

Clock sanity (:mod:`shopfloor.hub.clock_sanity`): every envelope's ``ts`` is checked
against the agent's monotonic clock; a bad one is corrected or flagged before storing.

Back-pressure: at most ``max_pending`` messages, plus those in the ``READ_AHEAD_BYTES``
already read from the socket, are held received but not yet acknowledged. The Receive
Maximum sent in CONNECT is not enough: Mosquitto 2.0.11 honours it for live traffic, but
for a session's queued backlog every PUBACK releases a whole window of messages instead of
one, so a backlog of 50,000 arrived almost entirely before the first commit. So the hub
bounds its own intake: with ``max_pending`` messages pending it pauses reading the socket
(the broker keeps the rest; TCP stops it) and resumes when half of them are acknowledged.
``pending``, ``pending_peak``, ``pending_limit`` and ``reads_paused`` are in
``/api/v1/health``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Final

import gmqtt
from gmqtt.mqtt.constants import MQTTv50, MQTTv311

from shopfloor.contract import (
    AckWatermark,
    AgentTopics,
    Channel,
    ContractError,
    Envelope,
    RecordKind,
    ReplayRequest,
    decode_envelope,
    decode_status,
    encode_ack,
    encode_replay,
    hub_status_topic,
    parse_data_loss,
    parse_topic,
)
from shopfloor.contract.envelope import REPLAY_EXPIRY_S
from shopfloor.contract.topics import subscription_filters
from shopfloor.hub.clock_sanity import ClockSanity, Verdict
from shopfloor.hub.config import HubConfig
from shopfloor.hub.errors import StoreError
from shopfloor.hub.jobs import JobBook
from shopfloor.hub.store.base import (
    BatchResult,
    Incoming,
    Rejection,
    StatusUpdate,
    Store,
    WriteBatch,
)
from shopfloor.hub.trackers import Trackers

log = logging.getLogger(__name__)

PUBACK_OK: Final = 0
#: Returned when the hub shuts down before the batch was committed. The connection is
#: closed by then, so nothing is sent and the broker redelivers from the session.
PUBACK_NOT_COMMITTED: Final = 0x80
_MAX_BACKOFF_S: Final = 30.0
_CONNECT_TIMEOUT_S: Final = 10.0
#: How far past ``max_pending`` the intake can run, in bytes of messages: what was already
#: read from the socket when reading paused is still handled (asyncio's StreamReader holds up
#: to 128 KiB, one socket read brings up to 256 KiB, and one more may be parsed already).
READ_AHEAD_BYTES: Final = 768 * 1024
_NO_ANSWER_HINT: Final = (
    ' (no answer: if the broker speaks only MQTT 3.1.1, set [mqtt] protocol = "3.1.1")'
)

Item = Incoming | StatusUpdate | Rejection


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def socket_transport(client: Any) -> asyncio.ReadTransport | None:
    """The transport under a gmqtt client's current connection, or None when not connected.

    The one reach into gmqtt internals for flow control (gmqtt 0.8 has no API to stop
    reading): ``Client._connection`` is its ``MQTTConnection``, whose ``_transport`` is the
    asyncio transport it reads PUBLISH packets from. If gmqtt renames either, this returns
    None, the hub logs it once and cannot pause; ``tests/hub/test_hub_backlog.py`` fails.
    """
    connection = getattr(client, "_connection", None)
    transport = getattr(connection, "_transport", None)
    return transport if isinstance(transport, asyncio.ReadTransport) else None


class _Client(gmqtt.Client):  # type: ignore[misc]
    """gmqtt's client with its fire-and-forget reconnect tasks tracked, so that shutting
    down stops them instead of leaving one that reconnects after we disconnected."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.closing = False
        self.failed_reconnects = 0  # reset by the owner on every successful connect
        self.reconnect_tasks: set[asyncio.Task[Any]] = set()

    async def reconnect(self, delay: bool = False) -> None:
        if self.closing:
            return
        if delay:
            # Exponential backoff with jitter instead of gmqtt's fixed delay, so that hubs
            # and agents do not all come back in lockstep after a broker restart.
            self.failed_reconnects += 1
            base = min(_MAX_BACKOFF_S, 2.0 ** min(self.failed_reconnects, 6) / 2)
            self.set_config({"reconnect_delay": base * (0.5 + random.random())})
        task = asyncio.current_task()
        if task is not None:
            self.reconnect_tasks.add(task)
            task.add_done_callback(self.reconnect_tasks.discard)
        try:
            await super().reconnect(delay=delay)
        except asyncio.CancelledError:
            if not self.closing:
                raise
            # Our own shutdown cancelled it: finish quietly (gmqtt's done-callback would
            # otherwise log the cancellation as an error).

    async def stop_reconnecting(self) -> None:
        self.closing = True
        tasks = [t for t in self.reconnect_tasks if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass(slots=True)
class _Pending:
    item: Item
    done: asyncio.Future[int] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


@dataclass(frozen=True, slots=True)
class IngestStats:
    connected: bool
    queue_depth: int
    counters: dict[str, int]
    rejected_by_reason: dict[str, int]


class Ingest:
    """Subscribes, validates, batches, commits, acknowledges and publishes watermarks."""

    def __init__(
        self,
        config: HubConfig,
        store: Store,
        trackers: Trackers,
        *,
        clock: Callable[[], int] = wall_ms,
        max_batch: int = 500,
        max_delay_s: float = 0.05,
        queue_size: int = 1000,
        ack_interval_s: float = 1.0,
        reorder_timeout_s: float = 5.0,
        replay_interval_s: float = 30.0,
        gap_check_s: float = 1.0,
        clock_sanity: ClockSanity | None = None,
        max_pending: int = 1000,
        jobs: JobBook | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.trackers = trackers
        #: Handed every committed batch's new records (jobs with progress and ETA).
        self.jobs = jobs
        self.clock = clock
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.ack_interval_s = ack_interval_s
        self.root = config.hub.root
        self.counters: Counter[str] = Counter()
        # Always shown in /api/v1/health, even while zero.
        for name in (
            "received",
            "stored",
            "duplicates",
            "rejected",
            "gaps_detected",
            "gaps_open",
            "gaps_abandoned",
            "replay_requests",
            "data_loss_events",
            "data_loss_declared_seqs",
            "clock_corrected",
            "clock_flagged",
        ):
            self.counters[name] = 0
        self.rejected_by_reason: Counter[str] = Counter()
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue(maxsize=queue_size)
        #: Messages received and not yet answered (PUBACK): reading stops at this many.
        self.max_pending = max(2, max_pending)
        self._pending = 0
        self._pending_peak = 0
        self._reads_paused = 0
        self._paused: asyncio.ReadTransport | None = None  # the transport we paused
        self._no_transport_logged = False
        self._closing = False
        self._client: _Client | None = None
        self._ack_dirty: dict[str, str] = {}  # agent -> site
        self._ack_last: dict[str, float] = {}  # agent -> loop time of the last publish
        self._ack_wake = asyncio.Event()
        self._connected = asyncio.Event()
        self._subscribed = asyncio.Event()
        self.reorder_timeout_s = reorder_timeout_s
        self.replay_interval_s = replay_interval_s
        self.gap_check_s = gap_check_s
        self.clock_sanity = clock_sanity or ClockSanity()
        self._sites: dict[str, str] = {}  # agent -> site, of every agent ever seen
        self._epochs: dict[str, int] = {}  # agent -> boot epoch of its latest status
        self._stuck: dict[tuple[str, str], tuple[int, float]] = {}  # -> (contiguous, since)
        self._replay_last: dict[str, float] = {}  # agent -> loop time of the last request
        self._replay_tries: dict[tuple[str, str], int] = {}  # requests for the open gap
        #: Requests for one gap before the hub gives up on it (the stream may be dead: an
        #: agent that got a new outbox never answers for its old stream).
        self.max_replay_tries = 20

    # -- state for health ------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._client is not None and self._connected.is_set() and self._client.is_connected

    @property
    def pending(self) -> int:
        """Messages received and not yet acknowledged (their PUBACK not yet sent)."""
        return self._pending

    @property
    def pending_peak(self) -> int:
        """The most messages ever pending at once (a high-water mark)."""
        return self._pending_peak

    def stats(self) -> IngestStats:
        return IngestStats(
            connected=self.connected,
            queue_depth=self._queue.qsize(),
            counters={
                **self.counters,
                "pending": self._pending,
                "pending_peak": self._pending_peak,
                "pending_limit": self.max_pending,
                "reads_paused": self._reads_paused,
            },
            rejected_by_reason=dict(self.rejected_by_reason),
        )

    async def wait_connected(self) -> None:
        """Wait until connected and the broker acknowledged the subscriptions."""
        await self._subscribed.wait()

    # -- topics ------------------------------------------------------------------------------

    def filters(self) -> list[str]:
        every = subscription_filters(self.root)
        sites = self.config.hub.sites
        if sites is None:
            return every
        prefix = f"{self.root}/+/"
        return [f"{self.root}/{site}/{f[len(prefix) :]}" for site in sites for f in every]

    def _hub_status_topics(self) -> list[str]:
        sites = self.config.hub.sites or (self.config.hub.site,)
        home = hub_status_topic(self.config.hub.site, self.root)
        return [home, *(hub_status_topic(s, self.root) for s in sites if s != self.config.hub.site)]

    def _hub_status(self, online: bool) -> bytes:
        body = {"v": 1, "online": online, "hub": self.config.mqtt.client_id, "ts": self.clock()}
        return json.dumps(body, separators=(",", ":")).encode()

    # -- running -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Connect (retrying), ingest until ``stop`` is set, then shut down cleanly."""
        client = self._make_client()
        self._client = client
        try:
            self._sites.update(await self.store.agent_sites())
        except StoreError:
            log.exception("cannot read the known agents; their watermarks follow new data")
        await self._load_jobs()
        async with asyncio.TaskGroup() as tg:
            writer = tg.create_task(self._write_loop(), name="hub.ingest.writer")
            acker = tg.create_task(self._ack_loop(), name="hub.ingest.ack")
            gaps = tg.create_task(self._gap_loop(), name="hub.ingest.gaps")
            connecting = tg.create_task(self._connect(client, stop), name="hub.ingest.connect")
            await stop.wait()
            connecting.cancel()
            gaps.cancel()
            if self.connected:
                for topic in self._hub_status_topics():
                    client.publish(topic, self._hub_status(online=False), qos=1, retain=True)
            self._connected.clear()
            await client.stop_reconnecting()
            if client._connection is not None:  # never connected: nothing to close
                with contextlib.suppress(OSError, TimeoutError):
                    async with asyncio.timeout(5):
                        await client.disconnect()
            # Commit what was already received (the PUBACKs can no longer be sent; the
            # broker redelivers those and the store deduplicates), then stop the writer.
            self._closing = True
            if self.jobs is not None and self.jobs.catching_up:
                await self.jobs.close()  # the next start catches up on the rest
            await self._queue.put(None)
            await writer
            self._ack_wake.set()
            await acker
            if self.jobs is not None:
                await self.jobs.close()

    async def _load_jobs(self) -> None:
        """Load the job book's open jobs before the first batch; it catches up on the
        records stored after its last commit in the background (a whole history, the first
        time), holding the batches committed meanwhile for after it."""
        if self.jobs is None:
            return
        try:
            await self.jobs.start()
        except Exception:
            self.counters["job_book_errors"] += 1
            log.exception("the job book could not load; it retries with the next batch")

    def _make_client(self) -> _Client:
        mqtt = self.config.mqtt
        will = gmqtt.Message(
            hub_status_topic(self.config.hub.site, self.root),
            self._hub_status(online=False),
            qos=1,
            retain=True,
        )
        client = _Client(
            mqtt.client_id,
            clean_session=False,
            optimistic_acknowledgement=False,
            will_message=will,
            session_expiry_interval=mqtt.session_expiry_s,
            receive_maximum=1000,
            logger=logging.getLogger("shopfloor.hub.mqtt"),
        )
        client.set_config({"reconnect_retries": -1, "reconnect_delay": 3})
        if mqtt.username is not None:
            client.set_auth_credentials(mqtt.username, mqtt.password)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def _ssl(self) -> ssl.SSLContext | bool:
        mqtt = self.config.mqtt
        if not mqtt.tls:
            return False
        context = ssl.create_default_context(cafile=str(mqtt.ca_file) if mqtt.ca_file else None)
        if mqtt.cert_file and mqtt.key_file:
            context.load_cert_chain(str(mqtt.cert_file), str(mqtt.key_file))
        return context

    async def _connect(self, client: Any, stop: asyncio.Event) -> None:
        mqtt = self.config.mqtt
        delay = 1.0
        failures = 0
        while not stop.is_set():
            version = MQTTv311 if mqtt.protocol == "3.1.1" else MQTTv50
            try:
                # gmqtt waits forever for a CONNACK that a broker which just closes the
                # socket (amqtt given an MQTT 5 CONNECT) never sends: bound it.
                async with asyncio.timeout(_CONNECT_TIMEOUT_S):
                    await client.connect(
                        mqtt.host,
                        mqtt.port,
                        ssl=self._ssl(),
                        keepalive=mqtt.keepalive_s,
                        version=version,
                    )
            except (OSError, TimeoutError, gmqtt.mqtt.handler.MQTTConnectError) as exc:
                failures += 1
                if failures == 1:
                    hint = _NO_ANSWER_HINT if isinstance(exc, TimeoutError) else ""
                    log.warning(
                        "cannot connect to the MQTT broker %s:%d (%s)%s; retrying",
                        mqtt.host,
                        mqtt.port,
                        exc or type(exc).__name__,
                        hint,
                    )
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, _MAX_BACKOFF_S)
            else:
                if failures:
                    log.info("connected to the MQTT broker after %d failed attempts", failures)
                return

    def _on_connect(self, client: Any, flags: int, rc: int, properties: Any) -> None:
        del flags, properties
        if rc != 0:
            log.error("the MQTT broker refused the connection (code %s)", rc)
            return
        self.counters["connects"] += 1
        client.failed_reconnects = 0
        # Subscribe on every connect: cheap, and right even if the session expired. The
        # retained state/meta/status it brings again are deduplicated by the store.
        client.subscribe([gmqtt.Subscription(f, qos=1) for f in self.filters()])
        for topic in self._hub_status_topics():
            client.publish(topic, self._hub_status(online=True), qos=1, retain=True)
        self._connected.set()
        # Publish every known watermark again: a broker that lost its retained store (no
        # persistence) must not leave agents waiting for an ack that never comes.
        for agent, site in self._sites.items():
            self._ack_dirty.setdefault(agent, site)
        self._ack_wake.set()
        log.info("connected to MQTT as %s", self.config.mqtt.client_id)

    def _on_subscribe(self, client: Any, mid: int, qos: Any, properties: Any) -> None:
        del client, mid, properties
        if any(q >= 0x80 for q in qos):
            log.error("the MQTT broker refused some subscriptions (codes %s); check its ACL", qos)
        self._subscribed.set()

    def _on_disconnect(self, client: Any, packet: Any, exc: Any = None) -> None:
        del client, packet, exc
        if self._connected.is_set():
            log.warning("lost the MQTT connection; reconnecting")
        self._connected.clear()
        self._subscribed.clear()

    # -- flow control ------------------------------------------------------------------------

    def _pause_reading(self) -> None:
        client = self._client
        transport = socket_transport(client) if client is not None else None
        if transport is None:
            if not self._no_transport_logged and client is not None and client.is_connected:
                self._no_transport_logged = True
                log.error("cannot reach gmqtt's transport: the hub cannot pause its intake")
            return
        # Checked on every message while over the limit: asyncio's StreamReader resumes a
        # transport it paused itself, which may undo our pause; then we pause it again.
        if transport.is_reading():
            transport.pause_reading()
            self._paused = transport
            self._reads_paused += 1

    def _resume_reading(self) -> None:
        transport, self._paused = self._paused, None
        if transport is not None and not transport.is_closing() and not transport.is_reading():
            transport.resume_reading()

    async def _on_message(
        self, client: Any, topic: str, payload: bytes, qos: int, properties: Any
    ) -> int:
        # gmqtt sends the PUBACK when this returns: pending from here to the return.
        self._pending += 1
        self._pending_peak = max(self._pending_peak, self._pending)
        if self._pending >= self.max_pending:
            self._pause_reading()
        try:
            return await self._take(topic, payload, properties)
        finally:
            self._pending -= 1
            if self._paused is not None and self._pending <= self.max_pending // 2:
                self._resume_reading()

    async def _take(self, topic: str, payload: bytes, properties: Any) -> int:
        if self._closing:
            return PUBACK_NOT_COMMITTED
        self.counters["received"] += 1
        if not payload:
            self.counters["empty"] += 1  # a cleared retained message: nothing to store
            return PUBACK_OK
        retained = bool(properties.get("retain")) if isinstance(properties, dict) else False
        pending = _Pending(self.classify(topic, bytes(payload), retained=retained))
        await self._queue.put(pending)
        return await pending.done

    def classify(self, topic: str, payload: bytes, *, retained: bool = False) -> Item:
        """Turn one MQTT message into what the store takes, or into a rejection."""
        now = self.clock()

        def reject(category: str, reason: str) -> Rejection:
            self.rejected_by_reason[category] += 1
            log.info("rejected a message on %s: %s", topic, reason)
            return Rejection(received_at=now, topic=topic, payload=payload, reason=reason)

        try:
            ref = parse_topic(topic, self.root)
        except ContractError as exc:
            return reject("topic", exc.reason)
        try:
            if ref.channel is Channel.STATUS:
                status = decode_status(payload)
                if status.agent != ref.agent:
                    return reject(
                        "agent_mismatch",
                        f"agent in payload {status.agent!r} does not match topic {ref.agent!r}",
                    )
                self._sites[status.agent] = ref.site
                if not retained:
                    self._epochs[status.agent] = status.epoch
                return StatusUpdate(
                    status=status, site=ref.site, received_at=now, retained=retained
                )
            if ref.machine is None:
                return reject("topic", f"topic {topic!r} is not one the hub ingests")
            envelope = decode_envelope(payload)
        except ContractError as exc:
            return reject("payload", exc.reason)
        except Exception as exc:
            # Whatever a payload does to the decoder, it is rejected and acknowledged: an
            # exception here would leave it unacknowledged in the broker's in-flight window,
            # redelivered forever, and a handful of them would stop all ingest.
            log.exception("decoding a message on %s failed unexpectedly", topic)
            return reject("payload", f"could not be decoded ({type(exc).__name__})")
        if envelope.agent != ref.agent:
            return reject(
                "agent_mismatch",
                f"agent in payload {envelope.agent!r} does not match topic {ref.agent!r}",
            )
        if envelope.machine != ref.machine:
            return reject(
                "machine_mismatch",
                f"machine in payload {envelope.machine!r} does not match topic {ref.machine!r}",
            )
        if str(envelope.kind) != str(ref.channel):
            return reject(
                "kind_mismatch",
                f"kind in payload {str(envelope.kind)!r} does not match topic channel "
                f"{str(ref.channel)!r}",
            )
        self._sites[envelope.agent] = ref.site
        epoch = envelope.epoch if envelope.epoch is not None else self._epochs.get(envelope.agent)
        verdict = self.clock_sanity.check(
            envelope.agent,
            epoch,
            envelope.ts,
            envelope.mono,
            now,
            live=not (envelope.replay or retained),
        )
        if verdict.flag is None:
            return Incoming(envelope=envelope, site=ref.site, received_at=now, retained=retained)
        self.counters[f"clock_{verdict.flag}"] += 1
        if self.counters[f"clock_{verdict.flag}"] in (1, 100, 10_000):
            log.warning(
                "agent %s (epoch %s) sends ts %d, %d ms from what its monotonic clock says;"
                " %s (%d so far)",
                envelope.agent,
                epoch,
                envelope.ts,
                verdict.ts - envelope.ts,
                verdict.flag,
                self.counters[f"clock_{verdict.flag}"],
            )
        return Incoming(
            envelope=_shift_ts(envelope, verdict),
            site=ref.site,
            received_at=now,
            retained=retained,
            clock=str(verdict.flag),
            agent_ts=envelope.ts,
        )

    # -- the batch writer ----------------------------------------------------------------------

    async def _write_loop(self) -> None:
        """Commit batches until the stop marker; then commit what is still queued."""
        loop = asyncio.get_running_loop()
        stopping = False
        while True:
            if stopping:
                await asyncio.sleep(0)  # let blocked on_message calls enqueue
                if self._queue.empty():
                    return
                first = self._queue.get_nowait()
            else:
                first = await self._queue.get()
            if first is None:
                stopping = True
                continue
            batch = [first]
            deadline = loop.time() + self.max_delay_s
            # Group commit: take whatever is already queued, yielding once so messages
            # that are on the socket get parsed, until the batch is full or nothing comes.
            while len(batch) < self.max_batch and loop.time() < deadline:
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    await asyncio.sleep(0)
                    if self._queue.empty():
                        break
                    continue
                if item is None:
                    stopping = True
                    continue
                batch.append(item)
            await self._commit(batch)

    async def _commit(self, batch: list[_Pending]) -> None:
        write = WriteBatch(
            records=[p.item for p in batch if isinstance(p.item, Incoming)],
            statuses=[p.item for p in batch if isinstance(p.item, StatusUpdate)],
            rejections=[p.item for p in batch if isinstance(p.item, Rejection)],
        )
        result = await self._write_with_retry(write)
        if result is None:
            for p in batch:
                if not p.done.done():
                    p.done.set_result(PUBACK_NOT_COMMITTED)
            return
        self.counters["batches"] += 1
        self.counters["stored"] += len(result.new)
        self.counters["duplicates"] += result.duplicates
        self.counters["rejected"] += len(write.rejections)
        self.counters["statuses"] += len(write.statuses)
        for inc in result.new:
            if inc.envelope.kind is RecordKind.EVENT:
                loss = parse_data_loss(inc.envelope.body)
                if loss is not None:
                    self.counters["data_loss_events"] += 1
                    self.counters["data_loss_declared_seqs"] += loss.count
                    log.warning(
                        "agent %s declares %d seq(s) of stream %s lost (%s): %s",
                        inc.envelope.agent,
                        loss.count,
                        loss.stream,
                        loss.reason,
                        list(loss.ranges)[:5],
                    )
        rows = self.trackers.apply(result)
        if rows:
            try:
                await self.store.add_states(rows)
            except StoreError:
                log.exception("could not store %d derived state change(s)", len(rows))
        if self.jobs is not None and result.new:
            try:
                await self.jobs.apply(result.new)
            except Exception:  # the batch is committed; the book rebuilds from the store
                self.counters["job_book_errors"] += 1
                log.exception("the job book failed on a batch of %d record(s)", len(result.new))
        self.trackers.publish_pending()
        self._note_acks(list(write.records))
        for p in batch:
            if not p.done.done():
                p.done.set_result(PUBACK_OK)

    async def _write_with_retry(self, write: WriteBatch) -> BatchResult | None:
        delay = 0.5
        failures = 0
        while True:
            try:
                result = await self.store.write(write)
            except StoreError as exc:
                failures += 1
                self.counters["store_errors"] += 1
                if failures == 1:
                    log.error(  # noqa: TRY400 - logged once per outage, the cause is in the text
                        "storing a batch failed (%s); holding its PUBACKs and retrying", exc
                    )
                if self._closing:
                    return None
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_BACKOFF_S)
            else:
                if failures:
                    log.info("storing works again after %d failed attempts", failures)
                return result

    # -- the _ack watermark publisher --------------------------------------------------------

    def _note_acks(self, records: list[Incoming]) -> None:
        # Duplicates too: an agent that replays committed records needs the watermark.
        for inc in records:
            self._ack_dirty[inc.envelope.agent] = inc.site
        if self._ack_dirty:
            self._ack_wake.set()

    async def _ack_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            timeout: float | None = None
            if self._ack_dirty and self.connected:
                now = loop.time()
                due = {
                    a: self._ack_last.get(a, -1e9) + self.ack_interval_s for a in self._ack_dirty
                }
                for agent in [a for a, t in due.items() if t <= now]:
                    await self._publish_ack(agent)
                pending = [
                    self._ack_last.get(a, -1e9) + self.ack_interval_s for a in self._ack_dirty
                ]
                # At least a short pause: a publish that failed is retried, not spun on.
                timeout = max(0.1, min(pending) - loop.time()) if pending else None
            if self._closing:
                return
            self._ack_wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ack_wake.wait(), timeout)

    async def _publish_ack(self, agent: str) -> None:
        # Taken off the dirty list before reading: a commit during the read marks it again.
        client = self._client
        if client is None:
            return
        site = self._ack_dirty.pop(agent)
        try:
            streams = await self.store.watermarks(agent)
            payload = encode_ack(AckWatermark(streams=streams, ts=self.clock()))
            client.publish(
                AgentTopics(site=site, agent=agent, root=self.root).ack, payload, qos=1, retain=True
            )
        except StoreError:
            log.exception("cannot read the watermark of agent %s", agent)
            self._ack_dirty.setdefault(agent, site)
            return
        except OverflowError:
            self._ack_dirty.setdefault(agent, site)  # every packet id is in flight: retry
            return
        self._ack_last[agent] = asyncio.get_running_loop().time()
        self.counters["acks_published"] += 1

    # -- gap detection -----------------------------------------------------------------------

    async def _gap_loop(self) -> None:
        while True:
            await asyncio.sleep(self.gap_check_s)
            try:
                await self.check_gaps()
            except StoreError:
                log.exception("gap check failed")

    async def check_gaps(self) -> None:
        """Ask for a replay of every stream stuck below its max for the reorder timeout."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        lagging = await self.store.lagging_streams()
        seen = set()
        # The gap asked about least often first, so one dead stream cannot starve the rest.
        lagging.sort(key=lambda lag: self._replay_tries.get((lag.agent, lag.stream), 0))
        for lag in lagging:
            key = (lag.agent, lag.stream)
            seen.add(key)
            stuck = self._stuck.get(key)
            if stuck is None or stuck[0] != lag.contiguous_seq:
                self._stuck[key] = (lag.contiguous_seq, now)
                self._replay_tries.pop(key, None)  # progress: a new gap
                continue
            if now - stuck[1] < self.reorder_timeout_s:
                continue
            tries = self._replay_tries.get(key, 0)
            if tries >= self.max_replay_tries:
                continue
            if now - self._replay_last.get(lag.agent, -1e9) < self.replay_interval_s:
                continue
            if self._request_replay(lag.agent, lag.stream, lag.contiguous_seq + 1):
                self._replay_last[lag.agent] = now
                self._replay_tries[key] = tries + 1
                if tries == 0:
                    self.counters["gaps_detected"] += 1
                elif tries + 1 == self.max_replay_tries:
                    self.counters["gaps_abandoned"] += 1
                    log.warning(
                        "agent %s never filled the gap after seq %d of stream %s; giving up"
                        " after %d replay requests",
                        lag.agent,
                        lag.contiguous_seq,
                        lag.stream,
                        self.max_replay_tries,
                    )
        for key in [k for k in self._stuck if k not in seen]:
            del self._stuck[key]
        for key in [k for k in self._replay_tries if k not in seen]:
            del self._replay_tries[key]
        self.counters["gaps_open"] = len(seen)

    def _request_replay(self, agent: str, stream: str, from_seq: int) -> bool:
        client = self._client
        site = self._sites.get(agent)
        if client is None or site is None or not self.connected:
            return False
        topic = AgentTopics(site=site, agent=agent, root=self.root).cmd("replay")
        payload = encode_replay(ReplayRequest(stream=stream, from_seq=from_seq))
        try:
            client.publish(topic, payload, qos=1, message_expiry_interval=REPLAY_EXPIRY_S)
        except OverflowError:
            return False
        self.counters["replay_requests"] += 1
        log.info("asked agent %s to replay stream %s from seq %d", agent, stream, from_seq)
        return True


def _shift_ts(envelope: Envelope, verdict: Verdict) -> Envelope:
    """``envelope`` with ``ts`` from the verdict; telemetry sample times move by as much."""
    delta = verdict.ts - envelope.ts
    body = envelope.body
    if envelope.kind is RecordKind.TELEMETRY and isinstance(body.get("samples"), list):
        body = {
            **body,
            "samples": [
                {**sample, "ts": max(0, int(sample["ts"]) + delta)}
                if isinstance(sample, dict) and isinstance(sample.get("ts"), int)
                else sample
                for sample in body["samples"]
            ],
        }
    return replace(envelope, ts=verdict.ts, body=body)
