"""The wall shows the job book's ETA: the real hub's app in a real Chromium.

Records go into the real store and through the real job book; the page reads the real
``/api/v1/machines`` and event stream (the stand-in of ``test_wall_browser.py`` only checks
that the page draws what the contract says).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi import FastAPI
from playwright.async_api import Browser, expect
from test_wall_browser import View, open_wall, tile

from shopfloor.contract import Envelope, RecordKind
from shopfloor.hub.api.app import create_app
from shopfloor.hub.config import HubConfig
from shopfloor.hub.runtime import Hub, open_hub
from shopfloor.hub.store import Incoming, WriteBatch

MIN = 60_000


@dataclass
class RealHub:
    """The hub's own app behind the page; records are fed through store and job book."""

    hub: Hub
    app: FastAPI
    seq: int = 0

    async def push(self, view: View) -> None:  # the WallBackend protocol; not used here
        raise NotImplementedError

    async def send(self, ts: int, kind: RecordKind, body: dict[str, Any]) -> None:
        self.seq += 1
        env = Envelope(
            kind=kind, agent="pi-1", machine="router", stream="s1", seq=self.seq, ts=ts,
            body=body, mono=ts,
        )  # fmt: skip
        result = await self.hub.store.write(WriteBatch(records=[Incoming(env, "north", ts)]))
        self.hub.trackers.apply(result)
        assert self.hub.jobs is not None
        await self.hub.jobs.apply(result.new)
        self.hub.trackers.publish_pending()

    async def event(self, ts: int, event: str, **fields: Any) -> None:
        await self.send(ts, RecordKind.EVENT, {"event": event, "code": None, "text": "", **fields})


@pytest.mark.browser
async def test_the_wall_shows_when_a_job_will_end_and_how_that_is_known(
    browser: Browser, hub_config: Callable[[], HubConfig]
) -> None:
    async with open_hub(hub_config(), mqtt=False) as hub:
        backend = RealHub(hub=hub, app=create_app(hub.config, hub=hub))
        now = time.time_ns() // 1_000_000
        start = now - 10 * MIN
        snapshot = {"job": "j1", "program": "sign.nc", "unit": "lines", "total": 1000,
                    "done": 0, "started": start}  # fmt: skip
        await backend.send(start, RecordKind.STATE, {"state": "RUNNING", "job": snapshot})
        await backend.event(start, "job_started", job="j1", program="sign.nc", unit="lines",
                            total=1000, source="proxy")  # fmt: skip
        # 40 % in 9 minutes of work: 13.5 more, so the job ends about 12.5 min from now.
        await backend.event(now - MIN, "job_progress", job="j1", done=400, total=1000,
                            unit="lines")  # fmt: skip
        [row] = await hub.store.jobs()
        assert row.eta_at is not None

        async with open_wall(browser, backend) as wall:
            page = wall.page
            router = tile(page, "router")
            await expect(router.locator(".job-count")).to_have_text("400 / 1,000 lines")
            clock = await page.evaluate(
                "ms => new Date(ms).toLocaleTimeString([], {hour: '2-digit', minute: '2-digit'})",
                row.eta_at,
            )
            eta = router.locator(".job-eta-text")
            await expect(eta).to_have_text(re.compile(rf"^ends {re.escape(clock)} · in 1[23] min$"))
            origin = router.locator(".job-eta-origin")
            await expect(origin).to_have_text("linear")
            await expect(origin).to_be_visible()
            await expect(router.locator(".job-eta")).to_have_attribute(
                "title", re.compile(r"^Expected end .* \(likely between .* and .*\)\. .*pace")
            )
            await expect(router.locator(".job-bar")).to_have_attribute(
                "aria-valuetext", re.compile(r"^40 %, 400 / 1,000 lines, ends ")
            )

            # Progress arrives over the live stream: the ETA moves with it.
            await backend.event(now, "job_progress", job="j1", done=900, total=1000, unit="lines")
            await expect(router.locator(".job-count")).to_have_text("900 / 1,000 lines")
            await expect(eta).to_have_text(re.compile(r"^ends .* · in 1 min$"))

            # The job ends: no estimate is left.
            await backend.event(now + MIN, "job_ended", job="j1", outcome="completed",
                                done=1000, total=1000)  # fmt: skip
            await backend.send(now + MIN, RecordKind.STATE, {"state": "IDLE", "job": None})
            await expect(router.locator(".job")).to_be_hidden()
