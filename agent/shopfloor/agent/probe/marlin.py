"""Is there a Marlin printer on this link? One read-only question: ``M115``.

An Arduino-based board resets when its port is opened and greets with ``start`` after one or
two seconds, ignoring what arrived meanwhile; so ``M115`` is sent at once and again after a
``start`` (or once more if the first got no answer). ``M115`` only reports (firmware name,
machine type, extruder count and the ``Cap:`` lines); nothing else is ever sent.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

from shopfloor.agent.links.base import Link
from shopfloor.agent.probe import ProbeResult
from shopfloor.agent.protocols.marlin import (
    Capability,
    FirmwareInfo,
    MarlinEvent,
    MarlinProtocol,
    Ok,
)

__all__ = ["probe_marlin"]

_M115: Final = MarlinProtocol.command("M115")
_READ: Final = 4096


class _Reader:
    def __init__(self, link: Link) -> None:
        self.link = link
        self.protocol = MarlinProtocol()
        self.events: list[MarlinEvent] = []

    async def until(self, done: tuple[type[object], ...], seconds: float) -> bool:
        start = len(self.events)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while not any(isinstance(e, done) for e in self.events[start:]):
                    self.events += self.protocol.feed(await self.link.read(_READ))
        return any(isinstance(e, done) for e in self.events[start:])


async def probe_marlin(link: Link, *, timeout_s: float = 2.5) -> ProbeResult | None:
    """A :class:`ProbeResult` if a Marlin (or Marlin-like) firmware answers ``M115``."""
    reader = _Reader(link)
    await link.write(_M115)
    answered = await reader.until((Ok,), timeout_s)
    if not answered or _firmware(reader.events) is None:
        # A board that reset on open drops lines until its ``start``: ask once more.
        await link.write(_M115)
        await reader.until((Ok,), timeout_s)
    info = _firmware(reader.events)
    if info is None:
        return None
    caps = {e.name: e.enabled for e in reader.events if isinstance(e, Capability)}
    return _result(link.name, info, caps)


def _firmware(events: list[MarlinEvent]) -> FirmwareInfo | None:
    for event in reversed(events):
        if isinstance(event, FirmwareInfo):
            return event
    return None


def _result(port: str, info: FirmwareInfo, caps: dict[str, bool]) -> ProbeResult:
    details: dict[str, object] = {}
    for key, name in (
        ("MACHINE_TYPE", "machine_type"),
        ("EXTRUDER_COUNT", "extruders"),
        ("PROTOCOL_VERSION", "protocol_version"),
        ("UUID", "uuid"),
        ("SOURCE_CODE_URL", "source"),
    ):
        if info.fields.get(key):
            details[name] = info.fields[key]
    if caps:
        details["capabilities"] = sorted(name for name, on in caps.items() if on)
    auto = caps.get("AUTOREPORT_TEMP", False)
    sd_auto = caps.get("AUTOREPORT_SD_STATUS", False)
    if not (auto and sd_auto):
        details["note"] = (
            "no auto-report for "
            + " and ".join(
                what for what, ok in (("temperatures", auto), ("SD status", sd_auto)) if not ok
            )
            + ": the agent polls M105/M27 instead"
        )
    machine = info.machine_type or "3D printer"
    what = f"{info.name or 'Marlin'} on a {machine}"
    snippet = "\n".join(
        [
            "[[machines]]",
            'id = "printer-1"                # pick a name: lower-case letters, digits, - and _',
            'kind = "printer_3d"',
            'protocol = "marlin"',
            f'port = "{port}"',
            "baudrate = 115200                # stock Marlin is 250000; use what worked here",
            "[machines.options]",
            "auto_report_s = 2                # M155/M27 S interval; 0 = always poll",
            "status_poll_s = 2.0              # M105/M27 polling when auto-report is missing",
            "line_numbers = true              # N<n> ... *<checksum>, answers Resend:",
        ]
    )
    return ProbeResult(
        what=what,
        protocol="marlin",
        firmware=info.name,
        details=details,
        config_snippet=snippet,
    )
