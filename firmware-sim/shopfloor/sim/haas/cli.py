"""``shopfloor sim haas ...``: run a simulated Haas mill on a pseudo-terminal or TCP port."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from shopfloor.sim import serving
from shopfloor.sim.errors import SimConfigError
from shopfloor.sim.haas.config import HaasSimConfig
from shopfloor.sim.haas.machine import HaasMachine
from shopfloor.sim.haas.runner import PtyRunner, TcpRunner, drivers_from_config
from shopfloor.sim.haas.scenario import parse_fault


def build_parser(prog: str = "shopfloor sim haas") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Simulate a Haas NGC mill answering machine data collection queries (?Q100, ?Q500, "
            "?Q600 ...) on a pseudo-terminal (default) or a TCP port (like Setting 143)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "faults: --fault KIND[:N]@SECONDS[+DURATION][!]\n"
            "  KIND: hold, alarm[:CODE], stall, noise[:PERCENT], reboot, vanish\n"
            "  '!' on vanish power-cycles the machine while the port is gone\n"
            "  example: --fault hold@10+5 --fault stall@30+6 --fault vanish@60+8!"
        ),
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--pty", metavar="PATH", help="symlink to publish the pty at")
    where.add_argument("--tcp", metavar="PORT", type=int, help="listen on 127.0.0.1:PORT")
    parser.add_argument("--cycle-s", type=float, default=20.0, metavar="X", help="seconds per part")
    parser.add_argument(
        "--load-s", type=float, default=4.0, metavar="X", help="operator load time between parts"
    )
    parser.add_argument(
        "--parts-required",
        type=int,
        default=10,
        metavar="N",
        help="batch quantity (read with ?Q600 500; 0 = none)",
    )
    parser.add_argument("--program", default="O01234", help="the loaded program (O number)")
    parser.add_argument(
        "--framing",
        choices=("stx", "line"),
        default="stx",
        help="stx: STX..ETB CRLF '>' (RS-232); line: '>'payload CRLF (Ethernet)",
    )
    parser.add_argument(
        "--no-auto-run", action="store_true", help="sit Idle instead of running parts"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for line noise")
    parser.add_argument(
        "--fault", action="append", default=[], metavar="SPEC", help="inject a fault (repeatable)"
    )
    return parser


def config_from_args(args: argparse.Namespace) -> HaasSimConfig:
    if args.cycle_s <= 0 or args.load_s < 0:
        raise SimConfigError("--cycle-s must be positive and --load-s not negative")
    if args.parts_required < 0:
        raise SimConfigError("--parts-required must not be negative")
    return HaasSimConfig(
        cycle_s=args.cycle_s,
        load_s=args.load_s,
        parts_required=args.parts_required,
        program=args.program,
        framing=args.framing,
        auto_run=not args.no_auto_run,
        faults=tuple(parse_fault(spec) for spec in args.fault),
        seed=args.seed,
    )


async def _serve(config: HaasSimConfig, pty: str | None, tcp: int | None) -> None:
    machine = HaasMachine(config)
    drivers = drivers_from_config(config)
    if tcp is not None:
        server = TcpRunner(machine, tcp, drivers=drivers, name="haas")
        await serving.serve(server, "Haas simulator")
        return
    path = Path(pty) if pty else Path(tempfile.gettempdir()) / "ttyHAAS"
    await serving.serve(PtyRunner(machine, path, drivers=drivers, name="haas"), "Haas simulator")


def main(argv: list[str]) -> int:
    """Entry point for ``shopfloor sim haas ...``; ``argv`` is what follows ``haas``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except SimConfigError as exc:
        parser.error(str(exc))
    return serving.run(_serve(config, args.pty, args.tcp))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
