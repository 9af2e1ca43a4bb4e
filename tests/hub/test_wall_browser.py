"""The wall page in a real Chromium against a real HTTP server, updated live over SSE.

The page only needs two API endpoints, ``GET /api/v1/machines`` and the ``GET /api/v1/events``
stream. Until the end-to-end version drives the real hub (``create_app`` + MQTT), a stand-in
that follows the data contract to the letter serves them; it sits behind the ``hub`` fixture,
and the tests only use the small :class:`WallBackend` interface, so swapping in the real hub
means writing one fixture. Connection loss is made by a TCP proxy between browser and server,
which works the same whatever backend is behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import StreamingResponse
from playwright.async_api import Browser, Page, expect

from shopfloor.hub.api import wall

SCREENSHOT = Path("/tmp/wall.png")
PHONE_SCREENSHOT = Path("/tmp/wall-phone.png")
KEEPALIVE_S = 15.0

View = dict[str, Any]


def now_ms() -> int:
    return int(time.time() * 1000)


def machine_view(
    machine: str,
    state: str,
    *,
    name: str | None = None,
    ago_s: float = 0.0,
    site: str = "north-shed",
    agent: str = "pi-1",
    kind: str | None = "router",
    protocol: str | None = "grbl",
    detail: str = "",
    program: str | None = None,
    alarm: dict[str, Any] | None = None,
    seen_ago_s: float | None = 1.0,
    phase: str | None = None,
    job: dict[str, Any] | None = None,
) -> View:
    """A MachineView exactly as the hub's API and stream send it."""
    t = now_ms()
    return {
        "id": f"{site}/{agent}/{machine}",
        "agent": agent,
        "site": site,
        "name": name if name is not None else machine,
        "kind": kind,
        "protocol": protocol,
        "state": state,
        "detail": detail,
        "since": t - int(ago_s * 1000),
        "last_seen": None if seen_ago_s is None else t - int(seen_ago_s * 1000),
        "program": program,
        "phase": phase,
        "job": job,
        "alarm": alarm,
        "online": state != "OFFLINE",
    }


def job(
    unit: str,
    done: float | None,
    total: float | None,
    *,
    started_ago_s: float = 600,
    eta_s: float | None = None,
    segment: int | None = None,
    program: str | None = None,
    job_id: str = "j-1",
) -> dict[str, Any]:
    """A MachineView's ``job`` as the hub sends it: fields it does not know are left out."""
    fields: dict[str, Any] = {
        "job": job_id,
        "program": program,
        "unit": unit,
        "total": total,
        "done": done,
        "started": now_ms() - int(started_ago_s * 1000),
        "eta_s": eta_s,
        "segment": segment,
    }
    return {k: v for k, v in fields.items() if v is not None}


# --- the backend behind the page ---------------------------------------------------------


class WallBackend(Protocol):
    """What these tests need from the hub. The real hub implements ``push`` by publishing the
    machine's state over MQTT and waiting until its API reports it."""

    app: FastAPI

    async def push(self, view: View) -> None:
        """Make the hub report ``view`` (on ``/api/v1/machines`` and on the stream)."""
        ...


