"""Serial ports on this computer, with the stable names udev gives them.

``/dev/ttyUSB0`` changes with the order devices are plugged in; udev's
``/dev/serial/by-id/...`` follows the device to any USB socket and ``/dev/serial/by-path/...``
stays with the socket (use it for cheap adapters without a serial number, whose by-id
names collide). See serial-protocols.md §5.2.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

__all__ = ["PortInfo", "holders", "list_ports", "stable_names"]

SERIAL_DIR: Final = Path("/dev/serial")


@dataclass(frozen=True, slots=True)
class PortInfo:
    device: str
    description: str = ""
    vid: int | None = None
    pid: int | None = None
    serial_number: str | None = None
    by_id: tuple[str, ...] = ()
    by_path: tuple[str, ...] = ()
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def usb_id(self) -> str | None:
        if self.vid is None or self.pid is None:
            return None
        return f"{self.vid:04x}:{self.pid:04x}"

    @property
    def best_name(self) -> str:
        """What to put in the config: by-id, else by-path, else the device."""
        if self.by_id:
            return self.by_id[0]
        if self.by_path:
            return self.by_path[0]
        return self.device


def stable_names(serial_dir: Path = SERIAL_DIR) -> dict[str, dict[str, list[str]]]:
    """``{"/dev/ttyUSB0": {"by-id": [...], "by-path": [...]}}`` from the symlinks in
    ``serial_dir`` (injectable for tests)."""
    out: dict[str, dict[str, list[str]]] = {}
    for kind in ("by-id", "by-path"):
        folder = serial_dir / kind
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            continue
        for entry in entries:
            try:
                target = os.path.realpath(entry)
            except OSError:
                continue
            out.setdefault(target, {"by-id": [], "by-path": []})[kind].append(str(entry))
    return out


def _comports() -> list[Any]:
    from serial.tools import list_ports  # noqa: PLC0415 - only the ports command needs it

    return list(list_ports.comports())


def list_ports(
    serial_dir: Path = SERIAL_DIR, comports: Callable[[], Iterable[Any]] = _comports
) -> list[PortInfo]:
    """Every serial port pyserial finds, plus any that only udev's folders name."""
    names = stable_names(serial_dir)
    seen: set[str] = set()
    ports: list[PortInfo] = []
    for port in comports():
        device = str(port.device)
        real = os.path.realpath(device)
        seen.add(real)
        stable = names.get(real, {"by-id": [], "by-path": []})
        description = str(port.description or "")
        ports.append(
            PortInfo(
                device=device,
                description="" if description == "n/a" else description,
                vid=port.vid,
                pid=port.pid,
                serial_number=port.serial_number,
                by_id=tuple(stable["by-id"]),
                by_path=tuple(stable["by-path"]),
            )
        )
    for real, stable in sorted(names.items()):
        if real not in seen:
            ports.append(
                PortInfo(
                    device=real, by_id=tuple(stable["by-id"]), by_path=tuple(stable["by-path"])
                )
            )
    return ports


def holders(device: str, proc: Path = Path("/proc")) -> list[tuple[int, str]]:
    """Processes that have ``device`` open: ``[(pid, command name)]`` (ours excluded)."""
    real = os.path.realpath(device)
    found: list[tuple[int, str]] = []
    me = os.getpid()
    try:
        pids = [int(p.name) for p in proc.iterdir() if p.name.isdigit()]
    except OSError:
        return found
    for pid in pids:
        if pid == me:
            continue
        try:
            fds = list((proc / str(pid) / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.path.realpath(fd) == real:
                    name = (proc / str(pid) / "comm").read_text(encoding="utf-8").strip()
                    found.append((pid, name))
                    break
            except OSError:
                continue
    return found
