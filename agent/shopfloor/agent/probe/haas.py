"""Is there a Haas control answering machine data collection queries on this link?

:func:`probe_haas` sends ``?Q100`` (twice if need be: the Haas page says the first one after
connecting may go unanswered), then ``?Q101`` and ``?Q102`` for the software version and the
model. These are read-only queries; it never sends an E (write) command or anything else.
"""

from __future__ import annotations

import asyncio
from typing import Final

from shopfloor.agent.links.base import Link
from shopfloor.agent.probe import ProbeResult
from shopfloor.agent.protocols.haas import (
    HaasEvent,
    HaasProtocol,
    Model,
    Rejected,
    SerialNumber,
    SoftwareVersion,
)

__all__ = ["probe_haas"]

_READ: Final = 256


async def _ask(
    link: Link, protocol: HaasProtocol, command: str, want: type, timeout_s: float
) -> HaasEvent | None:
    await link.write(protocol.query(command))
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                for event in protocol.feed(await link.read(_READ)):
                    if isinstance(event, want | Rejected):
                        return event if isinstance(event, want) else None
    except TimeoutError:
        return None


async def probe_haas(link: Link, *, timeout_s: float = 1.0) -> ProbeResult | None:
    """A :class:`ProbeResult` if a Haas control answers ``?Q100`` on the open ``link``."""
    protocol = HaasProtocol()
    serial: HaasEvent | None = None
    for _ in range(2):
        serial = await _ask(link, protocol, "Q100", SerialNumber, timeout_s)
        if serial is not None:
            break
    if not isinstance(serial, SerialNumber):
        return None
    version = await _ask(link, protocol, "Q101", SoftwareVersion, timeout_s)
    model = await _ask(link, protocol, "Q102", Model, timeout_s)
    firmware = version.version if isinstance(version, SoftwareVersion) else ""
    model_name = model.model if isinstance(model, Model) else ""
    details = {"serial": serial.serial}
    if model_name:
        details["model"] = model_name
    what = f"Haas {model_name or 'CNC'} (serial {serial.serial})"
    kind = "cnc_lathe" if model_name.upper().startswith(("ST", "DS", "TL")) else "cnc_mill"
    machine_id = "haas-" + "".join(c for c in (model_name or "mill").lower() if c.isalnum())
    port = link.name
    baud = "" if port.startswith("tcp://") else "baudrate = 9600                   # Setting 11\n"
    snippet = (
        "[[machines]]\n"
        f'id = "{machine_id}"\n'
        f'name = "{what}"\n'
        f'kind = "{kind}"\n'
        'protocol = "haas"\n'
        f'port = "{port}"\n'
        f"{baud}"
        "poll_interval_s = 0.5\n"
        "[machines.options]\n"
        'q_commands = ["Q104", "Q303"]\n'
        "# parts_required = 50            # or parts_required_variable = 500\n"
    )
    return ProbeResult(
        what=what,
        protocol="haas",
        firmware=firmware,
        details=details,
        config_snippet=snippet,
    )
