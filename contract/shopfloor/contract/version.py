"""The installed Shopfloor version, reported in ``_status`` and by ``shopfloor --version``."""

from __future__ import annotations

from importlib import metadata


def agent_version() -> str:
    try:
        return metadata.version("shopfloor")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"
