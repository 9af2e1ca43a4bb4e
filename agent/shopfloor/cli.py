"""The ``shopfloor`` command. Placeholder until the subcommands land."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    del argv
    print("shopfloor: no subcommands yet", file=sys.stderr)
    return 2
