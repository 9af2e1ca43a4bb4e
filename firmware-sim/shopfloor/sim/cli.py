"""``shopfloor sim KIND ...``: run a simulated machine on a pseudo-terminal or TCP port.

``grbl`` lives here; ``haas``, ``kiln`` and ``marlin`` have their own command-line modules,
imported only when asked for.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
from pathlib import Path
from typing import Final

from shopfloor.sim import serving
from shopfloor.sim.errors import SimConfigError
from shopfloor.sim.grbl import (
    GrblMachine,
    GrblSimConfig,
    PtyRunner,
    TcpRunner,
    bundled_programs,
    load_program,
    parse_fault,
)
from shopfloor.sim.grbl.scenario import drivers_from_config

#: Simulators with a command line of their own: kind -> (module, one-line help).
_OTHER_KINDS: Final = {
    "haas": ("shopfloor.sim.haas.cli", "a Haas NGC mill answering Q commands"),
    "kiln": ("shopfloor.sim.kiln.cli", "a kiln on a Modbus RTU PID controller (CN7500 map)"),
    "marlin": ("shopfloor.sim.marlin.cli", "a Marlin 2.x 3D printer printing from SD"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shopfloor sim",
        description="Run a simulated machine controller for the agent to talk to.",
    )
    sub = parser.add_subparsers(dest="kind", required=True, metavar="KIND")
    for kind, (_, text) in _OTHER_KINDS.items():
        sub.add_parser(kind, help=text, add_help=False)
    grbl = sub.add_parser(
        "grbl",
        help="a GRBL 1.1h CNC router or laser",
        description="Simulate a GRBL 1.1h controller on a pseudo-terminal (default) or TCP port.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "faults: --fault KIND@WHEN[+DURATION][!]\n"
            "  KIND: hard-limit, soft-limit, alarm[:CODE], hold, resume, door, reset, vanish\n"
            "  WHEN: seconds after start, or L<n> = after n answered lines\n"
            "  DURATION: how long the hold/door/alarm/vanish lasts; '!' on vanish power-cycles\n"
            "  example: --fault hold@10+5 --fault vanish@30+8\n"
            "bundled programs: " + ", ".join(bundled_programs()) + "\n"
            "the bundled programs take 20-60 s at --time-scale 4"
        ),
    )
    where = grbl.add_mutually_exclusive_group()
    where.add_argument("--pty", metavar="PATH", help="symlink to publish the pty at")
    where.add_argument("--tcp", metavar="PORT", type=int, help="listen on 127.0.0.1:PORT")
    grbl.add_argument("--laser", action="store_true", help="laser mode ($32=1)")
    grbl.add_argument(
        "--line-numbers", action="store_true", help="built with line numbers (Ln: in reports)"
    )
    grbl.add_argument("--homing", action="store_true", help="homing enabled: starts locked")
    job = grbl.add_mutually_exclusive_group()
    job.add_argument("--auto-run", metavar="PROGRAM", help="stream this program once")
    job.add_argument(
        "--demo-loop", action="store_true", help="cycle the bundled programs with incidents"
    )
    grbl.add_argument(
        "--time-scale", type=float, default=1.0, metavar="X", help="run X times faster"
    )
    grbl.add_argument("--seed", type=int, default=None, help="seed for the demo loop")
    grbl.add_argument(
        "--fault", action="append", default=[], metavar="SPEC", help="inject a fault (repeatable)"
    )
    return parser


def config_from_args(args: argparse.Namespace) -> GrblSimConfig:
    if args.time_scale <= 0:
        raise SimConfigError("--time-scale must be positive")
    if args.auto_run is not None:
        load_program(args.auto_run)  # fail early with a clear message
    return GrblSimConfig(
        laser=args.laser,
        line_numbers=args.line_numbers,
        homing=args.homing,
        time_scale=args.time_scale,
        auto_run=args.auto_run,
        demo_loop=args.demo_loop,
        faults=tuple(parse_fault(spec) for spec in args.fault),
        seed=args.seed,
    )


async def _serve(config: GrblSimConfig, pty: str | None, tcp: int | None) -> None:
    machine = GrblMachine(config)
    drivers = drivers_from_config(config)
    if tcp is not None:
        await serving.serve(TcpRunner(machine, tcp, drivers=drivers), "GRBL simulator")
        return
    path = Path(pty) if pty else Path(tempfile.gettempdir()) / "ttyGRBL"
    await serving.serve(PtyRunner(machine, path, drivers=drivers), "GRBL simulator")


def main(argv: list[str]) -> int:
    """Entry point for ``shopfloor sim ...``; ``argv`` starts with the kind (``grbl``)."""
    if argv[:1] and argv[0] in _OTHER_KINDS:
        module = importlib.import_module(_OTHER_KINDS[argv[0]][0])
        result: int = module.main(argv[1:])
        return result
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except SimConfigError as exc:
        parser.error(str(exc))
    return serving.run(_serve(config, args.pty, args.tcp))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
