"""The HTTP API: machines, timelines, auth, rejected, health, and the SSE stream."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import httpx
import pytest
import uvicorn

from shopfloor.contract import Envelope, RecordKind
from shopfloor.hub.api.app import create_app
from shopfloor.hub.config import HubConfig
from shopfloor.hub.runtime import Hub, open_hub
from shopfloor.hub.service import main
from shopfloor.hub.store import Incoming, WriteBatch

EnvFactory = Callable[..., Envelope]
NOW = 100_000_000


def tokens_toml(**tokens: list[str]) -> str:
    out = ""
    for name, scopes in tokens.items():
        digest = hashlib.sha256(f"{name}-token".encode()).hexdigest()
        out += (
            f'[[api.tokens]]\nname = "{name}"\nsha256 = "{digest}"\nscopes = {json.dumps(scopes)}\n'
        )
    return out


async def feed(hub: Hub, envelopes: Sequence[Envelope], received_at: int = NOW) -> None:
    result = await hub.store.write(
        WriteBatch(records=[Incoming(e, "shop1", received_at) for e in envelopes])
    )
    await hub.store.add_states(hub.trackers.apply(result))
    hub.trackers.publish_pending()


@pytest.fixture
async def hub(hub_config: Callable[..., HubConfig]) -> AsyncIterator[Hub]:
    async with open_hub(hub_config(), mqtt=False, clock=lambda: NOW) as running:
        yield running


@pytest.fixture
async def client(hub: Hub) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(hub.config, hub=hub)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://hub"
    ) as c:
        yield c


async def test_machines_list_get_and_unknown(
    hub: Hub, client: httpx.AsyncClient, env: EnvFactory
) -> None:
    await feed(hub, [env(seq=1, ts=NOW - 5_000), env(RecordKind.META, seq=2)])
    body = (await client.get("/api/v1/machines")).json()
    [machine] = body["machines"]
    assert machine["id"] == "cnc-1"
    assert machine["state"] == "RUNNING"
    assert machine["protocol"] == "grbl"
    assert machine["job"] is None
    assert set(machine) == {
        "id",
        "agent",
        "site",
        "name",
        "kind",
        "protocol",
        "state",
        "detail",
        "since",
        "last_seen",
        "program",
        "phase",
        "job",
        "alarm",
        "online",
    }
    assert (await client.get("/api/v1/machines/cnc-1")).json() == machine
    missing = await client.get("/api/v1/machines/nope")
    assert missing.status_code == 404
    assert "no machine 'nope'" in missing.json()["detail"]


async def test_states_window_with_coverage(
    hub: Hub, client: httpx.AsyncClient, env: EnvFactory
) -> None:
    await feed(
        hub,
        [
            env(seq=1, ts=NOW - 60_000, body={"state": "IDLE"}),
            env(seq=2, ts=NOW - 30_000, body={"state": "RUNNING", "detail": "O1"}),
        ],
    )
    resp = await client.get(
        "/api/v1/machines/cnc-1/states", params={"from": NOW - 90_000, "to": NOW + 60_000}
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["machine"], body["from"], body["to"]) == ("cnc-1", NOW - 90_000, NOW + 60_000)
    assert body["intervals"] == [
        {
            "state": "OFFLINE",
            "detail": "no data",
            "from": NOW - 90_000,
            "to": NOW - 60_000,
            "duration_ms": 30_000,
        },
        {
            "state": "IDLE",
            "detail": "",
            "from": NOW - 60_000,
            "to": NOW - 30_000,
            "duration_ms": 30_000,
        },
        {
            "state": "RUNNING",
            "detail": "O1",
            "from": NOW - 30_000,
            "to": NOW,
            "duration_ms": 30_000,
        },
    ]
    assert body["coverage"] == pytest.approx(2 / 3, abs=1e-3)
    iso = await client.get(
        "/api/v1/machines/cnc-1/states",
        params={"from": "1970-01-02T03:46:40Z", "to": "1970-01-02T03:46:40+00:00"},
    )
    assert iso.status_code == 200
    assert iso.json()["from"] == NOW
    default = (await client.get("/api/v1/machines/cnc-1/states")).json()
    assert default["to"] - default["from"] == 24 * 3600 * 1000


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"from": 2_000, "to": 1_000}, "is after 'to'"),
        ({"from": 0, "to": 367 * 24 * 3600 * 1000}, "longer than 366 days"),
        ({"from": "yesterday"}, "neither epoch milliseconds nor ISO-8601"),
    ],
)
async def test_states_bad_windows_are_422(
    hub: Hub, client: httpx.AsyncClient, env: EnvFactory, params: dict[str, Any], fragment: str
) -> None:
    await feed(hub, [env(seq=1)])
    resp = await client.get("/api/v1/machines/cnc-1/states", params=params)
    assert resp.status_code == 422
    assert fragment in resp.json()["detail"]


async def test_states_of_unknown_machine_is_404(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/v1/machines/ghost/states")).status_code == 404


async def test_tokens_401_403_and_query_token_only_on_the_stream(
    hub_config: Callable[..., HubConfig], env: EnvFactory
) -> None:
    config = hub_config(tokens_toml(reader=["read"], writer=["write"], robot=["admin"]))
    async with open_hub(config, mqtt=False, clock=lambda: NOW) as hub:
        app = create_app(config, hub=hub)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://hub"
        ) as client:
            anonymous = await client.get("/api/v1/machines")
            assert anonymous.status_code == 401
            assert anonymous.headers["www-authenticate"].startswith("Bearer")
            wrong = await client.get("/api/v1/machines", headers={"Authorization": "Bearer guess"})
            assert wrong.status_code == 401
            assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
            ok = await client.get(
                "/api/v1/machines", headers={"Authorization": "Bearer reader-token"}
            )
            assert ok.status_code == 200
            writer = await client.get(
                "/api/v1/rejected", headers={"Authorization": "Bearer writer-token"}
            )
            assert writer.status_code == 403
            assert "lacks the read scope" in writer.json()["detail"]
            assert (
                await client.get(
                    "/api/v1/machines", headers={"Authorization": "Bearer robot-token"}
                )
            ).status_code == 200, "admin grants everything"
            # The query token works on the event stream only (EventSource sends no headers).
            assert (
                await client.get("/api/v1/machines", params={"access_token": "reader-token"})
            ).status_code == 401
            stream = await client.get("/api/v1/events", params={"access_token": "guess"})
            assert stream.status_code == 401
            assert "not known" in stream.json()["detail"], "the query token was checked"
            assert (await client.get("/api/v1/health")).status_code == 200
            assert (await client.get("/openapi.json")).status_code == 200


async def test_health_is_503_when_the_broker_cannot_be_reached(
    hub_config: Callable[..., HubConfig],
) -> None:
    config = hub_config(port=free_port())  # nothing listens there
    async with open_hub(config, clock=lambda: NOW) as running:
        app = create_app(config, hub=running)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://hub"
        ) as client:
            answer = await client.get("/api/v1/health")
    assert answer.status_code == 503
    body = answer.json()
    assert body["status"] == "degraded"
    assert body["store"] is True
    assert body["mqtt"] == {"enabled": True, "connected": False}


async def test_openapi_is_typed(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    assert set(schemas["MachineViewModel"]["required"]) >= {"id", "state", "since", "online"}
    assert "/api/v1/machines/{machine_id}/states" in doc["paths"]
    assert (await client.get("/docs")).status_code == 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_event_stream_sends_snapshot_changes_and_keepalives(
    hub: Hub, env: EnvFactory, wait_until: Callable[..., Awaitable[None]]
) -> None:
    await feed(hub, [env(seq=1)])
    port = free_port()
    app = create_app(hub.config, hub=hub, keepalive_s=0.3)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve(), name="test.uvicorn")
    try:
        await wait_until(lambda: server.started)
        async with (
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
            client.stream("GET", "/api/v1/events") as resp,
        ):
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            lines = resp.aiter_lines()

            async def next_event() -> tuple[str, dict[str, Any]]:
                kind = ""
                while True:
                    line = await asyncio.wait_for(anext(lines), 5)
                    if line.startswith("event: "):
                        kind = line.removeprefix("event: ")
                    elif line.startswith("data: "):
                        return kind, json.loads(line.removeprefix("data: "))
                    elif line == ": keepalive":
                        return "keepalive", {}

            kind, snapshot = await next_event()
            assert (kind, snapshot["id"], snapshot["state"]) == ("machine", "cnc-1", "RUNNING")
            await feed(hub, [env(seq=2, ts=5_000, body={"state": "PAUSED", "detail": "door"})])
            kind, change = await next_event()
            assert (kind, change["state"], change["detail"]) == ("machine", "PAUSED", "door")
            assert (await next_event())[0] == "keepalive"
    finally:
        server.should_exit = True
        await serving


def test_main_reports_config_errors_with_exit_2(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "hub.toml"
    bad.write_text('[hub]\nsite = "shop1"\nport = 1\n')
    assert main(["run", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "hub.port" in err
    assert str(bad) in err
