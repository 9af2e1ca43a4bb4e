"""Find out what is on a serial port: ``shopfloor agent probe PORT``.

Each protocol family has a prober, a coroutine that takes an open
:class:`~shopfloor.agent.links.base.Link` and returns a :class:`ProbeResult` when it
recognises the device, or ``None`` when it does not. Probers only read: they never send
anything that moves a machine or changes a setting.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from shopfloor.agent.errors import LinkError
from shopfloor.agent.links.base import Link

__all__ = ["PROBERS", "ProbeReport", "ProbeResult", "available_probers", "probe_link"]


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What a prober found on a port.

    ``what`` is a one-line description for people ("GRBL 1.1h CNC router"),
    ``protocol`` the registry name to put in the config (``"grbl"``), ``firmware`` the
    version string as the device reports it, ``details`` anything else worth printing
    (build options, laser mode, unit id …) and ``config_snippet`` a ``[[machines]]``
    TOML block the user can paste.
    """

    what: str
    protocol: str
    firmware: str
    details: dict[str, Any] = field(default_factory=dict)
    config_snippet: str = ""


#: Probers in the order they are tried: the least intrusive first. GRBL listens for a
#: banner, then sends one real-time ``?``; Marlin ``M115`` and Haas ``?Q100`` are read-only
#: queries; a Modbus read comes last (it is binary, and kilns usually want another baud
#: rate). A module that is not installed is skipped.
PROBERS: Final = (
    ("grbl", "shopfloor.agent.probe.grbl", "probe_grbl"),
    ("marlin", "shopfloor.agent.probe.marlin", "probe_marlin"),
    ("haas", "shopfloor.agent.probe.haas", "probe_haas"),
    ("modbus", "shopfloor.agent.probe.kiln", "probe_modbus"),
)

Prober = Callable[[Link], Awaitable[ProbeResult | None] | ProbeResult | None]


@dataclass(frozen=True, slots=True)
class ProbeReport:
    """What ``shopfloor agent probe`` found: the match (or None) and what each prober said."""

    port: str
    result: ProbeResult | None
    tried: tuple[tuple[str, str], ...]  # (prober, "found" | "no" | "not installed" | error)


def available_probers() -> list[tuple[str, Prober | None]]:
    """Each prober by name, imported now; None where its module is not there (yet)."""
    out: list[tuple[str, Prober | None]] = []
    for name, module_name, func_name in PROBERS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            out.append((name, None))
            continue
        out.append((name, getattr(module, func_name, None)))
    return out


async def probe_link(
    link: Link, probers: list[tuple[str, Prober | None]] | None = None
) -> ProbeReport:
    """Try each prober on the open ``link`` until one recognises the device."""
    tried: list[tuple[str, str]] = []
    for name, prober in probers if probers is not None else available_probers():
        if prober is None:
            tried.append((name, "not installed"))
            continue
        try:
            answer = prober(link)
            result = await answer if inspect.isawaitable(answer) else answer
        except LinkError:
            raise
        except Exception as exc:  # noqa: BLE001 - one broken prober must not hide the others
            tried.append((name, f"failed: {exc!r}"))
            continue
        if result is not None:
            tried.append((name, "found"))
            return ProbeReport(link.name, result, tuple(tried))
        tried.append((name, "no"))
    return ProbeReport(link.name, None, tuple(tried))
