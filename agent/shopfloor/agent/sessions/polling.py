"""The device session shared by every polled protocol: one owner per link.

Usage::

    link = lambda: SerialLink("/dev/ttyUSB0")
    async with PollingSession("router-1", link, GrblDriver(), clock=SystemClock()) as s:
        async for item in s.readings():
            records = tracker.update(item)

The protocol-specific part is a sans-IO :class:`PollDriver`: it says what to write on each
poll and turns the bytes that arrive into readings. This module does the I/O around it.
One connection is one :class:`asyncio.TaskGroup` holding a named reader task (reads the
link and feeds the driver) and a named poller task (writes the driver's poll every poll
interval, and watches for silence). A supervisor task reopens the link with exponential
backoff and jitter when it fails. The link is only ever reopened after it failed: never
to poll (an Arduino resets when its port is opened).

A reading that reports a machine state is proof of life: if none arrives for the silence
timeout the session yields a SILENT reading; if the link fails it yields LINK_LOST, once per
outage. A failure is logged once, and so is the recovery.

Items go through a bounded queue. When the consumer falls behind, the oldest telemetry
reading is dropped (counted in :attr:`PollingSession.dropped`); device events, device info
and SILENT/LINK_LOST readings are never dropped: they wait for room instead.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
from collections.abc import AsyncGenerator, Callable
from types import TracebackType
from typing import Final, Protocol, Self, TypedDict

from shopfloor.agent.clock import Clock
from shopfloor.agent.errors import AgentError, LinkError
from shopfloor.agent.links.base import Link
from shopfloor.agent.readings import Reading
from shopfloor.agent.sessions.base import SessionContext, SessionItem
from shopfloor.contract.states import Observation

__all__ = [
    "LinkHealth",
    "MachineTiming",
    "PollDriver",
    "PollingSession",
    "SessionError",
    "SessionTuning",
    "check_settings",
    "is_telemetry",
    "machine_timing",
    "stop_runner",
]

_log = logging.getLogger(__name__)

_READ_SIZE: Final = 4096
#: Observations that prove the device is answering (and whose readings carry telemetry).
_ALIVE: Final = frozenset(
    {
        Observation.REPORTS_IDLE,
        Observation.REPORTS_RUNNING,
        Observation.REPORTS_PAUSED,
        Observation.REPORTS_SETUP,
        Observation.REPORTS_ALARM,
    }
)


class SessionError(AgentError):
    """The session stopped because of a bug or an unexpected error (not a link failure)."""


class PollDriver(Protocol):
    """The sans-IO, protocol-specific half of a polling session. No asyncio, no clock.

    ``reset`` is called on every new connection (a fresh parser), ``poll`` each poll
    interval for the bytes to write (``b""`` to write nothing, e.g. while a request is
    outstanding), and ``feed`` with every chunk read, returning readings, device events and
    device info in order.
    """

    @property
    def name(self) -> str:
        """Short protocol name for task names and logs (``grbl``)."""
        ...

    def reset(self) -> None: ...

    def poll(self) -> bytes: ...

    def feed(self, data: bytes, ts_ms: int, mono_ms: int) -> list[SessionItem]: ...


def is_telemetry(item: SessionItem) -> bool:
    """A reading that reports a machine state: proof of life, and droppable telemetry."""
    return isinstance(item, Reading) and item.observation in _ALIVE


class SessionTuning(TypedDict, total=False):
    """The :class:`PollingSession` keywords a protocol's session passes through unchanged."""

    reconnect_backoff: tuple[float, float]
    queue_size: int
    rng: random.Random | None


class MachineTiming(TypedDict):
    """The session keywords every protocol takes from the app's context."""

    clock: Clock
    poll_interval_s: float
    silence_timeout_s: float


def machine_timing(ctx: SessionContext) -> MachineTiming:
    """``clock``, ``poll_interval_s`` and ``silence_timeout_s`` for a session of ``ctx.machine``.

    A protocol's session factory is then ``XSession(machine.id, ctx.open_link,
    **machine_timing(ctx), <its own options>)``.
    """
    return MachineTiming(
        clock=ctx.clock,
        poll_interval_s=ctx.machine.poll_interval_s,
        silence_timeout_s=ctx.machine.silence_timeout_s,
    )


