"""Shared by the order and webhook tests: a hub configuration on either store backend, a
shop that commits records the way ingest does, and a real HTTP webhook receiver that can
fail on purpose."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from pg_support import PgServer

from shopfloor.contract import Envelope, RecordKind
from shopfloor.hub.config import HubConfig
from shopfloor.hub.runtime import Hub
from shopfloor.hub.store import Incoming, WriteBatch

T0 = 1_764_000_000_000
MIN = 60_000


def on_backend(config: HubConfig, backend: str, pg: PgServer) -> HubConfig:
    """``config`` with its store on ``backend`` (the ``backend`` fixture): SQLite in the
    test's data_dir, or a fresh PostgreSQL database of its own (a hub configured by URL uses
    the ``public`` schema). Every start of a hub with the returned config opens the same
    database."""
    if backend == "sqlite":
        return config
    url = pg.new_database()
    return dataclasses.replace(config, hub=dataclasses.replace(config.hub, database_url=url))


class Clock:
    """The hub's clock, moved by the test."""

    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


class Shop:
    """One agent's records, committed and handed to trackers and job book as ingest does."""

    def __init__(self, hub: Hub, clock: Clock, agent: str = "pi-1") -> None:
        self.hub = hub
        self.clock = clock
        self.agent = agent
        self.seq = 0

    async def commit(self, kind: RecordKind, machine: str, body: dict[str, Any]) -> None:
        self.seq += 1
        self.clock.now += 1000
        env = Envelope(
            kind=kind, agent=self.agent, machine=machine, stream="s1", seq=self.seq,
            ts=self.clock.now, body=body, mono=self.clock.now, replay=False,
        )  # fmt: skip
        hub = self.hub
        result = await hub.store.write(WriteBatch(records=[Incoming(env, "shop1", self.clock.now)]))
        await hub.store.add_states(hub.trackers.apply(result))
        hub.trackers.publish_pending()
        if hub.jobs is not None:
            await hub.jobs.apply(result.new)

    async def state(self, machine: str, state: str, program: str | None = None) -> None:
        body: dict[str, Any] = {"state": state, "since": self.clock.now, "detail": ""}
        if program is not None:
            body["program"] = program
        await self.commit(RecordKind.STATE, machine, body)

    async def event(self, machine: str, event: str, **fields: Any) -> None:
        await self.commit(
            RecordKind.EVENT, machine, {"event": event, "code": None, "text": "", **fields}
        )

    async def start(self, machine: str, job: str, program: str, total: float) -> None:
        await self.event(
            machine, "job_started", job=job, program=program, unit="parts", total=total,
            source="counter",
        )  # fmt: skip

    async def progress(self, machine: str, job: str, done: float, total: float) -> None:
        await self.event(machine, "job_progress", job=job, done=done, total=total, unit="parts")

    async def end(self, machine: str, job: str, outcome: str, done: float, total: float) -> None:
        await self.event(machine, "job_ended", job=job, outcome=outcome, done=done, total=total)


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes
    answered: int | None  # None: the connection was dropped

    @property
    def event(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


@dataclass
class Receiver:
    """A real HTTP server on 127.0.0.1: answers each request with the next planned outcome
    (a status code, or "drop" to close the connection unanswered), then 200."""

    plan: list[int | str] = field(default_factory=list)
    seen: list[Delivery] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/shopfloor"

    @property
    def accepted(self) -> list[Delivery]:
        return [d for d in self.seen if d.answered is not None and 200 <= d.answered < 300]

    async def start(self, port: int = 0) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                outcome = self.plan.pop(0) if self.plan else 200
                if outcome == "drop":
                    self.seen.append(Delivery(headers, body, None))
                    return
                assert isinstance(outcome, int)
                self.seen.append(Delivery(headers, body, outcome))
                writer.write(
                    f"HTTP/1.1 {outcome} X\r\nContent-Length: 2\r\nContent-Type: text/plain"
                    "\r\n\r\nok".encode()
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def receiver(plan: list[int | str] | None = None) -> AsyncIterator[Receiver]:
    r = Receiver(plan=list(plan or []))
    await r.start()
    try:
        yield r
    finally:
        await r.stop()
