"""What every ``shopfloor sim KIND`` command does once its machine is built.

:func:`serve` publishes a runner, says where, and serves until cancelled; SIGTERM (systemd,
``docker stop``, the demo) cancels it as cleanly as Ctrl-C, so the runner closes its port
and removes its pty symlink. :func:`run` runs that on a new event loop and exits 0.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine
from typing import Any

from shopfloor.sim.runner import PtyRunner, TcpRunner


async def serve(runner: PtyRunner[Any] | TcpRunner[Any], label: str) -> None:
    """Serve ``runner`` until cancelled, after printing ``<label> on <where>``."""
    main_task = asyncio.current_task()
    assert main_task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, main_task.cancel)
    try:
        async with runner:
            if isinstance(runner, TcpRunner):
                where = f"tcp://{runner.host}:{runner.port}"
            else:
                where = f"{runner.path} -> {runner.device}"
            print(f"{label} on {where}", flush=True)
            await runner.serve_forever()
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def run(main: Coroutine[Any, Any, None]) -> int:
    """Run ``main`` until it ends, Ctrl-C or SIGTERM; the exit status is 0 either way."""
    try:
        asyncio.run(main)
    except (KeyboardInterrupt, asyncio.CancelledError):
        return 0
    return 0
