"""``[machines.options]`` of a GRBL machine: proxy mode and its job rules.

Example::

    [[machines]]
    id = "router-1"
    protocol = "grbl"
    port = "/dev/serial/by-id/usb-1a86_USB_Serial-if00-port0"
    [machines.options]
    proxy_pty = "/run/shopfloor/router-1"   # point the sender (UGS, CNCjs ...) here
    proxy_tcp = 2323                        # and/or here (loopback unless proxy_host says so)

Without ``proxy_pty`` and ``proxy_tcp`` the agent polls the port itself (no proxy).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from shopfloor.agent.proxy.watcher import DEFAULT_PROGRAM_PATTERNS, DEFAULT_TOTAL_PATTERNS

if TYPE_CHECKING:
    from shopfloor.agent.config import ConfigTable

__all__ = ["GrblOptions", "ProxyOptions", "parse_grbl_options"]

_KEYS: Final = (
    "proxy_pty",
    "proxy_tcp",
    "proxy_host",
    "job_end_idle_s",
    "job_end_quiet_s",
    "job_stalled_end_s",
    "job_min_lines",
    "total_patterns",
    "program_patterns",
)


@dataclass(frozen=True, slots=True)
class ProxyOptions:
    """Where the proxy offers the machine to the sender, and how it sees jobs."""

    pty: Path | None = None
    tcp_port: int | None = None
    tcp_host: str = "127.0.0.1"
    end_idle_s: float = 0.5
    end_quiet_s: float = 2.0
    stalled_end_s: float = 300.0
    min_job_lines: int = 3
    total_patterns: Sequence[str] = DEFAULT_TOTAL_PATTERNS
    program_patterns: Sequence[str] = DEFAULT_PROGRAM_PATTERNS


@dataclass(frozen=True, slots=True)
class GrblOptions:
    """GRBL's typed ``[machines.options]``; ``proxy`` is None when the agent only polls."""

    proxy: ProxyOptions | None = None


def _patterns(t: ConfigTable, name: str, group: str, default: Sequence[str]) -> tuple[str, ...]:
    if name not in t.data:
        return tuple(default)
    raw: list[object] = t.get(name, list, None, what="a list of regular expressions")
    fix = f'Write each as a Python regular expression with a (?P<{group}>...) group, in "..."'
    out: list[str] = []
    for item in raw:
        if not isinstance(item, str):
            raise t.error(name, f"{item!r} is not a string", fix + ".")
        try:
            compiled = re.compile(item)
        except re.error as exc:
            raise t.error(name, f"{item!r} is not a valid regular expression ({exc})", fix) from exc
        if group not in compiled.groupindex:
            raise t.error(name, f"{item!r} has no (?P<{group}>...) group", fix + ".")
        out.append(item)
    if not out:
        raise t.error(name, "is empty", "Remove it to use the built-in patterns.")
    return tuple(out)


def parse_grbl_options(t: ConfigTable) -> GrblOptions:
    """Validate a GRBL machine's ``[machines.options]`` table."""
    t.check_keys(_KEYS)
    pty_raw = t.optional("proxy_pty", str, what='a path, e.g. "/run/shopfloor/router-1"')
    tcp = t.optional("proxy_tcp", int, what="a TCP port number, e.g. 2323")
    if pty_raw is None and tcp is None:
        for name in _KEYS[2:]:
            if name in t.data:
                raise t.error(
                    name,
                    "only applies in proxy mode",
                    'Set proxy_pty = "/run/shopfloor/<machine>" or proxy_tcp = 2323, or remove it.',
                )
        return GrblOptions()
    pty: Path | None = None
    if pty_raw is not None:
        if not pty_raw.startswith("/"):
            raise t.error(
                "proxy_pty",
                f"{pty_raw!r} is not an absolute path",
                'Use e.g. "/run/shopfloor/router-1".',
            )
        pty = Path(pty_raw)
        if pty.exists() and not pty.is_symlink():
            raise t.error(
                "proxy_pty",
                f"{pty_raw!r} exists and is not a symlink; the agent will not replace it",
                "Choose a path that does not exist yet (the agent creates a symlink there).",
            )
    if tcp is not None and not 1 <= tcp <= 65535:
        raise t.error("proxy_tcp", f"{tcp} is out of range", "Use a port from 1 to 65535.")
    host = t.get("proxy_host", str, "127.0.0.1", what='an address, e.g. "127.0.0.1"')
    if not host:
        raise t.error(
            "proxy_host", "is empty", 'Use "127.0.0.1" (this computer only) or "0.0.0.0".'
        )
    quiet = t.number("job_end_quiet_s", 2.0, low=0.1, high=3600)
    return GrblOptions(
        proxy=ProxyOptions(
            pty=pty,
            tcp_port=tcp,
            tcp_host=host,
            end_idle_s=t.number("job_end_idle_s", 0.5, low=0.0, high=600),
            end_quiet_s=quiet,
            stalled_end_s=t.number("job_stalled_end_s", 300.0, low=quiet, high=86400),
            min_job_lines=t.integer("job_min_lines", 3, low=1, high=1000),
            total_patterns=_patterns(t, "total_patterns", "total", DEFAULT_TOTAL_PATTERNS),
            program_patterns=_patterns(t, "program_patterns", "program", DEFAULT_PROGRAM_PATTERNS),
        )
    )
