"""GrblSession over a real pseudo-terminal: a tiny fake Grbl on the master, the session on the
slave through a minimal test-only link (the real links are written elsewhere)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import tty
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from shopfloor.agent.clock import SystemClock
from shopfloor.agent.errors import LinkClosedError, LinkError
from shopfloor.agent.links.base import Link
from shopfloor.agent.readings import DeviceInfo, Reading
from shopfloor.agent.sessions.grbl import GrblSession, SessionError, SessionItem
from shopfloor.contract.states import Observation


def new_session(
    open_link: Callable[[], Link], *, machine: str = "router-1", queue_size: int = 256
) -> GrblSession:
    return GrblSession(
        machine,
        open_link,
        clock=SystemClock(),
        poll_interval_s=0.02,
        silence_timeout_s=0.2,
        reconnect_backoff=(0.02, 0.1),
        queue_size=queue_size,
    )


class PtyLink:
    """Just enough of the Link protocol for these tests: non-blocking fd + loop readers."""

    def __init__(self, path: Path) -> None:
        self._path = str(path)
        self._fd: int | None = None
        self.opened = 0

    @property
    def name(self) -> str:
        return self._path

    async def open(self) -> None:
        try:
            self._fd = os.open(self._path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as exc:
            raise LinkError(f"cannot open {self._path}: {exc}", port=self._path) from exc
        self.opened += 1

    def _require(self) -> int:
        if self._fd is None:
            raise LinkClosedError("link is not open", port=self._path)
        return self._fd

    async def _wait(self, fd: int, *, write: bool) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        def ready() -> None:
            if not fut.done():
                fut.set_result(None)

        if write:
            loop.add_writer(fd, ready)
        else:
            loop.add_reader(fd, ready)
        try:
            await fut
        finally:
            if write:
                loop.remove_writer(fd)
            else:
                loop.remove_reader(fd)

    async def read(self, max_bytes: int) -> bytes:
        fd = self._require()
        while True:
            try:
                data = os.read(fd, max_bytes)
            except BlockingIOError:
                await self._wait(fd, write=False)
                continue
            except OSError as exc:  # EIO once the master side is gone
                raise LinkClosedError(f"{self._path}: {exc}", port=self._path) from exc
            if not data:
                raise LinkClosedError(f"{self._path}: end of file", port=self._path)
            return data

    async def write(self, data: bytes) -> None:
        fd = self._require()
        view = memoryview(data)
        while view:
            try:
                n = os.write(fd, view)
            except BlockingIOError:
                await self._wait(fd, write=True)
                continue
            except OSError as exc:
                raise LinkClosedError(f"{self._path}: {exc}", port=self._path) from exc
            view = view[n:]

    async def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


@dataclass
class FakeGrbl:
    """Answers `?` with a status line and `$I` with build info, on a pty master."""

    master: int
    slave: int
    state: str = "Idle"
    answer: bool = True
    received: bytearray = field(default_factory=bytearray)
    task: asyncio.Task[None] | None = None
    closed: bool = False

    @classmethod
    def start(cls) -> FakeGrbl:
        master, slave = os.openpty()
        tty.setraw(slave)
        dev = cls(master, slave)
        dev.task = asyncio.create_task(dev._serve(), name="fake-grbl")
        return dev

    @property
    def path(self) -> str:
        return os.ttyname(self.slave)

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        os.set_blocking(self.master, False)
        readable = asyncio.Event()
        loop.add_reader(self.master, readable.set)
        pending = b""
        try:
            while True:
                await readable.wait()
                readable.clear()
                try:
                    data = os.read(self.master, 1024)
                except BlockingIOError:
                    continue
                self.received += data
                pending += data
                for _ in range(pending.count(b"?")):
                    if self.answer:
                        line = f"<{self.state}|MPos:1.000,2.000,3.000|FS:100,0>\r\n"
                        os.write(self.master, line.encode())
                pending = pending.replace(b"?", b"")
                while b"\n" in pending:
                    command, _, pending = pending.partition(b"\n")
                    if command == b"$I":
                        os.write(self.master, b"[VER:1.1h.20190830:]\r\n[OPT:V,15,128]\r\nok\r\n")
        finally:
            loop.remove_reader(self.master)

    async def unplug(self) -> None:
        if self.closed:
            return
        self.closed = True
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
async def devices() -> AsyncIterator[list[FakeGrbl]]:
    started: list[FakeGrbl] = []
    yield started
    for dev in started:
        await dev.unplug()


def plug(devices: list[FakeGrbl], link_path: Path) -> FakeGrbl:
    dev = FakeGrbl.start()
    devices.append(dev)
    tmp = link_path.with_suffix(".new")
    tmp.symlink_to(dev.path)
    tmp.replace(link_path)  # atomic repoint, like udev's by-id link
    return dev


async def next_item(
    items: AsyncIterator[SessionItem],
    match: Callable[[SessionItem], bool],
    within: float = 1.5,
) -> tuple[SessionItem, list[SessionItem]]:
    """The first item that matches, and everything seen before it."""
    seen: list[SessionItem] = []
    async with asyncio.timeout(within):
        async for item in items:
            if match(item):
                return item, seen
            seen.append(item)
    raise AssertionError("session ended")


def is_obs(*observations: Observation) -> Callable[[SessionItem], bool]:
    return lambda item: isinstance(item, Reading) and item.observation in observations


async def test_states_flow(devices: list[FakeGrbl], tmp_path: Path) -> None:
    path = tmp_path / "ttyGRBL"
    dev = plug(devices, path)
    link = PtyLink(path)
    async with (
        new_session(lambda: link) as session,
        contextlib.aclosing(session.readings()) as items,
    ):
        first, _ = await next_item(items, is_obs(Observation.REPORTS_IDLE))
        assert isinstance(first, Reading)
        assert first.detail == "Idle"
        assert first.values["x"] == 1.0
        info, _ = await next_item(items, lambda i: isinstance(i, DeviceInfo))
        assert isinstance(info, DeviceInfo)
        assert info.firmware == "1.1h.20190830"
        dev.state = "Run"
        running, _ = await next_item(items, is_obs(Observation.REPORTS_RUNNING))
        assert isinstance(running, Reading)
        assert running.values["feed_mm_min"] == 100.0
    # only `?` and one `$I\n` were ever sent: no CR, no second $I
    sent = bytes(dev.received)
    assert sent.replace(b"?", b"") == b"$I\n"
    assert link.opened == 1
    assert session.connects == 1


async def test_silence_then_answers_again(
    devices: list[FakeGrbl], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "ttyGRBL"
    dev = plug(devices, path)
    caplog.set_level(logging.INFO, logger="shopfloor.agent.sessions")
    async with (
        new_session(lambda: PtyLink(path)) as session,
        contextlib.aclosing(session.readings()) as items,
    ):
        await next_item(items, is_obs(Observation.REPORTS_IDLE))
        dev.answer = False
        silent, _ = await next_item(items, is_obs(Observation.SILENT))
        assert isinstance(silent, Reading)
        dev.answer = True
        _, before = await next_item(items, is_obs(Observation.REPORTS_IDLE))
        assert not any(is_obs(Observation.SILENT)(i) for i in before)  # SILENT only once
    messages = [r.getMessage() for r in caplog.records]
    assert sum("no status report" in m for m in messages) == 1
    assert sum("answering again" in m for m in messages) == 1
    assert all(getattr(r, "machine", None) == "router-1" for r in caplog.records)


async def test_link_lost_then_recovers_at_same_path(
    devices: list[FakeGrbl], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "ttyGRBL"
    dev = plug(devices, path)
    links: list[PtyLink] = []

    def open_link() -> PtyLink:
        links.append(PtyLink(path))
        return links[-1]

    caplog.set_level(logging.INFO, logger="shopfloor.agent.sessions")
    async with (
        new_session(open_link) as session,
        contextlib.aclosing(session.readings()) as items,
    ):
        await next_item(items, is_obs(Observation.REPORTS_IDLE))
        await dev.unplug()  # EIO on the slave
        lost, _ = await next_item(items, is_obs(Observation.LINK_LOST))
        assert isinstance(lost, Reading)
        await asyncio.sleep(0.3)  # a few failed reopen attempts
        dev2 = plug(devices, path)
        dev2.state = "Hold:0"
        back, before = await next_item(items, is_obs(Observation.REPORTS_PAUSED))
        assert isinstance(back, Reading)
        assert back.detail == "Hold:0"
        assert not any(is_obs(Observation.LINK_LOST)(i) for i in before)  # LINK_LOST once
    assert len(links) >= 3  # retried
    assert session.connects == 2
    messages = [r.getMessage() for r in caplog.records]
    assert sum("link failed" in m for m in messages) == 1
    assert sum("answering again" in m for m in messages) == 1


async def test_open_failure_yields_link_lost_once(tmp_path: Path) -> None:
    path = tmp_path / "missing"
    async with (
        new_session(lambda: PtyLink(path)) as session,
        contextlib.aclosing(session.readings()) as items,
    ):
        lost, _ = await next_item(items, is_obs(Observation.LINK_LOST))
        assert isinstance(lost, Reading)
        assert "cannot open" in lost.detail
        with pytest.raises(TimeoutError):
            await next_item(items, lambda _: True, within=0.3)


async def test_leaving_closes_the_link_and_leaves_no_tasks(
    devices: list[FakeGrbl], tmp_path: Path
) -> None:
    path = tmp_path / "ttyGRBL"
    plug(devices, path)
    link = PtyLink(path)
    async with (
        new_session(lambda: link) as session,
        contextlib.aclosing(session.readings()) as items,
    ):
        await next_item(items, is_obs(Observation.REPORTS_IDLE))
        names = {t.get_name() for t in asyncio.all_tasks()}
        assert {"grbl-reader:router-1", "grbl-poller:router-1"} <= names
    assert link._fd is None
    left = {t.get_name() for t in asyncio.all_tasks() if not t.done()} - {"fake-grbl"}
    current = asyncio.current_task()
    assert current is not None
    assert left == {current.get_name()}
    # the iterator ends once the session is closed
    assert [i async for i in session.readings()] == []


async def test_cancelling_the_consumer_closes_everything(
    devices: list[FakeGrbl], tmp_path: Path
) -> None:
    path = tmp_path / "ttyGRBL"
    plug(devices, path)
    link = PtyLink(path)

    async def consume() -> None:
        async with new_session(lambda: link) as session:
            async for _ in session.readings():
                pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert link._fd is None
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("grbl-")]


async def test_slow_consumer_drops_oldest_telemetry_not_events(
    devices: list[FakeGrbl], tmp_path: Path
) -> None:
    path = tmp_path / "ttyGRBL"
    plug(devices, path)
    async with new_session(lambda: PtyLink(path), queue_size=4) as session:
        first_seen = SystemClock().mono_ms()
        await asyncio.sleep(0.4)  # ~20 polls, nobody reading
        assert session.dropped > 0
        items: list[SessionItem] = []
        async with asyncio.timeout(1), contextlib.aclosing(session.readings()) as it:
            async for item in it:
                items.append(item)
                if len(items) >= 4:
                    break
    # the $I answer survived; the readings queued before it were dropped, the newest kept
    assert isinstance(items[0], DeviceInfo)
    assert all(is_obs(Observation.REPORTS_IDLE)(i) for i in items[1:])
    assert isinstance(items[1], Reading)
    assert items[1].mono_ms > first_seen


class BrokenLink:
    """Reads fail with something that is not a LinkError: a bug, not a lost device."""

    name = "broken"

    async def open(self) -> None:
        pass

    async def read(self, max_bytes: int) -> bytes:
        raise RuntimeError("boom")

    async def write(self, data: bytes) -> None:
        pass

    async def close(self) -> None:
        pass


async def test_unexpected_error_reaches_the_consumer() -> None:
    async with new_session(BrokenLink) as session:
        with pytest.raises(SessionError) as info:
            async for _ in session.readings():
                pass
    assert isinstance(info.value.__cause__, BaseExceptionGroup)


def test_a_closed_master_gives_eof_or_eio() -> None:
    # The premise of the link-loss test, checked directly: depending on the kernel the slave
    # reads EOF (pyserial's "readiness to read but returned no data") or fails with EIO.
    master, slave = os.openpty()
    tty.setraw(slave)
    fd = os.open(os.ttyname(slave), os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    os.close(master)
    try:
        outcome: bytes | int = os.read(fd, 10)
    except OSError as exc:
        outcome = exc.errno or 0
    finally:
        os.close(fd)
        os.close(slave)
    assert outcome in (b"", errno.EIO)
