"""A TCP relay that can cut the network without closing anything.

``python tests/faults/relay.py --listen PORT --target PORT`` forwards every connection to
``127.0.0.1:PORT`` on ``127.0.0.1:LISTEN``. Commands on standard input, one per line, each
answered with one line on standard output:

- ``cut``: a cable pulled somewhere between the two ends. Nothing is forwarded any more,
  in either direction, and nothing is closed: what either end sends stays in the relay (as
  a real TCP stack keeps retransmitting it), so only the ends' keepalives can notice.
  Connections opened during the cut are accepted and never get through (as a SYN that is
  never answered: the client's connect timeout ends them); they are closed on ``resume``.
- ``resume``: the cable is back. What was held is delivered (a connection that one end
  gave up meanwhile is then closed by that end, as TCP would), new connections go through.
- ``stats``: ``connections=N held=BYTES``.

Standard output says ``ready`` once listening. ``quit``, end of input or SIGTERM ends it.
Only loopback addresses are used.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

HOST = "127.0.0.1"
CHUNK = 65536


class Relay:
    def __init__(self, listen: int, target: int) -> None:
        self.listen = listen
        self.target = target
        self.open = asyncio.Event()
        self.open.set()
        self.connections = 0
        self.held = 0
        self._ghosts: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pair: list[asyncio.Task[None]],
    ) -> None:
        try:
            while True:
                await self.open.wait()
                data = await reader.read(CHUNK)
                if not self.open.is_set():
                    self.held += len(data)
                    await self.open.wait()  # the cut began while we were reading: hold it
                    self.held -= len(data)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                writer.close()
            for task in pair:  # one direction is over: so is the connection
                if task is not asyncio.current_task():
                    task.cancel()

    async def _client(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        if not self.open.is_set():
            # During the cut a new connection never reaches the other end.
            self._ghosts.add(c_writer)
            return
        try:
            u_reader, u_writer = await asyncio.open_connection(HOST, self.target)
        except OSError:
            c_writer.close()
            return
        self.connections += 1
        pair: list[asyncio.Task[None]] = []
        pair.append(asyncio.create_task(self._pump(c_reader, u_writer, pair)))
        pair.append(asyncio.create_task(self._pump(u_reader, c_writer, pair)))
        for task in pair:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await asyncio.gather(*pair, return_exceptions=True)
        self.connections -= 1

    def cut(self) -> None:
        self.open.clear()

    def resume(self) -> None:
        for ghost in self._ghosts:
            with contextlib.suppress(OSError, RuntimeError):
                ghost.close()
        self._ghosts.clear()
        self.open.set()

    async def run(self) -> None:
        server = await asyncio.start_server(self._client, HOST, self.listen)
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        try:
            while True:
                line = (await reader.readline()).decode().strip()
                if not line or line == "quit":
                    return
                if line == "cut":
                    self.cut()
                elif line == "resume":
                    self.resume()
                elif line != "stats":
                    print(f"unknown command {line!r}", flush=True)
                    continue
                print(f"{line} connections={self.connections} held={self.held}", flush=True)
        finally:
            server.close()
            for task in list(self._tasks):
                task.cancel()
            self.resume()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=int, required=True)
    parser.add_argument("--target", type=int, required=True)
    args = parser.parse_args()

    async def run() -> None:
        main_task = asyncio.current_task()
        assert main_task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
        await Relay(args.listen, args.target).run()

    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
