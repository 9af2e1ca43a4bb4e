"""The protocols the agent speaks, by the name used in ``protocol = "..."``.

Each entry lives in its protocol's session module as ``ENTRY``; this table only names the
modules, so the config can list the names without importing every protocol, and a Pi that
reads one GRBL router never imports pymodbus.
"""

from __future__ import annotations

import importlib
from typing import Final

from shopfloor.agent.sessions.base import ProtocolEntry

_MODULES: Final = {
    "grbl": "shopfloor.agent.sessions.grbl",
    "haas": "shopfloor.agent.sessions.haas",
    "marlin": "shopfloor.agent.sessions.marlin",
    "modbus_kiln": "shopfloor.agent.sessions.kiln",
}

#: The names accepted by ``protocol = "..."`` in a machine's config.
PROTOCOL_NAMES: Final = frozenset(_MODULES)


def protocol_entry(name: str) -> ProtocolEntry:
    """The entry for ``name`` (one of :data:`PROTOCOL_NAMES`), importing its module."""
    module = importlib.import_module(_MODULES[name])
    entry: ProtocolEntry = module.ENTRY
    return entry
