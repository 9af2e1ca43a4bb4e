"""Shared by the end-to-end tests: the site name and polling until something holds."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

SITE = "e2e-shop"


async def wait_until(
    check: Callable[[], Any], what: str, *, timeout_s: float = 15.0, step_s: float = 0.1
) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    last: Any = None
    while loop.time() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(step_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what} (last: {last!r})")


def agent_id(topic_root: str) -> str:
    """An agent id (and so MQTT client id) no other run on the shared broker uses.

    The broker allows one connection per client id: two test runs at once with the same
    agent id would keep throwing each other off, and the hub would see the agent flap.
    """
    return "pi-" + topic_root.split("/", maxsplit=1)[0]
