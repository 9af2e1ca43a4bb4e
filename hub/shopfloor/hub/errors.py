"""The hub's exception tree. Library errors are translated into these where they enter."""

from __future__ import annotations

from shopfloor.contract.errors import ShopfloorError


class HubError(ShopfloorError):
    """Base of every error the hub raises on purpose."""


class ConfigError(HubError):
    """A configuration file is wrong. The message names the file, the key and the fix."""

    def __init__(
        self, problem: str, *, path: str, key: str | None = None, fix: str | None = None
    ) -> None:
        where = f"{path}: {key}" if key else path
        message = f"{where}: {problem}"
        if fix:
            message += f" (fix: {fix})"
        super().__init__(message)
        self.path = path
        self.key = key
        self.problem = problem
        self.fix = fix


class StoreError(HubError):
    """The event store failed: the database could not be opened, migrated or written."""
