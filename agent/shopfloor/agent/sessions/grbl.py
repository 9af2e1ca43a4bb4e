"""The GRBL device session: polls ``?``, asks ``$I`` once, and parses what comes back.

Usage::

    link = lambda: SerialLink("/dev/ttyUSB0")
    async with GrblSession("router-1", link, clock=SystemClock()) as session:
        async for item in session.readings():
            records = tracker.update(item)

With ``proxy_pty`` or ``proxy_tcp`` in ``[machines.options]`` the machine is served in
proxy mode instead (:class:`~shopfloor.agent.proxy.session.GrblProxySession`): the agent
sits between the operator's sender and the controller.

The I/O (reader and poller tasks, silence, reconnect, the bounded queue) is the shared
:class:`~shopfloor.agent.sessions.polling.PollingSession`; this module is the GRBL
:class:`GrblDriver`: ``?`` every poll (GRBL asks for at most 5 Hz), ``$I`` once the
machine is Idle or in Alarm (gnea Grbl answers system commands only then) and again after
a reset, and every chunk fed to :class:`~shopfloor.agent.protocols.grbl.GrblProtocol` and
translated by :class:`~shopfloor.agent.adapters.grbl.GrblAdapter`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final, Unpack

from shopfloor.agent.adapters.grbl import GrblAdapter
from shopfloor.agent.clock import Clock
from shopfloor.agent.links.base import Link
from shopfloor.agent.protocols.grbl import Banner, Garbage, GrblProtocol, StatusReport
from shopfloor.agent.proxy.options import GrblOptions, parse_grbl_options
from shopfloor.agent.proxy.session import GrblProxySession
from shopfloor.agent.sessions.base import ProtocolEntry, SessionContext, SessionItem
from shopfloor.agent.sessions.polling import (
    PollingSession,
    SessionError,
    SessionTuning,
    machine_timing,
)

__all__ = ["ENTRY", "GrblDriver", "GrblSession", "SessionError", "SessionItem"]

_log = logging.getLogger(__name__)

#: States in which gnea Grbl answers ``$I`` (system commands need Idle or Alarm).
_INFO_STATES: Final = frozenset({"Idle", "Alarm"})
_STATUS_QUERY: Final = GrblProtocol.status_query()
_INFO_QUERY: Final = GrblProtocol.command("$I")


class GrblDriver:
    """The sans-IO GRBL half of a polling session."""

    name = "grbl"

    def __init__(self, *, laser_mode: bool = False, max_line_bytes: int = 256) -> None:
        self.adapter = GrblAdapter(laser_mode=laser_mode)
        self._max_line_bytes = max_line_bytes
        self._protocol = GrblProtocol(max_line_bytes)
        self._last_state = ""
        self._info_requested = False

    def reset(self) -> None:
        self._protocol = GrblProtocol(self._max_line_bytes)
        self._last_state = ""
        self._info_requested = False

    def poll(self) -> bytes:
        if not self._info_requested and self._last_state in _INFO_STATES:
            self._info_requested = True
            return _STATUS_QUERY + _INFO_QUERY
        return _STATUS_QUERY

    def feed(self, data: bytes, ts_ms: int, mono_ms: int) -> list[SessionItem]:
        items: list[SessionItem] = []
        for event in self._protocol.feed(data):
            if isinstance(event, StatusReport):
                self._last_state = event.state
            elif isinstance(event, Banner):
                self._info_requested = False  # a reset may mean new firmware
            elif isinstance(event, Garbage):
                _log.debug("grbl: %s: %r", event.reason, event.raw)
            items.extend(self.adapter.translate(event, ts_ms=ts_ms, mono_ms=mono_ms))
        return items


class GrblSession(PollingSession):
    """A :class:`PollingSession` with a :class:`GrblDriver`."""

    def __init__(
        self,
        machine_id: str,
        open_link: Callable[[], Link],
        *,
        clock: Clock,
        poll_interval_s: float = 0.2,
        silence_timeout_s: float = 2.0,
        laser_mode: bool = False,
        max_line_bytes: int = 256,
        **tuning: Unpack[SessionTuning],
    ) -> None:
        self._grbl = GrblDriver(laser_mode=laser_mode, max_line_bytes=max_line_bytes)
        super().__init__(
            machine_id,
            open_link,
            self._grbl,
            clock=clock,
            poll_interval_s=poll_interval_s,
            silence_timeout_s=silence_timeout_s,
            **tuning,
        )

    @property
    def adapter(self) -> GrblAdapter:
        return self._grbl.adapter


def _open_session(ctx: SessionContext) -> GrblSession | GrblProxySession:
    machine = ctx.machine
    options = machine.options
    timing = machine_timing(ctx)
    if isinstance(options, GrblOptions) and options.proxy is not None:
        return GrblProxySession(
            machine.id,
            ctx.open_link,
            options=options.proxy,
            laser_mode=machine.laser_mode,
            **timing,
        )
    return GrblSession(machine.id, ctx.open_link, laser_mode=machine.laser_mode, **timing)


#: GRBL 1.1 / grblHAL. GRBL asks for status queries at no more than 5 Hz.
#: ``[machines.options]``: ``proxy_pty``/``proxy_tcp`` switch on proxy mode
#: (:mod:`shopfloor.agent.proxy.options`).
ENTRY: Final = ProtocolEntry(
    name="grbl",
    open_session=_open_session,
    parse_options=parse_grbl_options,
    min_poll_interval_s=0.2,
)
