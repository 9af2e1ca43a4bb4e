"""``shopfloor agent ports`` and ``shopfloor agent probe PORT``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, TextIO

from shopfloor.agent.errors import LinkError
from shopfloor.agent.links import open_link
from shopfloor.agent.links.base import Link
from shopfloor.agent.probe import ProbeReport, probe_link
from shopfloor.agent.probe.ports import SERIAL_DIR, PortInfo, holders, list_ports

__all__ = ["format_ports", "format_report", "ports_main", "probe_main", "probe_port"]

_NOTHING_FOUND: Final = """\
No serial ports found.
  - Is the machine's USB cable plugged in and the controller powered?
  - `dmesg | tail` right after plugging it in shows whether Linux saw a device
    (ttyUSB* for CH340/FTDI/CP210x adapters, ttyACM* for Arduino Uno/Mega and most 3D printers).
  - RS-485 and RS-232 adapters need their driver; a Pi's own UART is /dev/serial0 when enabled.
"""


def format_ports(ports: Sequence[PortInfo]) -> str:
    if not ports:
        return _NOTHING_FOUND
    lines: list[str] = []
    for port in ports:
        head = port.device
        if port.description:
            head += f"  {port.description}"
        if port.usb_id:
            head += f"  [USB {port.usb_id}]"
        lines.append(head)
        lines += [f"  by-id:   {name}" for name in port.by_id]
        lines += [f"  by-path: {name}" for name in port.by_path]
        if port.serial_number:
            lines.append(f"  serial:  {port.serial_number}")
        lines.append(f'  config:  port = "{port.best_name}"')
    lines.append("")
    lines.append(
        "Use the by-id name in the config: it follows the device to any USB socket. If two "
        "adapters share a by-id name (cheap ones have no serial number), use by-path, which "
        "stays with the socket."
    )
    lines.append("Then `shopfloor agent probe PORT` tells what is on it.")
    return "\n".join(lines) + "\n"


def ports_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="shopfloor agent ports",
        description="List serial ports with their stable /dev/serial/by-id and by-path names.",
    )
    parser.add_argument("--serial-dir", type=Path, default=SERIAL_DIR, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.stdout.write(format_ports(list_ports(args.serial_dir)))
    return 0


def format_report(report: ProbeReport, *, baud: int) -> str:
    lines: list[str] = []
    result = report.result
    if result is None:
        lines.append(f"{report.port}: nothing recognised at {baud} baud.")
        lines += [f"  {name}: {outcome}" for name, outcome in report.tried]
        lines.append(
            "  Try another --baud (GRBL and Marlin: 115200 or 250000; Haas: 9600 by default; "
            "kiln controllers over Modbus: often 9600 or 19200), check the cable, and that "
            "the controller is on."
        )
        return "\n".join(lines) + "\n"
    lines.append(f"{report.port}: {result.what}")
    lines.append(f"  protocol: {result.protocol}")
    if result.firmware:
        lines.append(f"  firmware: {result.firmware}")
    lines += [f"  {key}: {value}" for key, value in result.details.items()]
    if result.config_snippet:
        snippet = result.config_snippet
        if baud != 115200 and "baudrate" not in snippet:
            snippet = snippet.replace(
                f'port = "{report.port}"', f'port = "{report.port}"\nbaudrate = {baud}', 1
            )
        lines += ["", "Add this to the agent's config file:", "", snippet]
    return "\n".join(lines) + "\n"


async def probe_port(
    port: str, baud: int, *, link_factory: Callable[[str, int], Link] | None = None
) -> ProbeReport:
    """Open ``port`` (exclusively), ask the probers, close it."""
    link = (link_factory or _link)(port, baud)
    await link.open()
    try:
        return await probe_link(link)
    finally:
        await link.close()


def _link(port: str, baud: int) -> Link:
    return open_link(port, baud)


def _busy_message(port: str, users: Sequence[tuple[int, str]], out: TextIO) -> None:
    who = ", ".join(f"{name} (pid {pid})" for pid, name in users)
    out.write(
        f"shopfloor agent probe: {port} is in use by {who}.\n"
        "  Probing it would send bytes into that program's conversation with the machine "
        "(a sender mid-job would lose count). Close that program first, or, for a running "
        "Shopfloor agent, stop it (`systemctl stop shopfloor-agent`).\n"
        "  ModemManager sometimes grabs ttyACM* devices: `systemctl stop ModemManager`.\n"
    )


def probe_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="shopfloor agent probe",
        description=(
            "Find out what is on a serial port without changing anything on the machine. "
            "Opening a port can reset Arduino-based boards (DTR): do not probe a machine "
            "in the middle of a job."
        ),
    )
    parser.add_argument("port", help="a device path (/dev/serial/by-id/...), tcp://host:port")
    parser.add_argument("--baud", type=int, default=115200, help="baud rate (default 115200)")
    args = parser.parse_args(argv)
    port: str = args.port
    if port.startswith("/"):
        users = holders(port)
        if users:
            _busy_message(port, users, sys.stderr)
            return 1
    try:
        report = asyncio.run(probe_port(port, args.baud))
    except LinkError as exc:
        message = str(exc)
        sys.stderr.write(f"shopfloor agent probe: {message}\n")
        if "lock" in message.lower() or "busy" in message.lower():
            sys.stderr.write(
                "  Another program holds the port (a sender, another agent, ModemManager). "
                "Close it and try again.\n"
            )
        return 1
    sys.stdout.write(format_report(report, baud=args.baud))
    return 0 if report.result is not None else 3
