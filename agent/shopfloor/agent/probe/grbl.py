"""Is there a GRBL (or grblHAL) controller on this link? Read-only questions only.

1. Listen briefly for the banner, then send ``?`` (a real-time byte that moves nothing
   and changes nothing) and wait for a status report or the banner (an Arduino-based
   board resets when its port is opened and greets after 1-2 s); ask again after a banner.
3. Only if a banner or a status report proved it is Grbl, and it is Idle or in Alarm
   (gnea Grbl runs system commands only then): ``$I`` for version and build options, and,
   when Idle, ``$$`` to read (never write) the settings, for laser mode (``$32``) and homing
   (``$22``).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

from shopfloor.agent.links.base import Link
from shopfloor.agent.probe import ProbeResult
from shopfloor.agent.protocols.grbl import (
    Banner,
    BuildInfo,
    ErrorReply,
    GrblEvent,
    GrblProtocol,
    Ok,
    SettingLine,
    StatusReport,
)

__all__ = ["probe_grbl"]

_BANNER_WAIT_S: Final = 2.5
_ANSWER_WAIT_S: Final = 1.5


class _Reader:
    def __init__(self, link: Link) -> None:
        self.link = link
        self.protocol = GrblProtocol()
        self.events: list[GrblEvent] = []
        self.raw = bytearray()

    async def until(self, done: type[object] | tuple[type[object], ...], seconds: float) -> bool:
        """Read until an event of type ``done`` arrives (True) or ``seconds`` pass (False)."""
        start = len(self.events)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while True:
                    if any(isinstance(e, done) for e in self.events[start:]):
                        return True
                    data = await self.link.read(4096)
                    if len(self.raw) < 4096:
                        self.raw += data[: 4096 - len(self.raw)]
                    self.events += self.protocol.feed(data)
        return any(isinstance(e, done) for e in self.events[start:])

    def last(self, kind: type[object]) -> object | None:
        for event in reversed(self.events):
            if isinstance(event, kind):
                return event
        return None


async def probe_grbl(link: Link, *, banner_wait_s: float = _BANNER_WAIT_S) -> ProbeResult | None:
    """A :class:`ProbeResult` if ``link`` leads to a Grbl controller, else None."""
    reader = _Reader(link)
    # A board that does not reset on open never greets: ask early. One that does (DTR on
    # an Arduino) ignores the query while its boot loader runs, then greets: ask again.
    await reader.until(Banner, min(0.3, banner_wait_s))
    await link.write(GrblProtocol.status_query())
    await reader.until((Banner, StatusReport), banner_wait_s)
    if reader.last(StatusReport) is None:
        await link.write(GrblProtocol.status_query())
        await reader.until(StatusReport, _ANSWER_WAIT_S)
    banner = reader.last(Banner)
    status = reader.last(StatusReport)
    if not isinstance(banner, Banner) and not isinstance(status, StatusReport):
        # Not Grbl. End the line our "?" began, so the next prober's first line (M115,
        # ?Q100) reaches a Marlin or Haas control intact.
        await link.write(b"\n")
        return None
    state = status.state if isinstance(status, StatusReport) else ""
    info: BuildInfo | None = None
    settings: dict[str, str] = {}
    if state in ("Idle", "Alarm"):
        await link.write(GrblProtocol.command("$I"))
        if await reader.until((Ok, ErrorReply), _ANSWER_WAIT_S):
            found = reader.last(BuildInfo)
            info = found if isinstance(found, BuildInfo) else None
    if state == "Idle":
        await link.write(GrblProtocol.command("$$"))
        mark = len(reader.events)
        if await reader.until((Ok, ErrorReply), _ANSWER_WAIT_S):
            settings = {
                e.setting: e.value for e in reader.events[mark:] if isinstance(e, SettingLine)
            }
    found_banner = banner if isinstance(banner, Banner) else None
    return _result(link.name, found_banner, info, settings, state)


def _result(
    port: str,
    banner: Banner | None,
    info: BuildInfo | None,
    settings: dict[str, str],
    state: str,
) -> ProbeResult:
    hal = (banner is not None and banner.flavor == "grblhal") or (
        info is not None and (info.extra_options or (info.rx_buffer_bytes or 0) > 128)
    )
    flavor = "grblHAL" if hal else "Grbl"
    version = info.version if info and info.version else (banner.version if banner else "")
    firmware = f"{version}.{info.build}" if info and info.build else version
    details: dict[str, object] = {"flavor": flavor}
    if state:
        details["state"] = state
    if banner is not None:
        details["banner"] = banner.text
    if info is not None:
        details["options"] = info.options
        if info.planner_blocks is not None:
            details["planner_blocks"] = info.planner_blocks
        if info.rx_buffer_bytes is not None:
            details["rx_buffer_bytes"] = info.rx_buffer_bytes
        details["line_numbers"] = "N" in info.options
    laser: bool | None = None
    if "32" in settings:
        laser = settings["32"].strip() in ("1", "1.0")
        details["laser_mode"] = laser
    if "22" in settings:
        details["homing"] = settings["22"].strip() not in ("0", "0.0")
    if "10" in settings:
        details["status_mask"] = settings["10"].strip()
    if state and state not in ("Idle", "Alarm"):
        details["note"] = f"the machine is busy ({state}); build info and settings were not read"
    what = f"{flavor} {version} {'laser' if laser else 'CNC'} controller".replace("  ", " ")
    kind = "laser" if laser else "cnc_router"
    snippet = "\n".join(
        [
            "[[machines]]",
            'id = "router-1"                 # pick a name: lower-case letters, digits, - and _',
            f'kind = "{kind}"',
            'protocol = "grbl"',
            f'port = "{port}"',
            f"laser_mode = {'true' if laser else 'false'}",
            "# Proxy mode, when a sender (UGS, CNCjs, LightBurn ...) drives this machine:",
            "# [machines.options]",
            '# proxy_pty = "/run/shopfloor/router-1"   # point the sender at this path',
        ]
    )
    return ProbeResult(
        what=what, protocol="grbl", firmware=firmware, details=details, config_snippet=snippet
    )
