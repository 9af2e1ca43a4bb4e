"""One owner of the MQTT client: :class:`MqttConnection` (gmqtt underneath).

``async with MqttConnection(settings, will=...) as conn:`` starts connecting in the
background (the agent keeps reading machines while the broker is away) and reconnects by
itself with exponential backoff plus jitter. ``await conn.publish(...)`` waits while the
broker is unreachable and keeps at most the broker's Receive Maximum of QoS 1 messages
un-acknowledged, released on PUBACK, so gmqtt never raises ``OverflowError`` (it has no
publish queue of its own). ``conn.subscribe(...)`` and ``async for msg in conn.messages()``
deliver incoming messages through a bounded queue; the PUBACK is sent only once a message
is queued (``optimistic_acknowledgement=False``), so a full queue slows the broker down
instead of losing acknowledged messages.

Session settings follow reference/mqtt-iiot.md 8(c): a stable client id, clean_session
False with a session expiry (MQTT 5), a retained will on ``_status`` with a will delay.
Everything also works on MQTT 3.1.1 (amqtt in the demo): gmqtt downgrades by itself when a
broker refuses 5.0, and MQTT 5 properties are then simply not sent.

gmqtt's own loggers (``gmqtt.*``) are chatty at WARNING on every failed retry; the agent's
``main`` raises them to ERROR so that this module's one line per outage is what shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final, Self

import gmqtt
from gmqtt.mqtt.constants import MQTTv50, MQTTv311
from gmqtt.storage import PersistentStorage

from shopfloor.agent.config import MqttProtocol, MqttSettings
from shopfloor.agent.errors import MqttError

log = logging.getLogger(__name__)

#: Mosquitto's default ``max_inflight_messages`` (its CONNACK Receive Maximum).
DEFAULT_RECEIVE_MAXIMUM: Final = 20
#: gmqtt raises once ``receive_maximum - 1`` ids are in use, and SUBSCRIBE shares the pool.
_ID_HEADROOM: Final = 2
_NON_RETRYABLE: Final = frozenset({1, 2, 4, 5, 129, 130, 132, 133, 134, 135, 138, 140, 144})


@dataclass(frozen=True, slots=True)
class Will:
    """The message the broker publishes for us when we vanish."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True
    delay_s: int = 0


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    topic: str
    payload: bytes
    qos: int
    retain: bool


