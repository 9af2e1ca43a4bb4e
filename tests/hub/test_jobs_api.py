"""GET /api/v1/jobs and /api/v1/jobs/{id}: filters, validation, pagination, auth; on a hub
with each store (the ``backend`` fixture), with the same answers."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from orders_support import on_backend
from pg_support import PgServer

from shopfloor.contract import Envelope, RecordKind
from shopfloor.hub.api.app import create_app
from shopfloor.hub.config import HubConfig
from shopfloor.hub.runtime import Hub, open_hub
from shopfloor.hub.store import Incoming, WriteBatch

T0 = 1_764_000_000_000
MIN = 60_000
NOW = T0 + 120 * MIN


class Agent:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.seq = 0

    async def send(self, machine: str, ts: int, kind: RecordKind, body: dict[str, Any]) -> None:
        self.seq += 1
        env = Envelope(
            kind=kind, agent="pi-1", machine=machine, stream="s1", seq=self.seq, ts=ts,
            body=body, mono=ts,
        )  # fmt: skip
        result = await self.hub.store.write(WriteBatch(records=[Incoming(env, "shop1", ts)]))
        self.hub.trackers.apply(result)
        assert self.hub.jobs is not None
        await self.hub.jobs.apply(result.new)
        self.hub.trackers.publish_pending()

    async def event(self, machine: str, ts: int, event: str, **fields: Any) -> None:
        body = {"event": event, "code": None, "text": "", **fields}
        await self.send(machine, ts, RecordKind.EVENT, body)


@pytest.fixture
async def hub(
    hub_config: Callable[..., HubConfig], backend: str, pg: PgServer
) -> AsyncIterator[Hub]:
    config = on_backend(hub_config(), backend, pg)
    async with open_hub(config, mqtt=False, clock=lambda: NOW) as running:
        yield running


@pytest.fixture
async def client(hub: Hub) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(hub.config, hub=hub)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://hub"
    ) as c:
        yield c


async def shop_day(hub: Hub) -> Agent:
    """Router: j1 completed (ORDER 1042), j2 running; laser: l1 aborted (ORDER 7)."""
    agent = Agent(hub)
    for machine in ("router", "laser"):
        await agent.send(machine, T0, RecordKind.STATE, {"state": "IDLE", "since": T0})
    await agent.event("router", T0, "job_started", job="j1", program="sign (ORDER 1042).nc",
                      unit="lines", total=1000, source="proxy")  # fmt: skip
    await agent.event("router", T0 + 10 * MIN, "job_ended", job="j1", outcome="completed",
                      done=1000, total=1000)  # fmt: skip
    await agent.event("laser", T0 + 20 * MIN, "job_started", job="l1", program="badge ORDER 7",
                      unit="lines", total=200, source="proxy")  # fmt: skip
    await agent.event("laser", T0 + 25 * MIN, "job_ended", job="l1", outcome="aborted",
                      done=50, total=200)  # fmt: skip
    await agent.event("router", T0 + 60 * MIN, "job_started", job="j2", program="lid.nc",
                      unit="lines", total=400, source="proxy")  # fmt: skip
    await agent.event("router", T0 + 70 * MIN, "job_progress", job="j2", done=100, total=400,
                      unit="lines")  # fmt: skip
    return agent


async def test_jobs_are_listed_newest_first_with_progress_and_eta(
    hub: Hub, client: httpx.AsyncClient
) -> None:
    await shop_day(hub)
    resp = await client.get("/api/v1/jobs")
    assert resp.status_code == 200
    body = resp.json()
    assert [j["agent_job"] for j in body["jobs"]] == ["j2", "l1", "j1"]
    # The same ids on both stores: updates of a job do not use up ids.
    assert [j["id"] for j in body["jobs"]] == [3, 2, 1]
    assert body["next_cursor"] is None
    j2 = body["jobs"][0]
    assert j2["machine"] == "router"
    assert (j2["running"], j2["outcome"], j2["done"], j2["total"], j2["progress"]) == (
        True,
        None,
        100,
        400,
        0.25,
    )
    assert j2["eta_origin"] == "linear"
    assert j2["eta_at"] == T0 + 100 * MIN
    assert j2["eta_low_at"] < j2["eta_at"] < j2["eta_high_at"]
    j1 = body["jobs"][2]
    assert (j1["outcome"], j1["ended_at"], j1["order_ref"], j1["eta_at"]) == (
        "completed",
        T0 + 10 * MIN,
        "1042",
        None,
    )
    one = await client.get(f"/api/v1/jobs/{j1['id']}")
    assert one.status_code == 200
    assert one.json() == j1


async def test_filters_by_machine_running_order_and_time(
    hub: Hub, client: httpx.AsyncClient
) -> None:
    await shop_day(hub)

    async def ids(**params: Any) -> list[str]:
        resp = await client.get("/api/v1/jobs", params=params)
        assert resp.status_code == 200, resp.text
        return [j["agent_job"] for j in resp.json()["jobs"]]

    assert await ids(machine="router") == ["j2", "j1"]
    assert await ids(running="true") == ["j2"]
    assert await ids(running="false") == ["l1", "j1"]
    assert await ids(order_ref="1042") == ["j1"]
    assert await ids(order_ref="7", machine="laser") == ["l1"]
    # Jobs overlapping [from, to): still running at from, started before to.
    assert await ids(**{"from": str(T0 + 15 * MIN), "to": str(T0 + 50 * MIN)}) == ["l1"]
    assert await ids(**{"from": "2025-11-24T16:30:00Z"}) == ["j2"]  # T0 + 90 min
    assert await ids(to=str(T0 + 5 * MIN)) == ["j1"]


async def test_pages_follow_the_cursor(hub: Hub, client: httpx.AsyncClient) -> None:
    await shop_day(hub)
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(5):
        params: dict[str, Any] = {"limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        body = (await client.get("/api/v1/jobs", params=params)).json()
        seen += [j["agent_job"] for j in body["jobs"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == ["j2", "l1", "j1"]


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"from": str(T0 + MIN), "to": str(T0)}, "is after 'to'"),
        ({"from": "0", "to": str(T0)}, "longer than 366 days"),
        ({"from": "yesterday"}, "neither epoch milliseconds nor ISO-8601"),
        ({"machine": "drill"}, "no machine 'drill'"),
        ({"cursor": "abc"}, "not one this API gave out"),
        ({"cursor": "1" * 20}, "not one this API gave out"),  # beyond 64 bits
        ({"cursor": "²"}, "not one this API gave out"),  # isdigit() but not int(): was a 500
        ({"cursor": "١٢"}, "not one this API gave out"),  # Arabic-Indic digits
        ({"cursor": "9223372036854775808"}, "not one this API gave out"),  # MAX_ID + 1
        ({"limit": "0"}, "greater than or equal to 1"),
    ],
)
async def test_bad_queries_are_422_with_a_reason(
    hub: Hub, client: httpx.AsyncClient, params: dict[str, str], reason: str
) -> None:
    await shop_day(hub)
    resp = await client.get("/api/v1/jobs", params=params)
    assert resp.status_code == 422
    assert reason in resp.text


async def test_an_unknown_job_is_404_with_a_reason(hub: Hub, client: httpx.AsyncClient) -> None:
    resp = await client.get("/api/v1/jobs/999")
    assert resp.status_code == 404
    assert resp.json()["detail"] == "no job 999 on this hub; GET /api/v1/jobs lists them"
    assert (await client.get("/api/v1/jobs/zero")).status_code == 422
    # An id beyond 64 bits names nothing: refused, not a 500 from SQLite's OverflowError.
    huge = await client.get("/api/v1/jobs/100000000000000000000")
    assert huge.status_code == 422
    assert "less than or equal to" in huge.text


async def test_jobs_need_a_read_token_when_tokens_are_configured(
    hub_config: Callable[..., HubConfig], backend: str, pg: PgServer
) -> None:
    digest = hashlib.sha256(b"wall-token").hexdigest()
    writer = hashlib.sha256(b"robot-token").hexdigest()
    config = on_backend(
        hub_config(
            f'[[api.tokens]]\nname = "wall"\nsha256 = "{digest}"\nscopes = ["read"]\n'
            f'[[api.tokens]]\nname = "robot"\nsha256 = "{writer}"\nscopes = ["write"]\n'
        ),
        backend,
        pg,
    )
    async with open_hub(config, mqtt=False, clock=lambda: NOW) as running:
        app = create_app(config, hub=running)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://hub") as c:
            assert (await c.get("/api/v1/jobs")).status_code == 401
            assert (await c.get("/api/v1/jobs/1")).status_code == 401
            robot = {"Authorization": "Bearer robot-token"}
            assert (await c.get("/api/v1/jobs", headers=robot)).status_code == 403
            wall = {"Authorization": "Bearer wall-token"}
            assert (await c.get("/api/v1/jobs", headers=wall)).status_code == 200


async def test_the_openapi_document_has_typed_jobs_with_examples(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    listing = spec["paths"]["/api/v1/jobs"]["get"]
    assert {p["name"] for p in listing["parameters"]} >= {
        "machine",
        "running",
        "order_ref",
        "from",
        "to",
        "limit",
        "cursor",
    }
    model = spec["components"]["schemas"]["Job"]
    assert model["example"]["eta_origin"] == "history"
    assert "eta_low_at" in model["properties"]
    assert "404" in spec["paths"]["/api/v1/jobs/{job_id}"]["get"]["responses"]
