"""GRBL proxy mode: the agent sits between the operator's sender and the controller.

Usage (the app does this when a GRBL machine has ``proxy_pty`` or ``proxy_tcp``)::

    async with GrblProxySession("router-1", open_link, clock=SystemClock(),
                                options=ProxyOptions(pty=Path("/run/shopfloor/router-1"))) as s:
        async for item in s.readings():
            records = tracker.update(item)

The session owns the controller's port (a :class:`~shopfloor.agent.links.base.Link`) and
offers the sender a pseudo-terminal and/or a TCP port. Bytes pass through unchanged and at
once in both directions: one read, one write, no framing, no added newline. A
:class:`~shopfloor.agent.proxy.watcher.StreamWatcher` looks at both directions afterwards
(host bytes just before they are written, so an ``ok`` can never be seen before its line).

The proxy writes only one thing of its own: a ``?`` when nobody asked for a status report
within the poll interval. ``?`` is a real-time byte: Grbl never puts it in its RX buffer
and never answers it with ``ok``, so it cannot upset a sender's character counting. Its
status report is forwarded to the sender like any other: senders treat ``<...>`` as a push
message (it never counts as an answer to a line). The proxy never sends ``$I``, ``$G`` or
any line: its ``ok`` would be taken by the sender as the answer to one of its own lines.

Nothing the proxy does waits for the consumer of :meth:`GrblProxySession.readings`: items
go into a bounded queue that drops the oldest telemetry, then the oldest item, and counts
(:attr:`GrblProxySession.dropped`). With the hub or the broker down, or the app stuck, the
machine still works. When the controller's port fails, the pty and TCP port stay up (the
sender's port does not vanish), bytes from the sender are dropped and counted, a
LINK_LOST reading is queued once, and the port is reopened with backoff.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncGenerator, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Final, Self

from shopfloor.agent.clock import Clock
from shopfloor.agent.errors import LinkError
from shopfloor.agent.links.base import Link
from shopfloor.agent.proxy.endpoints import PtyEndpoint, TcpEndpoint
from shopfloor.agent.proxy.options import ProxyOptions
from shopfloor.agent.proxy.watcher import StreamWatcher, WatcherSettings
from shopfloor.agent.readings import Reading
from shopfloor.agent.sessions.base import SessionItem
from shopfloor.agent.sessions.polling import (
    LinkHealth,
    SessionError,
    check_settings,
    is_telemetry,
    stop_runner,
)
from shopfloor.contract.states import Observation

if TYPE_CHECKING:
    import random

__all__ = ["GrblProxySession"]

_log = logging.getLogger(__name__)

_READ_SIZE: Final = 4096
_STATUS_QUERY: Final = b"?"


class _DropQueue:
    """Bounded, and ``put`` never waits: it drops the oldest telemetry, else the oldest item."""

    def __init__(self, maxsize: int) -> None:
        self._items: collections.deque[SessionItem] = collections.deque()
        self._maxsize = maxsize
        self._readable = asyncio.Event()
        self._closed = False
        self._error: BaseException | None = None
        self.dropped = 0
        self.dropped_events = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: SessionItem) -> None:
        if len(self._items) >= self._maxsize:
            for i, queued in enumerate(self._items):
                if is_telemetry(queued):
                    del self._items[i]
                    self.dropped += 1
                    break
            else:
                if is_telemetry(item):
                    self.dropped += 1
                    return
                self._items.popleft()
                self.dropped += 1
                self.dropped_events += 1
                if self.dropped_events == 1:
                    _log.warning("proxy: the readings consumer is stuck; dropping events")
        self._items.append(item)
        self._readable.set()

    async def get(self) -> SessionItem | None:
        while not self._items:
            if self._closed:
                if self._error is not None:
                    raise SessionError("the proxy session failed") from self._error
                return None
            self._readable.clear()
            await self._readable.wait()
        return self._items.popleft()

    def close(self, error: BaseException | None = None) -> None:
        self._closed = True
        self._error = error
        self._readable.set()


class GrblProxySession:
    """See the module docstring."""

    def __init__(
        self,
        machine_id: str,
        open_link: Callable[[], Link],
        *,
        clock: Clock,
        options: ProxyOptions,
        poll_interval_s: float = 0.25,
        silence_timeout_s: float = 5.0,
        laser_mode: bool = False,
        reconnect_backoff: tuple[float, float] = (0.5, 10.0),
        queue_size: int = 256,
        rng: random.Random | None = None,
    ) -> None:
        if options.pty is None and options.tcp_port is None:
            raise ValueError("proxy mode needs a pty path or a TCP port")
        check_settings(poll_interval_s, silence_timeout_s, queue_size, reconnect_backoff)
        self.machine_id = machine_id
        self.options = options
        self._open_link = open_link
        self._clock = clock
        self._poll_interval = poll_interval_s
        self._health = LinkHealth(
            machine_id,
            silence_timeout_s=silence_timeout_s,
            reconnect_backoff=reconnect_backoff,
            rng=rng,
            log=_log,
        )
        self.watcher = StreamWatcher(
            WatcherSettings(
                poll_interval_s=poll_interval_s,
                end_idle_s=options.end_idle_s,
                end_quiet_s=options.end_quiet_s,
                stalled_end_s=options.stalled_end_s,
                min_job_lines=options.min_job_lines,
                total_patterns=options.total_patterns,
                program_patterns=options.program_patterns,
                laser_mode=laser_mode,
            )
        )
        self._queue = _DropQueue(queue_size)
        self.pty = PtyEndpoint(options.pty) if options.pty is not None else None
        self.tcp = (
            TcpEndpoint(options.tcp_host, options.tcp_port)
            if options.tcp_port is not None
            else None
        )
        self._link: Link | None = None
        self._runner: asyncio.Task[None] | None = None
        self._log_extra = {"machine": machine_id}
        #: Link (re)opens, bytes passed each way, and sender bytes dropped while the port was down.
        self.connects = 0
        self.bytes_to_device = 0
        self.bytes_to_host = 0
        self.host_bytes_dropped = 0

    @property
    def dropped(self) -> int:
        """Items dropped because the consumer of :meth:`readings` was too slow."""
        return self._queue.dropped

    # -- lifecycle

    async def __aenter__(self) -> Self:
        if self._runner is not None:
            raise RuntimeError("a session can be entered only once")
        if self.pty is not None:
            self.pty.open()
        try:
            if self.tcp is not None:
                await self.tcp.open(self._from_host)
        except BaseException:
            if self.pty is not None:
                self.pty.close()
            raise
        self._runner = asyncio.create_task(self._run(), name=f"grbl-proxy:{self.machine_id}")
        where = [str(self.options.pty)] if self.pty is not None else []
        if self.tcp is not None:
            where.append(f"tcp {self.tcp.host}:{self.tcp.port}")
        _log.info(
            "machine %s: proxy for senders at %s",
            self.machine_id,
            " and ".join(where),
            extra=self._log_extra,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop, close the controller's port, the pty and the TCP port. Safe to call twice."""
        try:
            await stop_runner(self._runner)
        finally:
            if self.tcp is not None:
                await self.tcp.close()
            if self.pty is not None:
                self.pty.close()

    async def readings(self) -> AsyncGenerator[SessionItem, None]:
        """Readings, device events (jobs included) and device info, until the session closes."""
        if self._runner is None:
            raise RuntimeError("use `async with` on the session before reading")
        while True:
            item = await self._queue.get()
            if item is None:
                return
            yield item

    # -- the byte pump

    async def _from_host(self, data: bytes) -> None:
        """Sender to controller: watch, then forward the chunk as it came."""
        ts, mono = self._clock.wall_ms(), self._clock.mono_ms()
        self._emit(self.watcher.host_bytes(data, ts, mono))
        link = self._link
        if link is None:
            self.host_bytes_dropped += len(data)
            return
        try:
            await link.write(data)
        except LinkError:
            self.host_bytes_dropped += len(data)  # the reader sees the failure and reconnects
            return
        self.bytes_to_device += len(data)

    def _to_host(self, data: bytes) -> None:
        self.bytes_to_host += len(data)
        if self.pty is not None:
            self.pty.send(data)
        if self.tcp is not None:
            self.tcp.send(data)

    def _emit(self, items: list[SessionItem]) -> None:
        for item in items:
            self._queue.put(item)

    # -- supervisor

    async def _run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                if self.pty is not None:
                    tg.create_task(
                        self.pty.serve(self._from_host), name=f"grbl-proxy-pty:{self.machine_id}"
                    )
                tg.create_task(self._device_loop(), name=f"grbl-proxy-device:{self.machine_id}")
        except asyncio.CancelledError:
            self._queue.close()
            raise
        except BaseException as exc:
            self._queue.close(exc)
            raise

    async def _device_loop(self) -> None:
        while True:
            await self._connect_once()
            await asyncio.sleep(self._health.next_delay())

    async def _connect_once(self) -> None:
        try:
            link = self._open_link()
            await link.open()
        except LinkError as exc:
            self._link_lost(exc)
            return
        self.connects += 1
        try:
            self._link = link
            self._health.connected(asyncio.get_running_loop().time())
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._reader(link), name=f"grbl-proxy-reader:{self.machine_id}")
                tg.create_task(self._poller(link), name=f"grbl-proxy-poller:{self.machine_id}")
        except* LinkError as group:
            self._link_lost(group.exceptions[0])
        finally:
            self._link = None
            try:
                await link.close()
            except LinkError as exc:
                _log.debug("closing %s failed: %s", link.name, exc, extra=self._log_extra)

    def _link_lost(self, exc: BaseException) -> None:
        ts, mono = self._clock.wall_ms(), self._clock.mono_ms()
        self._emit(self.watcher.link_lost(ts, mono, f"link lost: {exc}"))
        if self._health.link_lost(exc):
            self._queue.put(Reading(ts, mono, Observation.LINK_LOST, detail=str(exc)))

    async def _reader(self, link: Link) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await link.read(_READ_SIZE)
            self._to_host(data)  # first: the sender is waiting for it
            items = self.watcher.device_bytes(data, self._clock.wall_ms(), self._clock.mono_ms())
            for item in items:
                if is_telemetry(item):
                    self._health.alive(loop.time())
                self._queue.put(item)

    async def _poller(self, link: Link) -> None:
        loop = asyncio.get_running_loop()
        tick = min(0.1, max(0.02, self._poll_interval / 5))
        while True:
            mono = self._clock.mono_ms()
            if self.watcher.should_poll(mono):
                self.watcher.injected_query(mono)
                await link.write(_STATUS_QUERY)
            self._emit(self.watcher.tick(self._clock.wall_ms(), self._clock.mono_ms()))
            await asyncio.sleep(tick)
            if self._health.silence_due(loop.time()):
                self._queue.put(
                    Reading(
                        self._clock.wall_ms(),
                        self._clock.mono_ms(),
                        Observation.SILENT,
                        detail="no status report",
                    )
                )
