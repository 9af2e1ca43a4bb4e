"""Proxy mode end to end: a character-counting sender streams through the agent's pty to the
GRBL simulator on a second pty (the "real port")."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from grbl_proxy_support import CountingSender, RecordingMachine, program, wait_until

from shopfloor.agent.clock import SystemClock
from shopfloor.agent.links.serial import SerialLink
from shopfloor.agent.links.tcp import TcpLink
from shopfloor.agent.proxy.options import ProxyOptions
from shopfloor.agent.proxy.session import GrblProxySession
from shopfloor.agent.readings import DeviceEvent, Reading
from shopfloor.agent.sessions.base import SessionItem
from shopfloor.agent.tracker import MachineTracker
from shopfloor.contract.envelope import RecordKind
from shopfloor.contract.states import Observation
from shopfloor.sim.grbl.config import GrblSimConfig
from shopfloor.sim.grbl.gcode import filter_line
from shopfloor.sim.grbl.runner import PtyRunner


@dataclass
class Rig:
    machine: RecordingMachine
    session: GrblProxySession
    items: list[SessionItem]
    sender_path: Path
    runner: PtyRunner[RecordingMachine]

    def events(self, name: str) -> list[DeviceEvent]:
        return [i for i in self.items if isinstance(i, DeviceEvent) and i.event == name]

    async def wait_for(self, name: str, within_s: float = 30.0) -> DeviceEvent:
        await wait_until(lambda: bool(self.events(name)), within_s)
        return self.events(name)[0]


@contextlib.asynccontextmanager
async def rig(
    tmp_path: Path,
    *,
    consume: bool = True,
    queue_size: int = 256,
    tcp: bool = False,
    sync_pause_s: float = 0.15,
) -> AsyncIterator[Rig]:
    machine = RecordingMachine(GrblSimConfig(time_scale=50.0, sync_pause_s=sync_pause_s))
    sim_path = tmp_path / "ttySIM"
    options = ProxyOptions(
        pty=tmp_path / "run" / "router",
        tcp_port=0 if tcp else None,
        end_idle_s=0.3,
        end_quiet_s=1.0,
    )
    async with PtyRunner(machine, sim_path, tick_s=0.005) as runner:
        session = GrblProxySession(
            "router",
            lambda: SerialLink(str(sim_path)),
            clock=SystemClock(),
            options=options,
            poll_interval_s=0.25,
            silence_timeout_s=2.0,
            reconnect_backoff=(0.05, 0.2),
            queue_size=queue_size,
        )
        items: list[SessionItem] = []
        async with session:

            async def consumer() -> None:
                async for item in session.readings():
                    items.append(item)  # noqa: PERF401 - the test watches the list fill up

            task = asyncio.create_task(consumer(), name="test-consumer") if consume else None
            try:
                yield Rig(machine, session, items, options.pty or Path(), runner)
            finally:
                if task is not None:
                    task.cancel()
                    await asyncio.wait({task})


async def _wait_link(session: GrblProxySession) -> None:
    await wait_until(lambda: session.connects > 0, 5)
    await asyncio.sleep(0.1)  # let the banner through before the sender starts


async def test_2000_lines_stream_through_the_pty_exactly_once_and_the_job_ends_once(
    tmp_path: Path,
) -> None:
    # Every 400th line changes S: a buffer sync that idles the machine for 0.4 s (20 machine
    # seconds at time scale 50), long enough for the proxy's polls to see Idle mid-job.
    lines = program(2000, spindle_every=400)
    async with rig(tmp_path, sync_pause_s=20.0) as r:
        await _wait_link(r.session)
        sender_link = SerialLink(str(r.sender_path))
        await sender_link.open()
        try:
            sender = CountingSender(sender_link)
            answers = await asyncio.wait_for(sender.stream(lines), 60)
        finally:
            await sender_link.close()
        ended = await r.wait_for("job_ended")
        await asyncio.sleep(0.5)  # nothing else may end

        # Every line reached the controller exactly once, in order, and nothing else did.
        assert r.machine.received == [filter_line(line) for line in lines]
        assert answers == ["ok"] * 2000
        assert r.machine.rx_dropped == 0

        started = r.events("job_started")
        assert len(started) == 1
        assert started[0].data["program"] == "sign.nc"
        assert started[0].data["total"] == 2000
        assert started[0].data["source"] == "proxy"
        assert len(r.events("job_ended")) == 1
        assert ended.data["outcome"] == "completed"
        assert ended.data["done"] == ended.data["total"] == 2000
        progress = r.events("job_progress")
        assert progress[-1].data["done"] == 2000
        dones = [p.data["done"] for p in progress]
        assert dones == sorted(dones)
        # At most about one progress event a second (plus the final one at the end).
        gaps = [b.mono_ms - a.mono_ms for a, b in itertools.pairwise(progress)]
        assert all(g >= 990 for g in gaps[:-1])
        # The readings carry the program, and the machine went through short mid-job Idles
        # (spindle-speed syncs) without ending the job.
        readings = [i for i in r.items if isinstance(i, Reading)]
        assert any(i.program == "sign.nc" for i in readings)
        mid_job_idles = [
            i
            for i in readings
            if i.detail == "Idle" and started[0].mono_ms < i.mono_ms < ended.mono_ms - 1000
        ]
        assert mid_job_idles
        assert r.session.watcher.stats.unmatched_acks == 0

        # The tracker takes the proxy's items as they are.
        tracker = MachineTracker("router")
        records = [record for item in r.items for record in tracker.update(item)]
        bodies = [rec.body for rec in records if rec.kind is RecordKind.EVENT]
        assert next(b["event"] for b in bodies if b["event"].startswith("job_")) == "job_started"
        assert next(b for b in bodies if b["event"] == "job_ended")["outcome"] == "completed"
        assert tracker.program == "sign.nc"
        assert tracker.job is None


async def test_the_proxy_keeps_the_machine_usable_when_nobody_reads_readings(
    tmp_path: Path,
) -> None:
    lines = program(400, spindle_changes=False)
    async with rig(tmp_path, consume=False, queue_size=8) as r:
        await _wait_link(r.session)
        sender_link = SerialLink(str(r.sender_path))
        await sender_link.open()
        try:
            answers = await asyncio.wait_for(CountingSender(sender_link).stream(lines), 30)
        finally:
            await sender_link.close()
        assert answers == ["ok"] * 400
        assert r.machine.received == [filter_line(line) for line in lines]
        # Status readings keep coming; the oldest go.
        await wait_until(lambda: r.session.dropped > 0, 10)
        assert len(r.session._queue) <= 8


async def test_the_proxy_polls_by_itself_when_the_sender_does_not(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await _wait_link(r.session)
        before = r.session.watcher.stats.injected_queries
        await asyncio.sleep(1.0)
        assert r.session.watcher.stats.injected_queries >= before + 3
        readings = [i for i in r.items if isinstance(i, Reading)]
        assert readings
        assert readings[-1].detail == "Idle"


async def test_a_sender_polling_fast_stops_the_proxy_polling(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await _wait_link(r.session)
        sender_link = SerialLink(str(r.sender_path))
        await sender_link.open()
        try:
            await asyncio.sleep(0.3)
            before = r.session.watcher.stats.injected_queries
            for _ in range(10):
                await sender_link.write(b"?")
                await asyncio.sleep(0.1)
            assert r.session.watcher.stats.injected_queries <= before + 1
            got = await asyncio.wait_for(sender_link.read(4096), 2)
            assert b"<Idle|" in got
        finally:
            await sender_link.close()
        # The sender is gone: the proxy polls again.
        before = r.session.watcher.stats.injected_queries
        await asyncio.sleep(0.8)
        assert r.session.watcher.stats.injected_queries >= before + 2


async def test_a_sender_on_tcp_gets_the_same_stream(tmp_path: Path) -> None:
    lines = program(60, spindle_changes=False)
    async with rig(tmp_path, tcp=True) as r:
        await _wait_link(r.session)
        assert r.session.tcp is not None
        link = TcpLink("127.0.0.1", r.session.tcp.port)
        await link.open()
        try:
            answers = await asyncio.wait_for(CountingSender(link).stream(lines), 20)
        finally:
            await link.close()
        assert answers == ["ok"] * 60
        assert r.machine.received == [filter_line(line) for line in lines]


async def test_a_soft_reset_mid_job_aborts_it(tmp_path: Path) -> None:
    lines = program(2000)
    async with rig(tmp_path) as r:
        await _wait_link(r.session)
        link = SerialLink(str(r.sender_path))
        await link.open()
        try:
            sender = CountingSender(link)
            streaming = asyncio.create_task(sender.stream(lines), name="test-stream")
            await r.wait_for("job_started", 10)
            await asyncio.sleep(0.2)
            streaming.cancel()
            await asyncio.wait({streaming})
            await link.write(b"\x18")
            ended = await r.wait_for("job_ended", 5)
        finally:
            await link.close()
        assert ended.data["outcome"] == "aborted"
        assert 0 < ended.data["done"] < 2000
        await asyncio.sleep(0.5)
        assert len(r.events("job_ended")) == 1


async def test_the_machine_port_vanishing_fails_the_job_and_the_proxy_recovers(
    tmp_path: Path,
) -> None:
    lines = program(2000)
    async with rig(tmp_path) as r:
        await _wait_link(r.session)
        link = SerialLink(str(r.sender_path))
        await link.open()
        try:
            streaming = asyncio.create_task(CountingSender(link).stream(lines), name="test-stream")
            await r.wait_for("job_started", 10)
            r.runner.vanish(0.5)  # the USB cable is pulled for half a second
            ended = await r.wait_for("job_ended", 5)
            assert ended.data["outcome"] == "failed"
            assert any(
                isinstance(i, Reading) and i.observation is Observation.LINK_LOST for i in r.items
            )
            assert r.sender_path.is_symlink()  # the sender's port stays
            streaming.cancel()
            await asyncio.wait({streaming})
        finally:
            await link.close()
        connects = r.session.connects
        await wait_until(lambda: r.session.connects > connects, 10)
        count = len(r.items)
        await wait_until(
            lambda: any(isinstance(i, Reading) and i.detail == "Idle" for i in r.items[count:]), 5
        )
