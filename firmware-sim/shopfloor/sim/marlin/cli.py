"""``shopfloor sim marlin ...``: a simulated Marlin printer on a pseudo-terminal or TCP port.

``main(argv)`` takes the arguments after ``marlin``; the lead wires it into
``shopfloor.sim.cli`` as the ``marlin`` kind.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from shopfloor.sim import serving
from shopfloor.sim.errors import SimConfigError
from shopfloor.sim.marlin.config import MarlinSimConfig
from shopfloor.sim.marlin.machine import MarlinMachine
from shopfloor.sim.marlin.runner import PtyRunner, TcpRunner
from shopfloor.sim.marlin.scenario import FaultKind, parse_fault

DEFAULT_PTY = "ttyMARLIN"


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The ``marlin`` options, on ``parser`` (a sub-parser) or a new one."""
    if parser is None:
        parser = argparse.ArgumentParser(
            prog="shopfloor sim marlin",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    parser.description = (
        "Simulate a Marlin 2.x printer printing a file from SD, on a pseudo-terminal "
        "(default) or a TCP port."
    )
    parser.epilog = (
        "faults: --fault KIND@WHEN[+DURATION][!]\n"
        f"  KIND: {', '.join(k.value for k in FaultKind)}\n"
        "  WHEN: seconds after start, or <pct>% of the print\n"
        "  DURATION: how long it lasts; '!' on vanish resets the board too\n"
        "  example: --auto-start --fault pause@40%+5 --fault thermal-runaway@90+10"
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--pty", metavar="PATH", help="symlink to publish the pty at")
    where.add_argument("--tcp", metavar="PORT", type=int, help="listen on 127.0.0.1:PORT")
    parser.add_argument("--file", default="benchy.gcode", help="name of the file on the SD card")
    parser.add_argument("--size", type=int, default=1_048_576, metavar="BYTES", help="file size")
    parser.add_argument(
        "--print-s", type=float, default=120.0, metavar="X", help="print duration once hot"
    )
    parser.add_argument("--auto-start", action="store_true", help="start printing at power-up")
    parser.add_argument(
        "--time-scale", type=float, default=1.0, metavar="X", help="run X times faster"
    )
    parser.add_argument("--no-autoreport", action="store_true", help="no AUTOREPORT caps")
    parser.add_argument(
        "--no-ok-after-resend", action="store_true", help="old 2.0: no ok after Resend:"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for line noise")
    parser.add_argument(
        "--fault", action="append", default=[], metavar="SPEC", help="inject a fault (repeatable)"
    )
    return parser


def config_from_args(args: argparse.Namespace) -> MarlinSimConfig:
    if args.time_scale <= 0:
        raise SimConfigError("--time-scale must be positive")
    if args.size <= 0 or args.print_s <= 0:
        raise SimConfigError("--size and --print-s must be positive")
    return MarlinSimConfig(
        file_name=args.file,
        file_size=args.size,
        print_s=args.print_s,
        auto_start=args.auto_start,
        time_scale=args.time_scale,
        autoreport_temp=not args.no_autoreport,
        autoreport_sd=not args.no_autoreport,
        ok_after_resend=not args.no_ok_after_resend,
        faults=tuple(parse_fault(spec) for spec in args.fault),
        seed=args.seed,
    )


async def serve(config: MarlinSimConfig, pty: str | None, tcp: int | None) -> None:
    """Serve until cancelled (SIGTERM cancels too)."""
    machine = MarlinMachine(config)
    if tcp is not None:
        await serving.serve(TcpRunner(machine, tcp), "Marlin simulator")
        return
    path = Path(pty) if pty else Path(tempfile.gettempdir()) / DEFAULT_PTY
    await serving.serve(PtyRunner(machine, path), "Marlin simulator")


def main(argv: list[str]) -> int:
    """Entry point for ``shopfloor sim marlin ...`` (``argv`` without ``marlin``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except SimConfigError as exc:
        parser.error(str(exc))
    return serving.run(serve(config, args.pty, args.tcp))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
