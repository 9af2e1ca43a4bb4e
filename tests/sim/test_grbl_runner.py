"""The simulator's transports: a real pseudo-terminal, TCP and the in-memory pair."""

from __future__ import annotations

import asyncio
import contextlib
import os
import termios
import time
import tty
from collections.abc import Callable
from pathlib import Path

import pytest

from shopfloor.sim.errors import SimError
from shopfloor.sim.grbl import (
    Fault,
    FaultKind,
    GrblMachine,
    GrblSimConfig,
    MemoryRunner,
    PtyRunner,
    Script,
    TcpRunner,
    run_grbl_sim,
)


class PortReader:
    """A minimal line reader over a raw, non-blocking file descriptor."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd, termios.TCSANOW)  # TCSAFLUSH would throw away the banner
        self.buffer = bytearray()

    def close(self) -> None:
        os.close(self.fd)

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    async def line(self, within: float = 2.0) -> str:
        deadline = time.monotonic() + within
        while b"\r\n" not in self.buffer:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no line within {within} s; have {bytes(self.buffer)!r}")
            try:
                chunk = os.read(self.fd, 1024)
            except BlockingIOError:
                await asyncio.sleep(0.01)
                continue
            if not chunk:
                raise EOFError("port closed")
            self.buffer += chunk
        line, _, rest = bytes(self.buffer).partition(b"\r\n")
        self.buffer = bytearray(rest)
        return line.decode("ascii")

    async def lines_until(self, last: str, within: float = 2.0) -> list[str]:
        out: list[str] = []
        while not out or out[-1] != last:
            out.append(await self.line(within))
        return out


async def wait_for(predicate: Callable[[], bool], within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.02)


async def test_pty_answers_status_and_build_info(tmp_path: Path) -> None:
    link = tmp_path / "ttyGRBL"
    machine = GrblMachine(GrblSimConfig(line_numbers=True))
    async with PtyRunner(machine, link) as runner:
        assert link.is_symlink()
        assert os.readlink(link) == runner.device
        port = PortReader(link)
        try:
            assert await port.lines_until("Grbl 1.1h ['$' for help]") == [
                "",
                "Grbl 1.1h ['$' for help]",
            ]
            port.write(b"?")
            report = await port.line()
            assert report.startswith("<Idle|MPos:0.000,0.000,0.000|FS:0,0|WCO:")
            port.write(b"$I\n")
            assert await port.lines_until("ok") == [
                "[VER:1.1h.20190830:]",
                "[OPT:VN,14,128]",
                "ok",
            ]
            port.write(b"G1 X5 F3000\n")
            assert await port.line() == "ok"
            await asyncio.sleep(0.3)  # the runner's own ticks move the machine
            assert machine.position == pytest.approx((5.0, 0.0, 0.0))
        finally:
            port.close()
    assert not link.exists()


async def test_pty_vanishes_and_returns_at_the_same_path(tmp_path: Path) -> None:
    link = tmp_path / "ttyGRBL"
    machine = GrblMachine(GrblSimConfig())
    async with PtyRunner(machine, link, tick_s=0.005) as runner:
        port = PortReader(link)
        try:
            await port.lines_until("Grbl 1.1h ['$' for help]")
            port.write(b"G1 X1000 F600\n")
            assert await port.line() == "ok"
            runner.vanish(0.4)
            assert runner.device is None
            assert not link.exists()
            with pytest.raises(OSError):  # EIO: the other end is gone, like a pulled cable
                port.write(b"?")
        finally:
            port.close()
        await wait_for(link.exists)
        assert runner.present
        port = PortReader(link)
        try:
            port.write(b"?")
            report = await port.line()
            assert report.startswith("<Run|")  # the machine stayed powered and kept moving
        finally:
            port.close()
    states = [s.state for s in machine.state_log]
    assert states == ["Idle", "Run"]


async def test_pty_vanish_with_reboot_from_a_fault_script(tmp_path: Path) -> None:
    link = tmp_path / "ttyGRBL"
    machine = GrblMachine(GrblSimConfig())
    script = Script([Fault(FaultKind.VANISH, at=0.1, duration=0.3, reboot=True)])
    async with PtyRunner(machine, link, drivers=[script], tick_s=0.005):
        await wait_for(lambda: not link.exists())
        await wait_for(link.exists)
        port = PortReader(link)
        try:
            # The board was off while unplugged: it greets again when it is back.
            assert await port.lines_until("Grbl 1.1h ['$' for help]") == [
                "",
                "Grbl 1.1h ['$' for help]",
            ]
        finally:
            port.close()
    states = [s.state for s in machine.state_log]
    assert states == ["Idle", "Off", "Idle"]


async def test_run_grbl_sim_serves_until_cancelled(tmp_path: Path) -> None:
    link = tmp_path / "ttySIM"
    task = asyncio.create_task(run_grbl_sim(GrblSimConfig(laser=True), link))
    try:
        await wait_for(link.exists)
        port = PortReader(link)
        try:
            port.write(b"$$\n")
            lines = await port.lines_until("ok")
            assert "$32=1" in lines
        finally:
            port.close()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert not link.exists()


async def test_tcp_serves_one_client_at_a_time() -> None:
    machine = GrblMachine(GrblSimConfig())
    async with TcpRunner(machine, 0) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(b"?")
            await writer.drain()
            report = await asyncio.wait_for(reader.readuntil(b">\r\n"), 2)
            assert report.startswith(b"<Idle|")
            other_reader, other_writer = await asyncio.open_connection("127.0.0.1", server.port)
            assert await asyncio.wait_for(other_reader.read(), 2) == b""  # refused
            other_writer.close()
            await other_writer.wait_closed()
            writer.write(b"$I\n")
            await writer.drain()
            assert b"[OPT:V,15,128]" in await asyncio.wait_for(reader.readuntil(b"ok\r\n"), 2)
        finally:
            writer.close()
            await writer.wait_closed()


async def test_memory_pair_and_vanish_drops_traffic() -> None:
    machine = GrblMachine(GrblSimConfig(time_scale=5.0))
    async with MemoryRunner(machine, tick_s=0.005) as link:
        assert await asyncio.wait_for(link.read(), 1) == b"\r\nGrbl 1.1h ['$' for help]\r\n"
        link.write(b"G1 X10 F6000\n")
        assert await asyncio.wait_for(link.read(), 1) == b"ok\r\n"
        link.vanish(0.2)
        link.write(b"?")
        assert not link.present
        await wait_for(lambda: link.present)
        link.write(b"?")
        chunk = await asyncio.wait_for(link.read(), 1)
        assert chunk.startswith(b"<")
    assert machine.status == "Idle"


async def test_tcp_vanish_drops_the_client_and_listens_again() -> None:
    machine = GrblMachine(GrblSimConfig())
    async with TcpRunner(machine, 0, tick_s=0.005) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            server.vanish(0.3)
            assert await asyncio.wait_for(reader.read(), 2) == b""  # connection dropped
            with pytest.raises(OSError):
                await asyncio.open_connection("127.0.0.1", server.port)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        await wait_for(lambda: server.present)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(b"?")
            assert (await asyncio.wait_for(reader.readuntil(b">\r\n"), 2)).startswith(b"<Idle|")
        finally:
            writer.close()
            await writer.wait_closed()


async def test_serve_forever_surfaces_a_crash(tmp_path: Path) -> None:
    class Broken:
        def tick(self, machine: GrblMachine, now: float) -> list[Fault]:
            raise RuntimeError("driver bug")

    runner = PtyRunner(GrblMachine(GrblSimConfig()), tmp_path / "tty", drivers=[Broken()])
    with pytest.raises(RuntimeError, match="driver bug"):
        await asyncio.wait_for(runner.run(), 2)
    assert not (tmp_path / "tty").exists()


async def test_pty_refuses_to_replace_a_real_file(tmp_path: Path) -> None:
    precious = tmp_path / "notes.txt"
    precious.write_text("keep me")
    with pytest.raises(SimError, match="not a symlink"):
        async with PtyRunner(GrblMachine(GrblSimConfig()), precious):
            pass
    assert precious.read_text() == "keep me"


async def test_pty_replaces_a_stale_symlink(tmp_path: Path) -> None:
    link = tmp_path / "ttyGRBL"
    link.symlink_to("/dev/pts/does-not-exist")
    async with PtyRunner(GrblMachine(GrblSimConfig()), link) as runner:
        assert os.readlink(link) == runner.device
