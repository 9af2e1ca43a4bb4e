"""Simulated GRBL machines in their own process, each on a pseudo-terminal, with their truth.

The fault suite's simulator process (``python tests/faults/simproc.py --spec JSON``). It
runs the simulator library exactly as ``shopfloor sim grbl --pty PATH --demo-loop`` does
(:class:`GrblMachine` + :class:`PtyRunner` + the demo job loop), several machines in one
event loop, and adds the two things a fault test needs that the command line does not give:

- **the truth**: every change in each machine's own state log (``GrblMachine.state_log``,
  what the machine really did, on the monotonic clock) is appended to a JSON-lines file as
  it happens, with the wall-clock time (one offset per process: same host, same clocks as
  the agent), and so is every time a port vanished and came back;
- **the unplug**: ``vanish ID SECONDS`` on standard input pulls the machine's "USB cable"
  (:meth:`PtyRunner.vanish`: the pty and its symlink go away, the machine keeps running, a
  new pty appears after ``SECONDS``).

Standard output says ``ready`` once every pty is published. ``quit`` on standard input,
end of input or SIGTERM ends it; the last line of the truth file is ``{"type": "end"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from pathlib import Path
from typing import IO, Any

from shopfloor.sim.grbl import GrblMachine, GrblSimConfig, PtyRunner
from shopfloor.sim.grbl.machine import StateChange
from shopfloor.sim.grbl.scenario import drivers_from_config

WATCH_S = 0.02


class Truth:
    """The truth file: one JSON object per line, flushed at once."""

    def __init__(self, path: Path) -> None:
        self._file: IO[str] = path.open("a", encoding="utf-8")
        # One offset for the whole run: CLOCK_MONOTONIC and the wall clock of this host.
        self.offset = time.time() - time.monotonic()

    def wall(self, mono: float) -> float:
        return mono + self.offset

    def write(self, **entry: Any) -> None:
        if "t" in entry:
            entry["wall"] = round(self.wall(entry["t"]), 4)
        self._file.write(json.dumps(entry, separators=(",", ":")) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class Watched:
    """One machine, its runner, and how much of its state log is already in the file."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.id = str(spec["id"])
        self.config = GrblSimConfig(
            laser=bool(spec.get("laser", False)),
            time_scale=float(spec.get("time_scale", 4.0)),
            demo_loop=bool(spec.get("demo_loop", True)),
            seed=spec.get("seed"),
        )
        self.machine = GrblMachine(self.config)
        self.runner = PtyRunner(
            self.machine, Path(spec["pty"]), drivers=drivers_from_config(self.config)
        )
        self._last: StateChange | None = None
        self._present = True

    def new_changes(self) -> list[StateChange]:
        log = self.machine.state_log
        out: list[StateChange] = []
        for change in reversed(log):
            if change is self._last:
                break
            out.append(change)
        if out:
            self._last = out[0]
        return list(reversed(out))

    def presence_changed(self) -> bool | None:
        present = self.runner.present
        if present == self._present:
            return None
        self._present = present
        return present


async def watch(machines: list[Watched], truth: Truth) -> None:
    while True:
        for m in machines:
            for change in m.new_changes():
                truth.write(type="state", machine=m.id, t=change.t, state=change.state)
            back = m.presence_changed()
            if back is True:
                truth.write(type="back", machine=m.id, t=time.monotonic())
        await asyncio.sleep(WATCH_S)


async def commands(machines: dict[str, Watched], truth: Truth) -> None:
    """``vanish ID SECONDS`` and ``quit`` from standard input (a pipe from the harness)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).decode().split()
        if not line or line[0] == "quit":
            return
        if line[0] == "vanish" and len(line) == 3 and line[1] in machines:
            m = machines[line[1]]
            seconds = float(line[2])
            truth.write(type="vanish", machine=m.id, t=time.monotonic(), seconds=seconds)
            m.runner.vanish(seconds)
            m.presence_changed()  # now absent
            print(f"vanished {m.id}", flush=True)
        else:
            print(f"unknown command {' '.join(line)!r}", file=sys.stderr, flush=True)


async def main_async(spec: dict[str, Any], truth_path: Path) -> None:
    truth = Truth(truth_path)
    machines = [Watched(m) for m in spec["machines"]]
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    try:
        async with contextlib.AsyncExitStack() as stack:
            for m in machines:
                await stack.enter_async_context(m.runner)
            truth.write(type="start", t=time.monotonic(), offset=truth.offset)
            print("ready", flush=True)
            watcher = asyncio.create_task(watch(machines, truth), name="simproc-watch")
            try:
                await commands({m.id: m for m in machines}, truth)
            finally:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
    finally:
        for m in machines:
            for change in m.new_changes():
                truth.write(type="state", machine=m.id, t=change.t, state=change.state)
        truth.write(type="end", t=time.monotonic())
        truth.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help='{"machines": [{"id", "pty", ...}]}')
    parser.add_argument("--truth", required=True, type=Path, help="JSON-lines file to append to")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        asyncio.run(main_async(json.loads(args.spec), args.truth))
    return 0


if __name__ == "__main__":
    sys.exit(main())
