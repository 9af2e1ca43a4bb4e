"""What every device session looks like to the app, whatever the protocol.

A session owns one link to one machine (or, for a Modbus bus, one unit on a shared link)
and yields protocol-neutral items: ``async with session: async for item in
session.readings()``. The app never needs to know which protocol it is talking to.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self

from shopfloor.agent.clock import Clock
from shopfloor.agent.links.base import Link
from shopfloor.agent.readings import DeviceEvent, DeviceInfo, Reading

if TYPE_CHECKING:
    from shopfloor.agent.config import ConfigTable, MachineConfig

SessionItem = Reading | DeviceEvent | DeviceInfo


class DeviceSession(Protocol):
    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def readings(self) -> AsyncIterator[SessionItem]: ...


@dataclass(frozen=True, slots=True)
class SessionContext:
    """Everything a protocol's session factory gets from the app."""

    machine: MachineConfig
    open_link: Callable[[], Link]
    clock: Clock


def no_options(table: ConfigTable) -> Mapping[str, Any]:
    """The options parser of a protocol that has no ``[machines.options]``."""
    table.check_keys(())
    return {}


@dataclass(frozen=True, slots=True)
class ProtocolEntry:
    """One protocol the agent speaks.

    ``parse_options`` validates the machine's ``[machines.options]`` table (a
    :class:`~shopfloor.agent.config.ConfigTable`, whose errors name the file, key and fix)
    and returns the protocol's own typed options, stored in ``MachineConfig.options``.
    """

    name: str
    open_session: Callable[[SessionContext], DeviceSession]
    parse_options: Callable[[ConfigTable], object] = no_options
    min_poll_interval_s: float = 0.05
    default_baudrate: int = 115200