class _Backoff:
    """Exponential backoff with jitter: a fleet must not reconnect in lockstep."""

    def __init__(self, min_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self.min_s = min_s
        self.max_s = max_s
        self._rng = rng or random.Random()
        self._attempt = 0

    def next(self) -> float:
        ceiling = min(self.max_s, self.min_s * 2.0**self._attempt)
        self._attempt = min(self._attempt + 1, 32)
        return ceiling * self._rng.uniform(0.5, 1.0)

    def reset(self) -> None:
        self._attempt = 0


class _Window:
    """Counts un-acknowledged QoS 1 publishes; ``acquire`` waits while the window is full."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        while self.used >= self.limit:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
        self.used += 1

    def release(self, count: int = 1) -> None:
        self.used = max(0, self.used - count)
        self._wake()

    def resize(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._wake()

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)


class _TrackedStorage(PersistentStorage):  # type: ignore[misc]
    """gmqtt's in-flight store, telling the window when a message is acked or discarded."""

    def __init__(self, owner: MqttConnection) -> None:
        super().__init__()
        self._owner = owner

    def remove_message_by_mid(self, mid: int) -> None:
        had = mid in self._messages
        super().remove_message_by_mid(mid)
        if had:
            self._owner._acked(1)

    def clear(self) -> None:
        mids = [mid for mid, _ in self.get_all()]
        super().clear()
        if mids:
            self._owner._session_lost(mids)


class _Client(gmqtt.Client):  # type: ignore[misc]
    """gmqtt's client with our backoff on its reconnect loop, and its tasks tracked."""

    def __init__(self, owner: MqttConnection, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._owner = owner

    async def reconnect(self, delay: bool = False) -> None:
        owner = self._owner
        if owner._closing or not owner._established:
            return  # before the first CONNACK, MqttConnection._connect_loop retries
        task = asyncio.current_task()
        if task is not None:
            owner._gmqtt_tasks.add(task)
            task.add_done_callback(owner._gmqtt_tasks.discard)
        if delay:
            self.set_config({"reconnect_delay": owner._backoff.next()})
        await super().reconnect(delay=delay)


def _tls_context(settings: MqttSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.cert_file is not None:
        context.load_cert_chain(
            str(settings.cert_file), str(settings.key_file) if settings.key_file else None
        )
    if settings.tls_insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class MqttConnection:
    """The agent's one MQTT connection. See the module docstring."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        will: Will | None = None,
        max_inflight: int = DEFAULT_RECEIVE_MAXIMUM,
        incoming_size: int = 100,
        connect_timeout_s: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self._will = will
        self._max_inflight = max_inflight
        self._connect_timeout_s = connect_timeout_s
        self._backoff = _Backoff(settings.reconnect_min_s, settings.reconnect_max_s, rng)
        self._window = _Window(max(1, max_inflight - _ID_HEADROOM))
        self._incoming: asyncio.Queue[IncomingMessage] = asyncio.Queue(maxsize=incoming_size)
        self._subscriptions: dict[str, int] = {}
        self._connected = False
        self._generation = 0
        self._changed = asyncio.Event()
        self._fatal: MqttError | None = None
        self._closing = False
        self._established = False
        self._attempt_lost = asyncio.Event()
        self._lost_at: float | None = None
        self._connect_task: asyncio.Task[None] | None = None
        self._gmqtt_tasks: set[asyncio.Task[Any]] = set()
        self._client: _Client | None = None
        self.dropped_incoming = 0
        self.lost_in_flight = 0

    # -- state ---------------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        return self._connected

    @property
    def generation(self) -> int:
        """How many times a connection was established (1 after the first CONNACK)."""
        return self._generation

    @property
    def in_flight(self) -> int:
        return self._window.used

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_connected(self, *, after: int = 0) -> int:
        """Wait for a connection newer than generation ``after``; return its generation.

        Raises :class:`MqttError` if the broker refused us for good (bad credentials).
        """
        while True:
            if self._fatal is not None:
                raise self._fatal
            if self._closing:
                raise MqttError("the MQTT connection is closed", broker=self.settings.url)
            if self._connected and self._generation > after:
                return self._generation
            await self._changed.wait()

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        s = self.settings
        will = None
        if self._will is not None:
            props = {"will_delay_interval": self._will.delay_s} if self._will.delay_s else {}
            will = gmqtt.Message(
                self._will.topic,
                self._will.payload,
                qos=self._will.qos,
                retain=self._will.retain,
                **props,
            )
        client = _Client(
            self,
            s.client_id,
            clean_session=False,
            optimistic_acknowledgement=False,
            will_message=will,
            persistent_storage=_TrackedStorage(self),
            logger=logging.getLogger("gmqtt.client"),
            session_expiry_interval=s.session_expiry_s,
            receive_maximum=self._incoming.maxsize or 65535,
        )
        if s.username is not None:
            client.set_auth_credentials(s.username, s.password)
        client.set_config({"reconnect_retries": -1, "reconnect_delay": s.reconnect_min_s})
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client
        self._connect_task = asyncio.create_task(self._connect_loop(), name="mqtt-connect")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self, *, timeout_s: float = 5.0) -> None:
        """Disconnect cleanly (no will), stop reconnecting, forget gmqtt's tasks."""
        if self._closing:
            return
        self._closing = True
        was_connected = self._connected
        self._connected = False
        self._notify()
        tasks = [t for t in (self._connect_task, *self._gmqtt_tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        client = self._client
        if client is not None:
            try:
                async with asyncio.timeout(timeout_s):
                    await client.disconnect()
            except (OSError, TimeoutError, AttributeError) as exc:
                # AttributeError: gmqtt has no connection object yet (never connected).
                log.debug("mqtt: disconnect from %s failed: %s", self.settings.url, exc)
        if was_connected:
            log.info("mqtt: disconnected from %s", self.settings.url)

    async def _connect_loop(self) -> None:
        """The first connection; after it gmqtt reconnects by itself (with our backoff)."""
        client = self._client
        assert client is not None
        s = self.settings
        tls: ssl.SSLContext | bool = _tls_context(s) if s.tls else False
        # MQTT 5 first, then 3.1.1: gmqtt downgrades only on a CONNACK refusing 5.0, but some
        # 3.1.1-only brokers (amqtt) just drop a 5.0 CONNECT, so alternate on such failures.
        versions = [MQTTv311] if s.protocol is MqttProtocol.V311 else [MQTTv50, MQTTv311]
        attempt = 0
        warned = False
        while True:
            version = versions[attempt % len(versions)]
            try:
                async with asyncio.timeout(self._connect_timeout_s):
                    await self._connect_once(client, tls, version)
            except gmqtt.MQTTConnectError as exc:
                if getattr(exc, "_code", None) in _NON_RETRYABLE:
                    self._fail(self._refused(exc))
                    return
                log.warning("mqtt: %s refused the connection (%s); retrying", s.url, exc)
                self._established = True  # gmqtt retries a transient refusal itself
                return
            except (OSError, TimeoutError) as exc:
                if not warned:
                    reason = str(exc) or type(exc).__name__
                    log.warning("mqtt: cannot reach %s (%s); retrying with backoff", s.url, reason)
                    warned = True
                with contextlib.suppress(OSError, AttributeError):
                    await client.disconnect()
                if not isinstance(exc, ConnectionRefusedError):
                    attempt += 1  # the broker was there but did not answer this version
            else:
                return
            await asyncio.sleep(self._backoff.next())

    async def _connect_once(
        self, client: _Client, tls: ssl.SSLContext | bool, version: int
    ) -> None:
        """One CONNECT; fails fast when the broker hangs up instead of sending a CONNACK."""
        s = self.settings
        self._attempt_lost = asyncio.Event()
        connect = asyncio.create_task(
            client.connect(s.host, s.port, ssl=tls, keepalive=s.keepalive_s, version=version),
            name="mqtt-connect-attempt",
        )
        lost = asyncio.create_task(self._attempt_lost.wait(), name="mqtt-connect-watch")
        try:
            await asyncio.wait({connect, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            if not connect.done():
                connect.cancel()
            await asyncio.gather(connect, lost, return_exceptions=True)
        if connect.cancelled():
            raise ConnectionResetError("the broker closed the connection before CONNACK")
        connect.result()

    def _refused(self, exc: object) -> MqttError:
        url = self.settings.url
        return MqttError(
            f"broker {url} refused the connection for good: {exc}; check username, password "
            f"and the broker's ACL for client id {self.settings.client_id!r}",
            broker=url,
            code=getattr(exc, "_code", None),
        )

    def _fail(self, error: MqttError) -> None:
        if self._fatal is not None:
            return
        log.error("mqtt: %s", error)
        self._fatal = error
        self._notify()

    # -- gmqtt callbacks (sync, on the event loop) ---------------------------------------

    def _on_connect(self, client: Any, flags: int, rc: int, properties: dict[str, Any]) -> None:
        del flags, rc
        self._backoff.reset()
        del properties  # merges our CONNECT properties over the broker's; read CONNACK's own
        connack = getattr(client._package_handler, "_connack_properties", {})
        broker_max = connack.get("receive_maximum", [DEFAULT_RECEIVE_MAXIMUM])[0]
        self._window.resize(min(self._max_inflight, int(broker_max)) - _ID_HEADROOM)
        if self._subscriptions:
            # One SUBSCRIBE packet (one packet id) for all of them, whether or not the broker
            # kept our session: re-subscribing is harmless and brings retained messages again.
            client.subscribe(
                [gmqtt.Subscription(topic, qos=qos) for topic, qos in self._subscriptions.items()]
            )
            # gmqtt keeps a list of everything ever subscribed; we track our own.
            client.subscriptions.clear()
        if self._lost_at is not None:
            log.info(
                "mqtt: reconnected to %s after %.1f s",
                self.settings.url,
                time.monotonic() - self._lost_at,
            )
            self._lost_at = None
        else:
            log.info("mqtt: connected to %s as %s", self.settings.url, self.settings.client_id)
        self._connected = True
        self._established = True
        self._generation += 1
        self._notify()

    def _on_disconnect(self, client: Any, packet: Any, exc: Any = None) -> None:
        del packet, exc
        handler = client._package_handler
        if getattr(handler, "_permanent_failure", False):
            self._fail(self._refused(handler._error))
        if not self._established:
            self._attempt_lost.set()
        if self._connected and not self._closing:
            log.warning("mqtt: lost connection to %s; reconnecting", self.settings.url)
            self._lost_at = time.monotonic()
        self._connected = False
        self._notify()

    async def _on_message(
        self, client: Any, topic: str, payload: bytes, qos: int, properties: dict[str, Any]
    ) -> int:
        del client
        message = IncomingMessage(
            topic=topic, payload=payload, qos=qos, retain=bool(properties.get("retain", 0))
        )
        if qos == 0:
            try:
                self._incoming.put_nowait(message)
            except asyncio.QueueFull:
                self.dropped_incoming += 1
        else:
            # PUBACK goes out when this returns: only once the message is safely queued.
            await self._incoming.put(message)
        return 0

    # -- storage hooks -------------------------------------------------------------------

    def _acked(self, count: int) -> None:
        self._window.release(count)

    def _session_lost(self, mids: list[int]) -> None:
        """The broker lost our session: gmqtt drops the un-acked messages; free their slots."""
        self.lost_in_flight += len(mids)
        log.warning(
            "mqtt: %s lost our session; %d un-acknowledged messages were discarded",
            self.settings.url,
            len(mids),
        )
        if self._client is not None:
            for mid in mids:
                # gmqtt forgets to free these packet ids, which would shrink the pool for good.
                self._client._package_handler.id_generator.free_id(mid)
        self._window.release(len(mids))

    # -- publishing ----------------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        expiry_s: int | None = None,
    ) -> None:
        """Publish; waits while disconnected and while the in-flight window is full.

        Returns once the message is handed to the socket, not when it is acknowledged.
        """
        if qos not in (0, 1):
            raise ValueError("only QoS 0 and 1 are used (DESIGN.md: no QoS 2)")
        props = {"message_expiry_interval": expiry_s} if expiry_s is not None else {}
        while True:
            await self.wait_connected()
            if qos:
                await self._window.acquire()
            if self._connected:
                break
            if qos:  # lost the connection while waiting for a slot: wait for the next one
                self._window.release()
        assert self._client is not None
        try:
            self._client.publish(topic, payload, qos=qos, retain=retain, **props)
        except OverflowError as exc:  # the window should make this impossible
            if qos:
                self._window.release()
            raise MqttError(
                f"too many un-acknowledged messages to {self.settings.url}",
                broker=self.settings.url,
            ) from exc
        except (OSError, AttributeError) as exc:
            if qos:
                self._window.release()
            raise MqttError(
                f"publish to {self.settings.url} failed: {exc}", broker=self.settings.url
            ) from exc

    async def drain(self, timeout_s: float | None = None) -> bool:
        """Wait until every QoS 1 publish so far is acknowledged; False on timeout."""
        try:
            async with asyncio.timeout(timeout_s):
                while self._window.used:
                    assert self._client is not None
                    await self._client._persistent_storage.wait_empty()
                    await asyncio.sleep(0)
        except TimeoutError:
            return False
        return True

    # -- subscribing ---------------------------------------------------------------------

    async def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe now if connected, and again after every reconnect."""
        self._subscriptions[topic] = qos
        while self._connected and self._client is not None:
            try:
                self._client.subscribe(topic, qos=qos)
            except OverflowError:
                # Every packet id is in flight (the window leaves one spare); try again soon.
                await asyncio.sleep(0.05)
                continue
            self._client.subscriptions.clear()
            break

    async def messages(self) -> AsyncIterator[IncomingMessage]:
        """Incoming messages for every subscription, in arrival order."""
        while True:
            yield await self._incoming.get()