@dataclass
class StandInHub:
    """``/api/v1/machines`` and ``/api/v1/events`` per the data contract, fed by the test."""

    views: dict[str, View] = field(default_factory=dict)
    #: When set, the API wants ``Authorization: Bearer`` (list) or ``?access_token=`` (stream).
    token: str | None = None
    #: Anything but 200 makes the stream endpoint answer with that status (a failing hub).
    stream_status: int = 200
    #: How many stream requests were answered with ``stream_status`` instead of a stream.
    streams_refused: int = 0
    #: machine id -> today's ``total`` figures served by ``/api/v1/utilization``.
    utilization: dict[str, dict[str, Any]] = field(default_factory=dict)
    _subscribers: set[asyncio.Queue[View | None]] = field(default_factory=set)
    _refused: asyncio.Condition = field(default_factory=asyncio.Condition)
    app: FastAPI = field(init=False)

    def __post_init__(self) -> None:
        self.app = FastAPI()
        self.app.include_router(wall.router)
        self.app.add_api_route("/api/v1/machines", self._machines, methods=["GET"])
        self.app.add_api_route("/api/v1/events", self._events, methods=["GET"])
        self.app.add_api_route("/api/v1/utilization", self._utilization, methods=["GET"])

    async def push(self, view: View) -> None:
        self.views[view["id"]] = view
        for queue in self._subscribers:
            queue.put_nowait(view)

    async def wait_refused(self, count: int) -> None:
        """Until ``count`` stream requests have been refused."""
        async with self._refused:
            await self._refused.wait_for(lambda: self.streams_refused >= count)

    def close(self) -> None:
        """End every open stream, so the server can shut down without waiting."""
        for queue in self._subscribers:
            queue.put_nowait(None)

    def _authorized(self, request: Request) -> bool:
        if self.token is None:
            return True
        header = request.headers.get("authorization", "")
        return header == f"Bearer {self.token}" or (
            request.query_params.get("access_token") == self.token
        )

    async def _machines(self, request: Request) -> Response:
        if not self._authorized(request):
            return Response(status_code=401)
        body = {"machines": sorted(self.views.values(), key=lambda v: str(v["id"]))}
        return Response(json.dumps(body), media_type="application/json")

    async def _utilization(self, request: Request) -> Response:
        """``GET /api/v1/utilization`` as the hub answers it (today, no bucket), paginated."""
        if not self._authorized(request):
            return Response(status_code=401)
        offset = int(request.query_params.get("offset", "0"))
        limit = int(request.query_params.get("limit", "50"))
        ids = sorted(self.utilization)
        page = ids[offset : offset + limit]
        body = {
            "machines": [
                {"machine": m, "calendar": None, "total": self.utilization[m], "buckets": []}
                for m in page
            ],
            "total_machines": len(ids),
            "offset": offset,
            "limit": limit,
            "next_offset": offset + limit if offset + limit < len(ids) else None,
        }
        return Response(json.dumps(body), media_type="application/json")

    async def _events(self, request: Request) -> Response:
        if not self._authorized(request):
            return Response(status_code=401)
        if self.stream_status != 200:
            async with self._refused:
                self.streams_refused += 1
                self._refused.notify_all()
            return Response(status_code=self.stream_status)
        queue: asyncio.Queue[View | None] = asyncio.Queue(maxsize=1000)
        self._subscribers.add(queue)
        snapshot = list(self.views.values())

        async def stream() -> AsyncIterator[bytes]:
            try:
                for view in snapshot:
                    yield _sse(view)
                while True:
                    try:
                        change = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                    except TimeoutError:
                        yield b": keepalive\n\n"
                        continue
                    if change is None:
                        return
                    yield _sse(change)
            finally:
                self._subscribers.discard(queue)

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )


def _sse(view: View) -> bytes:
    return f"event: machine\ndata: {json.dumps(view)}\n\n".encode()


# --- a real server and a proxy that can cut it off ---------------------------------------


