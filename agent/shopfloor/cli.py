"""The ``shopfloor`` command: one entry point, subcommands imported only when used.

The agent's install on a Pi has no hub dependencies, so ``shopfloor hub run`` and
``shopfloor demo`` import the hub lazily and explain how to install it if it is missing.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Final

from shopfloor.contract.version import agent_version

# (words) -> ("module:function", one-line help, extra needed)
_COMMANDS: Final[dict[tuple[str, ...], tuple[str, str, str | None]]] = {
    ("demo",): (
        "shopfloor.hub.demo:main",
        "run the whole shop on this computer: broker, hub, simulated machines, agents, wall page",
        "demo",
    ),
    ("agent", "run"): (
        "shopfloor.agent.app:main",
        "read the machines in a config file and publish them over MQTT",
        None,
    ),
    ("agent", "ports"): (
        "shopfloor.agent.probe.cli:ports_main",
        "list serial ports with their stable /dev/serial/by-id names",
        None,
    ),
    ("agent", "probe"): (
        "shopfloor.agent.probe.cli:probe_main",
        "identify what is on a serial port (GRBL, Marlin, Haas, Modbus) and print a config",
        None,
    ),
    ("hub",): (
        "shopfloor.hub.service:main",
        "'hub run --config FILE': store what agents publish, serve the API and the wall page",
        "hub",
    ),
    ("sim",): (
        "shopfloor.sim.cli:main",
        "simulate a machine: 'sim grbl' is a GRBL CNC router or laser on a pty or TCP port",
        None,
    ),
}

_USAGE: Final = "usage: shopfloor <command> [options]   (shopfloor <command> --help for more)"


def _help() -> str:
    width = max(len(" ".join(words)) for words in _COMMANDS)
    lines = [_USAGE, "", "commands:"]
    lines += [f"  {' '.join(w):<{width}}  {text}" for w, (_, text, _) in _COMMANDS.items()]
    return "\n".join(lines)


def _load(target: str, extra: str | None) -> Callable[[list[str]], int]:
    module_name, _, func_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if extra is None or (exc.name or "").startswith("shopfloor"):
            raise
        print(
            f"shopfloor: this command needs the '{extra}' extra, which is not installed "
            f"(missing module {exc.name!r}).\n  Install it with: pip install 'shopfloor[{extra}]'",
            file=sys.stderr,
        )
        raise SystemExit(2) from exc
    func: Callable[[list[str]], int] = getattr(module, func_name)
    return func


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_help())
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        print(f"shopfloor {agent_version()}")
        return 0
    for words, (target, _, extra) in _COMMANDS.items():
        if tuple(args[: len(words)]) == words:
            return _load(target, extra)(args[len(words) :])
    known = ", ".join(" ".join(w) for w in _COMMANDS)
    print(f"shopfloor: unknown command {' '.join(args[:2])!r}; known: {known}", file=sys.stderr)
    print(_USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
