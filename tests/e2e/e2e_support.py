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