def check_settings(
    poll_interval_s: float,
    silence_timeout_s: float,
    queue_size: int,
    reconnect_backoff: tuple[float, float],
) -> None:
    """Raise :class:`ValueError` for settings no session can run with."""
    if poll_interval_s <= 0 or silence_timeout_s <= 0 or queue_size <= 0:
        raise ValueError("poll interval, silence timeout and queue size must be positive")
    low, high = reconnect_backoff
    if not 0 < low <= high:
        raise ValueError("reconnect_backoff must be (min, max) with 0 < min <= max")


async def stop_runner(runner: asyncio.Task[None] | None) -> None:
    """Cancel a session's runner task and wait until it has finished (closing its link).

    If the caller is cancelled meanwhile, it still waits for the runner, then re-raises. A
    crash of the runner was already handed to the consumer: it is marked retrieved here.
    """
    if runner is None:
        return
    if not runner.done():
        runner.cancel()
        try:
            await asyncio.wait({runner})
        except asyncio.CancelledError:
            # We are being cancelled too: still let the runner finish closing the link.
            await asyncio.wait({runner})
            raise
    if not runner.cancelled():
        runner.exception()


class LinkHealth:
    """Sans-IO supervision of one machine's link, shared by every session that owns one.

    Says when to yield LINK_LOST (once per outage) and SILENT (once per silence), logs a
    failure once and the recovery once (on ``log``, with the machine id bound), and
    computes the reconnect delay: exponential backoff with jitter, reset by proof of life.
    Times are ``loop.time()`` seconds, passed in.
    """

    def __init__(
        self,
        machine_id: str,
        *,
        silence_timeout_s: float,
        reconnect_backoff: tuple[float, float],
        rng: random.Random | None,
        log: logging.Logger,
    ) -> None:
        self.machine_id = machine_id
        self._silence_timeout = silence_timeout_s
        self._backoff = reconnect_backoff
        self._rng = rng or random.Random()
        self._log = log
        self._log_extra = {"machine": machine_id}
        # Per-connection state, reset by connected().
        self._last_report = 0.0
        self._silent = False
        # Across connections.
        self._link_down = False  # LINK_LOST was yielded and no report has come since
        self._failing = False  # a failure was logged and no recovery yet
        self._attempt = 0

    def next_delay(self) -> float:
        """Seconds to wait before the next reconnect attempt."""
        low, high = self._backoff
        delay = min(high, low * 2 ** min(self._attempt, 30))
        self._attempt += 1
        return float(min(high, delay * self._rng.uniform(0.8, 1.2)))

    def connected(self, now: float) -> None:
        """A new connection: the silence clock starts again."""
        self._last_report = now
        self._silent = False

    def link_lost(self, exc: BaseException) -> bool:
        """The link failed or could not be opened; True when a LINK_LOST reading is due."""
        if not self._failing:
            self._failing = True
            self._log.warning(
                "machine %s: link failed: %s", self.machine_id, exc, extra=self._log_extra
            )
        if self._link_down:
            return False
        self._link_down = True
        return True

    def alive(self, now: float) -> None:
        """A reading that reports a machine state arrived."""
        self._last_report = now
        self._silent = False
        self._link_down = False
        self._attempt = 0
        if self._failing:
            self._failing = False
            self._log.info("machine %s: answering again", self.machine_id, extra=self._log_extra)

    def silence_due(self, now: float) -> bool:
        """True, once per silence, when no proof of life came for the silence timeout."""
        if self._silent or now - self._last_report < self._silence_timeout:
            return False
        self._silent = True
        if not self._failing:
            self._failing = True
            self._log.warning(
                "machine %s: no status report for %.1f s",
                self.machine_id,
                self._silence_timeout,
                extra=self._log_extra,
            )
        return True


class _ItemQueue:
    """A bounded FIFO that drops the oldest telemetry reading instead of growing."""

    def __init__(self, maxsize: int) -> None:
        self._items: collections.deque[SessionItem] = collections.deque()
        self._maxsize = maxsize
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._closed = False
        self._error: BaseException | None = None
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    async def put(self, item: SessionItem) -> None:
        while len(self._items) >= self._maxsize:
            if self._drop_oldest_telemetry():
                break
            if is_telemetry(item):
                self.dropped += 1
                return
            self._writable.clear()
            await self._writable.wait()
        self._items.append(item)
        self._readable.set()

    def _drop_oldest_telemetry(self) -> bool:
        for i, queued in enumerate(self._items):
            if is_telemetry(queued):
                del self._items[i]
                self.dropped += 1
                return True
        return False

    async def get(self) -> SessionItem | None:
        """The next item; None once the queue is closed and empty."""
        while not self._items:
            if self._closed:
                if self._error is not None:
                    raise SessionError("the device session failed") from self._error
                return None
            self._readable.clear()
            await self._readable.wait()
        item = self._items.popleft()
        self._writable.set()
        return item

    def close(self, error: BaseException | None = None) -> None:
        self._closed = True
        self._error = error
        self._readable.set()


