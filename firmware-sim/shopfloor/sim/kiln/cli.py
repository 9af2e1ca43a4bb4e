"""``shopfloor sim kiln ...``: a simulated kiln controller on a pseudo-terminal."""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from shopfloor.sim import serving
from shopfloor.sim.errors import SimConfigError
from shopfloor.sim.kiln.config import KilnSimConfig
from shopfloor.sim.kiln.machine import KilnMachine
from shopfloor.sim.kiln.runner import KilnPtyRunner, script_from_config
from shopfloor.sim.kiln.scenario import parse_fault
from shopfloor.sim.kiln.schedules import SCHEDULES

PROFILES = ("cn7500",)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="shopfloor sim kiln",
        description="Simulate an electric kiln with a SOLO / Delta DTB / Omega CN7500-style "
        "controller, Modbus RTU on a pseudo-terminal.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "faults: --fault KIND@SECONDS[+DURATION][!]\n"
            "  KIND: tc-break, weak, noise, stall, vanish, reboot, start, stop\n"
            "  '!' on vanish power-cycles the controller (the firing is lost)\n"
            "  example: --fault tc-break@20+5 --fault vanish@40+3\n"
            "at --time-scale 600 a cone-6 glaze firing (about 13.6 h) takes about 80 s"
        ),
    )
    p.add_argument("--pty", metavar="PATH", help="symlink to publish the pty at")
    p.add_argument("--profile", choices=PROFILES, default="cn7500", help="register map served")
    p.add_argument("--device-id", type=int, default=1, help="Modbus unit id (1-247)")
    p.add_argument("--schedule", choices=sorted(SCHEDULES), default="cone6-glaze")
    p.add_argument("--time-scale", type=float, default=600.0, metavar="X", help="X times faster")
    p.add_argument("--weak", action="store_true", help="worn elements: the kiln falls behind")
    p.add_argument("--start-after", type=float, default=1.0, metavar="S", help="start firing")
    p.add_argument("--repeat-after", type=float, default=None, metavar="S", help="fire again")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--fault", action="append", default=[], metavar="SPEC", help="repeatable")
    return p


def config_from_args(args: argparse.Namespace) -> KilnSimConfig:
    if args.time_scale <= 0:
        raise SimConfigError("--time-scale must be positive")
    if not 1 <= args.device_id <= 247:
        raise SimConfigError("--device-id must be 1..247")
    return KilnSimConfig(
        profile=args.profile,
        device_id=args.device_id,
        schedule=args.schedule,
        time_scale=args.time_scale,
        element_factor=0.7 if args.weak else 1.0,
        start_after_s=args.start_after,
        repeat_after_s=args.repeat_after,
        faults=tuple(parse_fault(spec) for spec in args.fault),
        seed=args.seed,
    )


async def _serve(config: KilnSimConfig, pty: str | None) -> None:
    path = Path(pty) if pty else Path(tempfile.gettempdir()) / "ttyKILN"
    runner = KilnPtyRunner(KilnMachine(config), path, script=script_from_config(config))
    await serving.serve(runner, f"kiln simulator (Modbus RTU, unit {config.device_id})")


def main(argv: Sequence[str]) -> int:
    """``shopfloor sim kiln ...``; ``argv`` is what follows ``kiln``."""
    p = parser()
    args = p.parse_args(list(argv))
    try:
        config = config_from_args(args)
    except SimConfigError as exc:
        p.error(str(exc))
    return serving.run(_serve(config, args.pty))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
