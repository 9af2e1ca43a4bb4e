"""Webhooks end to end on real parts: a real HTTP receiver on a free port gets every status
change of an order exactly once (accepted), validly signed, also when it fails the first
attempts, when it is down across a hub restart, and after it was given up on. The event
stream carries the same changes."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from orders_support import Clock, Receiver, Shop, on_backend, receiver
from pg_support import PgServer

from shopfloor.hub.api.app import create_app
from shopfloor.hub.config import HubConfig
from shopfloor.hub.runtime import Hub, open_hub

# Webhook management needs an admin token: a hub without tokens refuses it.
ADMIN = {"Authorization": "Bearer boss-token"}
TOKENS = (
    '[[api.tokens]]\nname = "boss"\n'
    f'sha256 = "{hashlib.sha256(b"boss-token").hexdigest()}"\nscopes = ["admin"]\n'
)
FAST = (
    "[orders]\nsweep_s = 0.2\n[webhooks]\nretry_base_s = 0.05\nretry_max_s = 0.2\ntimeout_s = 2\n"
    + TOKENS
)
ORDER: dict[str, Any] = {
    "ref": "1042",
    "items": [{"part": "bracket", "quantity": 3, "program": "O01234"}],
}
DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"

Wait = Callable[..., Awaitable[None]]


def docs_verifier() -> Callable[[str, dict[str, str], bytes], bool]:
    """The verification snippet from docs/api.md, exactly as a receiver would copy it."""
    [code] = re.findall(r"```python webhook-verify\n(.*?)```", DOC.read_text(), re.DOTALL)
    namespace: dict[str, Any] = {}
    exec(compile(code, str(DOC), "exec"), namespace)
    verify: Callable[[str, dict[str, str], bytes], bool] = namespace["verify_shopfloor_webhook"]
    return verify


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def config(hub_config: Callable[..., HubConfig], backend: str, pg: PgServer) -> HubConfig:
    return on_backend(hub_config(FAST), backend, pg)


def api(hub: Hub) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(hub.config, hub=hub)),
        base_url="http://hub",
        headers=ADMIN,
    )


async def subscribe(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    resp = await client.post("/api/v1/webhooks", json={"url": url, "description": "test"})
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def change_log(client: httpx.AsyncClient, order_id: int) -> list[dict[str, Any]]:
    resp = await client.get(f"/api/v1/orders/{order_id}/changes")
    changes: list[dict[str, Any]] = resp.json()["changes"]
    return changes


def assert_exactly_once(
    rx: Receiver, changes: list[dict[str, Any]], secret: str
) -> dict[str, list[Any]]:
    """Each change accepted once, every attempt validly signed and byte-identical per event."""
    verify = docs_verifier()
    attempts: dict[str, list[Any]] = {}
    for d in rx.seen:
        assert verify(secret, d.headers, d.body), d.headers
        assert not verify("whsec_wrong", d.headers, d.body)
        assert d.headers["shopfloor-event-id"] == d.headers["idempotency-key"] == d.event["id"]
        assert d.headers["shopfloor-event"] == "order.status_changed"
        assert d.headers["content-type"] == "application/json"
        attempts.setdefault(d.event["id"], []).append(d)
    for event_id, tries in attempts.items():
        assert len({t.body for t in tries}) == 1, f"event {event_id} changed between retries"
        assert len({t.headers["shopfloor-delivery"] for t in tries}) == 1
    accepted = [d.event["id"] for d in rx.accepted]
    assert sorted(accepted) == sorted(c["id"] for c in changes), (accepted, changes)
    assert len(accepted) == len(set(accepted))
    for d in rx.accepted:
        [change] = [c for c in changes if c["id"] == d.event["id"]]
        assert d.event == change  # the body is the logged change, byte for byte in JSON
    return attempts


async def test_every_change_arrives_once_signed_even_after_failed_attempts(
    config: HubConfig, clock: Clock, wait_until: Wait
) -> None:
    async with (
        receiver(plan=[500, "drop", 503]) as rx,
        open_hub(config, mqtt=False, clock=clock) as hub,
        api(hub) as client,
    ):
        hook = await subscribe(client, rx.url)
        shop = Shop(hub, clock)
        order = (await client.post("/api/v1/orders", json=ORDER)).json()
        await shop.state("mill", "RUNNING")
        await shop.start("mill", "j1", "O01234 (ORDER 1042)", total=3)
        await wait_until(lambda: len(rx.accepted) == 1, 15)
        await shop.progress("mill", "j1", done=2, total=3)  # progress alone pushes nothing
        await shop.end("mill", "j1", "completed", done=3, total=3)
        await wait_until(lambda: len(rx.accepted) == 2, 15)
        await asyncio.sleep(0.5)  # nothing else may follow

        changes = await change_log(client, order["id"])
        assert [(c["previous_status"], c["status"]) for c in changes] == [
            ("received", "in_production"),
            ("in_production", "completed"),
        ]
        attempts = assert_exactly_once(rx, changes, hook["secret"])
        first = attempts[changes[0]["id"]]
        assert [t.answered for t in first] == [500, None, 503, 200]
        assert rx.accepted[1].event["order"]["made"] == 3

        deliveries = (await client.get(f"/api/v1/webhooks/{hook['id']}/deliveries")).json()[
            "deliveries"
        ]
        assert [(d["state"], d["attempts"]) for d in deliveries] == [
            ("delivered", 1),
            ("delivered", 4),
        ]
        assert deliveries[1]["last_status"] == 200


async def test_pending_deliveries_survive_a_hub_restart_and_nothing_is_resent(
    config: HubConfig, clock: Clock, wait_until: Wait
) -> None:
    with socket.socket() as s:  # a port where nothing listens yet
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/hooks/shopfloor"

    async with open_hub(config, mqtt=False, clock=clock) as hub, api(hub) as client:
        hook = await subscribe(client, url)
        order = (await client.post("/api/v1/orders", json=ORDER)).json()
        shop = Shop(hub, clock)
        await shop.state("mill", "RUNNING")
        await shop.start("mill", "j1", "O01234 (ORDER 1042)", total=3)

        async def refused() -> bool:
            rows = (await client.get(f"/api/v1/webhooks/{hook['id']}/deliveries")).json()[
                "deliveries"
            ]
            return bool(rows) and rows[0]["attempts"] >= 1 and rows[0]["state"] == "pending"

        await wait_until(refused, 15)
        [pending] = (await client.get(f"/api/v1/webhooks/{hook['id']}/deliveries")).json()[
            "deliveries"
        ]
        assert "ConnectError" in pending["last_error"]
        seq = shop.seq

    rx = Receiver()
    await rx.start(port)
    try:
        async with open_hub(config, mqtt=False, clock=clock) as hub, api(hub) as client:
            assert hub.jobs is not None
            await hub.jobs.load()
            await wait_until(lambda: len(rx.accepted) == 1, 15)
            shop = Shop(hub, clock)
            shop.seq = seq
            await shop.end("mill", "j1", "completed", done=3, total=3)
            await wait_until(lambda: len(rx.accepted) == 2, 15)
            await asyncio.sleep(0.5)
            changes = await change_log(client, order["id"])
            assert [c["status"] for c in changes] == ["in_production", "completed"]
            assert_exactly_once(rx, changes, hook["secret"])

        # A third start of the hub re-derives everything and pushes nothing new.
        async with open_hub(config, mqtt=False, clock=clock) as hub, api(hub) as client:
            assert hub.orders is not None
            await hub.orders.sweep()
            await asyncio.sleep(0.5)
            assert len(await change_log(client, order["id"])) == 2
            assert len(rx.seen) == 2
    finally:
        await rx.stop()


async def test_a_dead_delivery_is_visible_and_can_be_sent_again(
    hub_config: Callable[..., HubConfig], clock: Clock, wait_until: Wait, backend: str, pg: PgServer
) -> None:
    fast = FAST.replace("timeout_s = 2", "timeout_s = 2\nmax_attempts = 2")
    config = on_backend(hub_config(fast), backend, pg)
    async with (
        receiver(plan=[500, 500]) as rx,
        open_hub(config, mqtt=False, clock=clock) as hub,
        api(hub) as client,
    ):
        hook = await subscribe(client, rx.url)
        order = (await client.post("/api/v1/orders", json=ORDER)).json()
        shop = Shop(hub, clock)
        await shop.state("mill", "IDLE", program="O01234")  # -> queued

        async def dead() -> list[dict[str, Any]]:
            resp = await client.get(
                f"/api/v1/webhooks/{hook['id']}/deliveries", params={"state": "dead"}
            )
            rows: list[dict[str, Any]] = resp.json()["deliveries"]
            return rows

        await wait_until(dead, 15)
        [gone] = await dead()
        assert (gone["attempts"], gone["last_status"], gone["next_at"]) == (2, 500, None)
        assert "500" in gone["last_error"]
        assert rx.accepted == []

        again = await client.post(f"/api/v1/webhooks/{hook['id']}/deliveries/{gone['id']}/retry")
        assert again.status_code == 202, again.text
        await wait_until(lambda: len(rx.accepted) == 1, 15)
        changes = await change_log(client, order["id"])
        assert [c["status"] for c in changes] == ["queued"]
        assert_exactly_once(rx, changes, hook["secret"])
        not_dead = await client.post(f"/api/v1/webhooks/{hook['id']}/deliveries/{gone['id']}/retry")
        assert not_dead.status_code == 409

        # A deleted subscription gets nothing more; its pending deliveries are dead.
        assert (await client.delete(f"/api/v1/webhooks/{hook['id']}")).status_code == 204
        await shop.state("mill", "RUNNING", program="O01234 (ORDER 1042)")
        await shop.start("mill", "j1", "O01234 (ORDER 1042)", total=3)
        await wait_until(lambda: _status(client, order["id"], "in_production"))
        await asyncio.sleep(0.3)
        assert len(rx.seen) == 3


async def _status(client: httpx.AsyncClient, order_id: int, want: str) -> bool:
    return bool((await client.get(f"/api/v1/orders/{order_id}")).json()["status"] == want)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def served_hub(
    config: HubConfig, clock: Clock, wait_until: Wait
) -> AsyncIterator[tuple[Hub, int]]:
    async with open_hub(config, mqtt=False, clock=clock) as hub:
        port = free_port()
        app = create_app(hub.config, hub=hub, keepalive_s=5)
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        )
        serving = asyncio.create_task(server.serve(), name="test.uvicorn")
        try:
            await wait_until(lambda: server.started)
            yield hub, port
        finally:
            server.should_exit = True
            await serving


async def test_the_event_stream_carries_order_changes(
    served_hub: tuple[Hub, int], clock: Clock
) -> None:
    hub, port = served_hub
    async with (
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=ADMIN) as client,
        client.stream("GET", "/api/v1/events") as resp,
    ):
        lines = resp.aiter_lines()

        async def next_order_event() -> tuple[str, dict[str, Any]]:
            kind = event_id = ""
            while True:
                line = await asyncio.wait_for(anext(lines), 10)
                if line.startswith("event: "):
                    kind = line.removeprefix("event: ")
                elif line.startswith("id: "):
                    event_id = line.removeprefix("id: ")
                elif line.startswith("data: ") and kind == "order":
                    return event_id, json.loads(line.removeprefix("data: "))

        order = (await client.post("/api/v1/orders", json=ORDER)).json()
        shop = Shop(hub, clock)
        await shop.state("mill", "RUNNING")
        await shop.start("mill", "j1", "O01234 (ORDER 1042)", total=3)
        event_id, change = await next_order_event()
        assert change["id"] == event_id
        assert (change["order_id"], change["previous_status"], change["status"]) == (
            order["id"],
            "received",
            "in_production",
        )
        logged = (await client.get(f"/api/v1/orders/{order['id']}/changes")).json()["changes"]
        assert logged == [change]


# --- receivers and URLs that used to stall or stop the sender -------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"shopfloor-signature": "v1=" + "0" * 64},  # no timestamp
        {"shopfloor-timestamp": "{now}"},  # no signature
        {"shopfloor-timestamp": "{now}", "shopfloor-signature": "v1=" + "é" * 64},
        {"shopfloor-timestamp": "{now}", "shopfloor-signature": "v1=\udcff"},
        {"shopfloor-timestamp": "²", "shopfloor-signature": "v1=" + "0" * 64},
        {"shopfloor-timestamp": "1" * 5000, "shopfloor-signature": "v1=" + "0" * 64},
        {"shopfloor-timestamp": "", "shopfloor-signature": ""},
        {"shopfloor-timestamp": "{now}", "shopfloor-signature": "v1=, ,="},
    ],
)
def test_the_docs_snippet_says_no_to_malformed_headers_and_never_raises(
    headers: dict[str, str],
) -> None:
    """The snippet raised KeyError, ValueError or TypeError for these (a receiver's 500)."""
    import time

    now = str(int(time.time()))
    sent = {k: v.replace("{now}", now) for k, v in headers.items()}
    assert docs_verifier()("whsec_x", sent, b"{}") is False


def test_the_docs_snippet_accepts_a_real_signature() -> None:
    import time

    from shopfloor.hub.orders.signing import signature_header

    now = int(time.time())
    body = b'{"id":"e1"}'
    headers = {
        "shopfloor-timestamp": str(now),
        "shopfloor-signature": f"v1={'é' * 64}, {signature_header('whsec_x', now, body)}",
    }
    assert docs_verifier()("whsec_x", headers, body) is True
    assert docs_verifier()("whsec_y", headers, body) is False


class Misbehaving:
    """A real HTTP server on 127.0.0.1 that answers every request the same bad way:
    ``trickle`` (200, then a chunked body a little at a time, forever), ``flood`` (500,
    then an endless chunked body as fast as it goes) or ``redirect`` (307 to ``location``)."""

    def __init__(self, mode: str, location: str = "") -> None:
        self.mode = mode
        self.location = location
        self.requests = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    async def __aenter__(self) -> Misbehaving:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)content-length: *(\d+)", head)
            await reader.readexactly(int(length.group(1)) if length else 0)
            self.requests += 1
            if self.mode == "redirect":
                writer.write(
                    f"HTTP/1.1 307 Temporary Redirect\r\nLocation: {self.location}\r\n"
                    "Content-Length: 0\r\n\r\n".encode()
                )
                await writer.drain()
                return
            status = "200 OK" if self.mode == "trickle" else "500 Internal Server Error"
            writer.write(f"HTTP/1.1 {status}\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
            chunk = b"x" * 16 if self.mode == "trickle" else b"oops\x00\n " * 4096
            while True:
                writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                await writer.drain()
                await asyncio.sleep(0.2 if self.mode == "trickle" else 0)
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()


async def deliveries_of(client: httpx.AsyncClient, hook: dict[str, Any]) -> list[dict[str, Any]]:
    resp = await client.get(f"/api/v1/webhooks/{hook['id']}/deliveries")
    assert resp.status_code == 200, resp.text
    rows: list[dict[str, Any]] = resp.json()["deliveries"]
    return rows


async def test_a_slow_or_endless_answer_cannot_hold_up_the_other_subscriptions(
    hub_config: Callable[..., HubConfig], clock: Clock, wait_until: Wait, backend: str, pg: PgServer
) -> None:
    """timeout_s bounds the whole attempt, and at most 4 KiB of an answer is read: a
    receiver that answers 200 and then trickles its body used to keep every delivery of
    every subscription waiting (forever), one that floods a body was read to the end."""
    config = on_backend(hub_config(FAST.replace("timeout_s = 2", "timeout_s = 1")), backend, pg)
    async with (
        receiver() as rx,
        Misbehaving("trickle") as trickle,
        Misbehaving("flood") as flood,
        Misbehaving("redirect", location=rx.url) as redirect,
        open_hub(config, mqtt=False, clock=clock) as hub,
        api(hub) as client,
    ):
        slow = await subscribe(client, trickle.url)
        loud = await subscribe(client, flood.url)
        moved = await subscribe(client, redirect.url)
        hook = await subscribe(client, rx.url)
        order = (await client.post("/api/v1/orders", json=ORDER)).json()
        shop = Shop(hub, clock)
        await shop.state("mill", "IDLE", program="O01234")  # -> queued
        await wait_until(lambda: len(rx.accepted) == 1, 10)
        await shop.state("mill", "RUNNING", program="O01234 (ORDER 1042)")
        await shop.start("mill", "j1", "O01234 (ORDER 1042)", total=3)  # -> in_production
        await wait_until(lambda: len(rx.accepted) == 2, 10)
        changes = await change_log(client, order["id"])
        assert_exactly_once(rx, changes, hook["secret"])

        async def tried(sub: dict[str, Any]) -> bool:
            rows = await deliveries_of(client, sub)
            return len(rows) == 2 and all(r["attempts"] >= 1 for r in rows)

        for sub in (slow, loud, moved):
            await wait_until(lambda sub=sub: tried(sub), 10)
        for row in await deliveries_of(client, slow):
            assert row["last_status"] == 200  # the status came, the body never ended
            assert row["last_error"] == "no complete answer within 1 s"
        for row in await deliveries_of(client, loud):
            assert row["last_status"] == 500
            assert row["last_error"].startswith("the receiver answered 500: oops oops"), row
            assert len(row["last_error"]) <= 300
        for row in await deliveries_of(client, moved):  # redirects are not followed
            assert row["last_status"] == 307
            assert row["state"] in ("pending", "dead")
        assert redirect.requests >= 2
        assert len(rx.seen) == 2  # nothing arrived by way of the redirect


async def test_a_url_the_sender_cannot_parse_fails_its_delivery_not_the_hub(
    config: HubConfig, clock: Clock, wait_until: Wait, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Subscriptions an earlier hub accepted: httpx raised InvalidURL / IDNAError in the
    sender, which stopped the whole hub (again after every restart, the delivery pending).
    The sender also ignores proxy settings in its environment."""
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    dead = f"http://127.0.0.1:{free_port()}"
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, dead)
    bad_urls = {
        "http://host:abc/": "InvalidURL",
        "http://xn--zz.com/": "IDNAError",
        "http://[::1/": "InvalidURL",
    }
    async with (
        receiver() as rx,
        open_hub(config, mqtt=False, clock=clock) as hub,
        api(hub) as client,
    ):
        assert hub.orders is not None
        bad = {}
        for url in bad_urls:
            made = await hub.orders.store.add_webhook(
                url=url, events=["order.status_changed"], secret="whsec_x", description="",
                now=clock(),
            )  # fmt: skip
            bad[url] = {"id": made.id}
        hook = await subscribe(client, rx.url)
        order = (await client.post("/api/v1/orders", json=ORDER)).json()
        shop = Shop(hub, clock)
        await shop.state("mill", "IDLE", program="O01234")  # -> queued
        await wait_until(lambda: len(rx.accepted) == 1, 10)
        await shop.state("mill", "RUNNING", program="O01234 (ORDER 1042)")
        await shop.start("mill", "j1", "O01234 (ORDER 1042)", total=3)
        await wait_until(lambda: len(rx.accepted) == 2, 10)
        assert_exactly_once(rx, await change_log(client, order["id"]), hook["secret"])

        for url, sub in bad.items():
            rows = await deliveries_of(client, sub)
            assert len(rows) == 2
            for row in rows:
                assert row["attempts"] >= 1, (url, row)
                assert row["last_status"] is None
                assert bad_urls[url] in row["last_error"], (url, row)
        assert (await client.get("/api/v1/health")).status_code == 200
