"""GRBL proxy mode: added latency per line and streaming rate, proxy against a direct pty.

One process, one event loop: the GRBL simulator (``GrblMachine`` on a ``PtyRunner`` pty,
the "real port"), the agent's :class:`~shopfloor.agent.proxy.session.GrblProxySession` on
it (offering a second pty), and a test sender on a ``SerialLink``. The simulator records
the loop time at which each line reaches its line parser, so "write -> receive" is measured
on one clock. Per repetition, in alternating order:

- **latency**: simple send-response streaming (one line, wait for ``ok``) of ``--latency-lines``
  short lines; per line, sender write -> simulator receive, and write -> ``ok`` back;
- **rate**: the 2,000-line test program streamed with character counting (gnea
  ``stream.py``, 128-byte budget); lines per second from the first write to the last ``ok``.

``direct`` connects the sender to the simulator's pty; ``proxy`` connects it to the proxy's
pty. The simulator runs at ``--time-scale`` (default 5000) so that motion does not limit
the rate: what is measured is the path, not the machine.

    .venv/bin/python -m bench.proxy_latency               # 5 repetitions, ~1 min
    .venv/bin/python -m bench.proxy_latency --repeat 9 --json results.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "agent"))

from grbl_proxy_support import CountingSender, RecordingMachine, program  # noqa: E402

from shopfloor.agent.clock import SystemClock  # noqa: E402
from shopfloor.agent.links.serial import SerialLink  # noqa: E402
from shopfloor.agent.proxy.options import ProxyOptions  # noqa: E402
from shopfloor.agent.proxy.session import GrblProxySession  # noqa: E402
from shopfloor.sim.grbl.config import GrblSimConfig  # noqa: E402
from shopfloor.sim.grbl.runner import PtyRunner  # noqa: E402


async def _send_response(link: SerialLink, lines: Sequence[str]) -> tuple[list[float], list[float]]:
    loop = asyncio.get_running_loop()
    sender = CountingSender(link, budget=1)  # budget 1: one line in flight = send-response
    sent: list[float] = []
    acked: list[float] = []
    for line in lines:
        sent.append(loop.time())
        await sender.stream([line])
        acked.append(loop.time())
    return sent, acked


async def _one(mode: str, tmp: Path, args: argparse.Namespace) -> dict[str, float]:
    machine = RecordingMachine(GrblSimConfig(time_scale=args.time_scale))
    sim_path = tmp / f"ttySIM-{mode}"
    async with PtyRunner(machine, sim_path, tick_s=0.005):
        session: GrblProxySession | None = None
        target = sim_path
        if mode == "proxy":
            options = ProxyOptions(pty=tmp / f"proxy-{mode}")
            session = GrblProxySession(
                "bench", lambda: SerialLink(str(sim_path)), clock=SystemClock(), options=options
            )
            target = options.pty or target
        try:
            if session is not None:
                await session.__aenter__()
                drain = asyncio.create_task(_drain(session), name="bench-drain")
                for _ in range(500):
                    if session.connects:
                        break
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)
            link = SerialLink(str(target))
            await link.open()
            try:
                short = [f"G1 X{i % 50}.5 F6000" for i in range(args.latency_lines)]
                base = len(machine.received)
                sent, acked = await _send_response(link, short)
                received = machine.received_at[base : base + len(short)]
                one_way = [(r - s) * 1e6 for s, r in zip(sent, received, strict=True)]
                round_trip = [(a - s) * 1e6 for s, a in zip(sent, acked, strict=True)]
                lines = program(2000, spindle_changes=False)
                base = len(machine.received)
                start = time.perf_counter()
                answers = await CountingSender(link).stream(lines)
                elapsed = time.perf_counter() - start
                got = machine.received[base:]
                if len(answers) != len(lines) or len(got) != len(lines):
                    raise RuntimeError(f"{mode}: {len(got)} of {len(lines)} lines arrived")
            finally:
                await link.close()
        finally:
            if session is not None:
                drain.cancel()
                await asyncio.wait({drain})
                await session.aclose()
    return {
        "one_way_us": statistics.median(one_way),
        "round_trip_us": statistics.median(round_trip),
        "lines_per_s": len(lines) / elapsed,
    }


async def _drain(session: GrblProxySession) -> None:
    async for _ in session.readings():
        pass


async def run(args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[str, list[dict[str, float]]] = {"direct": [], "proxy": []}
    with tempfile.TemporaryDirectory(prefix="proxy-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        for rep in range(args.repeat):
            order = ("direct", "proxy") if rep % 2 == 0 else ("proxy", "direct")
            for mode in order:
                result = await _one(mode, tmp, args)
                runs[mode].append(result)
                print(
                    f"rep {rep + 1} {mode:6}  write->receive {result['one_way_us']:7.0f} us"
                    f"  write->ok {result['round_trip_us']:7.0f} us"
                    f"  stream {result['lines_per_s']:7.0f} lines/s",
                    flush=True,
                )
    med = {
        mode: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for mode, rs in runs.items()
    }
    summary = {
        "repeat": args.repeat,
        "latency_lines": args.latency_lines,
        "time_scale": args.time_scale,
        "median": med,
        "added_one_way_us": med["proxy"]["one_way_us"] - med["direct"]["one_way_us"],
        "added_round_trip_us": med["proxy"]["round_trip_us"] - med["direct"]["round_trip_us"],
        "rate_ratio_proxy_over_direct": med["proxy"]["lines_per_s"] / med["direct"]["lines_per_s"],
        "runs": runs,
    }
    print()
    for mode in ("direct", "proxy"):
        m = med[mode]
        print(
            f"median {mode:6}  write->receive {m['one_way_us']:7.0f} us  write->ok "
            f"{m['round_trip_us']:7.0f} us  stream {m['lines_per_s']:7.0f} lines/s"
        )
    print(
        f"proxy adds {summary['added_one_way_us']:.0f} us per line one way, "
        f"{summary['added_round_trip_us']:.0f} us per round trip; streaming rate "
        f"proxy/direct = {summary['rate_ratio_proxy_over_direct']:.2f}"
    )
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--latency-lines", type=int, default=200)
    parser.add_argument("--time-scale", type=float, default=5000.0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    summary = asyncio.run(run(args))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
