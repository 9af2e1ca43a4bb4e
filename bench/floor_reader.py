"""The floor for bench/agent_cpu.py: poll GRBL ports at 5 Hz and only split lines.

It does what the agent must do at the very least with the same library
(pyserial-asyncio-fast, one asyncio loop, every port kept open): write ``?`` every poll
interval, read what comes back, split it into lines and count the status reports
(``<...>``). No parsing, no state tracking, no MQTT. Bounded like the agent: a line longer
than ``MAX_LINE`` bytes is dropped.

    python -m bench.floor_reader [--poll 0.2] PTY [PTY ...]

Prints ``READY`` once every port is open. On SIGUSR1 it prints ``COUNT <reports>
<wall ms>``; SIGTERM or SIGINT end it cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from typing import Final

import serial_asyncio_fast

MAX_LINE: Final = 256
READ_SIZE: Final = 4096


class Counter:
    def __init__(self) -> None:
        self.reports = 0

    def show(self) -> None:
        print(f"COUNT {self.reports} {time.time_ns() // 1_000_000}", flush=True)


async def _read(reader: asyncio.StreamReader, counter: Counter) -> None:
    pending = b""
    while True:
        data = await reader.read(READ_SIZE)
        if not data:
            return
        *lines, pending = (pending + data).split(b"\n")
        if len(pending) > MAX_LINE:
            pending = b""
        for line in lines:
            if line.startswith(b"<"):
                counter.reports += 1


async def _poll(writer: asyncio.StreamWriter, interval_s: float) -> None:
    while True:
        writer.write(b"?")
        await writer.drain()
        await asyncio.sleep(interval_s)


async def run(paths: list[str], interval_s: float) -> None:
    counter = Counter()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, counter.show)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    streams = [
        await serial_asyncio_fast.open_serial_connection(url=path, baudrate=115200)
        for path in paths
    ]
    tasks = []
    for i, (reader, writer) in enumerate(streams):
        tasks.append(asyncio.create_task(_read(reader, counter), name=f"floor-reader:{i}"))
        tasks.append(asyncio.create_task(_poll(writer, interval_s), name=f"floor-poller:{i}"))
    print("READY", flush=True)
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for _, writer in streams:
            writer.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ports", nargs="+", help="pty or serial device paths")
    parser.add_argument("--poll", type=float, default=0.2, help="poll interval in s")
    args = parser.parse_args()
    asyncio.run(run(args.ports, args.poll))
    return 0


if __name__ == "__main__":
    sys.exit(main())
