"""Fixtures for the hub tests: envelopes, an open store (on each backend), a config."""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pg_support import BACKENDS, AnyStore, PgServer, StoreFactory, unique_schema

from shopfloor.contract import Envelope, RecordKind
from shopfloor.hub.config import HubConfig, parse_config
from shopfloor.hub.store import Incoming, SqliteStore
from shopfloor.hub.store.postgres import PostgresStore

EnvFactory = Callable[..., Envelope]


def make_envelope(
    kind: RecordKind | str = RecordKind.STATE,
    *,
    agent: str = "pi-1",
    machine: str = "cnc-1",
    stream: str = "s1",
    seq: int = 1,
    ts: int = 1_000,
    body: dict[str, Any] | None = None,
    replay: bool = False,
) -> Envelope:
    kind = RecordKind(kind)
    defaults: dict[RecordKind, dict[str, Any]] = {
        RecordKind.STATE: {"state": "RUNNING", "since": ts, "detail": "", "program": "O1"},
        RecordKind.TELEMETRY: {"samples": [{"ts": ts, "values": {"load": 1.5}}]},
        RecordKind.EVENT: {"event": "message", "text": "hi"},
        RecordKind.META: {"protocol": "grbl", "firmware": "1.1h", "kind": "router"},
    }
    return Envelope(
        kind=kind,
        agent=agent,
        machine=machine,
        stream=stream,
        seq=seq,
        ts=ts,
        body=defaults[kind] if body is None else body,
        mono=ts,
        replay=replay,
    )


@pytest.fixture
def env() -> EnvFactory:
    return make_envelope


@pytest.fixture
def incoming() -> Callable[..., Incoming]:
    def build(envelope: Envelope, *, site: str = "shop1", received_at: int = 2_000) -> Incoming:
        return Incoming(envelope=envelope, site=site, received_at=received_at)

    return build


# --- the store, on SQLite and on the real PostgreSQL on 127.0.0.1:5432 ---------------------


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    server = PgServer()
    try:
        yield server
    finally:
        server.drop()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def new_store(backend: str, tmp_path: Path, pg: PgServer) -> StoreFactory:
    """Makes unopened stores of this test's backend, all on the same (initially empty)
    database: a file in ``tmp_path``, or a PostgreSQL schema of this test's own."""
    schema = unique_schema()

    def make(**options: object) -> AnyStore:
        if backend == "sqlite":
            return SqliteStore(tmp_path / "hub.sqlite3", **options)  # type: ignore[arg-type]
        return PostgresStore(pg.url(), schema=schema, **options)  # type: ignore[arg-type]

    return make


@pytest.fixture
async def store(new_store: StoreFactory) -> AsyncIterator[AnyStore]:
    async with new_store() as s:
        yield s


@pytest.fixture
def hub_config(tmp_path: Path) -> Callable[..., HubConfig]:
    def build(extra: str = "", *, root: str = "shopfloor/v1", port: int = 1883) -> HubConfig:
        text = f"""
[hub]
site = "shop1"
topic_root = "{root}"
data_dir = "{tmp_path}"
stale_after_s = 30

[mqtt]
url = "mqtt://127.0.0.1:{port}"
client_id = "hub-test-{root.replace("/", "-")}"
session_expiry_s = 60
{extra}
"""
        return parse_config(text, source="test.toml", base_dir=tmp_path)

    return build


# --- a real Mosquitto on 127.0.0.1:1883, shared: never stopped or reconfigured -------------

BROKER_HOST = "127.0.0.1"
BROKER_PORT = 1883


class Broker:
    """Publishes with ``mosquitto_pub`` under a unique topic root; clears what it retained."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.retained: set[str] = set()

    async def _run(self, *args: str) -> bytes:
        proc = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(proc.communicate(), 15)
        assert proc.returncode == 0, err.decode()
        return out

    async def pub(self, topic: str, payload: bytes | str, *, retain: bool = False) -> None:
        data = payload if isinstance(payload, str) else payload.decode("utf-8", "replace")
        args = ["mosquitto_pub", "-h", BROKER_HOST, "-p", str(BROKER_PORT), "-q", "1"]
        if retain:
            args.append("-r")
            self.retained.add(topic)
        await self._run(*args, "-t", topic, "-m", data)

    async def read_retained(self, topic: str, timeout_s: int = 5) -> bytes:
        self.retained.add(topic)
        return await self._run(
            "mosquitto_sub",
            "-h",
            BROKER_HOST,
            "-p",
            str(BROKER_PORT),
            "-t",
            topic,
            "-C",
            "1",
            "-W",
            str(timeout_s),
            "--retained-only",
        )

    async def clear(self) -> None:
        for topic in self.retained:
            await self._run(
                "mosquitto_pub", "-h", BROKER_HOST, "-p", str(BROKER_PORT), "-r", "-n", "-t", topic
            )


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    b = Broker(f"t{uuid.uuid4().hex[:8]}/v1")
    try:
        yield b
    finally:
        await b.clear()


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool], timeout_s: float = 10.0
) -> None:
    """Poll ``check`` until it is true; fail with a clear message after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            pytest.fail(f"condition {getattr(check, '__name__', check)} not met in {timeout_s} s")
        await asyncio.sleep(0.05)


@pytest.fixture
def wait_until() -> Callable[..., Awaitable[None]]:
    return eventually
