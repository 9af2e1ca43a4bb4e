"""The Haas device session: polls Q commands one at a time and parses what comes back.

Usage::

    link = lambda: open_link("tcp://10.0.0.20:5051")  # NGC MDC (Setting 143), or a serial port
    async with HaasSession("mill-1", link, clock=SystemClock()) as session:
        async for item in session.readings():
            records = tracker.update(item)

The I/O is the shared :class:`~shopfloor.agent.sessions.polling.PollingSession`; this module
is the sans-IO :class:`HaasDriver`. A Haas control answers one query at a time, so the driver
keeps exactly one request outstanding: ``poll()`` returns ``b""`` while it waits, and a reply
that has not come by the next poll (``reply_timeout_polls``) counts as a timeout and the cycle
moves on. After every (re)connect it asks Q100, Q101 and Q102 once (Q100 is retried once: the
first ``?Q100`` after connecting may need to be sent twice, serial-protocols.md §3.1); then it
alternates Q500 (program, status, parts: the state) with the next query of the cycle
(``q_commands``, then a Q600 read per configured macro variable). A query the control rejects
is dropped from the cycle until the next connection.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, Literal, Unpack

from shopfloor.agent.adapters.haas import (
    DEFAULT_SETUP_MODES,
    DEFAULT_STATUS_OBSERVATIONS,
    HaasAdapter,
    StateMap,
)
from shopfloor.agent.clock import Clock
from shopfloor.agent.links.base import Link
from shopfloor.agent.protocols.haas import (
    CycleTime,
    Garbage,
    HaasEvent,
    HaasProtocol,
    LineEnding,
    MacroValue,
    Mode,
    Model,
    PartsCounter,
    ProgramStatus,
    Rejected,
    SerialNumber,
    SoftwareVersion,
    TimeCounter,
    ToolChanges,
    ToolInUse,
)
from shopfloor.agent.sessions.base import ProtocolEntry, SessionContext, SessionItem
from shopfloor.agent.sessions.polling import (
    PollingSession,
    SessionError,
    SessionTuning,
    machine_timing,
)
from shopfloor.contract.states import Observation

if TYPE_CHECKING:
    from shopfloor.agent.config import ConfigTable

__all__ = [
    "ENTRY",
    "HaasDriver",
    "HaasOptions",
    "HaasSession",
    "SessionError",
    "SessionItem",
    "parse_options",
]

_log = logging.getLogger(__name__)

_INFO_COMMANDS: Final = ("Q100", "Q101", "Q102")
#: The queries the cycle may poll besides Q500 and Q600 (which the driver adds itself).
CYCLE_COMMANDS: Final = frozenset(
    {"Q101", "Q102", "Q104", "Q200", "Q201", "Q300", "Q301", "Q303", "Q304", "Q402", "Q403"}
)
#: The reply each query expects; any other well-formed reply does not answer it.
_EXPECTS: Final[Mapping[str, type]] = MappingProxyType(
    {
        "Q100": SerialNumber,
        "Q101": SoftwareVersion,
        "Q102": Model,
        "Q104": Mode,
        "Q200": ToolChanges,
        "Q201": ToolInUse,
        "Q300": TimeCounter,
        "Q301": TimeCounter,
        "Q303": CycleTime,
        "Q304": CycleTime,
        "Q402": PartsCounter,
        "Q403": PartsCounter,
        "Q500": ProgramStatus,
        "Q600": MacroValue,
    }
)
_STATE_NAMES: Final[Mapping[str, Observation]] = MappingProxyType(
    {
        "idle": Observation.REPORTS_IDLE,
        "running": Observation.REPORTS_RUNNING,
        "paused": Observation.REPORTS_PAUSED,
        "setup": Observation.REPORTS_SETUP,
        "alarm": Observation.REPORTS_ALARM,
    }
)


#: Q600 reads polled by default: #3027 spindle rpm (fact sheet, [3P]) and #1098 spindle load
#: with a Haas vector drive (third-party variable tables, [3P]).
DEFAULT_MACRO_VARIABLES: Final[Mapping[str, int]] = MappingProxyType(
    {"spindle_rpm": 3027, "spindle_load_pct": 1098}
)


@dataclass(frozen=True, slots=True)
class HaasOptions:
    """``[machines.options]`` of a Haas machine (see :func:`parse_options` for the keys)."""

    q_commands: tuple[str, ...] = ("Q104", "Q303")
    macro_variables: Mapping[str, int] = field(
        default_factory=lambda: MappingProxyType(DEFAULT_MACRO_VARIABLES)
    )
    part_counter_variable: int | None = None
    parts_required_variable: int | None = None
    parts_required: int | None = None
    line_ending: LineEnding = "crlf"
    query_prefix: Literal["?", ""] = "?"
    reply_timeout_polls: int = 1
    status_states: Mapping[str, Observation] = field(
        default_factory=lambda: DEFAULT_STATUS_OBSERVATIONS
    )
    setup_modes: frozenset[str] = DEFAULT_SETUP_MODES
    max_reply_bytes: int = 256

    def cycle(self) -> tuple[str, ...]:
        """The queries polled between two Q500s, in order (the part counter and quantity
        variables first among the Q600 reads)."""
        variables = [
            v for v in (self.parts_required_variable, self.part_counter_variable) if v is not None
        ]
        variables += [v for v in self.macro_variables.values() if v not in variables]
        return (*self.q_commands, *(f"Q600 {v}" for v in variables))


class HaasDriver:
    """The sans-IO Haas half of a polling session."""

    name = "haas"

    def __init__(self, options: HaasOptions | None = None) -> None:
        self.options = options = options or HaasOptions()
        names = {number: name for name, number in options.macro_variables.items()}
        self.adapter = HaasAdapter(
            state_map=StateMap(options.status_states, options.setup_modes),
            part_counter_variable=options.part_counter_variable,
            parts_required_variable=options.parts_required_variable,
            parts_required=options.parts_required,
            macro_names=names,
        )
        protocol = self._new_protocol()
        for command in (*_INFO_COMMANDS, "Q500", *options.cycle()):
            protocol.query(command)  # ValueError now rather than in the poller later
            if command.split()[0] not in _EXPECTS:
                raise ValueError(f"{command!r} is not a query the Haas driver polls")
        #: Replies that did not come within ``reply_timeout_polls`` polls.
        self.timeouts = 0
        #: Replies that could not be parsed.
        self.garbage = 0
        self.reset()

    def _new_protocol(self) -> HaasProtocol:
        opts = self.options
        return HaasProtocol(
            max_reply_bytes=opts.max_reply_bytes,
            prefix=opts.query_prefix,
            line_ending=opts.line_ending,
        )

    def reset(self) -> None:
        self._protocol = self._new_protocol()
        self._info: list[tuple[str, int]] = [
            (cmd, 2 if cmd == "Q100" else 1) for cmd in _INFO_COMMANDS
        ]
        self._cycle = list(self.options.cycle())
        self._index = 0
        self._q500_next = True
        self._outstanding: str | None = None
        self._attempts_left = 0
        self._waited = 0
        self.adapter.reconnected()

    @property
    def outstanding(self) -> str | None:
        """The query waiting for its reply (``"Q600 3901"``), if any."""
        return self._outstanding

    def poll(self) -> bytes:
        if self._outstanding is not None:
            self._waited += 1
            if self._waited <= self.options.reply_timeout_polls:
                return b""
            self.timeouts += 1
            _log.debug("haas: no reply to %s", self._outstanding)
            if self._attempts_left > 1:
                self._info.insert(0, (self._outstanding, self._attempts_left - 1))
            self._outstanding = None
        command, attempts = self._next_command()
        self._outstanding, self._attempts_left, self._waited = command, attempts, 0
        return self._protocol.query(command)

    def _next_command(self) -> tuple[str, int]:
        if self._info:
            return self._info.pop(0)
        if self._q500_next or not self._cycle:
            self._q500_next = False
            return "Q500", 1
        self._q500_next = True
        command = self._cycle[self._index % len(self._cycle)]
        self._index = (self._index + 1) % len(self._cycle)
        return command, 1

    def feed(self, data: bytes, ts_ms: int, mono_ms: int) -> list[SessionItem]:
        items: list[SessionItem] = []
        for event in self._protocol.feed(data):
            items.extend(self._on_event(event, ts_ms, mono_ms))
        return items

    def _on_event(self, event: HaasEvent, ts_ms: int, mono_ms: int) -> list[SessionItem]:
        asked = self._outstanding
        if isinstance(event, Garbage):
            self.garbage += 1
            _log.debug("haas: %s: %r", event.reason, event.raw)
            self._outstanding = None  # most likely the garbled reply to it
            return []
        if isinstance(event, Rejected):
            if asked is not None:
                self._outstanding = None
                self._drop(asked, event.text)
            return []
        if asked is not None and isinstance(event, _EXPECTS[asked.split()[0]]):
            self._outstanding = None
        if isinstance(event, MacroValue):
            if asked is None or not asked.startswith("Q600 "):
                return []  # cannot tell which variable this is
            return list(self.adapter.macro(int(asked[5:]), event, ts_ms=ts_ms, mono_ms=mono_ms))
        return list(self.adapter.translate(event, ts_ms=ts_ms, mono_ms=mono_ms))

    def _drop(self, command: str, text: str) -> None:
        if command in self._cycle:
            self._cycle.remove(command)
            _log.info("haas: the control rejected %s (%s); not asking again", command, text)


class HaasSession(PollingSession):
    """A :class:`PollingSession` with a :class:`HaasDriver`."""

    def __init__(
        self,
        machine_id: str,
        open_link: Callable[[], Link],
        *,
        clock: Clock,
        options: HaasOptions | None = None,
        poll_interval_s: float = 0.25,
        silence_timeout_s: float = 5.0,
        **tuning: Unpack[SessionTuning],
    ) -> None:
        self._haas = HaasDriver(options)
        super().__init__(
            machine_id,
            open_link,
            self._haas,
            clock=clock,
            poll_interval_s=poll_interval_s,
            silence_timeout_s=silence_timeout_s,
            **tuning,
        )

    @property
    def adapter(self) -> HaasAdapter:
        return self._haas.adapter


# --------------------------------------------------------------------------- config

_OPTION_KEYS: Final = (
    "q_commands",
    "macro_variables",
    "part_counter_variable",
    "parts_required_variable",
    "parts_required",
    "line_ending",
    "query_prefix",
    "reply_timeout_polls",
    "status_states",
    "setup_modes",
)
_MAX_VARIABLE: Final = 99999


def parse_options(table: ConfigTable) -> HaasOptions:
    """Validate a Haas machine's ``[machines.options]``.

    Keys (all optional): ``q_commands`` (list, default ``["Q104", "Q303"]``), ``macro_variables``
    (table name -> variable number, default
    ``{spindle_rpm = 3027, spindle_load_pct = 1098}``), ``part_counter_variable``
    and ``parts_required_variable`` (Q600 variable numbers), ``parts_required`` (a fixed
    quantity), ``line_ending`` (``crlf``/``lf``/``cr``), ``query_prefix`` (``"?"`` or ``""``),
    ``reply_timeout_polls`` (1), ``status_states`` (table Q500 status word -> idle, running,
    paused, setup or alarm; merged over the defaults) and ``setup_modes`` (Q104 modes in which a
    busy machine is in setup).
    """
    table.check_keys(_OPTION_KEYS)
    defaults = HaasOptions()
    return HaasOptions(
        q_commands=_q_commands(table, defaults.q_commands),
        macro_variables=_macro_variables(table, defaults.macro_variables),
        part_counter_variable=_variable(table, "part_counter_variable"),
        parts_required_variable=_variable(table, "parts_required_variable"),
        parts_required=(
            None
            if "parts_required" not in table.data
            else table.integer("parts_required", 1, low=1, high=1_000_000)
        ),
        line_ending=_line_ending(table),
        query_prefix="" if table.choice("query_prefix", "?", frozenset({"?", ""})) == "" else "?",
        reply_timeout_polls=table.integer("reply_timeout_polls", 1, low=1, high=100),
        status_states=_status_states(table),
        setup_modes=_setup_modes(table),
    )


def _line_ending(table: ConfigTable) -> LineEnding:
    value = table.choice("line_ending", "crlf", frozenset({"crlf", "lf", "cr"}))
    if value == "lf":
        return "lf"
    return "cr" if value == "cr" else "crlf"


def _variable(table: ConfigTable, name: str) -> int | None:
    if name not in table.data:
        return None
    return table.integer(name, 1, low=1, high=_MAX_VARIABLE)


def _q_commands(table: ConfigTable, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = table.get("q_commands", list, list(default), what='a list like ["Q104", "Q303"]')
    out: list[str] = []
    for item in raw:
        command = item.strip().upper().removeprefix("?") if isinstance(item, str) else None
        if command not in CYCLE_COMMANDS:
            raise table.error(
                "q_commands",
                f"{item!r} is not a query the agent polls",
                f"Use some of: {', '.join(sorted(CYCLE_COMMANDS))} (Q500 is always polled; "
                "Q600 reads come from macro_variables).",
            )
        if command not in out:
            out.append(command)
    return tuple(out)


def _macro_variables(table: ConfigTable, default: Mapping[str, int]) -> Mapping[str, int]:
    if "macro_variables" not in table.data:
        return default
    raw = table.get("macro_variables", dict, None, what="a table like { spindle_rpm = 3027 }")
    out: dict[str, int] = {}
    for name, number in raw.items():
        if not str(name).isidentifier() or not str(name).islower():
            raise table.error(
                "macro_variables",
                f"{name!r} is not a telemetry name",
                "Use lower-case names like spindle_rpm = 3027.",
            )
        if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= 99999:
            raise table.error(
                "macro_variables",
                f"{name} = {number!r} is not a macro variable number",
                f"Write it as {name} = 3027 (a number from 1 to {_MAX_VARIABLE}).",
            )
        out[str(name)] = number
    return MappingProxyType(out)


def _status_states(table: ConfigTable) -> Mapping[str, Observation]:
    if "status_states" not in table.data:
        return DEFAULT_STATUS_OBSERVATIONS
    raw = table.get("status_states", dict, None, what='a table like { "SINGLE BLOCK" = "paused" }')
    out = dict(DEFAULT_STATUS_OBSERVATIONS)
    for word, state in raw.items():
        if not isinstance(state, str) or state not in _STATE_NAMES:
            raise table.error(
                "status_states",
                f"{word!r} = {state!r} is not a state",
                f"Use one of: {', '.join(_STATE_NAMES)}.",
            )
        out[" ".join(str(word).split()).upper()] = _STATE_NAMES[state]
    return MappingProxyType(out)


def _setup_modes(table: ConfigTable) -> frozenset[str]:
    if "setup_modes" not in table.data:
        return DEFAULT_SETUP_MODES
    raw = table.get("setup_modes", list, None, what='a list like ["MDI", "JOG"]')
    if not all(isinstance(mode, str) and mode.strip() for mode in raw):
        raise table.error(
            "setup_modes", "must be a list of mode names", 'Write it as ["MDI", "JOG", "ZERO RET"].'
        )
    return frozenset(" ".join(mode.strip("()").split()).upper() for mode in raw)


def _open_session(ctx: SessionContext) -> HaasSession:
    machine = ctx.machine
    options = machine.options if isinstance(machine.options, HaasOptions) else None
    return HaasSession(machine.id, ctx.open_link, options=options, **machine_timing(ctx))


#: Haas NGC / classic machine data collection. Serial settings are site configuration
#: (Settings 11-14, 25, 37); 9600 is a common setting. NGC Ethernet: ``tcp://host:5051``.
ENTRY: Final = ProtocolEntry(
    name="haas",
    open_session=_open_session,
    parse_options=parse_options,
    min_poll_interval_s=0.1,
    default_baudrate=9600,
)
