"""Topic names of wire contract v1, and their parser.

``{root}/{site}/{agent}/{machine}/{channel}`` for machine records,
``{root}/{site}/{agent}/_status|_ack`` and ``{root}/{site}/{agent}/_cmd/{name}`` for the
agent itself, and ``{root}/{site}/_hub/status`` for the hub. ``root`` may contain
slashes (default ``shopfloor/v1``); every other level is one id.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final

from shopfloor.contract.errors import ContractError

DEFAULT_ROOT: Final = "shopfloor/v1"

_ID_RE: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_ROOT_RE: Final = re.compile(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*")


class Channel(enum.StrEnum):
    """The last topic level: what kind of message travels on it."""

    STATE = "state"
    TELEMETRY = "telemetry"
    EVENT = "event"
    META = "meta"
    STATUS = "_status"
    ACK = "_ack"
    CMD = "_cmd"
    HUB_STATUS = "_hub"


MACHINE_CHANNELS: Final = frozenset({Channel.STATE, Channel.TELEMETRY, Channel.EVENT, Channel.META})
#: Machine channels whose last message the broker keeps for late subscribers.
RETAINED_CHANNELS: Final = frozenset({Channel.STATE, Channel.META})


def validate_id(value: str, what: str) -> str:
    """Return ``value`` if it is a valid site, agent or machine id, else raise.

    Ids are lower-case letters, digits, ``-`` and ``_``, 1-64 characters, starting with a
    letter or digit (a leading ``_`` is reserved for agent-level topics).
    """
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise ContractError(
            f"{what} id {value!r} is not valid: use 1-64 lower-case letters, digits, '-' or '_', "
            "starting with a letter or digit",
            field=what,
        )
    return value


def validate_root(root: str) -> str:
    if not _ROOT_RE.fullmatch(root):
        raise ContractError(
            f"topic root {root!r} is not valid: use letters, digits, '-', '_' separated by '/', "
            "with no wildcards and no leading or trailing '/'",
            field="root",
        )
    return root


@dataclass(frozen=True, slots=True)
class AgentTopics:
    """Topic builder for one agent."""

    site: str
    agent: str
    root: str = DEFAULT_ROOT

    def __post_init__(self) -> None:
        validate_root(self.root)
        validate_id(self.site, "site")
        validate_id(self.agent, "agent")

    @property
    def base(self) -> str:
        return f"{self.root}/{self.site}/{self.agent}"

    def machine(self, machine: str, channel: Channel) -> str:
        if channel not in MACHINE_CHANNELS:
            raise ContractError(f"{channel} is not a machine channel", field="channel")
        return f"{self.base}/{validate_id(machine, 'machine')}/{channel}"

    @property
    def status(self) -> str:
        return f"{self.base}/{Channel.STATUS}"

    @property
    def ack(self) -> str:
        return f"{self.base}/{Channel.ACK}"

    def cmd(self, name: str) -> str:
        return f"{self.base}/{Channel.CMD}/{validate_id(name, 'command')}"


def hub_status_topic(site: str, root: str = DEFAULT_ROOT) -> str:
    return f"{validate_root(root)}/{validate_id(site, 'site')}/_hub/status"


def subscription_filters(root: str = DEFAULT_ROOT) -> list[str]:
    """What the hub subscribes to: every machine channel and every agent status."""
    validate_root(root)
    return [f"{root}/+/+/+/{channel}" for channel in sorted(MACHINE_CHANNELS)] + [
        f"{root}/+/+/{Channel.STATUS}"
    ]


@dataclass(frozen=True, slots=True)
class TopicRef:
    """A parsed topic. ``machine`` is None for agent-level topics, ``command`` only for _cmd."""

    site: str
    agent: str
    channel: Channel
    machine: str | None = None
    command: str | None = None


def parse_topic(topic: str, root: str = DEFAULT_ROOT) -> TopicRef:
    """Parse a contract topic, raising :class:`ContractError` with the reason if it is not one."""
    prefix = f"{root}/"
    if not topic.startswith(prefix):
        raise ContractError(f"topic {topic!r} is not under the root {root!r}", field="topic")
    parts = topic[len(prefix) :].split("/")
    if len(parts) == 3 and parts[1] == "_hub" and parts[2] == "status":
        return TopicRef(
            site=validate_id(parts[0], "site"), agent="_hub", channel=Channel.HUB_STATUS
        )
    if len(parts) < 3:
        raise ContractError(f"topic {topic!r} has too few levels", field="topic")
    site = validate_id(parts[0], "site")
    agent = validate_id(parts[1], "agent")
    rest = parts[2:]
    if len(rest) == 1 and rest[0] in (Channel.STATUS, Channel.ACK):
        return TopicRef(site=site, agent=agent, channel=Channel(rest[0]))
    if len(rest) == 2 and rest[0] == Channel.CMD:
        return TopicRef(
            site=site, agent=agent, channel=Channel.CMD, command=validate_id(rest[1], "command")
        )
    if len(rest) == 2:
        machine = validate_id(rest[0], "machine")
        try:
            channel = Channel(rest[1])
        except ValueError:
            raise ContractError(
                f"topic {topic!r} ends in unknown channel {rest[1]!r}", field="topic"
            ) from None
        if channel not in MACHINE_CHANNELS:
            raise ContractError(
                f"topic {topic!r}: {channel} is not a machine channel", field="topic"
            )
        return TopicRef(site=site, agent=agent, channel=channel, machine=machine)
    raise ContractError(f"topic {topic!r} does not match any contract topic", field="topic")
