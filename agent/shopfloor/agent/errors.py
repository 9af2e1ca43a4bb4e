"""The agent's exception tree. Library errors are translated into these where they enter."""

from __future__ import annotations

from shopfloor.contract.errors import ShopfloorError


class AgentError(ShopfloorError):
    """Base of every error the agent raises on purpose."""


class ConfigError(AgentError):
    """A configuration file is wrong. The message names the file, the key and the fix."""

    def __init__(self, message: str, *, path: str | None = None, key: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.key = key


class LinkError(AgentError):
    """A link (serial port, pseudo-terminal, TCP connection) failed or could not be opened."""

    def __init__(self, message: str, *, port: str) -> None:
        super().__init__(message)
        self.port = port


class LinkClosedError(LinkError):
    """The far end went away: the port was unplugged, the pty closed, the TCP peer hung up."""


class ProtocolError(AgentError):
    """A device sent something the protocol parser could not make sense of.

    Parsers do not raise this out of ``feed``; they return it as an event and resync, so a
    noisy line never stops the reader. ``raw`` is the offending frame, truncated.
    """

    def __init__(self, message: str, *, raw: bytes = b"") -> None:
        super().__init__(message)
        self.raw = raw[:200]


class MqttError(AgentError):
    """The MQTT connection failed: broker refused us, or it is unreachable when it must not be.

    ``code`` is the broker's CONNACK reason code when there is one.
    """

    def __init__(self, message: str, *, broker: str, code: int | None = None) -> None:
        super().__init__(message)
        self.broker = broker
        self.code = code


class StoreError(AgentError):
    """The agent's on-disk store (sequence counter, later the outbox) failed or is corrupt."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path
