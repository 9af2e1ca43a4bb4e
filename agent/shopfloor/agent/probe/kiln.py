"""Is there a Modbus RTU kiln controller on this port? Reads only: never writes a register.

:func:`probe_modbus` asks each unit id for each bundled profile's process value; the first
profile whose every register block answers (with a plausible temperature or a sensor-break
value) wins, and a config snippet for it comes back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from shopfloor.agent.adapters.kiln import decode_sample
from shopfloor.agent.adapters.kiln_profile import KilnProfile, bundled_profiles, load_profile
from shopfloor.agent.links.base import Link
from shopfloor.agent.probe import ProbeResult
from shopfloor.agent.protocols.modbus_rtu import (
    BitsRead,
    ExceptionReply,
    ModbusRtuClient,
    RegistersRead,
    Request,
)

__all__ = ["probe_modbus"]

_PLAUSIBLE_C = (-50.0, 1600.0)


async def _ask(
    link: Link, client: ModbusRtuClient, request: Request, timeout_s: float
) -> RegistersRead | BitsRead | ExceptionReply | None:
    await link.write(client.send(request))
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                for event in client.feed(await link.read(256)):
                    if isinstance(event, RegistersRead | BitsRead | ExceptionReply):
                        return event
    except TimeoutError:
        client.expire()
        return None


async def _try_profile(
    link: Link, profile: KilnProfile, device_id: int, timeout_s: float
) -> dict[str, tuple[int, ...]] | None:
    client = ModbusRtuClient()
    words: dict[str, tuple[int, ...]] = {}
    for block in profile.blocks():
        reply = await _ask(link, client, block.request(device_id), timeout_s)
        if reply is None or isinstance(reply, ExceptionReply):
            if any(f.name == "pv" for f in block.fields):
                return None
            continue
        values = reply.registers if isinstance(reply, RegistersRead) else reply.bits
        words.update(block.split(tuple(int(v) for v in values)))
    return words


async def probe_modbus(
    link: Link,
    device_ids: Sequence[int] = (1,),
    *,
    profiles: Sequence[str] | None = None,
    timeout_s: float = 0.5,
    port: str = "/dev/ttyUSB0",
) -> ProbeResult | None:
    """Look for a kiln controller on an open ``link``; None if nothing answered like one."""
    for device_id in device_ids:
        for name in profiles or bundled_profiles():
            profile = load_profile(name)
            words = await _try_profile(link, profile, device_id, timeout_s)
            if words is None:
                continue
            sample = decode_sample(profile, words)
            low, high = _PLAUSIBLE_C
            if not sample.sensor_break and not (
                sample.pv_c is not None and low <= sample.pv_c <= high
            ):
                continue
            firmware = (
                f"V{sample.firmware >> 8}.{sample.firmware & 0xFF:02d}"
                if sample.firmware is not None
                else ""
            )
            details = {
                "device_id": device_id,
                "profile": profile.name,
                "temperature_c": sample.pv_c,
                "setpoint_c": sample.sp_c,
                "running": sample.running,
                "sensor_break": sample.sensor_break,
            }
            return ProbeResult(
                what=f"{profile.title} kiln controller (Modbus RTU unit {device_id})",
                protocol="modbus_kiln",
                firmware=firmware,
                details=details,
                config_snippet=_snippet(profile, device_id, port),
            )
    return None


def _snippet(profile: KilnProfile, device_id: int, port: str) -> str:
    return f'''\
[[machines]]
id = "kiln-{device_id}"
name = "Kiln {device_id}"
kind = "kiln"
protocol = "modbus_kiln"
port = "{port}"
baudrate = {profile.baudrate}
poll_interval_s = 0.25

[machines.options]
profile = "{profile.name}"   # {profile.title}
device_id = {device_id}
parity = "{profile.parity}"
# schedule = "cone6-glaze"   # or a table: name and segments (ramp_c_per_h, target_c, hold_min)
'''