class PollingSession:
    """Owns one device's link: ``async with PollingSession(...) as s`` then
    ``async for item in s.readings()``. See the module docstring."""

    def __init__(
        self,
        machine_id: str,
        open_link: Callable[[], Link],
        driver: PollDriver,
        *,
        clock: Clock,
        poll_interval_s: float = 0.2,
        silence_timeout_s: float = 2.0,
        reconnect_backoff: tuple[float, float] = (0.5, 10.0),
        queue_size: int = 256,
        rng: random.Random | None = None,
    ) -> None:
        check_settings(poll_interval_s, silence_timeout_s, queue_size, reconnect_backoff)
        self.machine_id = machine_id
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
        self._driver = driver
        self._queue = _ItemQueue(queue_size)
        self._runner: asyncio.Task[None] | None = None
        self._log_extra = {"machine": machine_id}
        #: How many times the link was (re)opened successfully.
        self.connects = 0

    @property
    def dropped(self) -> int:
        """Telemetry readings dropped because the consumer was too slow."""
        return self._queue.dropped

    @property
    def driver(self) -> PollDriver:
        return self._driver

    # -- lifecycle

    async def __aenter__(self) -> Self:
        if self._runner is not None:
            raise RuntimeError("a session can be entered only once")
        self._runner = asyncio.create_task(
            self._run(), name=f"{self._driver.name}-session:{self.machine_id}"
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
        """Stop the tasks and close the link. Safe to call twice."""
        await stop_runner(self._runner)

    async def readings(self) -> AsyncGenerator[SessionItem, None]:
        """Readings, device events and device info, in order, until the session closes.

        Raises :class:`SessionError` if the session stopped on an unexpected error.
        """
        if self._runner is None:
            raise RuntimeError("use `async with` on the session before reading")
        while True:
            item = await self._queue.get()
            if item is None:
                return
            yield item

    # -- supervisor

    async def _run(self) -> None:
        try:
            while True:
                await self._connect_once()
                await asyncio.sleep(self._health.next_delay())
        except asyncio.CancelledError:
            self._queue.close()
            raise
        except BaseException as exc:
            self._queue.close(exc)
            raise

    async def _connect_once(self) -> None:
        try:
            link = self._open_link()
        except LinkError as exc:
            await self._link_lost(exc)
            return
        try:
            try:
                await link.open()
            except LinkError as exc:
                await self._link_lost(exc)
                return
            self.connects += 1
            try:
                await self._serve(link)
            except* LinkError as group:
                await self._link_lost(group.exceptions[0])
        finally:
            try:
                await link.close()
            except LinkError as exc:
                _log.debug("closing %s failed: %s", link.name, exc, extra=self._log_extra)

    async def _link_lost(self, exc: BaseException) -> None:
        if self._health.link_lost(exc):
            await self._put_reading(Observation.LINK_LOST, str(exc))

    async def _put_reading(self, observation: Observation, detail: str) -> None:
        reading = Reading(
            ts_ms=self._clock.wall_ms(),
            mono_ms=self._clock.mono_ms(),
            observation=observation,
            detail=detail,
        )
        await self._queue.put(reading)

    # -- one connection

    async def _serve(self, link: Link) -> None:
        self._driver.reset()
        self._health.connected(asyncio.get_running_loop().time())
        name = self._driver.name
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._reader(link), name=f"{name}-reader:{self.machine_id}")
            tg.create_task(self._poller(link), name=f"{name}-poller:{self.machine_id}")

    async def _reader(self, link: Link) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await link.read(_READ_SIZE)
            ts_ms, mono_ms = self._clock.wall_ms(), self._clock.mono_ms()
            for item in self._driver.feed(data, ts_ms, mono_ms):
                if is_telemetry(item):
                    self._health.alive(loop.time())
                await self._queue.put(item)

    async def _poller(self, link: Link) -> None:
        loop = asyncio.get_running_loop()
        while True:
            request = self._driver.poll()
            if request:
                await link.write(request)
            await asyncio.sleep(self._poll_interval)
            if self._health.silence_due(loop.time()):
                await self._put_reading(Observation.SILENT, "no status report")
