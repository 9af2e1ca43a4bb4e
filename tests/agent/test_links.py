from __future__ import annotations

import asyncio
import contextlib
import os
import random
import termios
import tty
from collections.abc import Iterator

import pytest

from shopfloor.agent.adapters.kiln_profile import load_profile
from shopfloor.agent.errors import LinkClosedError, LinkError
from shopfloor.agent.links import (
    FaultyLink,
    Link,
    SerialLink,
    TcpLink,
    memory_pair,
    open_link,
)
from shopfloor.agent.sessions.kiln import KilnOptions, framed


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, str]]:
    """A raw pseudo-terminal: (master fd the fake device uses, slave path the link opens)."""
    master, slave = os.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    os.close(slave)  # the link opens the slave by path; a held fd would keep it alive
    yield master, path
    with contextlib.suppress(OSError):  # a test may have closed it already
        os.close(master)


async def _read_master(master: int, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    got = bytearray()
    async with asyncio.timeout(5):
        while len(got) < n:
            ready = asyncio.Event()
            loop.add_reader(master, ready.set)
            try:
                await ready.wait()
            finally:
                loop.remove_reader(master)
            got += os.read(master, 1024)
    return bytes(got)


async def test_serial_link_over_pty_both_ways(pty_pair: tuple[int, str]) -> None:
    master, path = pty_pair
    link = SerialLink(path, 115200)
    await link.open()
    try:
        assert link.name == path
        os.write(master, b"<Idle|MPos:0.000,0.000,0.000|FS:0,0>\r\n")
        got = bytearray()
        async with asyncio.timeout(5):
            while not got.endswith(b"\r\n"):
                got += await link.read(1024)
        assert bytes(got) == b"<Idle|MPos:0.000,0.000,0.000|FS:0,0>\r\n"

        await link.write(b"?")
        await link.write(b"$I\n")
        assert await _read_master(master, 4) == b"?$I\n"
    finally:
        await link.close()
        await link.close()  # twice is fine


async def test_serial_link_applies_parity_and_stop_bits(pty_pair: tuple[int, str]) -> None:
    master, path = pty_pair
    link = SerialLink(path, 9600, parity="E", stopbits=2)
    assert link.framing is None  # not open
    assert link.is_pty
    await link.open()
    try:
        # The tty itself has two stop bits. Parity: a pty has none, and Linux refuses to
        # set it again on one; a real port (no hardware here) gets it the same way as the
        # stop bits, through pyserial's settings.
        assert link.framing == (9600, "N", 2)
        assert termios.tcgetattr(master)[2] & termios.CSTOPB
    finally:
        await link.close()
    plain = SerialLink(path, 9600)
    await plain.open()
    try:
        assert plain.framing == (9600, "N", 1)
        assert not termios.tcgetattr(master)[2] & termios.CSTOPB
    finally:
        await plain.close()


def test_serial_link_rejects_impossible_framing() -> None:
    with pytest.raises(LinkError, match="parity N/E/O, stop bits 1/2"):
        SerialLink("/dev/ttyUSB0", parity="X")
    with pytest.raises(LinkError, match="stop bits 1/2"):
        SerialLink("/dev/ttyUSB0", stopbits=3)


async def test_a_kiln_machine_opens_its_port_with_the_profiles_framing(
    pty_pair: tuple[int, str],
) -> None:
    _, path = pty_pair
    options = KilnOptions(profile=load_profile("cn7500"), parity="E", stopbits=2)
    opened: list[SerialLink] = []

    def open_plain() -> Link:
        opened.append(SerialLink(path, 9600))
        return opened[-1]

    link = framed(open_plain, options)()
    await link.open()
    try:
        assert opened == [link]
        assert opened[0].framing == (9600, "N", 2)  # a pty: no parity, see above
    finally:
        await link.close()
    tcp = framed(lambda: TcpLink("127.0.0.1", 1), options)()
    assert isinstance(tcp, TcpLink)  # a TCP gateway has no framing to set


async def test_serial_link_raises_closed_when_master_goes(pty_pair: tuple[int, str]) -> None:
    master, path = pty_pair
    link = SerialLink(path)
    await link.open()
    try:
        reader = asyncio.create_task(link.read(100))
        await asyncio.sleep(0.05)
        os.close(master)
        with pytest.raises(LinkClosedError) as info:
            async with asyncio.timeout(5):
                await reader
        assert info.value.port == path
        with pytest.raises(LinkClosedError):
            await link.read(100)
    finally:
        await link.close()
    with pytest.raises(LinkClosedError):
        await link.write(b"?")


async def test_serial_link_open_missing_port_names_it() -> None:
    link = SerialLink("/dev/does-not-exist-42")
    with pytest.raises(LinkError) as info:
        await link.open()
    assert info.value.port == "/dev/does-not-exist-42"
    assert "/dev/does-not-exist-42" in str(info.value)


async def test_tcp_link_against_asyncio_server() -> None:
    received: asyncio.Queue[bytes] = asyncio.Queue()
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        writer.write(b">PROGRAM, O01234, IDLE, PARTS, 152\r\n")
        await writer.drain()
        received.put_nowait(await reader.readexactly(7))
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    link = open_link(f"tcp://127.0.0.1:{port}")
    assert isinstance(link, TcpLink)
    try:
        await link.open()
        got = bytearray()
        async with asyncio.timeout(5):
            while not got.endswith(b"\r\n"):
                got += await link.read(8)
        assert got.startswith(b">PROGRAM")
        await link.write(b"?Q500\r\n")
        assert await asyncio.wait_for(received.get(), 5) == b"?Q500\r\n"
        with pytest.raises(LinkClosedError):
            async with asyncio.timeout(5):
                await link.read(10)
    finally:
        await link.close()
        server.close()
        await server.wait_closed()


async def test_tcp_link_refused_is_link_error() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    link = TcpLink("127.0.0.1", port)
    with pytest.raises(LinkError, match=f"127.0.0.1:{port}"):
        await link.open()


async def test_memory_pair_moves_bytes_and_reports_close() -> None:
    agent, device = memory_pair("router", capacity=8)
    await agent.open()
    await device.open()
    writer = asyncio.create_task(agent.write(b"0123456789abcdef"))  # twice the capacity
    got = bytearray()
    while len(got) < 16:
        got += await device.read(5)
    await writer
    assert bytes(got) == b"0123456789abcdef"
    await device.write(b"ok\r\n")
    await device.close()
    assert await agent.read(100) == b"ok\r\n"  # what was sent before the close still arrives
    with pytest.raises(LinkClosedError):
        await agent.read(100)
    with pytest.raises(LinkClosedError):
        await agent.write(b"?")


async def test_memory_writer_blocks_when_buffer_full() -> None:
    agent, device = memory_pair(capacity=4)
    await agent.open()
    await device.open()
    writer = asyncio.create_task(agent.write(b"12345678"))
    await asyncio.sleep(0.05)
    assert not writer.done()  # back-pressure, not unbounded memory
    assert await device.read(100) == b"1234"
    await asyncio.wait_for(writer, 1)
    await agent.close()


async def _faulty_read_all(seed: int) -> tuple[bytes, int, int]:
    agent, device = memory_pair()
    link = FaultyLink(agent, split=3, drop_rate=0.1, corrupt_rate=0.1, rng=random.Random(seed))
    await link.open()
    await device.open()
    payload = bytes(range(200))
    await device.write(payload)
    await device.close()
    chunks: list[bytes] = []
    while True:
        try:
            chunks.append(await link.read(64))
        except LinkClosedError:
            break
    await link.close()
    assert all(1 <= len(c) <= 3 for c in chunks)
    return b"".join(chunks), link.dropped, link.corrupted


async def test_faulty_link_is_deterministic_with_a_seed() -> None:
    first = await _faulty_read_all(7)
    second = await _faulty_read_all(7)
    other = await _faulty_read_all(8)
    assert first == second
    assert first != other
    data, dropped, corrupted = first
    assert dropped > 0
    assert corrupted > 0
    assert len(data) == 200 - dropped


async def test_faulty_link_delay() -> None:
    agent, device = memory_pair()
    link = FaultyLink(agent, delay_s=0.1)
    await link.open()
    await device.open()
    await device.write(b"x")
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await link.read(10) == b"x"
    assert loop.time() - start >= 0.09
    await link.close()


def test_open_link_specs() -> None:
    serial_link = open_link("/dev/ttyUSB0", 9600)
    assert isinstance(serial_link, SerialLink)
    assert serial_link.name == "/dev/ttyUSB0"
    pty_link = open_link("pty:/tmp/ttyGRBL")
    assert isinstance(pty_link, SerialLink)
    assert pty_link.name == "/tmp/ttyGRBL"
    tcp_link = open_link("tcp://10.0.0.5:5051")
    assert tcp_link.name == "tcp://10.0.0.5:5051"
    for bad in ("COM3", "tcp://nohost", "udp://x:1"):
        with pytest.raises(LinkError):
            open_link(bad)


def test_every_link_satisfies_the_protocol() -> None:
    agent, _ = memory_pair()
    links: list[Link] = [
        SerialLink("/dev/ttyUSB0"),
        TcpLink("127.0.0.1", 1),
        agent,
        FaultyLink(agent, rng=random.Random(1)),
    ]
    assert [link.name for link in links][:2] == ["/dev/ttyUSB0", "tcp://127.0.0.1:1"]
