"""The root of Shopfloor's exception tree.

Each package (agent, hub, sim) derives its own base from :class:`ShopfloorError`, and
translates library errors into it where they enter, chained with ``from``.
"""


class ShopfloorError(Exception):
    """Base of every error Shopfloor raises on purpose."""


class ContractError(ShopfloorError, ValueError):
    """A topic or payload does not follow wire contract v1.

    ``reason`` is a short, human-readable explanation suitable for logs and for the
    hub's rejected-message store; ``field`` names the offending envelope field if any.
    """

    def __init__(self, reason: str, *, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field
