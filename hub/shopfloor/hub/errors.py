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


class MirrorError(HubError):
    """The metrics mirror could not deliver a batch. ``permanent``: the server refused the
    data itself (HTTP 400, 413, 422), so sending the same lines again cannot succeed."""

    def __init__(self, message: str, *, status: int | None = None, permanent: bool = False):
        super().__init__(message)
        self.status = status
        self.permanent = permanent