@contextlib.asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[str]:
    """Run ``app`` with uvicorn on a free 127.0.0.1 port, as a task of this event loop."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_config=None,
        log_level="warning",
        http="h11",
        ws="none",
        lifespan="auto",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="wall-test-uvicorn")
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()  # raises what stopped the server
                await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@dataclass
class CuttableProxy:
    """A TCP proxy in front of the server. ``cut()`` drops every connection and refuses new
    ones, like a hub restart or a lost Wi-Fi link; ``restore()`` lets connections through."""

    upstream_port: int
    port: int = 0
    refusing: bool = False
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers.update((writer, up_writer))
        pipes = [
            asyncio.create_task(self._pipe(reader, up_writer), name="wall-proxy-up"),
            asyncio.create_task(self._pipe(up_reader, writer), name="wall-proxy-down"),
        ]
        self._tasks.update(pipes)
        await asyncio.wait(pipes)
        self._tasks.difference_update(pipes)
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            writer.close()

    def cut(self) -> None:
        self.refusing = True
        for writer in list(self._writers):
            transport = writer.transport
            transport.abort()

    def restore(self) -> None:
        self.refusing = False

    async def stop(self) -> None:
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await asyncio.sleep(0)


@dataclass
class Wall:
    """A running page: the browser tab, the backend behind it, and the proxy between."""

    page: Page
    hub: WallBackend
    proxy: CuttableProxy
    url: str
    #: Uncaught errors in the page's script; the wall must never have any.
    errors: list[str]


def _build_shop() -> list[View]:
    return [
        machine_view(
            "router-1",
            "RUNNING",
            name="Router 1",
            ago_s=725,
            program="chair-leg.nc",
            job=job("lines", 1240, 2000, started_ago_s=725, eta_s=1500),
        ),
        machine_view("router-2", "IDLE", name="Router 2", ago_s=3900, detail="Idle"),
        machine_view(
            "laser",
            "PAUSED",
            name="Laser",
            ago_s=40,
            detail="Hold:0",
            program="sign.gc",
            job=job("bytes", 421_888, 1_048_576),  # 412 of 1,024 kB
        ),
        machine_view(
            "mill",
            "ALARM",
            name="Haas Mill",
            ago_s=95,
            kind="mill",
            protocol="haas",
            alarm={"code": 9, "text": "Homing fail"},
            job=job("parts", 38, 50, program="O01234"),
        ),
        machine_view(
            "kiln",
            "OFFLINE",
            name="Kiln 2",
            ago_s=7200,
            kind="kiln",
            protocol="modbus",
            seen_ago_s=7200,
        ),
    ]


#: A kiln firing: elapsed against the schedule's time, in its third segment.
def _build_kiln() -> View:
    return machine_view(
        "kiln-1",
        "RUNNING",
        name="Kiln 1",
        kind="kiln",
        protocol="modbus",
        ago_s=7800,
        program="Cone 6 glaze",
        detail="1222 °C",
        phase="soaking",
        job=job("seconds", 7800, 46_800, started_ago_s=7800, segment=3),
    )


#: GRBL streaming a file whose length nobody told it: lines done, and for how long.
def _build_no_total() -> View:
    return machine_view(
        "router-3",
        "RUNNING",
        name="Router 3",
        ago_s=725,
        program="drawer-front.nc",
        job=job("lines", 1240, None, started_ago_s=725),
    )


SHOP = _build_shop()
KILN = _build_kiln()
NO_TOTAL = _build_no_total()


@pytest.fixture(autouse=True)
def _times_relative_to_the_test() -> None:
    """The views say "since 12 min ago": build them when each test starts, not when the
    module is imported, which in a full run is minutes earlier."""
    SHOP[:] = _build_shop()
    KILN.clear()
    KILN.update(_build_kiln())
    NO_TOTAL.clear()
    NO_TOTAL.update(_build_no_total())


@pytest.fixture
def hub() -> Iterator[WallBackend]:
    """The backend. Replace this fixture's body with the real ``create_app`` (and push over
    MQTT) for the end-to-end version; the tests below stay as they are."""
    stand_in = StandInHub(views={v["id"]: v for v in SHOP})
    stand_in.utilization = {
        SHOP[0]["id"]: today(0.58, 1.0, planned=0.71, planned_ms=18_000_000),
        SHOP[1]["id"]: today(0.22, 0.98, planned=0.27, planned_ms=18_000_000),
        SHOP[2]["id"]: today(0.35, 0.93),
        SHOP[3]["id"]: today(0.12, 1.0, planned=0.15, planned_ms=18_000_000),
        SHOP[4]["id"]: today(0.0, 0.4),
    }
    yield stand_in
    stand_in.close()


@contextlib.asynccontextmanager
async def open_wall(
    browser: Browser,
    hub: WallBackend,
    query: str = "",
    viewport: tuple[int, int] = (1920, 1080),
) -> AsyncIterator[Wall]:
    async with serve(hub.app) as base:
        proxy = CuttableProxy(upstream_port=int(base.rsplit(":", 1)[1]))
        await proxy.start()
        context = await browser.new_context(
            viewport={"width": viewport[0], "height": viewport[1]},
            locale="en-US",  # digit grouping as in the assertions: "1,240"
        )
        try:
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            url = f"http://127.0.0.1:{proxy.port}/wall{query}"
            await page.goto(url)
            yield Wall(page=page, hub=hub, proxy=proxy, url=url, errors=errors)
            assert not errors, errors
        finally:
            await context.close()  # closes the page's streams before the server stops
            if isinstance(hub, StandInHub):
                hub.close()
            await proxy.stop()


def tile(page: Page, machine_id: str) -> Any:
    return page.locator(f'.tile[data-machine="{machine_id}"]')


async def expect_fill(machine_tile: Any, share: float, timeout_s: float = 5.0) -> None:
    """Until the drawn progress bar is ``share`` full (the fill's width eases in)."""
    measured = -1.0
    async with asyncio.timeout(timeout_s):
        while True:
            measured = await machine_tile.locator(".job-bar").evaluate(
                "b => b.querySelector('.job-fill').getBoundingClientRect().width"
                " / b.getBoundingClientRect().width"
            )
            if abs(measured - share) < 0.005:
                return
            await asyncio.sleep(0.05)


# --- tests -------------------------------------------------------------------------------


def today(
    utilization: float | None,
    coverage: float | None,
    *,
    planned: float | None = None,
    planned_ms: int = 0,
) -> dict[str, Any]:
    """The ``total`` figures of ``GET /api/v1/utilization`` for one machine (shape only)."""
    return {
        "states_ms": {},
        "productive_ms": 0,
        "window_ms": 3_600_000,
        "planned_ms": planned_ms,
        "productive_planned_ms": 0,
        "utilization": utilization,
        "utilization_planned": planned,
        "coverage": coverage,
    }


@pytest.mark.browser
async def test_tiles_show_todays_utilization_with_coverage(browser: Browser) -> None:
    stand_in = StandInHub(views={v["id"]: v for v in SHOP})
    stand_in.utilization = {
        # A machine on a shift: the share of planned time; one without: of the elapsed day.
        SHOP[0]["id"]: today(0.41, 0.97, planned=0.623, planned_ms=18_000_000),
        SHOP[1]["id"]: today(0.3, 0.5),
    }
    async with open_wall(browser, stand_in) as wall:
        page = wall.page
        shift = tile(page, SHOP[0]["id"]).locator(".util")
        await expect(shift).to_have_text("Today 62 % of shift · 97 % seen")
        await expect(shift).to_be_visible()
        day = tile(page, SHOP[1]["id"]).locator(".util")
        await expect(day).to_have_text("Today 30 % of day · 50 % seen")
        await expect(day).to_have_attribute("data-low-coverage", "true")
        # No figures for a machine: the line keeps its place but shows nothing.
        await expect(tile(page, SHOP[2]["id"]).locator(".util")).to_have_attribute(
            "data-empty", "true"
        )


@pytest.mark.browser
async def test_tiles_show_every_machine_in_name_order(browser: Browser, hub: WallBackend) -> None:
    async with open_wall(browser, hub) as wall:
        page = wall.page
        await expect(page.locator(".tile")).to_have_count(len(SHOP))
        names = await page.locator(".tile .name").all_text_contents()
        assert names == ["Haas Mill", "Kiln 2", "Laser", "Router 1", "Router 2"]

        states = await page.locator(".tile").evaluate_all(
            "tiles => tiles.map(t => [t.querySelector('.name').textContent, t.dataset.state])"
        )
        assert dict(states) == {v["name"]: v["state"] for v in SHOP}
        # The state is written out, not only coloured.
        mill = tile(page, SHOP[3]["id"])
        await expect(mill.locator(".state")).to_have_text("ALARM")
        await expect(mill.locator(".alarm")).to_have_text("Alarm 9: Homing fail")
        await expect(tile(page, SHOP[0]["id"]).locator(".program")).to_contain_text("chair-leg.nc")
        await expect(tile(page, SHOP[2]["id"]).locator(".detail")).to_have_text("Hold:0")
        await expect(tile(page, SHOP[1]["id"]).locator(".duration")).to_have_text("1 h 05 min")
        await expect(tile(page, SHOP[0]["id"]).locator(".duration")).to_have_text("12 min")
        kiln = tile(page, SHOP[4]["id"])
        await expect(kiln.locator(".seen")).to_have_text("last seen 2 h 00 min ago")
        await expect(kiln.locator(".alarm")).to_be_hidden()

        colours = await page.locator(".tile .band").evaluate_all(
            "bands => bands.map(b => getComputedStyle(b).backgroundColor)"
        )
        assert len(set(colours)) >= 4, colours  # OFFLINE is striped, the others solid and distinct

        await expect(page.locator("#site")).to_have_text("north-shed")
        await expect(page.locator("#conn")).to_have_attribute("data-conn", "live")
        await expect(page.locator("#clock-time")).to_have_text(re.compile(r"\d{1,2}:\d{2}"))
        summary = await page.locator("#summary li").all_text_contents()
        assert summary == ["1 alarm", "1 running", "1 paused", "1 idle", "1 offline"]


@pytest.mark.browser
async def test_changes_arrive_live_without_reload(browser: Browser, hub: WallBackend) -> None:
    async with open_wall(browser, hub) as wall:
        page = wall.page
        router2 = tile(page, SHOP[1]["id"])
        await expect(router2).to_have_attribute("data-state", "IDLE")
        await page.evaluate("window.__noReload = 'still here'")

        await hub.push(
            machine_view("router-2", "RUNNING", name="Router 2", ago_s=3, program="table-top.nc")
        )
        await expect(router2).to_have_attribute("data-state", "RUNNING")
        await expect(router2.locator(".state")).to_have_text("RUNNING")
        await expect(router2.locator(".program-name")).to_have_text("table-top.nc")
        assert await page.evaluate("window.__noReload") == "still here"

        # The duration ticks in the browser from `since`, with no new data.
        first = await router2.locator(".duration").text_content()
        assert first is not None
        assert re.fullmatch(r"\d+ s", first)
        await expect(router2.locator(".duration")).not_to_have_text(first, timeout=3000)

        # A machine seen for the first time gets a tile, in name order.
        await hub.push(machine_view("lathe", "SETUP", name="Lathe", detail="Jog"))
        await expect(page.locator(".tile")).to_have_count(len(SHOP) + 1)
        names = await page.locator(".tile .name").all_text_contents()
        assert names == ["Haas Mill", "Kiln 2", "Laser", "Lathe", "Router 1", "Router 2"]

        # Whatever a machine reports is text, never markup.
        evil = '<img src=x onerror="window.__pwned=1">'
        await hub.push(
            machine_view("lathe", "ALARM", name=evil, alarm={"code": None, "text": evil})
        )
        lathe = tile(page, "north-shed/pi-1/lathe")
        await expect(lathe.locator(".name")).to_have_text(evil)
        await expect(lathe.locator(".alarm")).to_have_text(evil)
        assert await page.locator(".tile img").count() == 0
        assert await page.evaluate("window.__pwned") is None
        assert await page.evaluate("window.__noReload") == "still here"


@pytest.mark.browser
async def test_tiles_show_job_progress_in_the_machines_unit(browser: Browser) -> None:
    hub = StandInHub(views={v["id"]: v for v in [*SHOP, KILN, NO_TOTAL]})
    async with open_wall(browser, hub) as wall:
        page = wall.page

        # Lines with a total and the machine's own estimate.
        router = tile(page, SHOP[0]["id"])
        await expect(router).to_have_attribute("data-job", "bar")
        await expect(router.locator(".job-pct")).to_have_text("62 %")
        await expect(router.locator(".job-count")).to_have_text("1,240 / 2,000 lines")
        eta = router.locator(".job-eta")
        await expect(eta).to_have_text("about 25 min left")
        await expect(eta).to_have_attribute("title", re.compile(r"machine's own estimate"))
        bar = router.locator(".job-bar")
        await expect(bar).to_have_attribute("role", "progressbar")
        await expect(bar).to_have_attribute("aria-valuenow", "62")
        await expect(bar).to_have_attribute("aria-valuemin", "0")
        await expect(bar).to_have_attribute("aria-valuemax", "100")
        await expect(bar).to_have_attribute("aria-valuetext", re.compile(r"^62 %, 1,240 / 2,000"))
        await expect(page.get_by_role("progressbar")).to_have_count(4)
        await expect_fill(router, 0.62)

        # Parts against the order quantity; no estimate, no estimate line.
        mill = tile(page, SHOP[3]["id"])
        await expect(mill.locator(".job-pct")).to_have_text("76 %")
        await expect(mill.locator(".job-count")).to_have_text("38 / 50 parts")
        await expect(mill.locator(".job-eta")).to_be_hidden()
        await expect(mill.locator(".alarm")).to_have_text("Alarm 9: Homing fail")
        await expect_fill(mill, 0.76)

        # Bytes of a file on the SD card, in kB.
        laser = tile(page, SHOP[2]["id"])
        await expect(laser.locator(".job-count")).to_have_text("412 / 1,024 kB")
        await expect(laser.locator(".job-pct")).to_have_text("40 %")
        await expect_fill(laser, 421_888 / 1_048_576)

        # A kiln: its phase beside the time in state, elapsed of scheduled time by segment.
        kiln = tile(page, KILN["id"])
        await expect(kiln.locator(".phase")).to_have_text("soaking")
        await expect(kiln.locator(".phase")).to_be_visible()
        await expect(kiln.locator(".job-count")).to_have_text("segment 3 · 2 h 10 min of 13 h")
        await expect(kiln.locator(".job-pct")).to_have_text("16 %")  # 16.7 %: floored
        await expect_fill(kiln, 7800 / 46_800)

        # No known total: what is done and for how long, no bar and no percentage.
        streaming = tile(page, NO_TOTAL["id"])
        await expect(streaming).to_have_attribute("data-job", "count")
        await expect(streaming.locator(".job-count")).to_have_text("1,240 lines · 12 min")
        await expect(streaming.locator(".job-meter")).to_be_hidden()
        await expect(streaming.locator(".job-pct")).to_be_hidden()
        assert await streaming.locator(".job-bar").get_attribute("role") is None
        assert await streaming.locator(".job-bar").get_attribute("aria-valuenow") is None

        # No job, no phase.
        idle = tile(page, SHOP[1]["id"])
        await expect(idle.locator(".job")).to_be_hidden()
        await expect(idle.locator(".phase")).to_be_hidden()
        assert await idle.get_attribute("data-job") is None

        # Progress arrives live, as the hub passes on the agent's `job_progress` events.
        await page.evaluate("window.__noReload = 'still here'")
        running = {**SHOP[0], "job": {**SHOP[0]["job"], "done": 1800, "eta_s": 300}}
        await hub.push(running)
        await expect(router.locator(".job-pct")).to_have_text("90 %")
        await expect(router.locator(".job-count")).to_have_text("1,800 / 2,000 lines")
        await expect(router.locator(".job-eta")).to_have_text("about 5 min left")
        await expect(bar).to_have_attribute("aria-valuenow", "90")
        await expect_fill(router, 0.9)

        firing = {
            **KILN,
            "phase": "cooling",
            "job": {**KILN["job"], "done": 30_000, "segment": 4},
        }
        await hub.push(firing)
        await expect(kiln.locator(".phase")).to_have_text("cooling")
        await expect(kiln.locator(".job-count")).to_have_text("segment 4 · 8 h 20 min of 13 h")
        await expect(kiln.locator(".job-pct")).to_have_text("64 %")
        await expect_fill(kiln, 30_000 / 46_800)

        # The total becomes known: the bar appears.
        counted = {**NO_TOTAL, "job": {**NO_TOTAL["job"], "done": 1500, "total": 3000}}
        await hub.push(counted)
        await expect(streaming).to_have_attribute("data-job", "bar")
        await expect(streaming.locator(".job-count")).to_have_text("1,500 / 3,000 lines")
        await expect(streaming.locator(".job-bar")).to_have_attribute("aria-valuenow", "50")
        await expect_fill(streaming, 0.5)

        # The job ends: the bar goes.
        await hub.push({**running, "job": None})
        await expect(router.locator(".job")).to_be_hidden()
        await expect(router.locator(".job-bar")).not_to_have_attribute("role", "progressbar")

        # What a machine reports about its job is text, never markup.
        evil = '<img src=x onerror="window.__pwned=1">'
        await hub.push({**KILN, "phase": evil, "job": {**KILN["job"], "unit": evil}})
        await expect(kiln.locator(".phase")).to_have_text(evil)
        await expect(kiln.locator(".job-count")).to_have_text(f"7,800 / 46,800 {evil}")
        assert await page.locator(".tile img").count() == 0
        assert await page.evaluate("window.__pwned") is None
        assert await page.evaluate("window.__noReload") == "still here"


@pytest.mark.browser
async def test_lost_stream_shows_and_recovers_by_itself(browser: Browser, hub: WallBackend) -> None:
    async with open_wall(browser, hub) as wall:
        page = wall.page
        conn = page.locator("#conn")
        await expect(conn).to_have_attribute("data-conn", "live")
        await page.evaluate("window.__noReload = 'still here'")

        wall.proxy.cut()
        await expect(conn).to_have_attribute("data-conn", "lost")
        await expect(conn).to_contain_text("lost")

        # What changes while the wall is cut off shows once it is back.
        await hub.push(machine_view("router-1", "ALARM", name="Router 1", alarm=None))
        wall.proxy.restore()
        await expect(conn).to_have_attribute("data-conn", "live", timeout=15000)
        await expect(tile(page, SHOP[0]["id"])).to_have_attribute("data-state", "ALARM")
        assert await page.evaluate("window.__noReload") == "still here"

        # And the stream is live again, not just the refetch.
        await hub.push(machine_view("router-1", "RUNNING", name="Router 1"))
        await expect(tile(page, SHOP[0]["id"])).to_have_attribute("data-state", "RUNNING")


@pytest.mark.browser
async def test_retries_after_the_hub_answers_with_an_error(browser: Browser) -> None:
    """EventSource gives up for good on an HTTP error; the page must retry on its own."""
    hub = StandInHub(views={v["id"]: v for v in SHOP})
    async with open_wall(browser, hub) as wall:
        conn = wall.page.locator("#conn")
        await expect(conn).to_have_attribute("data-conn", "live")
        hub.stream_status = 503
        wall.proxy.cut()
        wall.proxy.restore()
        await expect(conn).to_have_attribute("data-conn", "lost")
        async with asyncio.timeout(10):
            await hub.wait_refused(2)  # the browser's own retry, then at least one of ours
        hub.stream_status = 200
        await expect(conn).to_have_attribute("data-conn", "live", timeout=15000)


@pytest.mark.browser
async def test_token_from_the_page_address_reaches_list_and_stream(browser: Browser) -> None:
    hub = StandInHub(views={v["id"]: v for v in SHOP}, token="s3cret/+&=")
    async with open_wall(browser, hub, query="?token=s3cret%2F%2B%26%3D") as wall:
        page = wall.page
        await expect(page.locator(".tile")).to_have_count(len(SHOP))
        await expect(page.locator("#conn")).to_have_attribute("data-conn", "live")
        await expect(page.locator("#banner")).to_be_hidden()
        # The root address forwards to the wall and keeps the token.
        root = wall.url.replace("/wall?", "/?")
        await page.goto(root)
        assert page.url == wall.url
        await expect(page.locator("#conn")).to_have_attribute("data-conn", "live")


@pytest.mark.browser
async def test_missing_token_is_explained_on_screen(browser: Browser) -> None:
    hub = StandInHub(views={v["id"]: v for v in SHOP}, token="s3cret")
    async with open_wall(browser, hub) as wall:
        banner = wall.page.locator("#banner")
        await expect(banner).to_be_visible()
        await expect(banner).to_contain_text("token")


async def spilled_out_of_bands(page: Page) -> list[str]:
    """What is drawn (partly) outside its tile's state band or over the line above it, as
    "machine: class" strings."""
    return await page.locator(".tile").evaluate_all(
        """tiles => tiles.flatMap(t => {
            const band = t.querySelector('.band').getBoundingClientRect();
            const rows = [...t.querySelectorAll('.state, .band-sub, .alarm, .job-meter, .job-line')]
                .map(el => [el, el.getBoundingClientRect()])
                .filter(([, r]) => r.width > 0 || r.height > 0);  // shown
            const bad = rows.filter(([, r], i) =>
                r.left < band.left - 1 || r.right > band.right + 1
                || r.top < band.top - 1 || r.bottom > band.bottom + 1
                || (i > 0 && r.top < rows[i - 1][1].bottom - 1));
            return bad.map(([el]) => `${t.dataset.machine}: ${el.className}`);
        })"""
    )


@pytest.mark.browser
async def test_screenshots_tv_and_phone(browser: Browser) -> None:
    """A full shop on a 1080p TV fits the screen; on a phone the tiles stack."""
    extra = [
        machine_view(
            "printer-1",
            "RUNNING",
            name="Printer 1",
            kind="printer",
            protocol="marlin",
            ago_s=5400,
            program="bracket_v3.gcode",
            detail="T:210/210 B:60/60",
            job=job("bytes", 3_700_000, 8_900_000, eta_s=7_400),
        ),
        machine_view(
            "printer-2",
            "SETUP",
            name="Printer 2",
            kind="printer",
            protocol="marlin",
            ago_s=200,
            detail="Homing",
        ),
        KILN,
        machine_view("saw", "IDLE", name="Panel Saw", ago_s=30, seen_ago_s=600, detail="Idle"),
        machine_view(
            "edge",
            "RUNNING",
            name="Edgebander with a very long machine name",
            ago_s=61,
            program="K-2291 cabinet doors.nc",
            job=job("lines", 18_412, None, started_ago_s=61),
        ),
        machine_view(
            "lathe",
            "PAUSED",
            name="Lathe",
            kind="lathe",
            protocol="haas",
            ago_s=500,
            program="O01234",
            detail="Feed hold",
            job=job("parts", 3, 12, eta_s=5_400),
        ),
        machine_view(
            "laser-2", "RUNNING", name="Laser 2", ago_s=15, program="logo.svg.gc", detail="Run"
        ),
    ]
    hub = StandInHub(views={v["id"]: v for v in SHOP + extra})
    hub.utilization = {
        v["id"]: today(0.5, 0.95, planned=(i * 0.13) % 1, planned_ms=1 if i % 3 else 0)
        for i, v in enumerate(SHOP + extra)
    }
    async with open_wall(browser, hub, query="?title=Oak%20%26%20Iron%20Workshop") as wall:
        page = wall.page
        await expect(page.locator(".tile")).to_have_count(len(SHOP) + len(extra))
        await expect(page.locator('.util[data-empty="true"]')).to_have_count(0)
        await expect(page.locator("#conn")).to_have_attribute("data-conn", "live")
        await expect(page.locator("#site")).to_have_text("Oak & Iron Workshop")
        saw = tile(page, "north-shed/pi-1/saw")
        await expect(saw).to_have_attribute("data-stale", "true")
        await expect(saw.locator(".seen")).to_have_text("no data for 10 min")
        # Everything is on screen, no scrolling on the TV.
        boxes = await page.locator(".tile").evaluate_all(
            "ts => ts.map(t => t.getBoundingClientRect().toJSON())"
        )
        off_screen = [b for b in boxes if b["x"] < 0 or b["y"] < 0]
        off_screen += [b for b in boxes if b["right"] > 1920 or b["bottom"] > 1080]
        assert not off_screen
        too_small = [b for b in boxes if b["width"] < 300 or b["height"] < 200]
        assert not too_small
        # Jobs show a bar with their numbers; nothing in a band spills out of it.
        await expect(page.locator('.tile[data-job="bar"]')).to_have_count(6)
        await expect(page.locator('.tile[data-job="count"]')).to_have_count(1)
        assert await spilled_out_of_bands(page) == []
        await page.screenshot(path=str(SCREENSHOT))

    async with open_wall(browser, hub, viewport=(390, 844)) as phone:
        page = phone.page
        await expect(page.locator(".tile")).to_have_count(len(SHOP) + len(extra))
        widths = await page.locator(".tile").evaluate_all(
            "ts => ts.map(t => t.getBoundingClientRect().width)"
        )
        assert all(w > 330 for w in widths), widths
        assert await page.evaluate("document.documentElement.scrollWidth") <= 390
        assert await spilled_out_of_bands(page) == []
        await page.screenshot(path=str(PHONE_SCREENSHOT), full_page=True)


@pytest.mark.browser
async def test_fifty_machines_with_jobs_fit_a_tv(browser: Browser) -> None:
    """The busiest wall: every state, with and without a job, all on one 1080p screen."""
    kinds: list[tuple[str, dict[str, Any] | None]] = [
        ("RUNNING", job("lines", 1240, 2000, eta_s=1500)),
        ("IDLE", None),
        ("RUNNING", job("parts", 38, 50)),
        ("PAUSED", job("bytes", 421_888, 1_048_576)),
        ("RUNNING", job("seconds", 7800, 46_800, segment=3)),
        ("ALARM", job("parts", 3, 12)),
        ("RUNNING", job("lines", 18_412, None)),
    ]
    views = []
    for i in range(50):
        state, progress = kinds[i % len(kinds)]
        views.append(
            machine_view(
                f"m{i:02d}",
                state,
                name=f"Machine {i:02d}",
                program=f"part-{i}.nc",
                phase="heating" if progress and progress["unit"] == "seconds" else None,
                alarm={"code": 2, "text": "Hard limit"} if state == "ALARM" else None,
                job=progress,
            )
        )
    hub = StandInHub(views={v["id"]: v for v in views})
    async with open_wall(browser, hub) as wall:
        page = wall.page
        await expect(page.locator(".tile")).to_have_count(50)
        await expect(page.locator("#grid")).to_have_attribute("data-fit", "screen")
        await expect(page.locator('.tile[data-job="bar"]')).to_have_count(36)
        assert await spilled_out_of_bands(page) == []
        # Where the band is short, an alarm's reason wins over the bar it interrupted.
        alarmed = page.locator('.tile[data-state="ALARM"]').first
        await expect(alarmed.locator(".alarm")).to_be_visible()


# --- the router without a browser --------------------------------------------------------


async def test_router_serves_the_page_and_its_files() -> None:
    app = FastAPI()
    app.include_router(wall.router)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
        page = await client.get("/wall")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers["cache-control"] == "no-cache"
        assert 'src="wall/static/wall.js"' in page.text

        for name, media in (("wall.js", "text/javascript"), ("wall.css", "text/css")):
            resp = await client.get(f"/wall/static/{name}")
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith(media)
            again = await client.get(
                f"/wall/static/{name}", headers={"If-None-Match": resp.headers["etag"]}
            )
            assert again.status_code == 304

        for bad in ("wall.html", "../__init__.py", "wall.py", "x.js"):
            assert (await client.get(f"/wall/static/{bad}")).status_code == 404

        root = await client.get("/?token=abc")
        assert root.status_code == 307
        assert root.headers["location"] == "wall?token=abc"
        assert (await client.get("/")).headers["location"] == "wall"
